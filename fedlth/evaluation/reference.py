"""Reference scores beside a ticket on tabular fairness data: what a constant predictor and a
plain logistic regression get on the same data (a fairness table without them can make a
constant predictor look fair and a weak ticket look good)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedlth.data.datasets import ArrayData
from fedlth.data.partition import ClientSplit


def majority_rate(y_train: np.ndarray, y_test: np.ndarray) -> float | None:
    """Accuracy on y_test of always predicting y_train's most frequent class (ties: lower)."""
    if len(y_train) == 0 or len(y_test) == 0:
        return None
    return float(np.mean(y_test == np.bincount(y_train).argmax()))


def logistic_regression_accuracy(data: ArrayData, max_iter: int = 2000) -> float:
    """sklearn's LogisticRegression (lbfgs, C=1) fitted on the pooled train pool, scored on the test pool."""
    from sklearn.linear_model import LogisticRegression

    x_train = data.x_train.reshape(len(data.x_train), -1)
    x_test = data.x_test.reshape(len(data.x_test), -1)
    model = LogisticRegression(max_iter=max_iter).fit(x_train, data.y_train)
    return float(model.score(x_test, data.y_test))


def local_majority(data: ArrayData, splits: Sequence[ClientSplit]) -> float | None:
    """Mean over scored clients of a per-client constant predictor: its own train+val majority
    class on its own test split (the personalized accuracy a model learns for free under label skew)."""
    scores = [
        majority_rate(data.y_train[np.concatenate([s.train, s.val])], data.y_test[s.test])
        for s in splits
    ]
    known = [s for s in scores if s is not None]
    return float(np.mean(known)) if known else None


def reference_scores(data: ArrayData, splits: Sequence[ClientSplit] | None = None) -> dict[str, Any]:
    """Majority-class rate and logistic regression on the pooled splits, and the per-client majority."""
    return {
        "majority_rate": majority_rate(data.y_train, data.y_test),
        "logistic_regression": logistic_regression_accuracy(data),
        "local_majority": None if splits is None else local_majority(data, splits),
    }


def scenario_reference(sc: dict[str, Any]) -> dict[str, Any] | None:
    """reference_scores for a scenario whose dataset declares sensitive features (fairness
    datasets), on the scenario's partitions; None for other datasets or when data is missing."""
    from fedlth.config.core_options import core
    from fedlth.data.client_data import _scenario_dataset, _splits, data_key
    from fedlth.data.datasets import DatasetUnavailableError
    from fedlth.data.sampled_partition import SAMPLED

    try:
        data = _scenario_dataset(sc)
        if not data.sensitive_train or data.num_classes != 2:
            return None
        # a sampled partition's clients are drawn one by one: the per-client majority would cost O(num-clients)
        return reference_scores(data, None if core(sc).data.partition in SAMPLED else _splits(data_key(sc)))
    except (DatasetUnavailableError, OSError):  # a deployed server may hold no data
        return None
