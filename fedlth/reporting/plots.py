"""PNG figures of runs, comparisons and studies (matplotlib, headless), built from plain data
functions (bands, limits, ticks) that tests check without reading pixels."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlth.reporting.labels import TRAINING_MASK_DENSITY
from fedlth.reporting.stats import seed_stats
from fedlth.reporting.tables import human_name

DPI = 120
SEED_BAND = "band: ± sample std over seeds (ddof 1)"


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def clamped_band(
    means: Sequence[float], spreads: Sequence[float | None], lo: float = 0.0, hi: float = 1.0
) -> tuple[list[float], list[float]]:
    """mean ± spread, clipped to what the quantity can take (an accuracy band never leaves [0, 1]);
    a missing spread (one seed) is a band of width 0."""
    lower = [min(hi, max(lo, m - (s or 0.0))) for m, s in zip(means, spreads, strict=True)]
    upper = [min(hi, max(lo, m + (s or 0.0))) for m, s in zip(means, spreads, strict=True)]
    return lower, upper


def integer_ticks(xs: Sequence[float], max_ticks: int = 8) -> list[int]:
    """Whole-number ticks (rounds, levels) covering xs: step 1, 2, 5, 10, 20, 50, … so that at
    most `max_ticks` show; never a tick like 2.5."""
    if not xs:
        return []
    first, last = math.floor(min(xs)), math.ceil(max(xs))
    step = 1
    while (last - first) // step + 1 > max_ticks:
        step = next(s * 10**e for e in range(10) for s in (1, 2, 5) if s * 10**e > step)
    start = first - first % step
    return [t for t in range(start, last + 1, step) if t >= first]


def accuracy_limits(values: Sequence[float], min_span: float = 0.2) -> tuple[float, float]:
    """y-limits for accuracies: within [0, 1] and at least `min_span` wide, so a 0.2-point wobble
    does not fill the axis and read as a trend."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    pad = max(0.02, (min_span - (hi - lo)) / 2)
    lo, hi = lo - pad, hi + pad
    if lo < 0.0:
        lo, hi = 0.0, min(1.0, hi - lo)
    if hi > 1.0:
        lo, hi = max(0.0, lo - (hi - 1.0)), 1.0
    return lo, hi


def eval_series(rounds: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[float], list[float]]:
    """Rounds with an evaluation: mean and population std of the clients' accuracies there."""
    xs, means, stds = [], [], []
    for r in rounds:
        accs = [m["accuracy"] for m in (r.get("evaluate") or {}).values() if not math.isnan(m["accuracy"])]
        if accs:
            mean = sum(accs) / len(accs)
            xs.append(r["round"])
            means.append(mean)
            stds.append((sum((a - mean) ** 2 for a in accs) / len(accs)) ** 0.5)
    return xs, means, stds


def density_series(rounds: Sequence[Mapping[str, Any]]) -> tuple[list[int], list[float]]:
    """After each round: the mean over every client that has trained so far of the density it
    last reported (a client not sampled this round keeps its last value)."""
    latest: dict[str, float] = {}
    xs, ys = [], []
    for r in rounds:
        for pid, m in (r.get("train") or {}).items():
            latest[str(pid)] = m.get("density", 1.0)
        if latest:
            xs.append(r["round"])
            ys.append(sum(latest.values()) / len(latest))
    return xs, ys


def upload_series(rounds: Sequence[Mapping[str, Any]]) -> tuple[dict[int, float], float]:
    """Cumulative upload (MB) after each round, and what dense FedAvg would have uploaded for the
    same clients over the whole run (MB)."""
    cum, dense, up = 0, 0, {}
    for r in rounds:
        cum += r["bytes"]["upload"]
        dense += r["bytes"].get("dense_fedavg_upload", 0)
        up[r["round"]] = cum / 1e6
    return up, dense / 1e6


