"""Masks as packed bits: the one packing and the one checked unpacking behind every format
that carries a mask (the sparse wire, the coded wire, FedPM's uplink, exported tickets)."""

from __future__ import annotations

import numpy as np


def pack(keep: np.ndarray) -> np.ndarray:
    """The row-major bits of a bool array, 8 to a byte (np.packbits: the last byte zero-padded)."""
    return np.packbits(np.asarray(keep, dtype=bool).reshape(-1))


def unpack(bits: np.ndarray, n: int, what: str) -> np.ndarray:
    """The first `n` bits of `bits` as a flat bool array. ValueError, naming `what`, for anything
    but 1-D uint8 bytes of exactly ⌈n/8⌉, or a padding bit that is set (a sender that sets one
    is not one of ours: refusing it keeps every mask one byte string)."""
    if not isinstance(bits, np.ndarray) or bits.dtype != np.uint8 or bits.ndim != 1:
        got = f"{getattr(bits, 'dtype', type(bits).__name__)} of shape {getattr(bits, 'shape', '?')}"
        raise ValueError(f"{what} must be 1-D uint8 bytes; got {got}")
    expected = -(-n // 8)
    if bits.size != expected:
        raise ValueError(f"{what} has {bits.size} bytes; {n} entries need {expected}")
    flat = np.unpackbits(bits)
    if flat[n:].any():
        raise ValueError(f"{what} has padding bits set past entry {n}")
    return flat[:n].astype(bool)
