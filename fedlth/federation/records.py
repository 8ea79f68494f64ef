"""The one place where Flower records meet fedlth's dicts of tensors, arrays and scalars."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.constant import SType

from fedlth.federation import fedpm, wire, wire_delta
from fedlth.tickets.masks import Mask, Weights

ConfigValue = int | float | str | bool
MetricValue = int | float


_NPY_CACHE = 4096  # distinct (dtype, shape) headers kept: a hostile peer must not grow it without bound
_npy_heads: dict[tuple[str, tuple[int, ...]], bytes] = {}
_npy_layouts: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}


def _npy_bytes(a: np.ndarray) -> bytes:
    """np.save's bytes for a C-contiguous array: its header, cached per dtype and shape (np.save
    formats it afresh each time, which costs more than copying a small model's values)."""
    key = (a.dtype.str, a.shape)
    head = _npy_heads.get(key)
    if head is None:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        full = buf.getvalue()
        head = full[: len(full) - a.nbytes]
        if len(_npy_heads) < _NPY_CACHE:
            _npy_heads[key] = head
        return full
    return head + a.tobytes()


_dtype_names: dict[np.dtype, str] = {}  # str(dtype) costs more than a small tensor's bytes


def _array(a: np.ndarray) -> Array:
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)  # (not for every array: it makes a 0-d array 1-d)
    if a.dtype.hasobject:
        return Array(a)  # Flower refuses it, with its own message
    name = _dtype_names.get(a.dtype)
    if name is None:
        name = str(a.dtype)
        if len(_dtype_names) < _NPY_CACHE:
            _dtype_names[a.dtype] = name
    return Array(dtype=name, shape=tuple(map(int, a.shape)), stype=SType.NUMPY, data=_npy_bytes(a))


