"""Sparse wire format: packed mask bits plus kept values per masked tensor, exact both ways."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fedlth.tickets.bits import pack, unpack
from fedlth.tickets.masks import Mask, Weights, validate_mask

SEP = "@"
BITS, VALUES, SHAPE = "bits", "values", "shape"
SUFFIXES = (BITS, VALUES, SHAPE)


class WireError(ValueError):
    """An encoded payload is malformed or does not match what the receiver expects."""


def to_numpy(t: torch.Tensor, name: str) -> np.ndarray:
    """The one tensor -> numpy conversion (records, wire, export): detached, on the CPU,
    contiguous; a dtype numpy lacks (bfloat16) raises WireError, a ValueError, naming the tensor."""
    try:
        return t.detach().cpu().contiguous().numpy()
    except TypeError as e:  # e.g. bfloat16 has no numpy dtype
        raise WireError(f"{name!r}: dtype {t.dtype} has no numpy equivalent (it cannot go on the wire as it is)") from e


def _narrow(t: torch.Tensor, value_dtype: torch.dtype | None) -> torch.Tensor:
    # only wider floats narrow: integer buffers (BatchNorm's counter) and masks stay exact
    if value_dtype is None or not t.dtype.is_floating_point or t.element_size() <= torch.finfo(value_dtype).bits // 8:
        return t
    return t.to(value_dtype)


def encode(
    weights: Weights, mask: Mask | None, *, with_shapes: bool = True, value_dtype: torch.dtype | None = None
) -> dict[str, np.ndarray]:
    """Flat arrays for the wire; masked tensors send only their kept values.

    `value_dtype` (e.g. torch.float16) narrows every floating tensor for transport; the
    receiver widens it back (decode's `dtypes`). Pruned positions stay exact zeros either way.

    A masked name becomes "<name>@bits" (np.packbits of the row-major mask, uint8),
    "<name>@values" (kept values in row-major order, the tensor's dtype) and "<name>@shape"
    (int64; left out with `with_shapes=False` when the receiver knows the model's shapes,
    which saves an array header per tensor). Every other tensor goes as "<name>" (dense).
    Values at pruned positions are dropped, so the receiver sees exact zeros there.
    """
    mask = mask or {}
    validate_mask(mask, weights)
    out: dict[str, np.ndarray] = {}
    for name, w in weights.items():
        if SEP in name:
            raise WireError(f"tensor name {name!r} contains the reserved separator {SEP!r}")
        w = _narrow(w, value_dtype)
        if name not in mask:
            out[name] = to_numpy(w, name).copy()
            continue
        m = mask[name].detach().cpu().contiguous()
        out[f"{name}{SEP}{BITS}"] = pack(m.numpy())
        out[f"{name}{SEP}{VALUES}"] = to_numpy(w.detach().cpu()[m], name)
        if with_shapes:
            out[f"{name}{SEP}{SHAPE}"] = np.asarray(tuple(w.shape), dtype=np.int64)
    return out


def _check_finite(a: np.ndarray, key: str) -> None:
    if a.dtype.kind in "fc" and not bool(np.isfinite(a).all()):  # (np.issubdtype(_, np.inexact), cheaper)
        raise WireError(f"{key!r} has NaN or Inf values")


def _to_tensor(a: np.ndarray, key: str) -> torch.Tensor:
    try:
        # A private copy: the result must not alias the caller's (or Flower's) buffers.
        return torch.from_numpy(np.array(a, copy=True, order="C"))
    except TypeError as e:
        raise WireError(f"{key!r}: dtype {a.dtype} is not supported by torch") from e


def _unpack_mask(bits: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The bool mask from packed bits, rejecting a wrong length or set padding bits."""
    try:
        return unpack(bits, int(np.prod(shape, dtype=np.int64)), f"{name + SEP + BITS!r} of shape {shape}").reshape(shape)
    except ValueError as e:
        raise WireError(str(e)) from None


def _shape_of(
    name: str, parts: dict[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]] | None
) -> tuple[int, ...]:
    key = f"{name}{SEP}{SHAPE}"
    if SHAPE not in parts:
        if shapes is not None and name in shapes:
            return tuple(int(s) for s in shapes[name])
        raise WireError(f"{name!r} has bits but no {key!r}")
    arr = parts[SHAPE]
    if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 1:
        raise WireError(f"{key!r} must be a 1-D integer array; got {arr.dtype} {arr.shape}")
    if (arr < 0).any():
        raise WireError(f"{key!r} has negative dimensions {arr.tolist()}")
    return tuple(int(s) for s in arr)


def _widen(weights: Weights, dtypes: Mapping[str, torch.dtype] | None) -> Weights:
    """Floats that travelled narrower than the receiver's model widened back; nothing else changes."""
    if dtypes is None:
        return weights
    out: Weights = {}
    for name, w in weights.items():
        want = dtypes.get(name)
        narrower = want is not None and want.is_floating_point and w.dtype in (torch.float16, torch.bfloat16)
        out[name] = w.to(want) if narrower and want != w.dtype else w
    return out


def decode(
    arrays: Mapping[str, np.ndarray],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    dtypes: Mapping[str, torch.dtype] | None = None,
) -> tuple[Weights, Mask]:
    """Full tensors (zeros at pruned positions) and the mask of the names that came with bits.

    With `dtypes`, float16 values of a name the receiver holds in a wider float are widened
    to it (the sender's `value_dtype`); any other dtype arrives as sent, for the caller to check.

    With `shapes`, every decoded name must be one of them with that shape, and a masked
    name may omit "<name>@shape". Names are not required to be complete: the caller
    decides whether a missing tensor is an error. Raises WireError on any malformed input.
    """
    dense: dict[str, np.ndarray] = {}
    sparse: dict[str, dict[str, np.ndarray]] = {}
    for key, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise WireError(f"{key!r} is a {type(a).__name__}; expected a numpy array")
        if SEP not in key:
            dense[key] = a
            continue
        name, suffix = key.rsplit(SEP, 1)
        if suffix not in SUFFIXES:
            raise WireError(f"{key!r} has an unknown suffix; expected one of {SUFFIXES}")
        if SEP in name:
            raise WireError(f"{key!r}: tensor names must not contain {SEP!r}")
        sparse.setdefault(name, {})[suffix] = a
    both = sorted(set(dense) & set(sparse))
    if both:
        raise WireError(f"{both} arrive both dense and sparse")

    weights: Weights = {}
    mask: Mask = {}
    # Keep the sender's order: the first key of each name decides its position.
    order = list(dict.fromkeys(k.rsplit(SEP, 1)[0] if SEP in k else k for k in arrays))
    for name in order:
        if name in dense:
            a = dense[name]
            _check_finite(a, name)
            weights[name] = _to_tensor(a, name)
            continue
        parts = sparse[name]
        if BITS not in parts or VALUES not in parts:
            raise WireError(
                f"{name!r} needs both {SEP}{BITS} and {SEP}{VALUES}; got {sorted(parts)}"
            )
        shape = _shape_of(name, parts, shapes)
        m = _unpack_mask(parts[BITS], shape, name)
        values = parts[VALUES]
        vkey = f"{name}{SEP}{VALUES}"
        if values.ndim != 1:
            raise WireError(f"{vkey!r} must be 1-D; got shape {values.shape}")
        kept = int(m.sum())
        if values.size != kept:
            raise WireError(f"{vkey!r} has {values.size} values; the mask keeps {kept}")
        _check_finite(values, vkey)
        full = np.zeros(shape, dtype=values.dtype)
        full[m] = values  # boolean assignment fills in row-major order, as encode read them
        weights[name] = _to_tensor(full, vkey)
        mask[name] = torch.from_numpy(m)

    if shapes is not None:
        for name, w in weights.items():
            if name not in shapes:
                raise WireError(f"unexpected tensor {name!r}; known: {sorted(shapes)}")
            if tuple(w.shape) != tuple(shapes[name]):
                raise WireError(
                    f"{name!r} has shape {tuple(w.shape)}; expected {tuple(shapes[name])}"
                )
    return _widen(weights, dtypes), mask


def dense_size_bytes(weights: Weights) -> int:
    """Bytes of the raw tensor data if every tensor were sent dense."""
    return sum(w.numel() * w.element_size() for w in weights.values())


def payload_bytes(arrays: Mapping[str, np.ndarray]) -> int:
    """Bytes of the raw array data of an encoding (no container or header overhead)."""
    return sum(int(a.nbytes) for a in arrays.values())
