"""Masked aggregation: combine each weight entry over the clients that keep it.

The mean (`masked_mean`, or `MaskedMeanStream` to fold replies in as they arrive) is the
default; `masked_median` and `masked_trimmed_mean` are robust rules for adversarial clients.
`get_aggregator` maps the scenario key `aggregation` to one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from fedlth.tickets.masks import Mask, Weights


@dataclass(frozen=True)
class Update:
    """One client's reply: full-shape weights (pruned entries 0), its mask, its example count.

    `weights` holds every name of the model state. `mask` names only the masked (prunable)
    tensors; a name the mask lacks (or `{}`, a dense client) counts as keeping every entry.
    """

    weights: Weights
    mask: Mask
    num_examples: int


def _check_finite(w: Tensor) -> bool:
    """True when every entry of a floating tensor is finite (no NaN, no ±Inf)."""
    if w.numel() == 0:
        return True
    # Fast path: a finite sum proves every entry finite (NaN and Inf both propagate), and
    # it costs ~1/30 of isfinite().all(). A sum that overflows proves nothing: check exactly.
    return bool(torch.isfinite(w.sum())) or bool(torch.isfinite(w).all())


def validate_update(previous: Weights, u: Update, client: object = "?") -> None:
    """Raise ValueError, naming `client`, unless `u` can be aggregated into `previous`.

    Every rule here runs this on every update. A caller that collects a list for a robust
    rule can run it per reply first, to reject one bad reply instead of failing the round.
    """
    n = u.num_examples
    # bool is an int subclass; True examples is almost surely a bug.
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"client {client}: num_examples must be an int > 0; got {n!r}")
    missing = sorted(set(previous) - set(u.weights))
    unknown = sorted(set(u.weights) - set(previous))
    if missing or unknown:
        raise ValueError(
            f"client {client}: weight names differ; missing {missing}, unknown {unknown}"
        )
    for name, w in u.weights.items():
        prev = previous[name]
        if w.shape != prev.shape:
            raise ValueError(
                f"client {client}: {name!r} has shape {tuple(w.shape)}; "
                f"expected {tuple(prev.shape)}"
            )
        if w.dtype.is_floating_point != prev.dtype.is_floating_point:
            raise ValueError(
                f"client {client}: {name!r} has dtype {w.dtype}; expected {prev.dtype}"
            )
        # One NaN would poison every average it enters, even at pruned positions (0 * nan).
        if w.dtype.is_floating_point and not _check_finite(w):
            raise ValueError(f"client {client}: {name!r} has NaN or Inf values")
    for name, m in u.mask.items():
        if name not in previous:
            raise ValueError(f"client {client}: mask names unknown weight {name!r}")
        if m.dtype != torch.bool:
            raise ValueError(
                f"client {client}: mask {name!r} has dtype {m.dtype}; expected torch.bool"
            )
        if m.shape != previous[name].shape:
            raise ValueError(
                f"client {client}: mask {name!r} has shape {tuple(m.shape)}; "
                f"expected {tuple(previous[name].shape)}"
            )


def _validate(previous: Weights, updates: Sequence[Update]) -> None:
    """Raise ValueError naming the first client whose update cannot be averaged into `previous`."""
    for i, u in enumerate(updates):
        validate_update(previous, u, i)


def _cast_like(x: Tensor, like: Tensor) -> Tensor:
    """Cast a float64 result back to `like`'s dtype; integer buffers are rounded, not truncated."""
    if like.dtype.is_floating_point or like.dtype.is_complex:
        return x.to(like.dtype)
    # Round half to even, so e.g. BatchNorm's num_batches_tracked stays an integer count.
    return torch.round(x).to(like.dtype)


