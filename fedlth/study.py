"""The ticket-versus-density study: the same federation trained to each target density, judged
by accuracy, the scenario's evaluators and group fairness."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlth.io import write_json_atomic, write_text_atomic
from fedlth.provenance import provenance_markdown
from fedlth.stats import SPREAD_NOTE, seed_stats
from fedlth.tables import Table, csv_note

Runner = Callable[[dict[str, Any], Path], None]


def parse_densities(text: str) -> list[float]:
    """'1.0,0.5,0.2' -> [1.0, 0.5, 0.2]; each in (0, 1]."""
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--densities {text!r}: expected comma-separated numbers in (0, 1]") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise ValueError(f"--densities {text!r}: every density must be in (0, 1]")
    return values


def study_row(target: float, summary: dict[str, Any]) -> dict[str, Any]:
    """One density's numbers, flat (`accuracy_std_over_clients`: the spread over clients of one run)."""
    acc = summary["personalized_accuracy"]
    row: dict[str, Any] = {
        "target_density": target, "density": summary["density"]["mean"], "accuracy": acc["mean"],
        "accuracy_std_over_clients": acc["std"], "worst10": acc["worst10"],
        "pooled_accuracy": summary.get("personalized_accuracy_pooled"),
    }
    ev = summary.get("evaluation") or {}
    row |= ev.get("evaluators_mean", {})
    pooled = ev.get("pooled_fairness") or {}
    if pooled:  # the share predicted positive: near 0 or 1 is a near-constant predictor, whatever its gaps
        row["positive_rate"] = next(iter(pooled.values())).get("overall", {}).get("selection_rate")
    for feat, m in pooled.items():
        for k in FAIRNESS_KEYS:
            row[f"{feat}.{k}"] = m[k]
    return row


FAIRNESS_KEYS = ("demographic_parity_difference", "equalized_odds_difference", "equal_opportunity_difference")


def aggregate_rows(per_seed: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Rows of one density over seeds -> one row of seed statistics per number (mean, sample std,
    95 % t interval); the target density stays a number."""
    keys = list(dict.fromkeys(k for r in per_seed for k in r))
    row: dict[str, Any] = {"target_density": per_seed[0]["target_density"], "seeds": len(per_seed)}
    for k in keys:
        if k != "target_density":
            row[k] = seed_stats([r.get(k) for r in per_seed])
    return row


def reference_rows(references: Sequence[Mapping[str, Any]], fairness_features: Sequence[str]) -> list[dict[str, Any]]:
    """The baselines a reader needs beside the tickets: a constant predictor (the pooled majority
    class: every parity gap is 0 by construction), each client's own majority class, and a
    pooled logistic regression; over seeds when there are several."""
    if not references:
        return []

    def value(key: str) -> Any:
        vals = [r.get(key) for r in references]
        return vals[0] if len(references) == 1 else seed_stats(vals)

    zero = 0.0 if len(references) == 1 else seed_stats([0.0] * len(references))
    gaps = {f"{feat}.{k}": zero for feat in fairness_features for k in FAIRNESS_KEYS}
    return [
        {"predictor": "majority class (constant)", "pooled_accuracy": value("majority_rate")} | gaps,
        {"predictor": "each client's majority class", "accuracy": value("local_majority")},
        {"predictor": "logistic regression (pooled)", "pooled_accuracy": value("logistic_regression")},
    ]


def study(
    sc: dict[str, Any], densities: Sequence[float], out: Path, runner: Runner, on_run: Callable[..., None] | None = None,
    prov: Mapping[str, Any] | None = None, seeds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Run the scenario once per target density (1.0 = dense: nobody prunes) into out/density-D,
    or, given several `seeds`, once per density and seed into out/density-D/seed-S (the
    scenario's seed replaced); write study.md, study.csv, study.json and study.png (with `prov`,
    the provenance record)."""
    multi = seeds is not None and len(seeds) > 1
    rows, per_seed_rows, references = [], {}, {}
    for d in densities:
        runs = []
        for seed in (seeds if multi else [sc.get("seed")]):
            if on_run is not None:
                on_run(d, seed)
            run_dir = out / f"density-{d:g}" / f"seed-{seed}" if multi else out / f"density-{d:g}"
            runner(sc | {"target-density": d} | ({"seed": seed} if multi else {}), run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
            runs.append(study_row(d, summary))
            if summary.get("reference"):
                references.setdefault(seed, summary["reference"])
        per_seed_rows[f"{d:g}"] = runs
        rows.append(aggregate_rows(runs) if multi else runs[0])
    features = list(dict.fromkeys(k.rsplit(".", 1)[0] for r in rows for k in r if k.endswith(FAIRNESS_KEYS)))
    refs = reference_rows(list(references.values()), features)
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "seeds"]
    table_rows = [{"predictor": "tickets"} | r for r in rows] + refs
    table = Table(["predictor", *keys], table_rows)
    table.write_csv(out / "study.csv")
    which = "" if sc.get("seed") is None else f" ({sc.get('seed')})"
    spread = (f"Each cell over seeds {list(seeds)}: {SPREAD_NOTE}; accuracy intervals clipped to [0, 100] %. "
              if multi else f"One seed{which}: no spread over seeds (`--seeds N` gives mean ± std and a 95 % interval). ")
    md = [f"# Ticket-versus-density study: {sc['algorithm']} on {sc['dataset']}", "", table.markdown(), "",
          spread + "Personalized accuracy: each client's ticket on its own test split, mean over clients; "
          "std over clients: the spread of those client scores within a run (population std, in points). "
          "Pooled accuracy: every client's test samples together; fairness gaps are pooled the same way "
          "(exact, from confusion counts).",
          csv_note("study.csv"), "", "![study](study.png)", ""]
    if refs:
        md += ["Baselines on the same data and partitions: a constant predictor has every parity gap 0 by "
               "construction, so a ticket with near-0 gaps and accuracy near the majority class is no fairer than it. "
               "Each client's majority class is the personalized accuracy one gets for free under label skew.", ""]
    md += provenance_markdown(prov) if prov else []
    write_text_atomic(out / "study.md", "\n".join(md) + "\n")
    write_json_atomic(out / "study.json", {
        "scenario": sc["name"], "seeds": list(seeds) if multi else [sc.get("seed")], "spread": SPREAD_NOTE if multi else None,
        "rows": rows, "per_seed": per_seed_rows if multi else None, "baselines": refs, "provenance": dict(prov) if prov else None,
    })
    from fedlth.plots import plot_study

    baselines = {"majority class (constant)": refs[0]["pooled_accuracy"]} if refs else {}
    plot_study(rows, out / "study.png", f"{sc['algorithm']} on {sc['dataset']}", baselines)
    return rows
