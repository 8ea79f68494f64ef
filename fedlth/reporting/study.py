"""The ticket-versus-density study: the same federation trained to each target density, judged
by accuracy, the scenario's evaluators and group fairness."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedlth.config.component_options import RobustnessOptions
from fedlth.config.core_options import core
from fedlth.config.options import options
from fedlth.reporting.io import write_json_atomic, write_text_atomic
from fedlth.reporting.provenance import provenance_markdown
from fedlth.reporting.stats import SPREAD_NOTE, seed_stats
from fedlth.reporting.tables import Table, csv_note

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
        # the per-group accuracy gap (max - min over groups, pooled): the disparity Hooker et al. and Tran et al.
        # measure; over groups with MIN_GROUP test samples or more (COMPAS has races with 2 and 3: 0 or 100 %)
        accs = [g["accuracy"] for g in m.get("by_group", {}).values()
                if g.get("accuracy") is not None and g.get("count", MIN_GROUP) >= MIN_GROUP]
        row[f"{feat}.{ACCURACY_GAP}"] = max(accs) - min(accs) if len(accs) >= 2 else None
    return row


FAIRNESS_KEYS = ("demographic_parity_difference", "equalized_odds_difference", "equal_opportunity_difference")
ACCURACY_GAP = "accuracy_difference"
MIN_GROUP = 30  # pooled test samples a group needs to enter the accuracy gap


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
    c = core(sc)
    what = f"{c.federation.algorithm} on {c.data.dataset}"
    rows, per_seed_rows, references = [], {}, {}
    for d in densities:
        runs = []
        for seed in (seeds if multi else [c.general.seed]):
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
    spread = (f"Each cell over seeds {list(seeds)}: {SPREAD_NOTE}; accuracy intervals clipped to [0, 100] %. "
              if multi else f"One seed ({c.general.seed}): no spread over seeds (`--seeds N` gives mean ± std and a 95 % interval). ")
    md = [f"# Ticket-versus-density study: {what}", "", table.markdown(), "",
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
        "scenario": c.general.name, "seeds": list(seeds) if multi else [c.general.seed], "spread": SPREAD_NOTE if multi else None,
        "rows": rows, "per_seed": per_seed_rows if multi else None, "baselines": refs, "provenance": dict(prov) if prov else None,
    })
    from fedlth.reporting.plots import plot_study

    baselines = {"majority class (constant)": refs[0]["pooled_accuracy"]} if refs else {}
    plot_study(rows, out / "study.png", what, baselines)
    return rows


# --- personal-ticket: one federation per seed, every density x arm from its final global model ---

ARMS = {"ticket": "none", "random-mask": "random-mask", "reinit": "reinit"}  # study arm -> ticket-control
Personalizer = Callable[[Path, dict[str, Any], Callable[[int, Any], None]], dict[int, dict[str, float]]]


def personal_summary(per_client: Mapping[int, Mapping[str, float]]) -> dict[str, Any]:
    """What study_row reads from a run's summary.json, from per-client evaluations made outside a run."""
    from fedlth.reporting.report import client_stats, evaluation_summary, pooled_accuracy

    dens = [m["density"] for m in per_client.values()]
    return {
        "personalized_accuracy": client_stats({int(p): m["accuracy"] for p, m in per_client.items()}),
        "personalized_accuracy_pooled": pooled_accuracy(per_client),
        "density": {"mean": sum(dens) / len(dens)},
        "evaluation": evaluation_summary(per_client),
    }


def layer_kept(weights: Mapping[str, Any]) -> dict[str, int]:
    """Non-zero entries of each prunable tensor (conv/linear weights: 2-D and up): a ticket's per-layer counts."""
    return {k: int((v != 0).sum()) for k, v in weights.items() if k.endswith("weight") and v.dim() > 1}


def _repersonalize(run_dir: Path, sc: dict[str, Any], on_model: Callable[[int, Any], None]) -> dict[int, dict[str, float]]:
    from fedlth.evaluation.reevaluate import repersonalize

    return repersonalize(run_dir, sc, on_model=on_model)


