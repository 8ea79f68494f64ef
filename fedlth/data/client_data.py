"""A client's train / validation / test tensors, loaded once per process and cached.

What stays in memory per process is bounded whatever the number of clients: one copy of each
dataset (train/test pools do not depend on the run seed), and the partitions' index arrays of
the last few scenarios. A client's tensors are cut from those on every call and never kept, so
a Ray worker that serves 1,000 clients holds one dataset, not 1,000 clients' tensors.

Partitions are also cached on disk (`$FEDLTH_CACHE/partitions/`), so the driver computes them
once and every Ray worker reads them back instead of importing flwr-datasets and Hugging Face
`datasets` (seconds) and partitioning again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedlth.config.component_options import (
    DirichletOptions,
    FilePartitionOptions,
    PathologicalOptions,
    SampleOptions,
    ShardOptions,
)
from fedlth.config.core_options import DataOptions, core
from fedlth.config.options import options
from fedlth.config.scenario import ScenarioError
from fedlth.data import partition as partition_module
from fedlth.data import partition_file
from fedlth.data.datasets import (
    ArrayData,
    _read_npz,
    _save_npz_atomic,
    default_cache_dir,
    load_dataset,
)
from fedlth.data.partition import ClientSplit, partition
from fedlth.data.partition_file import load_partition_file, read_partition_file
from fedlth.data.sampled_partition import SAMPLED, sampled_split

# The scenario keys that decide a client's data under a cached partition; everything else may
# change freely (sampled partitions also read client-examples, and are never cached: see client_split).
DATA_KEYS = (
    "dataset", "data-path", "seed", "partition", "num-clients", "alpha", "classes-per-client",
    "shards-per-client", "val-fraction", "partition-file",
)
# A data key is DATA_KEYS' values and the partition file's content hash ("" without one).
_KEY_NAMES = (*DATA_KEYS, "partition-file-sha256")
PARTITION_CACHE_FORMAT = 1
_PARTS = ("train", "val", "test")


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
def _dataset(name: str, path: str) -> ArrayData:
    # No seed in the key: the pools are fixed per dataset, so runs over several seeds in one
    # process (fedlth compare) share one copy.
    return load_dataset(name, path=path or None)


def _scenario_dataset(sc: dict[str, Any]) -> ArrayData:
    d = core(sc).data
    return _dataset(d.dataset, d.data_path)


@lru_cache(maxsize=1)
def _partition_code() -> str:
    """What partitions depend on besides the data and the keys: our code and the partitioner's."""
    h = hashlib.sha256(Path(partition_module.__file__).read_bytes())
    h.update(Path(partition_file.__file__).read_bytes())
    for dist in ("flwr-datasets", "datasets"):
        try:
            h.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            h.update(dist.encode())
    h.update(f"numpy={np.__version__}".encode())
    return h.hexdigest()


def _data_fingerprint(data: ArrayData) -> str:
    """The parts of a dataset that partitioning reads: labels, ids, sizes."""
    h = hashlib.sha256(f"{data.name}:{data.num_classes}:{len(data.y_train)}:{len(data.y_test)}".encode())
    for a in (data.y_train, data.y_test, data.ids_train, data.ids_test):
        if a is None:
            h.update(b"none")
            continue
        a = np.asarray(a)
        h.update(np.ascontiguousarray(a.astype(str) if a.dtype == object else a).tobytes() + str(a.dtype).encode())
    return h.hexdigest()


def _partition_file(key: tuple[Any, ...], data: ArrayData) -> Path:
    spec = json.dumps(
        {"format": PARTITION_CACHE_FORMAT, "keys": dict(zip(_KEY_NAMES, key, strict=True)), "code": _partition_code(),
         "data": _data_fingerprint(data)},
        sort_keys=True, default=str,
    )
    return default_cache_dir() / "partitions" / f"{data.name}-{hashlib.sha256(spec.encode()).hexdigest()[:20]}.npz"


def _pack(splits: list[ClientSplit]) -> dict[str, np.ndarray]:
    """Every client's index arrays as one flat array per part plus offsets (a few arrays, any N)."""
    out: dict[str, np.ndarray] = {}
    for part in _PARTS:
        arrays = [getattr(s, part) for s in splits]
        out[part] = np.concatenate(arrays).astype(np.int64) if arrays else np.zeros(0, np.int64)
        out[f"{part}_offsets"] = np.cumsum([0, *map(len, arrays)]).astype(np.int64)
    return out


