"""Group fairness from confusion counts agrees with fairlearn; fairness across clients by hand."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equalized_odds_difference,
    equalized_odds_ratio,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from fedlth.evaluation.fairness import (
    client_fairness,
    flatten_counts,
    group_counts,
    merge_counts,
    metrics_from_counts,
    unflatten_counts,
)

RATES = {
    "accuracy": accuracy_score,
    "selection_rate": selection_rate,
    "tpr": true_positive_rate,
    "fpr": false_positive_rate,
}


def _random_case(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_groups = int(rng.integers(2, 5))
    sensitive = rng.choice(np.array(["a", "b", "c", "d"])[:n_groups], size=n)
    y_true = rng.integers(0, 2, size=n)
    # Group-dependent bias so that the differences are not all near 0.
    bias = {"a": 0.0, "b": 0.2, "c": -0.2, "d": 0.35}
    p = np.clip(0.5 + np.array([bias[s] for s in sensitive]) + 0.2 * (y_true - 0.5), 0, 1)
    y_pred = (rng.random(n) < p).astype(int)
    return y_true, y_pred, sensitive


def _fairlearn(y_true: np.ndarray, y_pred: np.ndarray, sensitive: np.ndarray) -> dict:
    kw = {"y_true": y_true, "y_pred": y_pred, "sensitive_features": sensitive}
    return {
        "by_group": MetricFrame(metrics=RATES, **kw).by_group,
        "demographic_parity_difference": demographic_parity_difference(**kw),
        "demographic_parity_ratio": demographic_parity_ratio(**kw),
        "equalized_odds_difference": equalized_odds_difference(**kw, agg="worst_case"),
        "equalized_odds_ratio": equalized_odds_ratio(**kw, agg="worst_case"),
        "equal_opportunity_difference": equal_opportunity_difference(**kw),
    }


def _assert_matches(ours: dict, theirs: dict) -> None:
    frame = theirs["by_group"]
    assert sorted(ours["by_group"]) == sorted(str(g) for g in frame.index)
    for group, row in frame.iterrows():
        mine = ours["by_group"][str(group)]
        for rate in RATES:
            assert mine[rate] == pytest.approx(row[rate], abs=1e-12), (group, rate)
    for key in theirs:
        if key != "by_group":
            assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


@pytest.mark.parametrize("seed", range(6))
def test_metrics_equal_fairlearn(seed: int):
    y_true, y_pred, sensitive = _random_case(seed)
    ours = metrics_from_counts(group_counts(y_true, y_pred, sensitive))
    _assert_matches(ours, _fairlearn(y_true, y_pred, sensitive))
    assert ours["single_group"] is False
    assert ours["groups_undefined"] == []
    assert sum(r["count"] for r in ours["by_group"].values()) == len(y_true)


@pytest.mark.parametrize("seed", range(4))
def test_pooled_counts_equal_fairlearn_on_concatenation(seed: int):
    y_true, y_pred, sensitive = _random_case(100 + seed, n=500)
    # Uneven client shards; one client sees a single group, so the union matters.
    cuts = [0, 40, 170, 320, 500]
    parts = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        parts.append(group_counts(y_true[lo:hi], y_pred[lo:hi], sensitive[lo:hi]))
    only_a = sensitive == "a"
    parts.append(group_counts(y_true[only_a][:30], y_pred[only_a][:30], sensitive[only_a][:30]))
    y_all = np.concatenate([y_true, y_true[only_a][:30]])
    p_all = np.concatenate([y_pred, y_pred[only_a][:30]])
    s_all = np.concatenate([sensitive, sensitive[only_a][:30]])
    _assert_matches(metrics_from_counts(merge_counts(parts)), _fairlearn(y_all, p_all, s_all))


def test_torch_list_and_numeric_group_inputs():
    y_true, y_pred, sensitive = _random_case(7)
    codes = np.unique(sensitive, return_inverse=True)[1]
    from_numpy = group_counts(y_true, y_pred, codes)
    from_torch = group_counts(torch.tensor(y_true), torch.tensor(y_pred), torch.tensor(codes))
    from_list = group_counts(y_true.tolist(), y_pred.tolist(), codes.tolist())
    assert from_numpy == from_torch == from_list
    assert set(from_numpy) == {str(c) for c in np.unique(codes)}


def test_group_without_positives_is_undefined_not_zero():
    y_true = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    y_pred = np.array([1, 0, 0, 1, 0, 1, 1, 0])
    sensitive = np.array(["x", "x", "x", "y", "y", "y", "z", "z"])  # x has no positives
    ours = metrics_from_counts(group_counts(y_true, y_pred, sensitive))
    theirs = MetricFrame(metrics=RATES, y_true=y_true, y_pred=y_pred, sensitive_features=sensitive)
    assert theirs.by_group.loc["x", "tpr"] == 0.0  # fairlearn's silent 0
    assert ours["by_group"]["x"]["tpr"] is None
    assert ("x", "tpr") in ours["groups_undefined"]
    # Over the defined groups only: y has TPR 1/2, z has TPR 1.
    assert ours["equal_opportunity_difference"] == pytest.approx(0.5)
    assert equal_opportunity_difference(y_true, y_pred, sensitive_features=sensitive) == 1.0
    # FPR stays defined everywhere (x 1/3, y 1/1, z 0/1), so equalized odds is defined.
    assert ours["equalized_odds_difference"] == pytest.approx(1.0)


def test_single_group_client_is_flagged_with_differences_none():
    counts = group_counts([0, 1, 1, 0], [0, 1, 0, 1], ["Female"] * 4)
    ours = metrics_from_counts(counts)
    assert ours["single_group"] is True
    assert ours["n_groups"] == 1
    for key in (
        "demographic_parity_difference",
        "demographic_parity_ratio",
        "equalized_odds_difference",
        "equalized_odds_ratio",
        "equal_opportunity_difference",
    ):
        assert ours[key] is None, key
    assert ours["by_group"]["Female"]["accuracy"] == 0.5


def test_one_group_defines_tpr_equalized_odds_is_none():
    # Group q has no positives and r has no negatives: TPR is defined only for r, FPR only for q.
    ours = metrics_from_counts(group_counts([0, 0, 1, 1], [1, 0, 1, 1], ["q", "q", "r", "r"]))
    assert ours["single_group"] is False
    assert ours["demographic_parity_difference"] == pytest.approx(0.5)
    assert ours["equal_opportunity_difference"] is None
    assert ours["equalized_odds_difference"] is None
    assert sorted(ours["groups_undefined"]) == [("q", "tpr"), ("r", "fpr")]


def test_flatten_round_trip_with_dotted_group_and_foreign_keys():
    counts = merge_counts(
        [
            group_counts([1, 0, 1], [1, 1, 0], ["Female", "Male", "n.a."]),
            group_counts([0, 1], [0, 1], ["Female", "Female"]),
        ]
    )
    flat = flatten_counts(counts, "fair.sex")
    assert flat["fair.sex.Female.tp"] == 2.0
    assert all(isinstance(v, float) for v in flat.values())
    record = {**flat, "accuracy": 0.7, "fair.sex_other": 1.0, "fair.sex.Male.note": 3.0}
    assert unflatten_counts(record, "fair.sex") == counts
    assert unflatten_counts(flatten_counts(counts, ""), "") == counts
    with pytest.raises(ValueError):
        unflatten_counts({"fair.sex.Female.tp": 1.5}, "fair.sex")


def test_inputs_not_mutated():
    y_true, y_pred, sensitive = _random_case(3)
    copies = (y_true.copy(), y_pred.copy(), sensitive.copy())
    counts = group_counts(y_true, y_pred, sensitive)
    for before, after in zip(copies, (y_true, y_pred, sensitive), strict=True):
        np.testing.assert_array_equal(before, after)
    parts = [counts, group_counts([1], [1], ["z"])]
    parts_before = copy.deepcopy(parts)
    merged = merge_counts(parts)
    metrics_from_counts(merged)
    flat = flatten_counts(merged, "f")
    flat_before = dict(flat)
    unflatten_counts(flat, "f")
    assert parts == parts_before and flat == flat_before
    values = {0: 0.5, 1: 1.0}
    client_fairness(values)
    assert values == {0: 0.5, 1: 1.0}


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        group_counts([0, 2], [0, 1], ["a", "b"])
    with pytest.raises(ValueError):
        group_counts([0, 1], [0, 1], ["a"])
    with pytest.raises(ValueError):
        metrics_from_counts({"a": {"tp": 1, "fp": 0, "tn": 0}})


def test_client_fairness_by_hand():
    two = client_fairness({3: 0.5, 7: 1.0})
    assert two["n"] == 2
    assert two["mean"] == pytest.approx(0.75)
    assert two["variance"] == pytest.approx(0.0625)
    assert two["variance_x1e4"] == pytest.approx(625.0)
    assert two["std"] == pytest.approx(0.25)
    assert two["jain_index"] == pytest.approx(2.25 / (2 * 1.25))  # 0.9
    assert (two["worst"], two["best"]) == (0.5, 1.0)
    assert (two["worst_client"], two["best_client"]) == (3, 7)
    assert (two["worst10"], two["best10"]) == (0.5, 1.0)  # ceil(0.2) = 1 client

    # 11 clients: ceil(1.1) = 2 clients in each tail.
    values = {i: v for i, v in enumerate([0.9, 0.1, 0.8, 0.2, 0.7, 0.6, 0.5, 0.4, 0.3, 1.0, 0.65])}
    eleven = client_fairness(values)
    assert eleven["worst10"] == pytest.approx(0.15)
    assert eleven["best10"] == pytest.approx(0.95)
    assert eleven["variance"] == pytest.approx(np.var(list(values.values())))
    assert math.isclose(
        eleven["jain_index"], sum(values.values()) ** 2 / (11 * sum(v * v for v in values.values()))
    )

    assert client_fairness({0: 0.8, 1: 0.8, 2: 0.8})["jain_index"] == pytest.approx(1.0)
    assert client_fairness({})["n"] == 0
