"""Compare algorithms on the same partitions over seeds: one table and one overlay plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlth.config.core_options import core
from fedlth.reporting.io import write_json_atomic, write_text_atomic
from fedlth.reporting.provenance import provenance_markdown
from fedlth.reporting.stats import SPREAD_NOTE, seed_stats
from fedlth.reporting.tables import Table, csv_note

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
    return train / core(sc).data.num_clients, (sum(tune) / len(tune) if tune else 0.0)


def compare(
    sc: dict[str, Any], algorithms: Sequence[str], seeds: Sequence[int], out: Path, runner: Runner,
    on_run: Callable[[str, int], None] | None = None, prov: Mapping[str, Any] | None = None, stem: str = "comparison",
) -> dict[str, Any]:
    """Run every (algorithm variant, seed) with `runner` into out/VARIANT/seed-S (one variant with
    another `stem`, as `fedlth run --seeds`: out/seed-S); write STEM.md, .csv, .json and .png (with
    `prov`, the provenance record, in the markdown and JSON)."""
    from fedlth.config.scenario import resolve

    results: dict[str, list[dict[str, Any]]] = {}
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for spec in algorithms:
        alg, overrides = parse_variant(spec)
        for seed in seeds:
            if on_run is not None:
                on_run(spec, seed)
            variant_dir = out if stem != "comparison" and len(algorithms) == 1 else out / spec.replace(":", "_").replace("=", "-")
            run_dir = variant_dir / f"seed-{seed}"
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
    rows = comparison_rows(results)
    c = core(sc)
    setting = f"{c.data.dataset}, {c.data.num_clients} clients ({c.data.partition})"
    columns = ["algorithm", "personalized", "worst10", "global", "density", "upload_mb", "download_mb", "upload_ratio", "epochs", "wall_s"]
    stat_rows = [{"algorithm": r["algorithm"]} | r["stats"] for r in rows]
    table = Table(columns, stat_rows)
    table.write_csv(out / f"{stem}.csv")
    tail = "\n" + "\n".join(provenance_markdown(prov)) if prov else ""
    md = [
        f"# {'Comparison' if stem == 'comparison' else c.federation.algorithm} over seeds {list(seeds)}", "",
        f"{setting}, {c.federation.clients_per_round} per round, "
        f"{c.federation.rounds} rounds, {c.federation.local_epochs} local epochs.", "",
        table.markdown(), "",
        f"Each cell: {SPREAD_NOTE}" + (" (one seed: no spread)" if len(seeds) < 2 else "")
        + "; accuracy intervals clipped to [0, 100] %. Personalized accuracy: each client's personal model on its "
        "own test split, mean over clients, then over seeds; worst-10 %: mean of the lowest tenth of clients.",
        csv_note(f"{stem}.csv"), "",
        f"![{stem}]({stem}.png)", "",
    ]
    write_text_atomic(out / f"{stem}.md", "\n".join(md) + tail)
    write_json_atomic(out / f"{stem}.json", {"seeds": list(seeds), "spread": SPREAD_NOTE, "rows": rows,
                                                "provenance": dict(prov) if prov else None})
    from fedlth.reporting.plots import plot_comparison

    finals = {r["algorithm"]: {"accuracy": r["stats"]["personalized"], "upload_mb": r["stats"]["upload_mb"]} for r in rows}
    dense_up = [run["bytes"]["dense_fedavg_upload"] / 1e6 for runs in results.values() for run in runs]
    plot_comparison(curves, finals, out / f"{stem}.png", setting,
                    dense_upload_mb=max(dense_up) if dense_up else None)
    return {"table": table.markdown(), "rows": rows}


def comparison_rows(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per variant: per-seed values (`raw`), their seed statistics (`stats`) and the
    short 'mean ± std' strings older readers of comparison.json use."""
    rows = []
    for alg, runs in results.items():
        raw = {
            "personalized": [r["personalized_accuracy"]["mean"] for r in runs],
            "worst10": [r["personalized_accuracy"]["worst10"] for r in runs],
            "global": [r["global_accuracy"] for r in runs],
            "density": [r["density"]["mean"] for r in runs],
            "upload_mb": [r["bytes"]["upload"] / 1e6 for r in runs],
            "download_mb": [r["bytes"]["download"] / 1e6 for r in runs],
            "upload_ratio": [r["upload_ratio_vs_dense_fedavg"] or 0.0 for r in runs],
            "download_ratio": [r["bytes"]["download"] / r["bytes"]["dense_fedavg_download"] for r in runs],
            "wall_s": [r["wall_seconds"] for r in runs],
            "epochs": [sum(r["client_epochs"]) for r in runs],
            "tune_epochs": [r["client_epochs"][1] for r in runs],
        }
        stats = {k: seed_stats(v) for k, v in raw.items()}
        glob = [g for g in raw["global"] if g is not None]
        rows.append({
            "algorithm": alg, "personalized": _pm(raw["personalized"]), "worst10": _pm(raw["worst10"]),
            "global": _pm(glob) if glob else "n/a", "density": f"{statistics.fmean(raw['density']):.3f}",
            "upload_mb": f"{statistics.fmean(raw['upload_mb']):.2f}", "download_mb": f"{statistics.fmean(raw['download_mb']):.2f}",
            "upload_vs_fedavg": f"{statistics.fmean(raw['upload_ratio']):.2f}", "wall_s": f"{statistics.fmean(raw['wall_s']):.1f}",
            "epochs": f"{statistics.fmean(raw['epochs']):.1f}",
            "raw": {k: v for k, v in raw.items() if k != "global"}, "stats": stats,
        })
    return rows