class MaskedMeanStream:
    """Masked mean folded one update at a time: memory O(model), not O(clients × model).

    Per weight name it keeps a float64 numerator Σ n_i m_i w_i and an integer denominator
    Σ n_i m_i (one scalar, Σ n_i, until some update masks that name), so a
    server can fold each reply in as it arrives and drop it. `result()` equals
    `masked_mean(previous, updates)` for the updates added, with the same rules: an entry
    no client keeps keeps `previous`; names no update masks get the example-weighted mean;
    integer buffers are rounded; results take `previous`'s dtypes.

    Order: the denominators are sums of integers and exact in any order, but float sums of
    the numerators depend on the order of folding (last-bit differences in float64, which
    rarely survive the cast back to float32). Callers that need bit-reproducible results
    must fold in a fixed order; the server sorts replies by client id.

    Memory: 8 bytes per parameter for numerators, 4 more per masked parameter for
    denominators (int32, widened to int64 should Σ n_i pass 2^31 − 1), plus one copy of
    `previous`; each `add` allocates only per-tensor temporaries and keeps no reference to
    the update.
    """

    def __init__(self, previous: Weights) -> None:
        # A copy, so a caller that changes `previous` in place cannot change the result.
        self._previous: Weights = {name: t.detach().clone() for name, t in previous.items()}
        self._num: dict[str, Tensor] = {
            name: torch.zeros(t.shape, dtype=torch.float64) for name, t in previous.items()
        }
        # name -> integer tensor once some update masks the name; until then Σ n_i is `_total`.
        # Integer sums are exact in any order; int32 adds a bool mask ~4x faster than float64.
        self._den: dict[str, Tensor] = {}
        self._den_dtype = torch.int32
        self._total = 0
        self._count = 0
        self._offered = 0

    @property
    def count(self) -> int:
        """Number of updates folded in (rejected ones don't count)."""
        return self._count

    def add(self, update: Update, *, client: object = None) -> None:
        """Fold one update in, or raise ValueError and leave the accumulator unchanged.

        Validation is `masked_mean`'s, for this one update. Errors name `client`, by
        default the 0-based position of this call among all `add` calls (rejected included).
        """
        label = self._offered if client is None else client
        self._offered += 1
        validate_update(self._previous, update, label)  # raises before anything is touched
        n = update.num_examples
        if self._total + n > torch.iinfo(self._den_dtype).max:
            self._den_dtype = torch.int64
            self._den = {name: den.to(torch.int64) for name, den in self._den.items()}
        for name, num in self._num.items():
            w = update.weights[name]
            m = update.mask.get(name)
            if m is None:
                # Mixed dtypes: torch casts w to float64 on the fly, without a full copy.
                num.add_(w, alpha=float(n))
                den = self._den.get(name)
                if den is not None:
                    den.add_(n)
                continue
            # where, not multiply: a pruned entry contributes exactly nothing. (addcmul_(w, m)
            # was as fast in most processes but 3x slower in some, for reasons not found.)
            num.add_(torch.where(m, w, 0), alpha=float(n))
            den = self._den.get(name)
            if den is None:
                # First mask on this name: every earlier update kept all of it.
                den = self._den[name] = torch.full(m.shape, self._total, dtype=self._den_dtype)
            den.add_(m, alpha=n)
        self._total += n
        self._count += 1

    def result(self) -> Weights:
        """The new global weights for the updates folded so far (a copy of `previous` if none).

        Doesn't consume the accumulator: more updates may be added afterwards.
        """
        if self._count == 0:
            return {name: t.clone() for name, t in self._previous.items()}
        out: Weights = {}
        for name, prev in self._previous.items():
            num = self._num[name]
            den = self._den.get(name)
            if den is None:  # nobody masks it: every client keeps every entry
                out[name] = _cast_like(num / self._total, prev)
                continue
            kept = den > 0
            mean = num / torch.where(kept, den, 1).to(torch.float64)
            out[name] = _cast_like(torch.where(kept, mean, prev.to(torch.float64)), prev)
        return out


