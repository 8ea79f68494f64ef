"""Compare algorithms on the same partitions over seeds: one table and one overlay plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlth.io import write_json_atomic, write_text_atomic
from fedlth.provenance import provenance_markdown

Runner = Callable[[dict[str, Any], Path], None]


def _pm(xs: list[float], scale: float = 100.0) -> str:
    m = statistics.fmean(xs)
    s = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{scale * m:.1f} ± {scale * s:.1f}"


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """`NAME[:key=value:key=value]` → the algorithm and its own overrides (a variant such as
    the random-mask control `shared-ticket:server-pruner=random`)."""
    name, *overrides = spec.split(":")
    return name.strip(), [o.strip() for o in overrides if o.strip()]


def client_epochs(sc: dict[str, Any], rounds: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Local epochs an average client trained in the run: in federated rounds, and in the
    fine-tuning of its personal model at the last evaluation (every learning rate tried counts)."""
    train = sum(m.get("epochs", 0.0) for r in rounds for m in r["train"].values())
    evals = [r for r in rounds if r.get("evaluate")]
    tune = [m.get("finetune-epochs-run", 0.0) for m in evals[-1]["evaluate"].values()] if evals else []
    return train / sc["num-clients"], (sum(tune) / len(tune) if tune else 0.0)


def compare(
    sc: dict[str, Any], algorithms: Sequence[str], seeds: Sequence[int], out: Path, runner: Runner,
    on_run: Callable[[str, int], None] | None = None, prov: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run every (algorithm variant, seed) with `runner` into out/VARIANT/seed-S; write table and plot
    (with `prov`, the provenance record, in comparison.md and comparison.json)."""
    from fedlth.scenario import resolve

    results: dict[str, list[dict[str, Any]]] = {}
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for spec in algorithms:
        alg, overrides = parse_variant(spec)
        for seed in seeds:
            if on_run is not None:
                on_run(spec, seed)
            run_dir = out / spec.replace(":", "_").replace("=", "-") / f"seed-{seed}"
            run_sc = resolve(sc | {"algorithm": alg, "seed": seed}, overrides, source=spec)
            runner(run_sc, run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
            rounds = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            summary["client_epochs"] = client_epochs(run_sc, rounds)
            results.setdefault(spec, []).append(summary)
            curve = []
            for r in rounds:
                if r.get("evaluate"):
                    accs = [m["accuracy"] for m in r["evaluate"].values()]
                    curve.append((r["round"], sum(accs) / len(accs)))
            curves.setdefault(spec, []).append(curve)
    rows = []
    for alg, runs in results.items():
        acc = [r["personalized_accuracy"]["mean"] for r in runs]
        worst = [r["personalized_accuracy"]["worst10"] for r in runs]
        dens = [r["density"]["mean"] for r in runs]
        up = [r["bytes"]["upload"] / 1e6 for r in runs]
        down = [r["bytes"]["download"] / 1e6 for r in runs]
        ratio = [r["upload_ratio_vs_dense_fedavg"] or 0.0 for r in runs]
        wall = [r["wall_seconds"] for r in runs]
        glob = [r["global_accuracy"] for r in runs if r["global_accuracy"] is not None]
        epochs = [sum(r["client_epochs"]) for r in runs]
        rows.append({
            "algorithm": alg, "personalized": _pm(acc), "worst10": _pm(worst),
            "global": _pm(glob) if glob else "n/a", "density": f"{statistics.fmean(dens):.3f}",
            "upload_mb": f"{statistics.fmean(up):.2f}", "download_mb": f"{statistics.fmean(down):.2f}",
            "upload_vs_fedavg": f"{statistics.fmean(ratio):.2f}", "wall_s": f"{statistics.fmean(wall):.1f}",
            "epochs": f"{statistics.fmean(epochs):.1f}",
            "raw": {"personalized": acc, "worst10": worst, "density": dens, "upload_mb": up, "download_mb": down, "wall_s": wall,
                    "upload_ratio": ratio, "download_ratio": [r["bytes"]["download"] / r["bytes"]["dense_fedavg_download"] for r in runs],
                    "epochs": epochs, "tune_epochs": [r["client_epochs"][1] for r in runs]},
        })
    header = ["algorithm", "personalized acc. (%)", "worst-10 % (%)", "global acc. (%)", "final density", "upload MB", "download MB", "upload / dense FedAvg", "local epochs / client", "wall s"]
    keys = ["algorithm", "personalized", "worst10", "global", "density", "upload_mb", "download_mb", "upload_vs_fedavg", "epochs", "wall_s"]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r[k] for k in keys) + " |" for r in rows]
    table = "\n".join(md)
    tail = "\n" + "\n".join(provenance_markdown(prov)) if prov else ""
    write_text_atomic(out / "comparison.md", f"# Comparison over seeds {list(seeds)}\n\n{table}\n{tail}")
    write_json_atomic(out / "comparison.json", {"seeds": list(seeds), "rows": rows, "provenance": dict(prov) if prov else None})
    from fedlth.plots import plot_overlay

    plot_overlay(curves, out / "comparison.png", f"{sc['dataset']}, {sc['num-clients']} clients ({sc['partition']})")
    return {"table": table, "rows": rows}