def _save(fig: Any, path: Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def percent_label(x: float, _pos: Any = None) -> str:
    """A fraction as a plain percent tick: 0.85 -> '85%', 0.975 -> '97.5%' (no float noise)."""
    return f"{100 * x:.6g}%"


def _percent_axis(ax: Any) -> None:
    """Accuracy fractions labelled in % on the y axis (the data stay fractions)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10]))  # 1, 2, 5 or 10 points apart
    ax.yaxis.set_major_formatter(FuncFormatter(percent_label))


def _legend_name(key: str) -> str:
    """A column's human name without its unit: the axis carries it."""
    return human_name(key).replace(" (%)", "")


def _round_axis(ax: Any, xs: Sequence[float]) -> None:
    ticks = integer_ticks(xs)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()


def plot_federated(rounds: Sequence[Mapping[str, Any]], title: str, out_dir: Path) -> dict[str, str]:
    """accuracy_by_round.png, density_by_round.png and accuracy_vs_upload.png; a figure without
    data to draw is skipped. Returns {file: 'written' or why it was skipped}."""
    plt = _pyplot()
    done: dict[str, str] = {}
    xs, means, stds = eval_series(rounds)
    if len(xs) < 2:
        why = (f"skipped: {len(xs)} evaluation round(s); a curve needs 2 (set eval-every to evaluate during the run)")
        done["accuracy_by_round.png"] = done["accuracy_vs_upload.png"] = why
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        lower, upper = clamped_band(means, stds)
        ax.plot(xs, means, "o-", ms=3, label="mean over clients")
        ax.fill_between(xs, lower, upper, alpha=0.2, label="± std over clients (clipped to [0, 1])")
        ax.set(xlabel="round", ylabel="personalized test accuracy", title=title, ylim=accuracy_limits(lower + upper))
        _round_axis(ax, xs)
        _percent_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, out_dir / "accuracy_by_round.png")
        done["accuracy_by_round.png"] = "written"

        up, dense_total = upload_series(rounds)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([up[x] for x in xs], means, "o-", ms=3, label="this run")
        if dense_total > 0:
            ax.axvline(dense_total, color="grey", ls="--", lw=1, label=f"dense FedAvg's total upload, same clients ({dense_total:.2f} MB)")
        ax.set(xlabel="cumulative upload (MB)", ylabel="personalized test accuracy", title=title,
               ylim=accuracy_limits(means), xlim=(0, 1.05 * max(dense_total, max(up.values()), 1e-3)))  # 0 MB: a run with nothing accepted
        _percent_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, out_dir / "accuracy_vs_upload.png")
        done["accuracy_vs_upload.png"] = "written"

    dx, dy = density_series(rounds)
    if not dx:
        done["density_by_round.png"] = "skipped: no client trained"
    else:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(dx, dy, "o-" if len(dx) < 3 else "-", ms=3)
        ax.set(xlabel="round", ylabel=f"{TRAINING_MASK_DENSITY} (fraction kept)", ylim=(0, 1.05))
        ax.set_title(f"{title}\n{TRAINING_MASK_DENSITY}: mean over the clients trained so far of the last each reported", fontsize=9)
        _round_axis(ax, dx)
        ax.grid(alpha=0.3)
        _save(fig, out_dir / "density_by_round.png")
        done["density_by_round.png"] = "written"
    return done


