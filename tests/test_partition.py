"""Partitions are seeded, disjoint, covering, and give each client a test split like its train."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedlth.data.datasets import ArrayData, label_counts, load_dataset
from fedlth.data.partition import PARTITIONERS, ClientSplit, central_split, partition

LABEL_METHODS = ("iid", "dirichlet", "pathological", "shard")


@pytest.fixture(scope="module")
def toy() -> ArrayData:
    """1,000 train / 300 test samples, 10 unbalanced classes, 4 natural ids."""
    rng = np.random.default_rng(0)
    y_train = rng.choice(10, size=1000, p=np.linspace(1, 2, 10) / np.linspace(1, 2, 10).sum())
    y_test = rng.integers(0, 10, size=300)
    return ArrayData(
        name="toy",
        x_train=rng.normal(size=(1000, 5)).astype(np.float32),
        y_train=y_train.astype(np.int64),
        x_test=rng.normal(size=(300, 5)).astype(np.float32),
        y_test=y_test.astype(np.int64),
        input_shape=(5,),
        num_classes=10,
        input_range=(-5.0, 5.0),
        ids_train=rng.choice(["a", "b", "c", "d"], size=1000),
        ids_test=rng.choice(["a", "b", "c", "d"], size=300),
    )


def _assert_disjoint_and_covering(splits: list[ClientSplit], n_train: int, n_test: int) -> None:
    pools = [np.concatenate([s.train, s.val]) for s in splits]
    for s in splits:
        for part in (s.train, s.val, s.test):
            assert part.dtype == np.int64 and np.all(np.diff(part) > 0)  # sorted, no repeats
        assert not np.intersect1d(s.train, s.val).size
    everything = np.concatenate(pools)
    assert (
        len(everything) == len(np.unique(everything)) == n_train
    )  # disjoint across clients, covering
    tests = np.concatenate([s.test for s in splits])
    assert len(tests) == len(np.unique(tests)) == n_test


@pytest.mark.parametrize("method", LABEL_METHODS)
def test_partitions_are_disjoint_cover_both_pools_and_are_deterministic(
    toy: ArrayData, method: str
):
    # 10 clients * 2 shards of 50 divide 1,000 exactly; pathological with 10 clients uses every class.
    before = toy.y_train.copy()
    a = partition(toy, method, 10, seed=3)
    b = partition(toy, method, 10, seed=3)
    _assert_disjoint_and_covering(a, 1000, 300)
    for sa, sb in zip(a, b, strict=True):
        assert all(np.array_equal(getattr(sa, f), getattr(sb, f)) for f in ("train", "val", "test"))
    assert np.array_equal(toy.y_train, before)  # inputs untouched


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
def test_a_different_seed_gives_different_partitions(toy: ArrayData, method: str):
    a = partition(toy, method, 10, seed=0)
    b = partition(toy, method, 10, seed=1)
    assert any(not np.array_equal(sa.train, sb.train) for sa, sb in zip(a, b, strict=True))


def test_test_split_follows_each_clients_train_labels(toy: ArrayData):
    splits = partition(toy, "dirichlet", 10, seed=0, alpha=0.3)
    train_counts = np.stack([label_counts(toy.y_train, np.r_[s.train, s.val], 10) for s in splits])
    test_counts = np.stack([label_counts(toy.y_test, s.test, 10) for s in splits])
    quota = label_counts(toy.y_test, np.arange(300), 10) * train_counts / train_counts.sum(0)
    assert np.all(np.abs(test_counts - quota) < 1)  # largest-remainder rounding of the quota
    assert np.all(test_counts[train_counts == 0] == 0)


def test_val_split_fraction_and_minimum(toy: ArrayData):
    splits = partition(toy, "iid", 10, seed=0, val_fraction=0.2)
    assert all(len(s.val) == 20 and len(s.train) == 80 for s in splits)
    none = partition(toy, "iid", 10, seed=0, val_fraction=0.0)
    assert all(len(s.val) == 0 and len(s.train) == 100 for s in none)
    # clients of 2 samples: a tiny fraction still gives each client one val sample (40 samples, 20
    # clients: the rule is per client, and 500 clients of the whole toy set cost seconds of Arrow shards)
    small = replace(toy, x_train=toy.x_train[:40], y_train=toy.y_train[:40], ids_train=toy.ids_train[:40])
    tiny = partition(small, "iid", 20, seed=0, val_fraction=0.01)
    assert len(tiny) == 20 and all(len(s.val) == 1 and len(s.train) == 1 for s in tiny)


def test_pathological_mnist1d_50_clients_two_classes_each(mnist1d_data: ArrayData):
    splits = partition(mnist1d_data, "pathological", 50, seed=0, classes_per_client=2)
    _assert_disjoint_and_covering(splits, 9600, 2400)
    holders: dict[int, list[int]] = {c: [] for c in range(10)}
    for i, s in enumerate(splits):
        train_labels = np.unique(mnist1d_data.y_train[np.r_[s.train, s.val]])
        assert len(train_labels) == 2
        assert set(np.unique(mnist1d_data.y_test[s.test])) == set(train_labels)
        for c in train_labels:
            holders[int(c)].append(i)
    for c, clients in holders.items():
        assert len(clients) == 10
        # Each class's test samples are split evenly among its holders.
        per_client = [int(np.sum(mnist1d_data.y_test[splits[i].test] == c)) for i in clients]
        assert max(per_client) - min(per_client) <= 1, (c, per_client)


def test_pathological_gives_at_most_k_labels(toy: ArrayData):
    for k in (1, 3):
        with pytest.warns(UserWarning, match="will NOT be used"):
            splits = partition(toy, "pathological", 7, seed=0, classes_per_client=k)
        for s in splits:
            assert len(np.unique(toy.y_train[np.r_[s.train, s.val]])) <= k
        # 7 clients * k labels leave classes 7 + k - 1 .. 9 unheld: their samples go to nobody.
        held = np.arange(7 + k - 1)
        pooled = np.sort(np.concatenate([np.r_[s.train, s.val] for s in splits]))
        assert np.array_equal(pooled, np.flatnonzero(np.isin(toy.y_train, held)))
        tests = np.sort(np.concatenate([s.test for s in splits]))
        assert np.array_equal(tests, np.flatnonzero(np.isin(toy.y_test, held)))


def test_shard_drops_only_the_remainder(toy: ArrayData):
    # 7 clients * 3 shards: shard size floor(1000 / 21) = 47, so 1000 - 987 = 13 samples dropped.
    splits = partition(toy, "shard", 7, seed=0, shards_per_client=3)
    pooled = np.concatenate([np.r_[s.train, s.val] for s in splits])
    assert len(pooled) == len(np.unique(pooled)) == 987


def test_dirichlet_small_alpha_many_clients_still_partitions(mnist1d_data: ArrayData):
    # flwr-datasets gives up after 10 draws short of 10 samples per client; we step down.
    splits = partition(mnist1d_data, "dirichlet", 50, seed=0, alpha=0.1)
    _assert_disjoint_and_covering(splits, 9600, 2400)
    assert min(len(s.train) + len(s.val) for s in splits) >= 1


def test_natural_id_sends_test_samples_to_the_same_id(toy: ArrayData):
    splits = partition(toy, "natural-id", 4, seed=0)
    _assert_disjoint_and_covering(splits, 1000, 300)
    for s, name in zip(splits, ["a", "b", "c", "d"], strict=True):
        assert set(toy.ids_train[np.r_[s.train, s.val]]) == {name}
        assert set(toy.ids_test[s.test]) == {name}
    with pytest.raises(ValueError, match="distinct ids.*4"):
        partition(toy, "natural-id", 5, seed=0)


def test_natural_id_on_arrests_years():
    arrests = load_dataset("arrests")
    splits = partition(arrests, "natural-id", 6, seed=0)
    _assert_disjoint_and_covering(splits, len(arrests.y_train), len(arrests.y_test))
    assert [int(arrests.ids_train[s.train[0]]) for s in splits] == list(range(1997, 2003))


def test_natural_id_needs_ids(digits: ArrayData):
    with pytest.raises(ValueError, match="no natural ids"):
        partition(digits, "natural-id", 3, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"method": "zipf"}, "method"),
        ({"num_clients": 0}, "num_clients"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"alpha": 0.0}, "alpha"),
        ({"classes_per_client": 11}, "classes_per_client"),
        ({"shards_per_client": 0}, "shards_per_client"),
    ],
)
def test_bad_arguments_name_the_argument(toy: ArrayData, kwargs: dict, argument: str):
    args = {"method": "dirichlet", "num_clients": 5, **kwargs}
    with pytest.raises(ValueError, match=argument) as err:
        partition(toy, args.pop("method"), args.pop("num_clients"), seed=0, **args)
    if argument == "method":
        assert all(m in str(err.value) for m in PARTITIONERS)


def test_central_split_holds_everything(digits: ArrayData):
    s = central_split(digits, seed=0)
    assert (
        len(s.train) + len(s.val) == len(digits.y_train) and not np.intersect1d(s.train, s.val).size
    )
    assert len(s.val) == round(0.2 * len(digits.y_train))
    assert np.array_equal(s.test, np.arange(len(digits.y_test)))
    assert np.array_equal(central_split(digits, seed=0).val, s.val)
    assert not np.array_equal(central_split(digits, seed=1).val, s.val)
