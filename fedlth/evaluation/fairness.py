"""Group fairness from per-group confusion counts (exact when pooled), and fairness across clients."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

GroupCounts = dict[str, dict[str, int]]
"""Group label (``str(label)``) -> {"tp", "fp", "tn", "fn"} for a binary task, positive = 1."""

COUNT_KEYS: tuple[str, ...] = ("tp", "fp", "tn", "fn")
RATE_KEYS: tuple[str, ...] = ("accuracy", "selection_rate", "tpr", "fpr")


def _as_1d(values: Any, name: str) -> np.ndarray:
    """A fresh 1-D numpy view of a numpy array, torch tensor or list (the input is never written)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return array


def _as_binary(values: Any, name: str) -> np.ndarray:
    """Labels as a bool array; anything other than 0/1 is refused rather than thresholded."""
    array = _as_1d(values, name)
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold binary labels 0/1 only, got {np.unique(array)[:10]}")
    return array.astype(bool)


def group_counts(y_true: Any, y_pred: Any, sensitive: Any) -> GroupCounts:
    """Per-group confusion counts of binary predictions; keys are str(group label), sorted."""
    truth = _as_binary(y_true, "y_true")
    pred = _as_binary(y_pred, "y_pred")
    groups = _as_1d(sensitive, "sensitive")
    if not (len(truth) == len(pred) == len(groups)):
        raise ValueError(
            f"lengths differ: y_true {len(truth)}, y_pred {len(pred)}, sensitive {len(groups)}"
        )
    # Keys are strings so that counts survive flat metric records and JSON; two labels with
    # the same str() (1 and "1") are the same group on purpose, since that is all the wire keeps.
    keys = np.array([str(g) for g in groups.tolist()], dtype=object)
    counts: GroupCounts = {}
    for key in sorted(set(keys.tolist())):
        inside = keys == key
        t, p = truth[inside], pred[inside]
        counts[key] = {
            "tp": int(np.sum(t & p)),
            "fp": int(np.sum(~t & p)),
            "tn": int(np.sum(~t & ~p)),
            "fn": int(np.sum(t & ~p)),
        }
    return counts


def _checked(cell: Mapping[str, int], group: str) -> dict[str, int]:
    """One group's counts as plain ints, refusing missing or negative entries."""
    missing = [k for k in COUNT_KEYS if k not in cell]
    if missing:
        raise ValueError(f"group {group!r} lacks counts {missing}")
    out = {k: int(cell[k]) for k in COUNT_KEYS}
    if any(v < 0 for v in out.values()):
        raise ValueError(f"group {group!r} has negative counts {out}")
    return out


def merge_counts(parts: Iterable[GroupCounts]) -> GroupCounts:
    """The sum of several clients' counts over the union of their groups (keys sorted)."""
    total: dict[str, dict[str, int]] = {}
    for part in parts:
        for group, cell in part.items():
            checked = _checked(cell, group)
            base = total.get(group, dict.fromkeys(COUNT_KEYS, 0))
            total[group] = {k: base[k] + checked[k] for k in COUNT_KEYS}
    return {g: total[g] for g in sorted(total)}


def _ratio(numerator: int, denominator: int) -> float | None:
    """numerator / denominator, or None where the denominator is 0 (undefined, not 0)."""
    return numerator / denominator if denominator else None


def _rates(cell: Mapping[str, int]) -> dict[str, Any]:
    """Accuracy, selection rate, TPR and FPR of one confusion cell, plus its sample count."""
    tp, fp, tn, fn = (cell[k] for k in COUNT_KEYS)
    n = tp + fp + tn + fn
    return {
        "accuracy": _ratio(tp + tn, n),
        "selection_rate": _ratio(tp + fp, n),
        "tpr": _ratio(tp, tp + fn),
        "fpr": _ratio(fp, fp + tn),
        "count": n,
    }


def _defined(by_group: Mapping[str, Mapping[str, Any]], rate: str) -> list[float]:
    return [r[rate] for r in by_group.values() if r[rate] is not None]


def _spread(values: list[float]) -> float | None:
    """max - min over the groups where the rate is defined; None with fewer than 2 of them."""
    return max(values) - min(values) if len(values) >= 2 else None


def _min_over_max(values: list[float]) -> float | None:
    """min / max over the defined groups; None with fewer than 2, or when every rate is 0."""
    # fairlearn returns NaN for 0/0 here; None says the same thing and survives JSON.
    if len(values) < 2 or max(values) == 0:
        return None
    return min(values) / max(values)


def _worst(a: float | None, b: float | None, pick: Any) -> float | None:
    return None if a is None or b is None else pick(a, b)