def _npy_array(value: Array) -> np.ndarray:
    """What Array.numpy() gives (np.load of its bytes), reading a header seen before from a cache."""
    data = value.data
    if value.stype != SType.NUMPY or len(data) < 10 or data[6] not in (1, 2):
        return value.numpy()  # Flower's own checks and errors
    start = 10 + int.from_bytes(data[8:10], "little") if data[6] == 1 else 12 + int.from_bytes(data[8:12], "little")
    head = bytes(data[:start])
    layout = _npy_layouts.get(head)
    if layout is None:
        a = value.numpy()  # np.load parses and checks the header (and refuses pickles)
        if a.flags.c_contiguous and len(_npy_layouts) < _NPY_CACHE:  # (a Fortran-order payload is not)
            _npy_layouts[head] = (a.dtype, a.shape)
        return a
    dtype, shape = layout
    count = math.prod(shape)
    if len(data) - start < count * dtype.itemsize:
        raise ValueError(f"array data has {len(data) - start} bytes; shape {shape} of {dtype} needs {count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape).copy()


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord holding each array under its key, in the mapping's order."""
    # ArrayRecord(...) does not accept a dict of ndarrays (only of Array, torch tensors or a
    # list of ndarrays with generated keys), so wrap each one; Array(ndarray) is np.save.
    record = ArrayRecord()
    for k, a in arrays.items():
        record[k] = _array(np.asarray(a))
    return record


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays by key, in the record's order (fresh, writable numpy arrays)."""
    return {k: _npy_array(v) for k, v in record.items()}


WIRE_DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def encode_record(
    weights: Weights, mask: Mask | None, *, with_shapes: bool = True, wire_dtype: str = "float32", codec: str = "none",
    base: wire_delta.Base | None = None, version: int = -1,
) -> ArrayRecord:
    """Weights in the sparse wire format (see fedlth.federation.wire), ready for a Message; `wire_dtype`
    and `codec` are the scenario keys wire-dtype and wire-codec. bfloat16, a codec or a `base`
    (a delta against what the receiver holds) or a `version` (>= 0: the download's version, its
    server round minus one) take the coded format (fedlth.federation.wire_delta); the defaults keep the
    plain format."""
    if wire_dtype == "bfloat16" or codec != "none" or base is not None or version >= 0:
        return to_array_record(wire_delta.encode(weights, mask, value_dtype=wire_dtype, codec=codec, base=base, version=version))
    return to_array_record(wire.encode(weights, mask, with_shapes=with_shapes, value_dtype=WIRE_DTYPES[wire_dtype]))


def decode_record(
    record: ArrayRecord, shapes: Mapping[str, tuple[int, ...]] | None = None,
    dtypes: Mapping[str, torch.dtype] | None = None, base: wire_delta.Base | None = None,
) -> tuple[Weights, Mask]:
    """Weights and mask from a sparse-format or coded record (narrow values widened to `dtypes`);
    a delta decodes against `base` only if that is the base it names. Raises wire.WireError
    when malformed."""
    arrays = from_array_record(record)
    if wire_delta.HEAD in arrays:
        if shapes is None or dtypes is None:
            raise wire.WireError("a coded payload needs the receiver's shapes and dtypes")
        return wire_delta.decode(arrays, shapes, dtypes, base)
    return wire.decode(arrays, shapes, dtypes)



def encode_mask_upload(mask: Mask, names: list[str], codec: str) -> ArrayRecord:
    """FedPM's upload: the sampled mask as packed bits (through `codec`) in one array, no values."""
    return to_array_record(fedpm.encode_upload(mask, names, codec))


def decode_mask_upload(record: ArrayRecord, names: list[str], shapes: Mapping[str, tuple[int, ...]], codec: str) -> Mask:
    """The mask of a FedPM upload; ValueError when the record holds anything else or is malformed."""
    return fedpm.decode_upload(from_array_record(record), names, shapes, codec)


def record_bytes(record: ArrayRecord) -> int:
    """Bytes Flower ships for the record: every Array's np.save bytes plus its key."""
    # count_bytes() adds len(key) per entry to len(Array.data); Array.data includes the
    # .npy header (128 bytes for ordinary arrays), so tiny tensors cost more sparse than dense.
    return record.count_bytes()


def weights_to_record(weights: Weights) -> ArrayRecord:
    """Every tensor dense and exact, for Context.state or a reply Flower's FedAvg can read."""
    return to_array_record({k: wire.to_numpy(w, k) for k, w in weights.items()})


def weights_from_record(record: ArrayRecord) -> Weights:
    """Tensors back from weights_to_record, dtypes and shapes exact."""
    return {k: torch.from_numpy(a) for k, a in from_array_record(record).items()}


def mask_to_record(mask: Mask) -> ArrayRecord:
    """A mask as dense bool arrays (one byte per entry: simple and exact for local state)."""
    for k, m in mask.items():
        if m.dtype != torch.bool:
            raise ValueError(f"mask {k!r} has dtype {m.dtype}; expected torch.bool")
    return weights_to_record(mask)


def mask_from_record(record: ArrayRecord) -> Mask:
    """A mask back from mask_to_record; rejects non-bool arrays."""
    mask = weights_from_record(record)
    for k, m in mask.items():
        if m.dtype != torch.bool:
            raise ValueError(f"record entry {k!r} has dtype {m.dtype}; a mask needs bool")
    return mask


def _scalar(value: object) -> object:
    # numpy scalars (np.int64 is not an int) would be rejected by Flower's type checks.
    return value.item() if isinstance(value, np.generic) else value


def config_to_record(d: Mapping[str, ConfigValue | None]) -> ConfigRecord:
    """A ConfigRecord of scalars; None values are left out (None means "not set")."""
    items = {k: _scalar(v) for k, v in d.items() if v is not None}
    for k, v in items.items():
        if not isinstance(v, int | float | str | bool):
            raise TypeError(
                f"config {k!r} has type {type(v).__name__}; expected int|float|str|bool"
            )
    return ConfigRecord(items)


def config_from_record(record: ConfigRecord) -> dict[str, ConfigValue]:
    """The record's scalars as a plain dict."""
    return dict(record.items())


def metrics_to_record(d: Mapping[str, MetricValue | bool | None]) -> MetricRecord:
    """A MetricRecord of numbers; None values are left out, bools become 0/1.

    Flower's MetricRecord rejects bool, but decisions such as "pruned this round" are
    worth averaging across clients as rates.
    """
    items: dict[str, MetricValue] = {}
    for k, v in d.items():
        v = _scalar(v)
        if v is None:
            continue
        if isinstance(v, bool):
            v = int(v)
        if not isinstance(v, int | float):
            raise TypeError(f"metric {k!r} has type {type(v).__name__}; expected int|float")
        items[k] = v
    return MetricRecord(items)


def metrics_from_record(record: MetricRecord) -> dict[str, MetricValue]:
    """The record's numbers as a plain dict."""
    return dict(record.items())
