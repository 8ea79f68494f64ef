"""A client's train / validation / test tensors, loaded once per process and cached."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedlth.data import ArrayData, load_dataset
from fedlth.partition import ClientSplit, partition

# The scenario keys that decide a client's data; everything else may change freely.
DATA_KEYS = (
    "dataset", "data-path", "seed", "partition", "num-clients", "alpha", "classes-per-client",
    "shards-per-client", "val-fraction",
)


@dataclass(frozen=True)
class ClientData:
    """One client's train / validation / test tensors."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    input_range: tuple[float, float] = (0.0, 1.0)
    sensitive_test: dict[str, np.ndarray] = field(default_factory=dict)  # for fairness evaluators


@lru_cache(maxsize=4)
def _dataset(name: str, path: str, seed: int) -> ArrayData:
    return load_dataset(name, seed=seed, path=path or None)


@lru_cache(maxsize=4)
def _splits(key: tuple[Any, ...]) -> tuple[ClientSplit, ...]:
    sc = dict(zip(DATA_KEYS, key, strict=True))
    data = _dataset(sc["dataset"], sc["data-path"], sc["seed"])
    return tuple(
        partition(
            data, sc["partition"], sc["num-clients"], seed=sc["seed"], alpha=sc["alpha"],
            classes_per_client=sc["classes-per-client"], shards_per_client=sc["shards-per-client"],
            val_fraction=sc["val-fraction"],
        )
    )


def data_key(sc: dict[str, Any]) -> tuple[Any, ...]:
    """The part of a scenario that fixes the partitions."""
    return tuple(sc[k] for k in DATA_KEYS)


def sensitive_features(sc: dict[str, Any]) -> tuple[str, ...]:
    """Names of the sensitive features the scenario's dataset declares."""
    return tuple(_dataset(sc["dataset"], sc["data-path"], sc["seed"]).sensitive_test)


def dataset_info(sc: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """Input shape and class count of the scenario's dataset."""
    data = _dataset(sc["dataset"], sc["data-path"], sc["seed"])
    return data.input_shape, data.num_classes


def split_tensors(data: ArrayData, s: ClientSplit) -> ClientData:
    """The tensors of one train / validation / test split of `data`."""

    def t(a: Any) -> Tensor:
        return torch.as_tensor(a)

    return ClientData(
        t(data.x_train[s.train]), t(data.y_train[s.train]), t(data.x_train[s.val]), t(data.y_train[s.val]),
        t(data.x_test[s.test]), t(data.y_test[s.test]), data.input_shape, data.num_classes, data.input_range,
        {k: v[s.test] for k, v in data.sensitive_test.items()},
    )


def client_data(sc: dict[str, Any], partition_id: int) -> ClientData:
    """Tensors of client `partition_id` under the scenario's partition."""
    n = sc["num-clients"]
    if not 0 <= partition_id < n:
        raise ValueError(f"partition id {partition_id} is out of range; allowed: 0 <= id < {n}")
    data = _dataset(sc["dataset"], sc["data-path"], sc["seed"])
    return split_tensors(data, _splits(data_key(sc))[partition_id])
