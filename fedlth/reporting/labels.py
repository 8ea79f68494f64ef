"""One name per number: what each density and each mean that fedlth prints is over."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

# The three densities a run reports, each under its own name wherever it is shown.
# train metric "density": the fraction of prunable weights the client's training mask keeps
TRAINING_MASK_DENSITY = "training-mask density"
# train metric "upload-density": the fraction of the trained update a client uploads
UPLOAD_KEPT_FRACTION = "kept fraction of the uploaded update"
# evaluate metric "density" (summary.json density.mean): the model each client is scored with
TICKET_DENSITY = "personal ticket density"


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def round_info(entry: Mapping[str, Any]) -> str:
    """A round's numbers for the progress line, each named with what its mean is over."""
    parts = []
    evaluated = entry.get("evaluate") or {}
    accs = [m["accuracy"] for m in evaluated.values() if m.get("num-examples", 1) > 0]
    if accs:
        parts.append(f"personalized accuracy {_mean(accs):.4f} (mean over {len(accs)} scored clients)")
    train = list((entry.get("train") or {}).values())
    if train:
        dens = [m.get("density", 1.0) for m in train]
        up = [m["upload-density"] for m in train if "upload-density" in m]
        text = f"{TRAINING_MASK_DENSITY} {_mean(dens):.3f}"
        if up:
            text += f", {UPLOAD_KEPT_FRACTION} {_mean(up):.3f}"
        parts.append(f"{text} (mean over this round's {len(train)} clients)")
    return "; ".join(parts)


def trained_clients(rounds: Iterable[Mapping[str, Any]]) -> set[str]:
    """Partition ids (as strings) whose update the server accepted in some round."""
    return {str(pid) for r in rounds for pid in (r.get("train") or {})}


def trained_split(per_client: Mapping[str, float], trained: set[str]) -> dict[str, Any]:
    """The headline's population: scored clients that trained at least once and those that
    never did (their personal model is the server's, or their initial one), with the mean over
    the trained ones only (None where none trained)."""
    scored = {pid: acc for pid, acc in per_client.items() if acc is not None}
    done = [acc for pid, acc in scored.items() if pid in trained]
    return {
        "trained_clients": len(done),
        "never_trained_clients": len(scored) - len(done),
        "mean_trained": _mean(done) if done else None,
    }


def trained_note(metrics_jsonl: Path, per_client: Mapping[Any, Mapping[str, float]]) -> str:
    """`fedlth evaluate`: where some clients never trained in the run (its metrics.jsonl says who
    did), the mean over those that did and both counts; else nothing."""
    if not metrics_jsonl.is_file():
        return ""
    rounds = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    split = trained_split({str(pid): m["accuracy"] for pid, m in per_client.items() if m["num-examples"] > 0},
                          trained_clients(rounds))
    if not split["never_trained_clients"] or split["mean_trained"] is None:
        return ""
    return (f"; over the {split['trained_clients']} that took part in training: {split['mean_trained']:.4f}; "
            f"{split['never_trained_clients']} never sampled for training")


def accuracy_headline(summary: Mapping[str, Any]) -> str:
    """The run's result line: accuracy, what it is a mean over, the ticket density, the bytes."""
    acc = summary["personalized_accuracy"]
    n = acc.get("scored_clients", len(acc.get("per_client", {})))
    if acc["mean"] is None:
        return f"{summary['algorithm']}: no client could be scored (no test examples, or no valid evaluation reply)"
    total = summary.get("num_clients", 0)
    sampled = f" of a seeded sample of {acc['evaluated_clients']:,} out of {total:,}" if acc.get("evaluated_clients", total) < total else ""
    line = (
        f"{summary['algorithm']}: personalized accuracy {acc['mean']:.4f} ± {acc['std']:.4f} "
        f"(mean ± std over {n} scored clients{sampled}; worst-10% {acc['worst10']:.4f})"
    )
    never = acc.get("never_trained_clients") or 0
    if never and acc.get("mean_trained") is not None:
        line += (
            f"; over the {acc['trained_clients']} that took part in training: {acc['mean_trained']:.4f}; "
            f"{never} never sampled for training"
        )
    elif never:
        line += "; none of them was ever sampled for training"
    missing = acc.get("unscored_clients") or 0
    if missing:
        line += f"; {missing} client(s) unscored"
    dens = summary["density"]["mean"]
    if dens is not None:
        line += f"\n  {TICKET_DENSITY} {dens:.3f} (mean over clients)"
    else:
        line += "\n "
    ratio = summary.get("upload_ratio_vs_dense_fedavg")
    line += f", upload {summary['bytes']['upload'] / 1e6:.2f} MB"
    if ratio is not None:
        line += f" ({ratio:.2f}x dense FedAvg)"
    wall = summary["wall_seconds"]
    segments = summary.get("wall_seconds_segments") or []
    line += f", {wall:.1f} s" + (f" over {len(segments)} segments (resumed)" if len(segments) > 1 else "")
    return line