def seed_curve(runs: Sequence[Sequence[tuple[int, float]]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Rounds every seed evaluated, the mean accuracy over seeds there and the clamped ± sample
    std band (ddof 1; width 0 with one seed)."""
    common = sorted(set.intersection(*(set(r for r, _ in run) for run in runs))) if runs else []
    by_seed = [dict(run) for run in runs]
    stats = [seed_stats([run[x] for run in by_seed]) for x in common]
    means = [s["mean"] for s in stats]
    lower, upper = clamped_band(means, [s["std"] for s in stats])
    return common, means, lower, upper


def plot_comparison(
    curves: Mapping[str, Sequence[Sequence[tuple[int, float]]]], finals: Mapping[str, Mapping[str, Any]],
    path: Path, title: str, dense_upload_mb: float | None = None,
) -> str:
    """Two panels side by side: every algorithm's personalized accuracy by round with a band over
    seeds, and its final accuracy against upload (error bars: sample std over seeds) beside dense
    FedAvg's upload. `finals[alg]` holds seed_stats of 'accuracy' and 'upload_mb'."""
    plt = _pyplot()
    if not any(seed_curve(runs)[0] for runs in curves.values()):
        return "skipped: no evaluation round common to the seeds"
    n_seeds = max(len(runs) for runs in curves.values())
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    all_y: list[float] = []
    all_x: list[float] = []
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (alg, runs) in enumerate(curves.items()):
        xs, means, lower, upper = seed_curve(runs)
        if not xs:
            continue
        c = colours[i % len(colours)]
        ax.plot(xs, means, "o-", ms=3, color=c, label=alg)
        ax.fill_between(xs, lower, upper, color=c, alpha=0.18, lw=0)
        all_y += lower + upper
        all_x += xs
        f = finals.get(alg)
        if f and f["accuracy"]["mean"] is not None:
            bx.errorbar(f["upload_mb"]["mean"], f["accuracy"]["mean"], yerr=f["accuracy"]["std"] or 0.0,
                        xerr=f["upload_mb"]["std"] or 0.0, fmt="o", color=c, capsize=3, label=alg)
    band = SEED_BAND if n_seeds > 1 else "one seed: no band"
    ax.set(xlabel="round", ylabel="personalized test accuracy", ylim=accuracy_limits(all_y))
    ax.set_title(f"{title}\n{n_seeds} seed(s); {band}", fontsize=9)
    _round_axis(ax, all_x)
    _percent_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    finals_y = [f["accuracy"]["mean"] + sign * (f["accuracy"]["std"] or 0.0) for f in finals.values()
                if f["accuracy"]["mean"] is not None for sign in (-1, 1)]  # the error bars fit
    ups = [f["upload_mb"]["mean"] for f in finals.values() if f["upload_mb"]["mean"] is not None]
    if dense_upload_mb:
        bx.axvline(dense_upload_mb, color="grey", ls="--", lw=1, label="dense FedAvg upload")
    bx.set(xlabel="total upload per run (MB)", ylabel="final personalized accuracy", ylim=accuracy_limits(finals_y),
           xlim=(0, 1.1 * max([*ups, dense_upload_mb or 0.0, 1e-9])))
    bx.set_title("after the last round (error bars: ± sample std over seeds)", fontsize=9)
    _percent_axis(bx)
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    _save(fig, path)
    return "written"


def plain_log_ticks(values: Sequence[float]) -> tuple[list[float], list[str]]:
    """Tick positions and plain labels (two significant digits) for a log axis of densities:
    '0.3', never '3×10⁻¹'."""
    ticks = sorted({round(v, 4) for v in values if v and v > 0})
    return ticks, [f"{t:.2g}" for t in ticks]  # an achieved 0.3666 reads 0.37


def _stat_mean(v: Any) -> float | None:
    return v.get("mean") if isinstance(v, Mapping) else v


def _stat_std(v: Any) -> float | None:
    return v.get("std") if isinstance(v, Mapping) else None


def _baselines(ax: Any, baselines: Mapping[str, Any] | None) -> list[float]:
    """Grey horizontal lines, one per named baseline; their values (for the y range)."""
    ys = []
    for i, (name, value) in enumerate((baselines or {}).items()):
        if _stat_mean(value) is not None:
            ax.axhline(_stat_mean(value), color="grey", ls=("--", ":", "-.")[i % 3], lw=1, label=name)
            ys.append(_stat_mean(value))
    return ys


def _density_axis(ax: Any, ticks: list[float], labels: list[str]) -> None:
    """Density on a log x axis with plain tick labels."""
    ax.set_xscale("log")
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    ax.set(xlabel="density (fraction of weights kept)")


def plot_study(
    rows: Sequence[Mapping[str, Any]], path: Path, title: str, baselines: Mapping[str, Any] | None = None
) -> str:
    """Accuracy-like and fairness-gap metrics against achieved density (dense at the right),
    human legend names; with several seeds, ± sample std bands over seeds; `baselines` (name:
    accuracy, or its seed statistics) drawn as dashed lines on the accuracy panel."""
    plt = _pyplot()
    if not rows:
        return "skipped: no rows"
    dens = [_stat_mean(r["density"]) for r in rows]
    skip = ("target_density", "density", "accuracy_std_over_clients", "seeds")
    metric_keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in skip]
    acc_keys = [k for k in metric_keys if k in ("accuracy", "worst10") or k.endswith("accuracy")]
    fair_keys = [k for k in metric_keys if k.endswith("_difference")]
    panels = [p for p in ((acc_keys, "accuracy", (0.0, 1.0)), (fair_keys, "fairness gap (lower is fairer)", None)) if p[0]]
    if not panels:
        return "skipped: no metric to draw"
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    ticks, labels = plain_log_ticks(dens)
    banded = any(_stat_std(r.get(k)) is not None for r in rows for k in metric_keys)
    for ax, (keys, label, bounds) in zip(axes[0], panels, strict=True):
        ys: list[float] = []
        for k in keys:
            pts = [(d, _stat_mean(r.get(k)), _stat_std(r.get(k))) for d, r in zip(dens, rows, strict=True)
                   if _stat_mean(r.get(k)) is not None]
            if not pts:
                continue
            xs, means, stds = (list(t) for t in zip(*pts, strict=True))
            (line,) = ax.plot(xs, means, "o-", ms=4, label=_legend_name(k))
            lo, hi = clamped_band(means, stds, *(bounds or (-math.inf, math.inf)))
            if banded:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
            ys += lo + hi
        ys += _baselines(ax, baselines if bounds else None)
        _density_axis(ax, ticks, labels)
        ax.set(ylabel=label)
        if bounds and ys:
            ax.set_ylim(accuracy_limits(ys))
            _percent_axis(ax)
        elif ys:
            ax.set_ylim(0, max(0.05, 1.1 * max(ys)))
        ax.set_title(title + (f"\n{SEED_BAND}" if banded else ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)
    return "written"


def ticket_series(summaries: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """Over seeds, per IMP level (level 0 = dense): mean density, mean accuracy of `key` and its
    clamped ± sample std band; levels where a seed lacks the value are left out."""
    n_levels = min(len(s["levels"]) for s in summaries)
    xs, means, stds = [], [], []
    for i in range(-1, n_levels):
        if i < 0:
            vals, ds = ([s["dense_accuracy"] for s in summaries] if key == "ticket_accuracy" else []), [1.0]
        else:
            vals, ds = [s["levels"][i].get(key) for s in summaries], [s["levels"][i]["density"] for s in summaries]
        if not vals or any(v is None for v in vals):
            continue
        st = seed_stats(vals)
        xs.append(sum(ds) / len(ds))
        means.append(st["mean"])
        stds.append(st["std"])
    lower, upper = clamped_band(means, stds)
    return xs, means, lower, upper


def plot_ticket_levels(summary: Mapping[str, Any] | Sequence[Mapping[str, Any]], path: Path) -> None:
    """Test accuracy against density: the ticket, both controls and the dense net; given several
    seeds' summaries, the means with ± sample std bands over seeds."""
    plt = _pyplot()
    summaries = [summary] if isinstance(summary, Mapping) else list(summary)
    first = summaries[0]
    fig, ax = plt.subplots(figsize=(6, 4))
    ys: list[float] = []
    for key, label, style in (("ticket_accuracy", "ticket (IMP)", "o-"), ("reinit_accuracy", "re-init control", "s--"),
                              ("random_mask_accuracy", "random-mask control", "^:")):
        xs, means, lower, upper = ticket_series(summaries, key)
        if not xs:
            continue
        (line,) = ax.plot(xs, means, style, ms=4, label=label)
        if len(summaries) > 1:
            ax.fill_between(xs, lower, upper, color=line.get_color(), alpha=0.15, lw=0)
        ys += lower + upper
    dense = seed_stats([s["dense_accuracy"] for s in summaries])["mean"]
    ax.axhline(dense, color="grey", lw=0.8, label="dense")
    ax.set_xscale("log")
    ticks, labels = plain_log_ticks([1.0] + [lv["density"] for lv in first["levels"]])
    ax.set_xticks(ticks, labels)
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("density (fraction of prunable weights kept)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(accuracy_limits(ys + [dense]))
    _percent_axis(ax)
    seeds = ", ".join(str(s["seed"]) for s in summaries)
    band = f"; {SEED_BAND}" if len(summaries) > 1 else ""
    ax.set_title(f"{first['model']} on {first['dataset']}, seed{'s' if len(summaries) > 1 else ''} {seeds}{band}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_study_arms(
    rows: Sequence[Mapping[str, Any]], path: Path, title: str, baselines: Mapping[str, Any] | None = None
) -> str:
    """One panel per metric (personalized accuracy, worst-10 % clients, std over clients, pooled
    accuracy, each robust accuracy, each fairness gap) against density, one line per study arm
    (ticket and its controls); ± sample std bands over seeds; `baselines` dashed on pooled accuracy."""
    plt = _pyplot()
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    wanted = [k for k in ("accuracy", "worst10", "accuracy_std_over_clients", "pooled_accuracy") if k in keys]
    wanted += [k for k in keys if k.endswith(".robust_accuracy")] + [k for k in keys if k.endswith("_difference")]
    wanted = [k for k in wanted if any(_stat_mean(r.get(k)) is not None for r in rows)]
    if not wanted:
        return "skipped: no metric to draw"
    cols = min(3, len(wanted))
    nrows = math.ceil(len(wanted) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    ticks, labels = plain_log_ticks([_stat_mean(r["density"]) for r in rows])
    banded = any(_stat_std(r.get(k)) is not None for r in rows for k in wanted)
    for ax, k in zip(axes.flat, wanted, strict=False):
        ys: list[float] = []
        is_acc = k.endswith(("accuracy", "worst10"))
        for arm in arms:
            pts = sorted((_stat_mean(r["density"]), _stat_mean(r.get(k)), _stat_std(r.get(k)))
                         for r in rows if r["arm"] == arm and _stat_mean(r.get(k)) is not None)
            if not pts:
                continue
            xs, means, stds = (list(t) for t in zip(*pts, strict=True))
            (line,) = ax.plot(xs, means, "o-", ms=4, label=arm)
            lo, hi = clamped_band(means, stds, 0.0, 1.0 if is_acc else math.inf)
            if banded:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
            ys += lo + hi
        if k == "pooled_accuracy":
            ys += _baselines(ax, baselines)
        _density_axis(ax, ticks, labels)
        ax.set(title=_legend_name(k) + (" (lower is fairer)" if not is_acc else ""))
        if ys and is_acc:
            ax.set_ylim(accuracy_limits(ys))
            _percent_axis(ax)
        elif ys:
            ax.set_ylim(0, max(0.02, 1.1 * max(ys)))
        if k == "accuracy_std_over_clients":
            _percent_axis(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(wanted):]:
        ax.set_visible(False)
    fig.suptitle(title + (f" — {SEED_BAND}" if banded else ""), fontsize=10)
    _save(fig, path)
    return "written"
