"""PNG plots of run summaries (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ticket_levels(summary: dict[str, Any], path: Path) -> None:
    """Test accuracy against density: the ticket, both controls and the dense net."""
    plt = _pyplot()
    levels = summary["levels"]
    fig, ax = plt.subplots(figsize=(6, 4))
    dens = [1.0] + [lv["density"] for lv in levels]
    ax.plot(dens, [summary["dense_accuracy"]] + [lv["ticket_accuracy"] for lv in levels], "o-", label="ticket (IMP)")
    for key, label, style in (("reinit_accuracy", "re-init control", "s--"), ("random_mask_accuracy", "random-mask control", "^:")):
        pts = [(lv["density"], lv[key]) for lv in levels if lv.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=label)
    ax.axhline(summary["dense_accuracy"], color="grey", lw=0.8, label="dense")
    ax.set_xscale("log")
    ax.set_xticks(dens, [f"{d:.2f}" for d in dens])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("density (fraction of prunable weights kept)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{summary['model']} on {summary['dataset']}, seed {summary['seed']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _eval_series(rounds: list[dict[str, Any]]) -> tuple[list[int], list[float], list[float]]:
    """Rounds with an evaluation, their mean and std of client accuracies."""
    xs, means, stds = [], [], []
    for r in rounds:
        if r.get("evaluate"):
            accs = [m["accuracy"] for m in r["evaluate"].values()]
            mean = sum(accs) / len(accs)
            xs.append(r["round"])
            means.append(mean)
            stds.append((sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5)
    return xs, means, stds


def plot_federated(rounds: list[dict[str, Any]], title: str, out_dir: Path) -> None:
    """Personalized accuracy by round, density by round, accuracy against cumulative upload."""
    plt = _pyplot()
    xs, means, stds = _eval_series(rounds)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, means, "o-", label="mean over clients")
    ax.fill_between(xs, [m - s for m, s in zip(means, stds, strict=True)], [m + s for m, s in zip(means, stds, strict=True)], alpha=0.2, label="± std")
    ax.set(xlabel="round", ylabel="personalized test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_by_round.png", dpi=120)
    plt.close(fig)

    # density: the latest density each client reported, averaged over clients seen so far
    latest: dict[str, float] = {}
    dx, dy = [], []
    for r in rounds:
        for pid, m in r.get("train", {}).items():
            latest[str(pid)] = m.get("density", 1.0)
        if latest:
            dx.append(r["round"])
            dy.append(sum(latest.values()) / len(latest))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(dx, dy, "-")
    ax.set(xlabel="round", ylabel="mean density of trained clients", ylim=(0, 1.05), title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "density_by_round.png", dpi=120)
    plt.close(fig)

    cum, up = 0, {}
    for r in rounds:
        cum += r["bytes"]["upload"]
        up[r["round"]] = cum
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([up[x] / 1e6 for x in xs], means, "o-")
    ax.set(xlabel="cumulative upload (MB)", ylabel="personalized test accuracy", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy_vs_upload.png", dpi=120)
    plt.close(fig)


def plot_overlay(curves: dict[str, list[list[tuple[int, float]]]], path: Path, title: str) -> None:
    """Mean personalized accuracy by round, one line per algorithm (averaged over seeds)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for alg, runs in curves.items():
        rounds = [r for r, _ in runs[0]]
        means = [sum(run[i][1] for run in runs) / len(runs) for i in range(len(rounds))]
        ax.plot(rounds, means, "o-", ms=3, label=alg)
    ax.set(xlabel="round", ylabel="personalized test accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_study(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Accuracy, robust accuracy and fairness gaps against achieved density (dense at the right)."""
    plt = _pyplot()
    dens = [r["density"] for r in rows]
    metric_keys = [k for k in rows[0] if k not in ("target_density", "density", "accuracy_std")]
    acc_keys = [k for k in metric_keys if k in ("accuracy", "worst10") or k.endswith("accuracy")]
    fair_keys = [k for k in metric_keys if k.endswith("_difference")]
    panels = [p for p in ((acc_keys, "accuracy"), (fair_keys, "fairness gap (lower is fairer)")) if p[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (keys, label) in zip(axes[0], panels, strict=True):
        for k in keys:
            pts = [(d, r.get(k)) for d, r in zip(dens, rows, strict=True) if r.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", ms=4, label=k)
        ax.set_xscale("log")
        ax.set(xlabel="density", ylabel=label, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