def masked_mean(previous: Weights, updates: Sequence[Update]) -> Weights:
    """The new global weights: Σ n_i m_i w_i / Σ n_i m_i per masked entry, else `previous`.

    For masked names (any update's mask names them), an entry no client keeps keeps its
    previous global value, so one client's pruning never erases what others still use.
    Unmasked tensors get the example-weighted mean. Integer tensors get the weighted mean
    rounded to the nearest integer. Sums run in float64; results take `previous`'s dtypes.
    This is `MaskedMeanStream` with the updates folded in the order given; the first
    invalid update raises ValueError naming its index.
    """
    stream = MaskedMeanStream(previous)
    for i, u in enumerate(updates):
        stream.add(u, client=i)
    return stream.result()


def dense_mean(updates: Sequence[Update]) -> Weights:
    """Plain FedAvg: the example-weighted mean of every tensor, masks ignored."""
    if not updates:
        raise ValueError("dense_mean needs at least one update")
    dense = [Update(u.weights, {}, u.num_examples) for u in updates]
    # The first update only supplies names, shapes and dtypes; with no masks it never
    # supplies values.
    return masked_mean(updates[0].weights, dense)


# --- robust rules ------------------------------------------------------------------------
#
# Median and trimmed mean need every client's value of an entry at once, so unlike the
# mean they can't be folded in: they hold O(clients × model) (the caller's list of updates)
# plus O(clients × chunk) temporaries, the values of one slice of one tensor at a time.

# Entries of one (clients, columns) float64 slice (4 MiB); the sort and the reduction add a
# few temporaries of the same size. Smaller slices cost Python overhead, larger ones memory.
_CHUNK_ELEMENTS = 1 << 19


