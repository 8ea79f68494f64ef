"""Non-IID client partitions (flwr-datasets partitioners) with per-client train/val/test indices."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedlth.data.datasets import ArrayData, label_counts
from fedlth.reporting.terminal import no_datasets_progress_bars

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner

PARTITIONERS = ("iid", "dirichlet", "pathological", "shard", "natural-id")

# Dirichlet redraws (at most 10 times, then flwr-datasets raises) until every client has
# min_partition_size samples. Small alpha with many clients rarely gets 10 each in 10 draws
# (alpha 0.1, 50 clients, 9,600 samples fails), so we step down this ladder, deterministically.
DIRICHLET_MIN_SIZES = (10, 5, 2, 1)

# Salts that keep the val-split and test-split random streams apart from the partitioner's.
_VAL_STREAM, _TEST_STREAM, _ORDER_STREAM = 1, 2, 3


@dataclass(frozen=True, eq=False)
class ClientSplit:
    """One client's sorted int64 indices: train and val into x_train (disjoint), test into x_test."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _check_args(
    data: ArrayData,
    method: str,
    num_clients: int,
    alpha: float,
    classes_per_client: int,
    shards_per_client: int,
    val_fraction: float,
) -> None:
    if method not in PARTITIONERS:
        raise ValueError(
            f"unknown partition method {method!r}; valid methods: {list(PARTITIONERS)}"
        )
    if (
        isinstance(num_clients, bool)
        or not isinstance(num_clients, int | np.integer)
        or num_clients < 1
    ):
        raise ValueError(f"num_clients must be an integer >= 1, got {num_clients!r}")
    if num_clients > len(data.y_train):
        raise ValueError(
            f"num_clients ({num_clients}) exceeds the {len(data.y_train)} training samples"
        )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    if not 1 <= classes_per_client <= data.num_classes:
        raise ValueError(
            f"classes_per_client must be in [1, {data.num_classes}], got {classes_per_client!r}"
        )
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client!r}")


def _make_partitioner(
    method: str,
    num_clients: int,
    seed: int,
    alpha: float,
    classes_per_client: int,
    shards_per_client: int,
    min_size: int,
) -> Partitioner:
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        NaturalIdPartitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    if method == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if method == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=float(alpha),
            seed=seed,
            min_partition_size=min_size,
        )
    if method == "pathological":
        # deterministic: client i holds classes i, i+1, ... (mod C), so every class is held by
        # the same number of clients when num_clients is a multiple of C.
        return PathologicalPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_classes_per_partition=classes_per_client,
            class_assignment_mode="deterministic",
            seed=seed,
        )
    if method == "shard":
        return ShardPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            num_shards_per_partition=shards_per_client,
            seed=seed,
        )
    return NaturalIdPartitioner(partition_by="id")