def metrics_from_counts(counts: GroupCounts) -> dict[str, Any]:
    """Group-fairness metrics derived from (possibly pooled) per-group confusion counts.

    Matches fairlearn 0.15 (``MetricFrame.by_group``, ``demographic_parity_*``,
    ``equalized_odds_*(agg="worst_case")``, ``equal_opportunity_difference``) except where a
    rate's denominator is 0: fairlearn reports 0 for the TPR of a group with no positive labels
    (and for the FPR of a group with no negatives); here that rate is None (undefined).

    Rule for undefined rates: a difference or ratio is taken over the groups where that rate
    is defined; with fewer than 2 such groups it is None. The equalized-odds figures combine the
    TPR and FPR figures (worst case: larger difference, smaller ratio) and are None if either
    is None. Groups with no samples are listed but take part in nothing.
    """
    checked = {g: _checked(cell, g) for g, cell in counts.items()}
    by_group = {g: _rates(cell) for g, cell in sorted(checked.items())}
    overall = _rates({k: sum(c[k] for c in checked.values()) for k in COUNT_KEYS})
    n_groups = sum(1 for r in by_group.values() if r["count"] > 0)

    selection = _defined(by_group, "selection_rate")
    tpr, fpr = _defined(by_group, "tpr"), _defined(by_group, "fpr")
    tpr_diff, fpr_diff = _spread(tpr), _spread(fpr)
    tpr_ratio, fpr_ratio = _min_over_max(tpr), _min_over_max(fpr)
    return {
        "by_group": by_group,
        "overall": overall,
        "demographic_parity_difference": _spread(selection),
        "demographic_parity_ratio": _min_over_max(selection),
        "equalized_odds_difference": _worst(tpr_diff, fpr_diff, max),
        "equalized_odds_ratio": _worst(tpr_ratio, fpr_ratio, min),
        "equal_opportunity_difference": tpr_diff,
        "equal_opportunity_ratio": tpr_ratio,
        "tpr_difference": tpr_diff,
        "fpr_difference": fpr_diff,
        "n_groups": n_groups,
        # A client that holds one group cannot measure a gap; it says so instead of reporting 0.
        "single_group": n_groups == 1,
        "groups_undefined": [
            (g, rate) for g, r in by_group.items() for rate in RATE_KEYS if r[rate] is None
        ],
    }


def _head(prefix: str) -> str:
    return f"{prefix}." if prefix else ""


def flatten_counts(counts: GroupCounts, prefix: str) -> dict[str, float]:
    """Counts as flat float entries "<prefix>.<group>.<tp|fp|tn|fn>" for a metrics record.

    The server must sum these entries over clients (merge_counts after unflatten_counts), never
    average them as it does accuracies.
    """
    head = _head(prefix)
    checked = {group: _checked(cell, group) for group, cell in counts.items()}
    return {
        f"{head}{group}.{k}": float(cell[k]) for group, cell in checked.items() for k in COUNT_KEYS
    }


def unflatten_counts(flat: Mapping[str, float], prefix: str) -> GroupCounts:
    """The counts under prefix in a flat record (other entries are ignored); keys sorted.

    The group is everything between "<prefix>." and the last ".", so group labels may contain
    dots; prefixes must not nest ("fair" next to "fair.sex" would mix the two).
    """
    head = _head(prefix)
    cells: dict[str, dict[str, int]] = {}
    for key, value in flat.items():
        if not key.startswith(head):
            continue
        group, _, kind = key[len(head) :].rpartition(".")
        if kind not in COUNT_KEYS or not group:
            continue
        if not float(value).is_integer():
            raise ValueError(f"{key} = {value} is not a whole count")
        cells[group] = {**cells.get(group, {}), kind: int(value)}
    return {g: _checked(cells[g], g) for g in sorted(cells)}


def client_fairness(values: Mapping[int, float]) -> dict[str, Any]:
    """Fairness across clients of a per-client score (accuracy as a fraction in [0, 1]).

    variance and std are population figures (ddof=0, numpy's default, as q-FFL uses);
    variance_x1e4 is q-FFL's printed convention, variance x 10^4 of fractional accuracies,
    i.e. the variance of accuracies in percent. worst10 / best10 are the means of the
    ceil(10 %) lowest / highest clients (at least one). jain_index = (sum x)^2 / (n sum x^2),
    1 when all clients are equal, 1/n when one client has everything; None when all are 0.
    """
    if not values:
        return {
            "n": 0, **dict.fromkeys(
                ("mean", "variance", "variance_x1e4", "std", "worst10", "best10",
                 "worst", "best", "worst_client", "best_client", "jain_index"),
            ),
        }  # fmt: skip
    clients = list(values)
    scores = np.array([float(values[c]) for c in clients], dtype=np.float64)
    n = len(scores)
    tail = max(1, math.ceil(0.1 * n))
    ordered = np.sort(scores)
    variance = float(np.var(scores))
    square_sum = float(np.sum(scores**2))
    return {
        "n": n,
        "mean": float(np.mean(scores)),
        "variance": variance,
        "variance_x1e4": variance * 1e4,
        "std": float(np.std(scores)),
        "worst10": float(np.mean(ordered[:tail])),
        "best10": float(np.mean(ordered[-tail:])),
        "worst": float(ordered[0]),
        "best": float(ordered[-1]),
        "worst_client": clients[int(np.argmin(scores))],
        "best_client": clients[int(np.argmax(scores))],
        "jain_index": float(np.sum(scores)) ** 2 / (n * square_sum) if square_sum else None,
    }
