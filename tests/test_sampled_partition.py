"""partition = sample / sample-dirichlet: each client's examples are drawn for it alone, seeded by
(seed, client); sizes checkable by hand; validation never among training examples; nothing is
built for clients never asked for, so a million clients cost what one does."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedlth.config.scenario import ScenarioError, resolve
from fedlth.data import client_data as cd
from fedlth.data.datasets import ArrayData
from fedlth.data.sampled_partition import sampled_split, split_sizes


def _toy(n_train: int = 100, n_test: int = 20, classes: int = 4) -> ArrayData:
    """x = the example's own index, so a drawn row names itself."""
    x_tr = np.arange(n_train, dtype=np.float32).reshape(-1, 1)
    x_te = np.arange(n_test, dtype=np.float32).reshape(-1, 1)
    y_tr = np.arange(n_train, dtype=np.int64) % classes
    y_te = np.arange(n_test, dtype=np.int64) % classes
    return ArrayData("toy", x_tr, y_tr, x_te, y_te, (1,), classes, (0.0, float(n_train)))


def test_sizes_by_hand():
    # 100 examples, val-fraction 0.2: 80 train, 20 validation; test pool 2,400 / train 9,600: 25
    assert split_sizes(100, 0.2, 9600, 2400) == (80, 20, 25)
    assert split_sizes(2, 0.01, 100, 10) == (1, 1, 1)  # a client of 2 still validates and trains
    assert split_sizes(10, 0.0, 100, 20) == (10, 0, 2)


def test_a_client_is_the_same_draw_every_time_and_differs_from_its_neighbour():
    data = _toy()
    a = sampled_split(data, "sample", 7, seed=0, examples=30, val_fraction=0.2)
    b = sampled_split(data, "sample", 7, seed=0, examples=30, val_fraction=0.2)
    c = sampled_split(data, "sample", 8, seed=0, examples=30, val_fraction=0.2)
    d = sampled_split(data, "sample", 7, seed=1, examples=30, val_fraction=0.2)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("train", "val", "test"))
    assert not np.array_equal(a.train, c.train) and not np.array_equal(a.train, d.train)
    assert (len(a.train), len(a.val), len(a.test)) == (24, 6, 6)
    assert all(np.all(np.diff(getattr(a, k)) >= 0) for k in ("train", "val", "test"))  # sorted, repeats allowed


def test_validation_comes_from_a_part_of_the_pool_no_client_trains_on():
    data = _toy()
    trained = np.concatenate([sampled_split(data, "sample", i, seed=3, examples=40, val_fraction=0.25).train for i in range(50)])
    validated = np.concatenate([sampled_split(data, "sample", i, seed=3, examples=40, val_fraction=0.25).val for i in range(50)])
    assert not set(trained.tolist()) & set(validated.tolist())
    assert len(set(validated.tolist())) <= 25  # the validation part: a quarter of the 100-example pool


def test_dirichlet_skews_each_clients_labels_and_its_test_follows_the_same_mix():
    data = _toy(n_train=400, n_test=400)
    split = sampled_split(data, "sample-dirichlet", 0, seed=0, examples=200, val_fraction=0.2, alpha=0.05)
    train_counts = np.bincount(data.y_train[split.train], minlength=4)
    test_counts = np.bincount(data.y_test[split.test], minlength=4)
    assert train_counts.max() >= 0.8 * train_counts.sum()  # alpha 0.05: nearly one label
    assert test_counts.argmax() == train_counts.argmax()


def test_a_million_clients_cost_what_one_does_and_write_no_partition_cache(digits, data_cache_dir):
    sc = resolve({"dataset": "digits", "model": "mlp", "partition": "sample", "num-clients": 1_000_000, "client-examples": 50})
    cached = set((data_cache_dir / "partitions").glob("*"))  # other tests' partitions may be there already
    cd.check_data_settings(sc)
    t0 = time.perf_counter()
    last = cd.client_data(sc, 999_999)
    assert time.perf_counter() - t0 < 1.0
    assert (len(last.y_train), len(last.y_val)) == (40, 10)
    assert set((data_cache_dir / "partitions").glob("*")) == cached
    with pytest.raises(ValueError, match="out of range"):
        cd.client_data(sc, 1_000_000)


def test_client_examples_below_two_is_refused():
    with pytest.raises(ScenarioError, match="client-examples"):
        resolve({"partition": "sample", "client-examples": 1})