def partition_train_pool(
    data: ArrayData,
    method: str,
    num_clients: int,
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """Each client's share of the train pool (sorted indices into x_train), before the val split.

    Samples no client gets: shard drops the remainder of N / (clients * shards) and any
    shard not dealt out; pathological drops classes no client holds (fewer clients * k
    than classes). iid, dirichlet and natural-id cover the pool exactly. Dirichlet asks
    for at least 10 samples per client and steps down DIRICHLET_MIN_SIZES when it can't.
    """
    import datasets

    _check_args(data, method, num_clients, alpha, classes_per_client, shards_per_client, 0.0)
    n = len(data.y_train)
    if method == "natural-id":
        if data.ids_train is None:
            raise ValueError(
                f"dataset {data.name!r} has no natural ids; natural-id needs ids_train"
            )
        num_ids = len(np.unique(data.ids_train))
        if num_clients != num_ids:
            raise ValueError(
                f"natural-id needs num_clients == the number of distinct ids in {data.name!r}: {num_ids}"
            )
    # IidPartitioner cuts contiguous blocks and ignores seeds: a seeded row order makes every
    # method depend on the seed (which samples of a class land where), not just the seeded ones.
    order = np.random.default_rng([seed, _ORDER_STREAM]).permutation(n)
    columns: dict[str, list] = {"label": data.y_train[order].tolist(), "index": order.tolist()}
    if method == "natural-id":
        columns["id"] = np.asarray(data.ids_train)[order].tolist()
    ds = datasets.Dataset.from_dict(columns)
    min_sizes = (
        [m for m in DIRICHLET_MIN_SIZES if m <= max(n // num_clients, 1)]
        if method == "dirichlet"
        else [0]
    )
    for k, min_size in enumerate(min_sizes):
        partitioner = _make_partitioner(
            method, num_clients, seed, alpha, classes_per_client, shards_per_client, min_size
        )
        partitioner.dataset = ds
        try:
            with warnings.catch_warnings(), no_datasets_progress_bars():
                # flwr-datasets warns once per failed Dirichlet draw; the ladder below handles it.
                warnings.filterwarnings("ignore", message="The specified min_partition_size")
                # pyarrow deprecation noise from the ShardPartitioner's sort; not ours to fix.
                warnings.filterwarnings(
                    "ignore", message="Specifying null_placement", category=FutureWarning
                )
                return [
                    np.sort(
                        partitioner.load_partition(i)
                        .with_format("numpy")["index"][:]
                        .astype(np.int64)
                    )
                    for i in range(num_clients)
                ]
        except ValueError as err:
            if (
                method != "dirichlet"
                or "max number of attempts" not in str(err)
                or k == len(min_sizes) - 1
            ):
                raise
    raise AssertionError("unreachable")


def val_count(n: int, val_fraction: float) -> int:
    """How many of a client's n training-pool samples validate (every partition uses this rule)."""
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)  # a client with >= 2 samples always validates and trains
    return n_val


def _split_val(
    idx: np.ndarray, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n_val = val_count(len(idx), val_fraction)
    perm = rng.permutation(idx)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers summing to total, proportional to weights (sum > 0); ties go to lower index."""
    quotas = total * weights / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    left = total - int(counts.sum())
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:left]] += 1
    return counts


def split_test_pool(data: ArrayData, shares: list[np.ndarray], *, seed: int) -> list[np.ndarray]:
    """Test indices per client, class by class in proportion to each client's train counts.

    Test samples of a class that no client holds go to nobody.
    """
    rng = np.random.default_rng([seed, _TEST_STREAM])
    counts = np.stack(
        [label_counts(data.y_train, s, data.num_classes) for s in shares]
    )  # (clients, C)
    tests: list[list[np.ndarray]] = [[] for _ in shares]
    for c in range(data.num_classes):
        holders = counts[:, c]
        if holders.sum() == 0:
            continue
        pool = rng.permutation(np.flatnonzero(data.y_test == c))
        bounds = np.cumsum(_largest_remainder(len(pool), holders.astype(np.float64)))[:-1]
        for i, part in enumerate(np.split(pool, bounds)):
            tests[i].append(part)
    return [
        np.sort(np.concatenate(t)).astype(np.int64) if t else np.zeros(0, np.int64) for t in tests
    ]


def _split_test_by_id(data: ArrayData, shares: list[np.ndarray]) -> list[np.ndarray]:
    """Each client's test samples are those with its natural id (read off its train share,
    so nothing rests on how the partitioner orders ids); unseen test ids go to nobody."""
    if data.ids_train is None or data.ids_test is None:
        raise ValueError(f"dataset {data.name!r} needs ids_train and ids_test for natural-id")
    ids_test = np.asarray(data.ids_test)
    return [
        np.flatnonzero(ids_test == data.ids_train[share[0]]).astype(np.int64) for share in shares
    ]


def partition(
    data: ArrayData,
    method: str,
    num_clients: int,
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    shards_per_client: int = 2,
    val_fraction: float = 0.2,
) -> list[ClientSplit]:
    """Split data among num_clients: train pool by `method`, each share into train/val, test pool
    by label (natural-id: by id) so each client's test distribution follows its train one.

    Methods: iid, dirichlet (alpha), pathological (classes_per_client, deterministic class
    assignment), shard (shards_per_client label-sorted shards), natural-id (data.ids_*).
    """
    _check_args(
        data, method, num_clients, alpha, classes_per_client, shards_per_client, val_fraction
    )
    shares = partition_train_pool(
        data,
        method,
        num_clients,
        seed=seed,
        alpha=alpha,
        classes_per_client=classes_per_client,
        shards_per_client=shards_per_client,
    )
    tests = (
        _split_test_by_id(data, shares)
        if method == "natural-id"
        else split_test_pool(data, shares, seed=seed)
    )
    splits = []
    for i, (share, test) in enumerate(zip(shares, tests, strict=True)):
        train, val = _split_val(share, val_fraction, np.random.default_rng([seed, _VAL_STREAM, i]))
        splits.append(ClientSplit(train=train, val=val, test=test))
    return splits


def central_split(data: ArrayData, *, seed: int, val_fraction: float = 0.2) -> ClientSplit:
    """One client holding everything: the train pool split into train/val, the whole test pool."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    train, val = _split_val(
        np.arange(len(data.y_train), dtype=np.int64),
        val_fraction,
        np.random.default_rng([seed, _VAL_STREAM, 0]),
    )
    return ClientSplit(train=train, val=val, test=np.arange(len(data.y_test), dtype=np.int64))
