"""Run summaries from per-round logs: client statistics, bytes, summary.json and report.md."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedlth.config.component_options import RobustnessOptions
from fedlth.config.core_options import core
from fedlth.config.options import options
from fedlth.evaluation.evaluators import COUNTS_PREFIX
from fedlth.evaluation.fairness import (
    client_fairness,
    merge_counts,
    metrics_from_counts,
    unflatten_counts,
)
from fedlth.reporting.labels import TICKET_DENSITY
from fedlth.reporting.provenance import provenance_markdown
from fedlth.reporting.tables import Table

# What every client's evaluation reports; anything else comes from an evaluator.
BASE_EVAL_KEYS = {
    "num-examples", "accuracy", "loss", "val-accuracy", "density", "partition-id", "global-accuracy", "download_bytes", "weight",
}


def client_stats(values: Mapping[int, float]) -> dict[str, Any]:
    """Mean, population std, worst-10 % / best-10 % means and worst client of per-client values.

    Worst-10 % is the mean of the ceil(10 % of n) lowest clients (5 of 50), as in q-FFL/Ditto.
    """
    per_client = {str(pid): (None if math.isnan(values[pid]) else values[pid]) for pid in sorted(values)}
    # a client with no test samples has no score (NaN): left out of the statistics and counted
    xs = sorted(v for v in values.values() if not math.isnan(v))
    unscored = len(values) - len(xs)
    if not xs:
        return {"mean": None, "std": None, "worst10": None, "best10": None, "worst": None, "per_client": per_client,
                "unscored_clients": unscored}
    n = len(xs)
    mean = sum(xs) / n
    k = max(1, math.ceil(0.1 * n))
    return {
        "mean": mean,
        "std": math.sqrt(sum((x - mean) ** 2 for x in xs) / n),
        "worst10": sum(xs[:k]) / k,
        "best10": sum(xs[-k:]) / k,
        "worst": xs[0],
        "per_client": per_client,
        "unscored_clients": unscored,
    }


def evaluation_summary(evaluate: Mapping[Any, Mapping[str, float]]) -> dict[str, Any]:
    """One evaluation round over clients: fairness across clients, evaluator means, and the
    federation's group fairness pooled exactly from the clients' confusion counts.
    """
    accs = {int(pid): m["accuracy"] for pid, m in evaluate.items() if not math.isnan(m["accuracy"])}  # no test data: no score
    out: dict[str, Any] = {"across_clients": client_fairness(accs)}
    keys = sorted({k for m in evaluate.values() for k in m if k not in BASE_EVAL_KEYS and not k.startswith(COUNTS_PREFIX + ".")})
    if keys:
        out["evaluators_mean"] = {
            k: sum(m[k] for m in evaluate.values() if k in m) / sum(1 for m in evaluate.values() if k in m) for k in keys
        }
    features = sorted({k.split(".")[2] for m in evaluate.values() for k in m if k.startswith(COUNTS_PREFIX + ".fair.")})
    if features:
        pooled: dict[str, Any] = {}
        per_client: dict[str, Any] = {}
        for feat in features:
            prefix = f"{COUNTS_PREFIX}.fair.{feat}"
            parts = {str(pid): unflatten_counts(m, prefix) for pid, m in evaluate.items()}
            pooled[feat] = metrics_from_counts(merge_counts(parts.values()))
            for pid, counts in parts.items():
                if counts:  # a client says so when it holds a single group (single_group: true)
                    per_client.setdefault(pid, {})[feat] = metrics_from_counts(counts)
        out["pooled_fairness"] = pooled
        out["per_client_fairness"] = per_client
    return out


def round_bytes(
    train: Mapping[int, Mapping[str, Any]], dense_bytes: int, rejected: Sequence[Mapping[str, Any]] = (), params: int = 0,
) -> dict[str, int]:
    """Bytes of one training round, and what dense FedAvg would have moved for the same clients.

    Uploads count accepted replies only; the payloads of `rejected` replies are counted apart
    (`rejected`). What the server sent a client whose reply it rejected still counts as download.
    With `params` (the model's parameter count), also the values (kept weights) and parameters
    those bytes carried each way, for bits per kept weight and per parameter (bits_per_weight).
    """
    sent = [r for r in rejected if "download_bytes" in r]
    n = len(train)
    counts = {}
    if params:
        counts = {
            "upload_values": int(sum(m.get("upload_values", 0) for m in train.values())),
            "download_values": int(sum(m.get("download_values", 0) for m in train.values()) + sum(r.get("download_values", 0) for r in sent)),
            "upload_params": n * params, "download_params": (n + len(sent)) * params,
        }
    return counts | {
        "upload": int(sum(m.get("upload_bytes", 0) for m in train.values())),
        "download": int(sum(m.get("download_bytes", 0) for m in train.values()) + sum(r["download_bytes"] for r in sent)),
        "rejected": int(sum(r.get("bytes", 0) for r in rejected)),
        "dense_fedavg_upload": n * dense_bytes,
        "dense_fedavg_download": (n + len(sent)) * dense_bytes,
    }


def bits_per_weight(b: Mapping[str, Any]) -> dict[str, float | None] | None:
    """Bits per kept weight (value carried) and per model parameter, up and down, from a round's
    or a run's byte counts (None where round_bytes had no parameter count: older logs)."""
    if not b.get("upload_params") and not b.get("download_params"):
        return None

    def ratio(num: str, den: str) -> float | None:
        return 8 * b[num] / b[den] if b.get(den) else None

    return {
        "upload_per_value": ratio("upload", "upload_values"), "upload_per_param": ratio("upload", "upload_params"),
        "download_per_value": ratio("download", "download_values"), "download_per_param": ratio("download", "download_params"),
    }


def pooled_accuracy(evaluation: Mapping[Any, Mapping[str, float]], key: str = "accuracy") -> float | None:
    """Clients' accuracies weighted by their test examples: one score over the union of test splits."""
    scored = [m for m in evaluation.values() if m["num-examples"] > 0]  # 0 * NaN would poison the sum
    weight = [m.get("weight", m["num-examples"]) for m in scored]  # bounded by example-cap (older logs: none)
    n = sum(weight)
    return sum(m[key] * w for m, w in zip(scored, weight, strict=True)) / n if n else None


def summarize(
    sc: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]], *, has_global: bool, wall_seconds: float,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """summary.json: the last evaluation's personalized accuracy, densities, total bytes, and the
    data's reference scores (majority class, logistic regression) when given."""
    c = core(sc)
    evals = [r for r in rounds if r.get("evaluate")]
    last = evals[-1]["evaluate"] if evals else {}
    acc = client_stats({int(pid): m["accuracy"] for pid, m in last.items()})
    # clients asked with no valid evaluation reply (silent, failed or rejected) are not in `last`;
    # eval-clients > 0 asks a seeded sample (logs older than eval_asked: every client was asked)
    asked = evals[-1].get("eval_asked", c.data.num_clients) if evals else 0
    acc["evaluated_clients"] = asked
    acc["missing_clients"] = max(0, asked - len(last)) if evals else 0
    acc["unscored_clients"] += acc["missing_clients"]
    acc["scored_clients"] = len(last) - (acc["unscored_clients"] - acc["missing_clients"])
    dens = {int(pid): m["density"] for pid, m in last.items()}
    glob = pooled_accuracy(last, "global-accuracy") if has_global and last else None
    totals = {k: 0 for k in ("upload", "download", "rejected", "dense_fedavg_upload", "dense_fedavg_download",
                             "upload_values", "download_values", "upload_params", "download_params")}
    for r in rounds:
        for k in totals:
            totals[k] += r["bytes"].get(k, 0)  # logs older than `rejected` lack it
    return {
        "algorithm": c.federation.algorithm, "dataset": c.data.dataset, "model": c.training.model, "seed": c.general.seed,
        "rounds": len(rounds), "num_clients": c.data.num_clients, "clients_per_round": c.federation.clients_per_round,
        "personalized_accuracy": acc,
        "personalized_accuracy_pooled": pooled_accuracy(last) if last else None,
        "global_accuracy": glob,
        "density": {"mean": sum(dens.values()) / len(dens) if dens else None, "per_client": {str(k): dens[k] for k in sorted(dens)}},
        "bytes": totals,
        "upload_ratio_vs_dense_fedavg": totals["upload"] / totals["dense_fedavg_upload"] if totals["dense_fedavg_upload"] else None,
        "download_ratio_vs_dense_fedavg": totals["download"] / totals["dense_fedavg_download"] if totals["dense_fedavg_download"] else None,
        "bits_per_weight": bits_per_weight(totals),
        "rejected_updates": sum(len(r.get("rejected", [])) for r in rounds),
        "rejected_by_kind": _by_kind(rounds),
        "evaluation": evaluation_summary(last) if last else None,
        "reference": dict(reference) if reference else None,
        "wall_seconds": wall_seconds,
    }


