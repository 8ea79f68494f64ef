"""Masked aggregation: average each weight entry over the clients that keep it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fedlth.masks import Mask, Weights


@dataclass(frozen=True)
class Update:
    """One client's reply: full-shape weights (pruned entries 0), its mask, its example count.

    `weights` holds every name of the model state. `mask` names only the masked (prunable)
    tensors; a name the mask lacks (or `{}`, a dense client) counts as keeping every entry.
    """

    weights: Weights
    mask: Mask
    num_examples: int


def _validate(previous: Weights, updates: Sequence[Update]) -> None:
    """Raise ValueError naming the first client whose update cannot be averaged into `previous`."""
    for i, u in enumerate(updates):
        n = u.num_examples
        # bool is an int subclass; True examples is almost surely a bug.
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"client {i}: num_examples must be an int > 0; got {n!r}")
        missing = sorted(set(previous) - set(u.weights))
        unknown = sorted(set(u.weights) - set(previous))
        if missing or unknown:
            raise ValueError(
                f"client {i}: weight names differ; missing {missing}, unknown {unknown}"
            )
        for name, w in u.weights.items():
            prev = previous[name]
            if w.shape != prev.shape:
                raise ValueError(
                    f"client {i}: {name!r} has shape {tuple(w.shape)}; expected {tuple(prev.shape)}"
                )
            if w.dtype.is_floating_point != prev.dtype.is_floating_point:
                raise ValueError(f"client {i}: {name!r} has dtype {w.dtype}; expected {prev.dtype}")
            # One NaN would poison every average it enters, even at pruned positions (0 * nan).
            if w.dtype.is_floating_point and not bool(torch.isfinite(w).all()):
                raise ValueError(f"client {i}: {name!r} has NaN or Inf values")
        for name, m in u.mask.items():
            if name not in previous:
                raise ValueError(f"client {i}: mask names unknown weight {name!r}")
            if m.dtype != torch.bool:
                raise ValueError(
                    f"client {i}: mask {name!r} has dtype {m.dtype}; expected torch.bool"
                )
            if m.shape != previous[name].shape:
                raise ValueError(
                    f"client {i}: mask {name!r} has shape {tuple(m.shape)}; "
                    f"expected {tuple(previous[name].shape)}"
                )


def _cast_like(x: Tensor, like: Tensor) -> Tensor:
    """Cast a float64 result back to `like`'s dtype; integer buffers are rounded, not truncated."""
    if like.dtype.is_floating_point or like.dtype.is_complex:
        return x.to(like.dtype)
    # Round half to even, so e.g. BatchNorm's num_batches_tracked stays an integer count.
    return torch.round(x).to(like.dtype)


def masked_mean(previous: Weights, updates: Sequence[Update]) -> Weights:
    """The new global weights: Σ n_i m_i w_i / Σ n_i m_i per masked entry, else `previous`.

    For masked names (any update's mask names them), an entry no client keeps keeps its
    previous global value, so one client's pruning never erases what others still use.
    Unmasked tensors get the example-weighted mean. Integer tensors get the weighted mean
    rounded to the nearest integer. Sums run in float64; results take `previous`'s dtypes.
    """
    if not updates:
        return {name: t.clone() for name, t in previous.items()}
    _validate(previous, updates)
    masked = set().union(*(u.mask for u in updates))
    total = float(sum(u.num_examples for u in updates))
    out: Weights = {}
    for name, prev in previous.items():
        num = torch.zeros(prev.shape, dtype=torch.float64)
        if name not in masked:
            for u in updates:
                num += float(u.num_examples) * u.weights[name].to(torch.float64)
            out[name] = _cast_like(num / total, prev)
            continue
        den = torch.zeros(prev.shape, dtype=torch.float64)
        for u in updates:
            n = float(u.num_examples)
            w = u.weights[name].to(torch.float64)
            m = u.mask.get(name)
            if m is None:
                num += n * w
                den += n
            else:
                # where, not multiply: a pruned entry contributes exactly nothing.
                num += torch.where(m, n * w, 0.0)
                den += n * m.to(torch.float64)
        kept = den > 0
        mean = num / torch.where(kept, den, 1.0)
        out[name] = _cast_like(torch.where(kept, mean, prev.to(torch.float64)), prev)
    return out


def dense_mean(updates: Sequence[Update]) -> Weights:
    """Plain FedAvg: the example-weighted mean of every tensor, masks ignored."""
    if not updates:
        raise ValueError("dense_mean needs at least one update")
    dense = [Update(u.weights, {}, u.num_examples) for u in updates]
    # The first update only supplies names, shapes and dtypes; with no masks it never
    # supplies values.
    return masked_mean(updates[0].weights, dense)
