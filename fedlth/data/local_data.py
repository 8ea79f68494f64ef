"""A device's own data: one .npz file named by the SuperNode's node config (`data-file`).

Arrays: `x_train`, `y_train` (required); `x_val` + `y_val` and `x_test` + `y_test`
(optional pairs); `num_classes` (0-d int; default: largest label + 1, which must match the
server's model), `input_range` ([lo, hi]; default: min and max of the inputs) and
`sensitive_<name>` (one entry per test sample, for the fairness evaluator). Without a
validation pair, `val-fraction` of the training rows is held out (seeded by the scenario's
seed and the node's partition id); without a test pair, the node is scored on its
validation split and says so in the log. Needs only numpy and torch: no simulation extras.
"""

from __future__ import annotations

import logging
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedlth.config.core_options import core
from fedlth.data.client_data import ClientData

log = logging.getLogger("fedlth")

REQUIRED = ("x_train", "y_train")
PAIRS = (("x_val", "y_val"), ("x_test", "y_test"))
_VAL_STREAM = 11  # keeps this split's random stream apart from the partitioner's


class LocalDataError(ValueError):
    """A node's data file is missing, unreadable or malformed."""


def _arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise LocalDataError(f"data-file {str(path)!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise LocalDataError(f"data-file {str(path)!r} is a single array; it must be an .npz archive (numpy.savez)")
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, LocalDataError):
            raise
        raise LocalDataError(f"data-file {str(path)!r} is not a readable .npz archive: {exc}") from None


def _check(path: Path, a: dict[str, np.ndarray]) -> None:
    missing = [k for k in REQUIRED if k not in a]
    for x, y in PAIRS:
        if (x in a) != (y in a):
            missing.append(y if x in a else x)
    if missing:
        raise LocalDataError(
            f"data-file {str(path)!r} lacks array(s) {missing}; it needs x_train and y_train, "
            f"optionally x_val with y_val and x_test with y_test (has: {sorted(a)})"
        )
    shape = a["x_train"].shape[1:]
    for x, y in (("x_train", "y_train"), *PAIRS):
        if x not in a:
            continue
        if a[x].ndim < 2 or a[x].shape[1:] != shape:
            raise LocalDataError(f"data-file {str(path)!r}: {x} has shape {a[x].shape}; expected (N, {', '.join(map(str, shape))})")
        if a[y].ndim != 1 or len(a[y]) != len(a[x]):
            raise LocalDataError(f"data-file {str(path)!r}: {y} must hold one label per row of {x}; got shape {a[y].shape}")
        if not np.issubdtype(a[y].dtype, np.integer) or (len(a[y]) and a[y].min() < 0):
            raise LocalDataError(f"data-file {str(path)!r}: {y} must hold integer labels >= 0; got {a[y].dtype}")
        if not np.issubdtype(a[x].dtype, np.number) or not np.isfinite(a[x]).all():
            raise LocalDataError(f"data-file {str(path)!r}: {x} must hold finite numbers")
    if len(a["y_train"]) == 0:
        raise LocalDataError(f"data-file {str(path)!r}: x_train is empty")


def _split(n: int, fraction: float, seed: int, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    n_val = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng([seed, _VAL_STREAM, partition_id]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@lru_cache(maxsize=4)
def _load(path: str, stamp: tuple[int, int], val_fraction: float, seed: int, partition_id: int) -> ClientData:
    file = Path(path)
    a = _arrays(file)
    _check(file, a)
    x, y = a["x_train"].astype(np.float32), a["y_train"].astype(np.int64)
    if "x_val" in a:
        xv, yv = a["x_val"].astype(np.float32), a["y_val"].astype(np.int64)
    else:
        tr, va = _split(len(y), val_fraction, seed, partition_id)
        x, y, xv, yv = x[tr], y[tr], x[va], y[va]
    if "x_test" in a:
        xt, yt = a["x_test"].astype(np.float32), a["y_test"].astype(np.int64)
    else:
        log.warning("fedlth: data-file %s has no x_test/y_test; this node is scored on its validation split", file)
        xt, yt = xv, yv
    labels = np.concatenate([y, yv, yt])
    classes = int(a["num_classes"]) if "num_classes" in a else int(labels.max()) + 1
    if labels.max() >= classes:
        raise LocalDataError(f"data-file {str(file)!r}: label {int(labels.max())} is not below num_classes = {classes}")
    if "input_range" in a:
        lo, hi = (float(v) for v in np.asarray(a["input_range"]).reshape(2))
    else:
        xs = [v for v in (x, xv, xt) if v.size]
        lo, hi = min(float(v.min()) for v in xs), max(float(v.max()) for v in xs)
    sensitive = {k.removeprefix("sensitive_"): v for k, v in a.items() if k.startswith("sensitive_")}
    bad = [k for k, v in sensitive.items() if len(v) != len(yt)]
    if bad:
        raise LocalDataError(f"data-file {str(file)!r}: sensitive_{bad[0]} needs one entry per test sample ({len(yt)})")
    t = torch.from_numpy
    return ClientData(
        t(np.ascontiguousarray(x)), t(np.ascontiguousarray(y)), t(np.ascontiguousarray(xv)), t(np.ascontiguousarray(yv)),
        t(np.ascontiguousarray(xt)), t(np.ascontiguousarray(yt)), tuple(int(s) for s in x.shape[1:]), classes,
        (lo, hi if hi > lo else lo + 1.0), sensitive,
    )


def local_client_data(path: str | Path, sc: dict[str, Any], partition_id: int) -> ClientData:
    """The node's tensors from its data file (cached while the file is unchanged)."""
    file = Path(path).expanduser()
    try:
        st = file.stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = (0, 0)
    c = core(sc)
    return _load(str(file.resolve()), stamp, float(c.data.val_fraction), int(c.general.seed), int(partition_id))


def save_local_data(path: str | Path, data: ClientData) -> Path:
    """Write a ClientData as a data file (what `fedlth deploy export-data` ships to devices)."""
    import io

    from fedlth.reporting.io import write_bytes_atomic

    arrays: dict[str, np.ndarray] = {
        "x_train": data.x_train.numpy(), "y_train": data.y_train.numpy(), "x_val": data.x_val.numpy(),
        "y_val": data.y_val.numpy(), "x_test": data.x_test.numpy(), "y_test": data.y_test.numpy(),
        "num_classes": np.asarray(data.num_classes, dtype=np.int64),
        "input_range": np.asarray(data.input_range, dtype=np.float64),
    }
    for name, values in data.sensitive_test.items():
        values = np.asarray(values)
        arrays[f"sensitive_{name}"] = values.astype(str) if values.dtype == object else values
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(path)
    write_bytes_atomic(path, buf.getvalue())
    return path