def _by_kind(rounds: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Rejected replies per message kind (query, train, evaluate) over the run."""
    out: dict[str, int] = {}
    for r in rounds:
        for rej in r.get("rejected", []):
            kind = rej.get("kind", "train")
            out[kind] = out.get(kind, 0) + 1
    return out


def _pct(x: float | None) -> str:
    """An accuracy as a percentage with one decimal ('n/a' when undefined)."""
    return "n/a" if x is None else f"{100 * x:.1f} %"


FIGURES = {"accuracy_by_round.png": "accuracy", "density_by_round.png": "density", "accuracy_vs_upload.png": "bytes"}


def _figure_lines(figures: Mapping[str, str] | None) -> list[str]:
    """The figures that were drawn, and why any was not (plots.plot_federated's answer)."""
    if figures is None:
        figures = dict.fromkeys(FIGURES, "written")
    shown = " ".join(f"![{alt}]({name})" for name, alt in FIGURES.items() if figures.get(name) == "written")
    notes = [f"`{name}` {why}." for name, why in figures.items() if why != "written"]
    return ([shown, ""] if shown else []) + ([" ".join(notes), ""] if notes else [])


def report_markdown(sc: Mapping[str, Any], summary: Mapping[str, Any], figures: Mapping[str, str] | None = None) -> str:
    """A short human report of one run (`figures`: which plots were drawn, default all)."""
    acc = summary["personalized_accuracy"]
    b = summary["bytes"]
    pct = _pct
    c = core(sc)

    lines = [
        f"# {c.general.name or 'run'}: {summary['algorithm']} on {summary['dataset']}",
        "",
        f"{summary['num_clients']} clients ({c.data.partition} partition), {summary['clients_per_round']} per round, "
        f"{summary['rounds']} rounds, {c.federation.local_epochs} local epochs, model {summary['model']}, seed {summary['seed']}.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| personalized accuracy (mean ± population std over {_over(acc, summary['num_clients'])}) | {pct(acc['mean'])} ± {pct(acc['std'])} |",
        *_trained_row(acc),
        f"| worst-10 % clients | {pct(acc['worst10'])} |",
        f"| worst client | {pct(acc['worst'])} |",
        f"| global model accuracy | {pct(summary['global_accuracy'])} |",
        f"| {TICKET_DENSITY} (mean over scored clients) | "
        + (f"{summary['density']['mean']:.3f} |" if summary["density"]["mean"] is not None else "n/a |"),
        f"| upload / download | {b['upload'] / 1e6:.3f} MB / {b['download'] / 1e6:.3f} MB |",
        f"| dense FedAvg upload / download (same clients) | {b['dense_fedavg_upload'] / 1e6:.3f} MB / {b['dense_fedavg_download'] / 1e6:.3f} MB |",
        f"| rejected replies | {summary['rejected_updates']}{_kinds(summary.get('rejected_by_kind') or {})} |",
        f"| rejected payloads (not in upload) | {b.get('rejected', 0) / 1e6:.3f} MB |",
        f"| wall time | {summary['wall_seconds']:.1f} s |",
        "",
        "Accuracies are each client's personal model on its own test split after the last round; "
        "pruning gates read validation splits only. Bytes are the serialized Flower ArrayRecords of "
        "training rounds (evaluation downloads are logged per round in metrics.jsonl).",
        "",
        *_figure_lines(figures),
    ]
    prov = summary.get("provenance")
    return "\n".join(lines + _reference_lines(summary) + _evaluation_lines(sc, summary.get("evaluation"), summary.get("reference")) + (provenance_markdown(prov) if prov else []))


def _reference_lines(summary: Mapping[str, Any]) -> list[str]:
    """The ticket beside a constant predictor and a logistic regression on the same data."""
    ref = summary.get("reference")
    if not ref:
        return []
    pct = _pct

    return [
        "## Reference on the same data",
        "",
        "| model | pooled test accuracy | personalized (mean over clients) |",
        "|---|---|---|",
        f"| this run's tickets | {pct(summary.get('personalized_accuracy_pooled'))} | {pct(summary['personalized_accuracy']['mean'])} |",
        f"| this run's global model | {pct(summary['global_accuracy'])} | |",
        f"| majority class (constant) | {pct(ref.get('majority_rate'))} | {pct(ref.get('local_majority'))} |",
        f"| logistic regression (sklearn, pooled train pool) | {pct(ref.get('logistic_regression'))} | |",
        "",
        "Pooled: every client's test samples together (tickets weighted by test examples). The "
        "personalized constant predicts each client's own majority class on its own test split: "
        "under label skew it scores well with nothing learnt.",
        "",
    ]


def _trained_row(acc: Mapping[str, Any]) -> list[str]:
    """The mean over the scored clients that ever trained, where some never did (else nothing)."""
    if not acc.get("never_trained_clients") or acc.get("mean_trained") is None:
        return []
    return [f"| personalized accuracy of the {acc['trained_clients']} scored clients that ever trained "
            f"({acc['never_trained_clients']} never did) | {_pct(acc['mean_trained'])} |"]


def _over(acc: Mapping[str, Any], num_clients: int) -> str:
    """'all 10 clients', '8 of 10 clients (1 sent no valid score, 1 had no test data)', or for a
    sampled evaluation '100 clients sampled of 100,000 (12 trained, 88 never trained)'."""
    scored = acc.get("scored_clients", num_clients)
    asked = acc.get("evaluated_clients", num_clients)
    if asked < num_clients:
        split = (f"; {acc['trained_clients']} trained, {acc['never_trained_clients']} never trained"
                 if "trained_clients" in acc else "")
        return f"{scored} scored of {asked:,} clients sampled (eval-clients) of {num_clients:,}{split}"
    if scored == num_clients:
        return f"all {num_clients} clients"
    why = []
    if acc.get("missing_clients"):
        why.append(f"{acc['missing_clients']} sent no valid score")
    if acc.get("unscored_clients", 0) - acc.get("missing_clients", 0):
        why.append(f"{acc['unscored_clients'] - acc.get('missing_clients', 0)} had no test data")
    return f"{scored} of {num_clients} clients ({', '.join(why)})" if why else f"{scored} of {num_clients} clients"


def _kinds(by_kind: Mapping[str, int]) -> str:
    """' (train 2, evaluate 1)' or ''."""
    return f" ({', '.join(f'{k} {v}' for k, v in sorted(by_kind.items()))})" if by_kind else ""


def _evaluation_lines(sc: Mapping[str, Any], ev: Mapping[str, Any] | None, ref: Mapping[str, Any] | None = None) -> list[str]:
    """Fairness across clients, evaluator means (human names) and pooled group fairness with
    the majority-class baseline beside it, as markdown."""
    if not ev:
        return []
    from fedlth.reporting.tables import csv_note, format_cell, human_name

    def f(x: Any) -> str:
        return "undefined" if x is None else f"{x:.4f}"

    def gap(x: Any) -> str:
        return "undefined" if x is None else f"{x:.3f}"

    ac = ev["across_clients"]
    lines = [
        "## Fairness across clients (final evaluation)",
        "",
        f"mean {_pct(ac['mean'])}, variance {f(ac['variance'])} (×10⁴ as q-FFL prints it: {f(ac['variance_x1e4'])}), "
        f"worst-10 % {_pct(ac['worst10'])}, best-10 % {_pct(ac['best10'])}, worst client {_pct(ac['worst'])}, "
        f"Jain's index {f(ac['jain_index'])}.",
        "",
    ]
    if ev.get("evaluators_mean"):
        lines += ["## Evaluators (mean over clients)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {human_name(k)} | {format_cell(k, v)} |" for k, v in ev["evaluators_mean"].items()]
        lines += ["", csv_note("evaluators.csv"), ""]
        if "autoattack" in options(sc, RobustnessOptions).attack.split(","):
            from fedlth.evaluation.robustness import NOTE_AUTOATTACK

            lines += [NOTE_AUTOATTACK, ""]
    for feat, m in (ev.get("pooled_fairness") or {}).items():
        overall = m.get("overall") or {}
        lines += [
            f"## Group fairness by `{feat}`, pooled over the federation (exact, from confusion counts)",
            "",
            "| predictor | accuracy | positive rate | demographic parity diff. | equalized odds diff. | equal opportunity diff. |",
            "|---|---|---|---|---|---|",
            f"| this run's tickets | {_pct(overall.get('accuracy'))} | {_pct(overall.get('selection_rate'))} | "
            f"{gap(m['demographic_parity_difference'])} | {gap(m['equalized_odds_difference'])} | {gap(m['equal_opportunity_difference'])} |",
        ]
        if ref and ref.get("majority_rate") is not None:
            # a constant predictor selects every group at the same rate: its gaps are 0 by construction
            lines.append(f"| majority class (constant, pooled) | {_pct(ref['majority_rate'])} | all one class | 0.000 | 0.000 | 0.000 |")
        lines += [
            "",
            "A gap near 0 with a positive rate near 0 % or 100 % is a near-constant predictor, not a fair one.",
            "",
            group_table(m).markdown(),
            "",
            csv_note(f"fairness-{feat}.csv"),
            "",
        ]
    return lines


def group_table(pooled: Mapping[str, Any]) -> Table:
    """One sensitive feature's groups: size, accuracy, positive rate, TPR and FPR (pooled)."""
    rows = [{"group": g} | dict(r) for g, r in pooled["by_group"].items()]
    headers = {"group": "group", "count": "n", "accuracy": "accuracy (%)", "selection_rate": "positive rate (%)",
               "tpr": "TPR (%)", "fpr": "FPR (%)"}
    return Table(["group", "count", "accuracy", "selection_rate", "tpr", "fpr"], rows, headers)


def report_csvs(summary: Mapping[str, Any]) -> dict[str, str]:
    """The CSV beside each table of report.md that is not already a file: evaluators.csv (raw
    key, mean over clients) and fairness-FEATURE.csv (the group table), at full precision."""
    ev = summary.get("evaluation") or {}
    out: dict[str, str] = {}
    if ev.get("evaluators_mean"):
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["metric", "mean_over_clients"])
        writer.writerows([k, repr(v)] for k, v in ev["evaluators_mean"].items())
        out["evaluators.csv"] = buf.getvalue()
    for feat, m in (ev.get("pooled_fairness") or {}).items():
        out[f"fairness-{feat}.csv"] = group_table(m).csv()
    return out
