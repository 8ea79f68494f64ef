"""Reference scores (majority class, logistic regression) beside the tickets in a run report."""

from __future__ import annotations

import numpy as np
import pytest

from fedlth.config.scenario import defaults
from fedlth.data.datasets import ArrayData
from fedlth.data.partition import ClientSplit
from fedlth.evaluation.reference import local_majority, majority_rate, reference_scores
from fedlth.reporting.report import pooled_accuracy, report_markdown, summarize


def _separable(seed: int = 0) -> ArrayData:
    """A 70/30 binary task that a linear model solves: label = x0 > threshold."""
    rng = np.random.default_rng(seed)

    def pool(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, 3)).astype(np.float32)
        return x, (x[:, 0] > 0.5244).astype(np.int64)  # P(N(0,1) > 0.5244) = 0.3

    (xa, ya), (xb, yb) = pool(600), pool(300)
    return ArrayData("toy", xa, ya, xb, yb, (3,), 2, (-5.0, 5.0), {"g": np.array(["a", "b"] * 300)},
                     {"g": np.array(["a", "b"] * 150)})


def test_majority_rate_and_logistic_regression_on_pooled_splits():
    d = _separable()
    ref = reference_scores(d)
    assert ref["majority_rate"] == pytest.approx(np.mean(d.y_test == 0))
    assert 0.6 < ref["majority_rate"] < 0.8 and ref["logistic_regression"] > 0.95
    assert ref["local_majority"] is None
    assert majority_rate(np.array([], dtype=np.int64), d.y_test) is None


def test_local_majority_is_each_clients_constant_on_its_own_test():
    d = _separable()
    ones_tr, zeros_tr = np.flatnonzero(d.y_train == 1), np.flatnonzero(d.y_train == 0)
    ones_te, zeros_te = np.flatnonzero(d.y_test == 1), np.flatnonzero(d.y_test == 0)
    splits = [
        # client 0: mostly ones in train; its test has 3 ones, 1 zero -> 0.75
        ClientSplit(ones_tr[:8], ones_tr[8:10], np.sort(np.r_[ones_te[:3], zeros_te[:1]])),
        # client 1: zeros; test 1 one, 1 zero -> 0.5
        ClientSplit(zeros_tr[:5], zeros_tr[5:6], np.sort(np.r_[ones_te[3:4], zeros_te[1:2]])),
        ClientSplit(zeros_tr[6:8], zeros_tr[8:9], np.zeros(0, np.int64)),  # no test: unscored
    ]
    assert local_majority(d, splits) == pytest.approx((0.75 + 0.5) / 2)


def test_summary_and_report_show_the_reference_beside_the_tickets():
    sc = defaults() | {"algorithm": "subfedavg", "dataset": "adult", "model": "tabular-mlp", "seed": 0, "num-clients": 2,
                       "clients-per-round": 2, "name": "t", "partition": "iid", "local-epochs": 1}
    evaluation = {
        "0": {"num-examples": 30, "accuracy": 0.9, "density": 0.2, "global-accuracy": 0.8},
        "1": {"num-examples": 10, "accuracy": 0.5, "density": 0.2, "global-accuracy": 0.6},
    }
    rounds = [{"evaluate": evaluation, "bytes": dict.fromkeys(
        ("upload", "download", "dense_fedavg_upload", "dense_fedavg_download"), 1)}]
    ref = {"majority_rate": 0.75, "logistic_regression": 0.85, "local_majority": 0.8}
    s = summarize(sc, rounds, has_global=True, wall_seconds=1.0, reference=ref)
    assert s["personalized_accuracy_pooled"] == pytest.approx(0.8) == pooled_accuracy(evaluation)
    assert s["global_accuracy"] == pytest.approx(0.75) and s["reference"] == ref
    md = report_markdown(sc, s)
    assert "| majority class (constant) | 75.0 % | 80.0 % |" in md
    assert "| logistic regression (sklearn, pooled train pool) | 85.0 % | |" in md
    assert "Reference" not in report_markdown(sc, summarize(sc, rounds, has_global=True, wall_seconds=1.0))


def test_study_table_carries_the_reference(tmp_path):
    import json

    from fedlth.reporting.study import study

    def runner(sc: dict, out) -> None:
        out.mkdir(parents=True)
        summary = {"personalized_accuracy": {"mean": 0.8, "std": 0.1, "worst10": 0.7}, "density": {"mean": sc["target-density"]},
                   "reference": {"majority_rate": 0.75, "logistic_regression": 0.85, "local_majority": 0.8}}
        (out / "summary.json").write_text(json.dumps(summary))

    study(defaults() | {"algorithm": "subfedavg", "dataset": "adult", "name": "s"}, [1.0, 0.2], tmp_path, runner)
    text = (tmp_path / "study.md").read_text()
    assert "| majority class (constant) |  |  |  |  |  | 75.0 |" in text
    assert "| logistic regression (pooled) |  |  |  |  |  | 85.0 |" in text
    assert "| each client's majority class |  |  | 80.0 |  |  |  |" in text
