"""The ticket-versus-density study: the same federation trained to each target density, judged
by accuracy, the scenario's evaluators and group fairness."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlth.io import write_json_atomic, write_text_atomic
from fedlth.provenance import provenance_markdown

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
    """One density's numbers, flat."""
    acc = summary["personalized_accuracy"]
    row: dict[str, Any] = {
        "target_density": target, "density": summary["density"]["mean"], "accuracy": acc["mean"],
        "accuracy_std": acc["std"], "worst10": acc["worst10"],
    }
    ev = summary.get("evaluation") or {}
    row |= ev.get("evaluators_mean", {})
    for feat, m in (ev.get("pooled_fairness") or {}).items():
        for k in ("demographic_parity_difference", "equalized_odds_difference", "equal_opportunity_difference"):
            row[f"{feat}.{k}"] = m[k]
    return row


def study(
    sc: dict[str, Any], densities: Sequence[float], out: Path, runner: Runner, on_run: Callable[[float], None] | None = None,
    prov: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run the scenario once per target density (1.0 = dense: nobody prunes) into out/density-D
    (with `prov`, the provenance record, in study.md and study.json)."""
    rows, reference = [], None
    for d in densities:
        if on_run is not None:
            on_run(d)
        run_dir = out / f"density-{d:g}"
        runner(sc | {"target-density": d}, run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        rows.append(study_row(d, summary))
        reference = reference or summary.get("reference")
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        return "undefined" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    md = [f"# Ticket-versus-density study: {sc['algorithm']} on {sc['dataset']}", "",
          "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    md += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    if reference:
        md += ["", f"Reference on the same data: majority class {fmt(reference['majority_rate'])}, logistic "
               f"regression {fmt(reference['logistic_regression'])} (pooled test); each client's own majority "
               f"class {fmt(reference['local_majority'])} (personalized, comparable to `accuracy`)."]
    md += ["", *provenance_markdown(prov)] if prov else []
    write_text_atomic(out / "study.md", "\n".join(md) + "\n")
    write_json_atomic(out / "study.json", {"scenario": sc["name"], "rows": rows, "provenance": dict(prov) if prov else None})
    from fedlth.plots import plot_study

    plot_study(rows, out / "study.png", f"{sc['algorithm']} on {sc['dataset']}")
    return rows