def _robust(
    previous: Weights, updates: Sequence[Update], reduce: Callable[[Tensor, Tensor], Tensor]
) -> Weights:
    """Apply `reduce` per entry to the values of the clients that keep it.

    `reduce(values, k)` gets a (clients, columns) float64 tensor sorted ascending down each
    column with the non-keepers' NaNs last, and the (columns,) keeper counts k > 0; it
    returns one float64 per column. Columns nobody keeps take `previous`.
    """
    if not updates:
        return {name: t.clone() for name, t in previous.items()}
    _validate(previous, updates)
    clients = len(updates)
    step = max(1, _CHUNK_ELEMENTS // clients)
    out: Weights = {}
    for name, prev in previous.items():
        flat_prev = prev.reshape(-1)
        flat_w = [u.weights[name].reshape(-1) for u in updates]
        flat_m = [None if name not in u.mask else u.mask[name].reshape(-1) for u in updates]
        res = torch.empty(prev.numel(), dtype=torch.float64)
        for lo in range(0, prev.numel(), step):
            hi = min(lo + step, prev.numel())
            vals = torch.empty((clients, hi - lo), dtype=torch.float64)
            for i, (w, m) in enumerate(zip(flat_w, flat_m, strict=True)):
                vals[i] = w[lo:hi]
                if m is not None:
                    vals[i].masked_fill_(~m[lo:hi], float("nan"))
            k = (~torch.isnan(vals)).sum(dim=0)  # values are finite: NaN means "not kept"
            vals = torch.sort(vals, dim=0).values  # NaN sorts last
            r = reduce(vals, k.clamp(min=1))
            res[lo:hi] = torch.where(k > 0, r, flat_prev[lo:hi].to(torch.float64))
        out[name] = _cast_like(res.reshape(prev.shape), prev)
    return out


def _median_sorted(vals: Tensor, k: Tensor) -> Tensor:
    """Median of the first k values of each sorted column; even k: mean of the middle two."""
    lower = vals.gather(0, ((k - 1) // 2).unsqueeze(0)).squeeze(0)
    upper = vals.gather(0, (k // 2).unsqueeze(0)).squeeze(0)
    return (lower + upper) / 2


def masked_median(previous: Weights, updates: Sequence[Update]) -> Weights:
    """Coordinate-wise median over the clients that keep each entry; else `previous`.

    Masking, validation, integer rounding and dtypes follow `masked_mean`. The median is
    unweighted (example counts only gate validity), and an even number k of keepers gives
    the mean of the two middle values, as numpy.median does (torch.nanmedian would take
    the lower one). Robust to fewer than k/2 arbitrary values per entry: the result then
    lies within the range of the honest keepers' values.

    Needs every client's value of an entry at once: O(clients × model) memory (the list of
    updates) and time O(clients · log(clients) × model); no streaming form.
    """
    return _robust(previous, updates, _median_sorted)


def _check_trim_fraction(trim_fraction: float) -> None:
    if (
        isinstance(trim_fraction, bool)
        or not isinstance(trim_fraction, int | float)
        or not 0.0 <= trim_fraction < 0.5
    ):
        raise ValueError(f"trim_fraction must be a number in [0, 0.5); got {trim_fraction!r}")


def masked_trimmed_mean(
    previous: Weights, updates: Sequence[Update], trim_fraction: float
) -> Weights:
    """Coordinate-wise trimmed mean over the clients that keep each entry; else `previous`.

    For an entry kept by k clients, cut = floor(trim_fraction × k) values (computed in
    float64, as scipy.stats.trim_mean does) are dropped from each end of the sorted kept
    values and the remaining k − 2·cut are averaged, unweighted by example counts. With
    trim_fraction in [0, 0.5), k − 2·cut ≥ 1 always; trim_fraction = 0 gives the plain
    unweighted mean of the keepers. Robust to at most `cut` arbitrary values per entry:
    the result then lies within the range of the honest keepers' values. Note that an entry
    kept by few clients gets cut = 0, no protection at all (e.g. k < 10 at 0.1).

    Masking, validation, integer rounding and dtypes follow `masked_mean`. Needs every
    client's value of an entry at once: O(clients × model) memory; no streaming form.
    """
    _check_trim_fraction(trim_fraction)
    frac = float(trim_fraction)

    def reduce(vals: Tensor, k: Tensor) -> Tensor:
        cut = torch.floor(frac * k.to(torch.float64)).to(torch.int64)
        keep = k - 2 * cut  # ≥ 1, since cut ≤ frac·k < k/2
        row = torch.arange(vals.shape[0]).unsqueeze(1)
        inside = (row >= cut) & (row < k - cut)  # excludes the NaNs at rows ≥ k
        return torch.where(inside, vals, 0.0).sum(dim=0) / keep

    return _robust(previous, updates, reduce)


# --- registry ----------------------------------------------------------------------------

Aggregator = Callable[[Weights, Sequence[Update]], Weights]

# Scenario key `aggregation` -> rule; `masked_trimmed_mean` also takes trim_fraction.
AGGREGATORS: Mapping[str, Callable[..., Weights]] = MappingProxyType(
    {"mean": masked_mean, "median": masked_median, "trimmed-mean": masked_trimmed_mean}
)


def get_aggregator(name: str, trim_fraction: float = 0.1, sc: Mapping[str, Any] | None = None) -> Aggregator:
    """The rule a scenario names, as `(previous, updates) -> weights`.

    `trim_fraction` (scenario key `trim-fraction`) is bound for "trimmed-mean" and ignored
    by the others. A plug-in rule (fedlth.config.plugins) is made from the scenario `sc`, which holds
    its own keys.
    """
    from fedlth.config import registry

    if name not in AGGREGATORS:
        component = registry.get("aggregation", name)  # an unknown name: ValueError listing the valid ones
        if component in registry.BUILTINS:  # qffl: the strategy folds replies with their losses
            raise ValueError(f"aggregation {name!r} is not a (previous, updates) rule; server/strategy.py folds it")
        return component.load()(dict(sc or {}))
    if name == "trimmed-mean":
        _check_trim_fraction(trim_fraction)
        return partial(masked_trimmed_mean, trim_fraction=trim_fraction)
    return AGGREGATORS[name]