def study_arms(
    sc: dict[str, Any], densities: Sequence[float], out: Path, runner: Runner, arms: Sequence[str] = ("ticket",),
    seeds: Sequence[int] | None = None, on_run: Callable[..., None] | None = None,
    on_personalize: Callable[..., None] | None = None, prov: Mapping[str, Any] | None = None,
    personalizer: Personalizer = _repersonalize, reuse: bool = False,
) -> list[dict[str, Any]]:
    """personal-ticket's study: its federation trains a dense global model whatever the target
    density, and each client's ticket is cut from the final global model. So one federation
    per seed (out/seed-S, evaluators off, its own final evaluation at the first target density),
    then every client's ticket re-made from that run's final global model at each density and
    for each arm (ticket, random-mask, reinit: the controls with the ticket's per-layer counts),
    judged by the scenario's evaluators. Writes study.md/csv/json/png; study.json records each
    client's per-layer kept counts per arm and whether the ticket arm reproduced the run's own
    evaluation (same density, same accuracy per client). `reuse`: a seed whose run finished
    (summary.json) is not run again, and a density x arm already written to
    seed-S/personalized/ is read back (how seeds run in parallel processes are gathered)."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown or not arms:
        raise ValueError(f"arms {unknown or 'empty'}; allowed: {', '.join(ARMS)}")
    c = core(sc)
    what = f"{c.federation.algorithm} on {c.data.dataset}"
    seeds = list(seeds) if seeds else [c.general.seed]
    multi = len(seeds) > 1
    fed_sc = sc | {"target-density": densities[0], "evaluators": "", "eval-every": c.federation.rounds}
    per_seed_rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    kept: dict[str, Any] = {}
    reproduced: dict[str, bool] = {}
    references: dict[int, Any] = {}
    for seed in seeds:
        if on_run is not None:
            on_run(seed)
        run_dir = out / f"seed-{seed}"
        if not (reuse and (run_dir / "summary.json").is_file()):
            runner(fed_sc | {"seed": seed}, run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        if summary.get("reference"):
            references[seed] = summary["reference"]
        own = {int(p): a for p, a in summary["personalized_accuracy"]["per_client"].items()}
        for d in densities:
            for arm in arms:
                if on_personalize is not None:
                    on_personalize(seed, d, arm)
                path = run_dir / "personalized" / f"{arm}-density-{d:g}.json"
                if reuse and path.is_file():
                    done = json.loads(path.read_text())
                    per_client = {int(p): m for p, m in done["per_client"].items()}
                    counts = {int(p): c for p, c in done["layer_kept"].items()}
                else:
                    counts = {}
                    per_client = personalizer(run_dir, sc | {"seed": seed, "target-density": d, "ticket-control": ARMS[arm]},
                                              lambda pid, w, counts=counts: counts.__setitem__(pid, layer_kept(w)))
                    write_json_atomic(path, {"per_client": {str(p): m for p, m in sorted(per_client.items())},
                                             "layer_kept": {str(p): c for p, c in sorted(counts.items())}})
                kept.setdefault(str(seed), {}).setdefault(f"{d:g}", {})[arm] = {str(p): c for p, c in sorted(counts.items())}
                row = {"arm": arm} | study_row(d, personal_summary(per_client))
                per_seed_rows.setdefault(arm, {}).setdefault(f"{d:g}", []).append(row)
                if arm == "ticket" and d == densities[0]:
                    reproduced[str(seed)] = {p: m["accuracy"] for p, m in per_client.items()} == own
    def over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return aggregate_rows([{k: v for k, v in r.items() if k != "arm"} for r in runs]) if multi else runs[0]

    rows = [{"arm": arm} | over_seeds(per_seed_rows[arm][f"{d:g}"]) for arm in arms for d in densities]
    same_counts = all(len({json.dumps(by_arm[a], sort_keys=True) for a in by_arm}) == 1
                      for by_d in kept.values() for by_arm in by_d.values())
    features = list(dict.fromkeys(k.rsplit(".", 1)[0] for r in rows for k in r if k.endswith(FAIRNESS_KEYS)))
    refs = reference_rows(list(references.values()), features)
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("seeds", "arm")]
    table = Table(["predictor", "arm", *keys], [{"predictor": "tickets"} | r for r in rows] + refs)
    table.write_csv(out / "study.csv")
    spread = (f"Each cell over seeds {seeds}: {SPREAD_NOTE}; accuracy intervals clipped to [0, 100] %. "
              if multi else f"One seed ({seeds[0]}): no spread over seeds (`--seeds N` gives mean ± std and a 95 % interval). ")
    md = [f"# Ticket-versus-density study with controls: {what}", "", table.markdown(), "",
          spread + "One federation per seed; every client's ticket then re-made from that federation's final global "
          "model at each density: **ticket** (fine-tune, prune by magnitude, retrain in the mask), **random-mask** "
          "(the ticket's per-layer counts at random positions), **reinit** (the ticket's mask on a fresh random init), "
          "each retrained alike. Personalized accuracy: each client's model on its own test split, mean over "
          "clients; std over clients (population, points) and worst-10 % clients: fairness across clients. "
          "Pooled accuracy and group-fairness gaps: every client's test samples together (exact, from confusion counts); "
          f"accuracy gap between groups: max − min of the pooled accuracies of the groups with ≥ {MIN_GROUP} test samples "
          "(the parity gaps take every group, as fairlearn does).",
          f"Controls kept the ticket's exact per-layer counts for every client, density and seed: {'yes' if same_counts else 'NO'}. "
          f"The ticket arm reproduced each run's own evaluation (density {densities[0]:g}, per-client accuracy): "
          f"{'yes' if reproduced and all(reproduced.values()) else 'NO ' + str(reproduced)}.",
          csv_note("study.csv"), "", "![study](study.png)", ""]
    if "autoattack" in options(sc, RobustnessOptions).attack.split(",") and "robustness" in c.outputs.evaluators:
        from fedlth.evaluation.robustness import NOTE_AUTOATTACK

        md += [NOTE_AUTOATTACK, ""]
    if refs:
        md += ["Baselines on the same data and partitions: a constant predictor has every parity gap 0 by "
               "construction, so a ticket with near-0 gaps and accuracy near the majority class is no fairer than it.", ""]
    md += provenance_markdown(prov) if prov else []
    write_text_atomic(out / "study.md", "\n".join(md) + "\n")
    write_json_atomic(out / "study.json", {
        "scenario": c.general.name, "seeds": seeds, "arms": list(arms), "densities": list(densities),
        "spread": SPREAD_NOTE if multi else None, "rows": rows, "per_seed": per_seed_rows, "baselines": refs,
        "controls_keep_layer_counts": same_counts, "ticket_reproduces_run": reproduced, "layer_kept": kept,
        "provenance": dict(prov) if prov else None,
    })
    from fedlth.reporting.plots import plot_study_arms

    baselines = {"majority class (constant)": refs[0]["pooled_accuracy"]} if refs else {}
    plot_study_arms(rows, out / "study.png", what, baselines)
    return rows
