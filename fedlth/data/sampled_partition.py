"""Partitions drawn per client (`sample`, `sample-dirichlet`): any number of clients, each made only when used.

Each client draws its examples with replacement from the dataset's fixed pools, seeded by
(seed, client): a federation of 100,000 clients of 100 examples needs 10 million examples,
which the pools don't have, and a partition computed up front would cost memory and time in
proportion to the federation. Here nothing exists for a client until it is asked for, and a
client costs O(its examples). Clients share pool examples (a draw with replacement), so this
is a stand-in for a large federation's scale, not a source of 10 million distinct examples.

The train pool is cut once (by the seed) into a training part and a validation part, so a
client's validation examples are never among its training examples; its test examples come
from the test pool. `sample` draws uniformly (IID); `sample-dirichlet` first draws the
client's label mix p ~ Dirichlet(alpha) and then each split's labels from p (label skew,
the same mix for its train, validation and test splits).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedlth.data.datasets import ArrayData
from fedlth.data.partition import ClientSplit, val_count

SAMPLED = ("sample", "sample-dirichlet")
_POOL_STREAM, _CLIENT_STREAM = 11, 12  # apart from partition.py's streams (1, 2, 3)


def split_sizes(examples: int, val_fraction: float, train_pool: int, test_pool: int) -> tuple[int, int, int]:
    """(train, validation, test) counts of one client: `examples` split by val_fraction (at least
    one of each when examples >= 2), and test in the test pool's proportion to the train pool."""
    n_val = val_count(examples, val_fraction)
    return examples - n_val, n_val, max(1, int(round(examples * test_pool / train_pool)))


@lru_cache(maxsize=4)
def _pools(data: ArrayData, seed: int, val_fraction: float) -> tuple[list[np.ndarray], ...]:
    """Indices of the training part, the validation part and the test pool, each as one array per
    class (index -1 of each tuple: every class together). O(pool), once per process."""
    rng = np.random.default_rng([seed, _POOL_STREAM])
    order = rng.permutation(len(data.y_train))
    n_val = int(round(val_fraction * len(order)))
    parts = (np.sort(order[n_val:]), np.sort(order[:n_val]), np.arange(len(data.y_test), dtype=np.int64))
    labels = (data.y_train, data.y_train, data.y_test)
    return tuple(
        [part[labels_[part] == c] for c in range(data.num_classes)] + [part]
        for part, labels_ in zip(parts, labels, strict=True)
    )


def _draw(rng: np.random.Generator, by_class: list[np.ndarray], k: int, mix: np.ndarray | None) -> np.ndarray:
    """k indices with replacement: uniform over the part, or class by class in proportion `mix`."""
    if k == 0:
        return np.zeros(0, np.int64)
    if mix is None:
        pool = by_class[-1]
        return np.sort(pool[rng.integers(len(pool), size=k)])
    counts = rng.multinomial(k, mix)
    picks = [by_class[c][rng.integers(len(by_class[c]), size=n)] for c, n in enumerate(counts) if n]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def sampled_split(
    data: ArrayData, method: str, client: int, *, seed: int, examples: int, val_fraction: float, alpha: float = 0.5,
) -> ClientSplit:
    """Client `client`'s train / validation / test indices under `method` (see the module)."""
    if method not in SAMPLED:
        raise ValueError(f"unknown sampled partition {method!r}; valid: {list(SAMPLED)}")
    train_part, val_part, test_part = _pools(data, seed, val_fraction)
    if len(train_part[-1]) == 0 or (val_fraction > 0 and len(val_part[-1]) == 0):
        raise ValueError(f"{data.name}'s train pool ({len(data.y_train)} examples) is too small to split by val-fraction {val_fraction}")
    n_train, n_val, n_test = split_sizes(examples, val_fraction, len(data.y_train), len(data.y_test))
    rng = np.random.default_rng([seed, _CLIENT_STREAM, client])
    mix = None
    if method == "sample-dirichlet":
        # classes a part lacks get no weight there; the mix is drawn over the classes the train part holds
        held = np.array([len(c) > 0 for c in train_part[:-1]], dtype=np.float64)
        mix = rng.dirichlet(np.full(data.num_classes, float(alpha))) * held
        mix = mix / mix.sum() if mix.sum() > 0 else held / held.sum()

    def draw(part: list[np.ndarray], k: int) -> np.ndarray:
        if mix is None:
            return _draw(rng, part, k, None)
        here = mix * np.array([len(c) > 0 for c in part[:-1]])
        return _draw(rng, part, k, here / here.sum() if here.sum() > 0 else None)

    return ClientSplit(train=draw(train_part, n_train), val=draw(val_part, n_val), test=draw(test_part, n_test))
