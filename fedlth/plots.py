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