def _unpack(arrays: dict[str, np.ndarray], n: int) -> tuple[ClientSplit, ...] | None:
    if any(len(arrays[f"{p}_offsets"]) != n + 1 or arrays[f"{p}_offsets"][-1] != len(arrays[p]) for p in _PARTS):
        return None
    cut = {p: np.split(arrays[p], arrays[f"{p}_offsets"][1:-1]) for p in _PARTS}
    return tuple(ClientSplit(train=cut["train"][i], val=cut["val"][i], test=cut["test"][i]) for i in range(n))


@lru_cache(maxsize=4)
def _splits(key: tuple[Any, ...]) -> tuple[ClientSplit, ...]:
    rec = dict(zip(_KEY_NAMES, key, strict=True))
    d = options(rec, DataOptions)
    data = _dataset(d.dataset, d.data_path)
    file = _partition_file(key, data)
    arrays = _read_npz(file, tuple(k for p in _PARTS for k in (p, f"{p}_offsets")))
    cached = _unpack(arrays, d.num_clients) if arrays is not None else None
    if cached is not None:
        return cached
    splits = _compute_splits(rec, data)
    with contextlib.suppress(OSError):  # a read-only cache only costs the next process the same work
        _save_npz_atomic(file, _pack(splits))
    return tuple(splits)


def _compute_splits(rec: dict[str, Any], data: ArrayData) -> tuple[ClientSplit, ...]:
    """The partitions a data key's record (DATA_KEYS' values, not a whole scenario) fixes, read
    from its partition file or made by a partitioner. Its keys are read typed, but for `seed`:
    the record holds no whole GeneralOptions (name and torch-threads don't change a partition)."""
    d = options(rec, DataOptions)
    if d.partition == partition_file.METHOD:
        path = options(rec, FilePartitionOptions).partition_file
        return load_partition_file(path, d.num_clients, len(data.y_train), len(data.y_test))
    return tuple(partition(
        data, d.partition, d.num_clients, seed=rec["seed"], alpha=options(rec, DirichletOptions).alpha,
        classes_per_client=options(rec, PathologicalOptions).classes_per_client,
        shards_per_client=options(rec, ShardOptions).shards_per_client, val_fraction=d.val_fraction,
    ))


def data_key(sc: dict[str, Any]) -> tuple[Any, ...]:
    """The part of a scenario that fixes the partitions (with the partition file's content hash)."""
    on_file = core(sc).data.partition == partition_file.METHOD
    digest = partition_file.file_digest(options(sc, FilePartitionOptions).partition_file) if on_file else ""
    return (*(sc[k] for k in DATA_KEYS), digest)  # the keys' values as they are: the cache key


def scenario_splits(sc: dict[str, Any]) -> tuple[ClientSplit, ...]:
    """Every client's train / val / test indices under the scenario's partition."""
    return _splits(data_key(sc))


def check_data_settings(sc: dict[str, Any]) -> None:
    """Partition file (checks that need no data first), then dataset and partitions, up front:
    bad settings raise ScenarioError before any training, and write no partition cache."""
    from fedlth.data.datasets import DatasetUnavailableError

    d = core(sc).data
    if d.partition == partition_file.METHOD:
        read_partition_file(options(sc, FilePartitionOptions).partition_file, d.num_clients)
    try:
        client_data(sc, 0)
    except ScenarioError:
        raise
    except DatasetUnavailableError as exc:
        raise ScenarioError(str(exc)) from None
    except ValueError as exc:
        raise ScenarioError(f"data settings: {exc}") from None


def sensitive_features(sc: dict[str, Any]) -> tuple[str, ...]:
    """Names of the sensitive features the scenario's dataset declares."""
    return tuple(_scenario_dataset(sc).sensitive_test)


def dataset_info(sc: dict[str, Any]) -> tuple[tuple[int, ...], int]:
    """Input shape and class count of the scenario's dataset."""
    data = _scenario_dataset(sc)
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


def client_split(sc: dict[str, Any], partition_id: int) -> ClientSplit:
    """Client `partition_id`'s indices: drawn for it alone (sampled partitions, O(its examples)),
    else cut from the scenario's partition of the whole pool."""
    c = core(sc)
    if c.data.partition in SAMPLED:
        return sampled_split(_scenario_dataset(sc), c.data.partition, partition_id, seed=c.general.seed,
                             examples=options(sc, SampleOptions).client_examples, val_fraction=c.data.val_fraction,
                             alpha=options(sc, DirichletOptions).alpha)
    return scenario_splits(sc)[partition_id]


def client_data(sc: dict[str, Any], partition_id: int) -> ClientData:
    """Tensors of client `partition_id` under the scenario's partition."""
    n = core(sc).data.num_clients
    if not 0 <= partition_id < n:
        raise ValueError(f"partition id {partition_id} is out of range; allowed: 0 <= id < {n}")
    return split_tensors(_scenario_dataset(sc), client_split(sc, partition_id))
