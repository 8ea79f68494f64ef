"""q-FFL (Li, Sanjabi, Beirami, Smith, ICLR 2020): fair aggregation, per weight over the clients that keep it.

The paper's q-FedAvg server step, for clients k with losses F_k at the model w they received
and trained weights w_k, with L the Lipschitz constant (1 / lr in the paper and in Flower):

    Δ_k = L (w − w_k),   h_k = q F_k^(q−1) ‖Δ_k‖² + L F_k^q,   w ← w − Σ_k F_k^q Δ_k / Σ_k h_k.

A client with a higher loss gets a larger share of the step (F_k^q), so q trades mean
accuracy for a fairer spread; q = 0 is FedAvg. In fedlth a client keeps only its ticket, so
the step is taken per weight over the clients that keep it: Δ_k counts only kept entries
(‖Δ_k‖² too), and entry j moves by Σ_{k keeps j} n_k F_k^q Δ_kj / Σ_{k keeps j} n_k h_k, where
n_k is the client's weight in the mean (its example count, or 1 with `weighting = uniform`,
which is the paper's and Flower's unweighted rule). With q = 0 this is the masked mean
exactly (up to float rounding); an entry no client keeps keeps its value. Integer buffers
(BatchNorm's counter) take the masked mean's rounded weighted mean; q-FFL is about weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from fedlth.federation.aggregate import Update, validate_update
from fedlth.tickets.masks import Weights

# Flower's QFedAvg adds this to every loss before the powers (F^(q−1) at F = 0); so do we,
# so the two agree on dense updates to float rounding.
LOSS_EPS = 1e-10


def client_terms(loss: float, q: float, lipschitz: float, sq_norm: float) -> tuple[float, float]:
    """(F^q, h) of one client: its scale on Δ and its share of the denominator.

    `sq_norm` is ‖Δ‖² = ‖L (w − w_k)‖² over the entries the client keeps. Raises ValueError
    for a loss that is not a finite number >= 0, or terms that overflow.
    """
    if isinstance(loss, bool) or not isinstance(loss, int | float) or not math.isfinite(loss) or loss < 0:
        raise ValueError(f"q-FFL needs the client's loss at the received model as a finite number >= 0; got {loss!r}")
    f = float(loss) + LOSS_EPS
    fq = f**q
    # q = 0: the ‖Δ‖² term vanishes (0 · F^(−1) is 0, not a concern at F = 0 either)
    h = (q * f ** (q - 1) * sq_norm if q != 0 else 0.0) + lipschitz * fq
    if not (math.isfinite(fq) and math.isfinite(h) and h > 0):
        raise ValueError(f"q-FFL terms overflow for loss {loss!r} at q = {q}: F^q = {fq}, h = {h}")
    return fq, h


class QFFLStream:
    """The q-FFL step folded one update at a time (memory O(model)), like MaskedMeanStream.

    Per floating tensor it keeps float64 sums Σ n F^q m Δ and Σ n h m; `result()` is
    w − num / den where den > 0, else w. Order matters only in the last float64 bits.
    """

    def __init__(self, previous: Weights, q: float, lipschitz: float) -> None:
        if not (math.isfinite(q) and q >= 0):
            raise ValueError(f"q must be a finite number >= 0; got {q!r}")
        if not (math.isfinite(lipschitz) and lipschitz > 0):
            raise ValueError(f"the Lipschitz constant must be a finite number > 0; got {lipschitz!r}")
        self.q, self.lipschitz = float(q), float(lipschitz)
        self._previous: Weights = {k: t.detach().clone() for k, t in previous.items()}
        self._num = {k: torch.zeros(t.shape, dtype=torch.float64) for k, t in previous.items()}
        self._den = {k: torch.zeros(t.shape, dtype=torch.float64) for k, t in previous.items()}
        self._count = 0
        self._offered = 0

    @property
    def count(self) -> int:
        """Number of updates folded in (rejected ones don't count)."""
        return self._count

    def add(self, update: Update, loss: float, *, client: object = None) -> None:
        """Fold one update in with its loss at the received model, or raise ValueError and leave
        the sums unchanged."""
        label = self._offered if client is None else client
        self._offered += 1
        validate_update(self._previous, update, label)
        n = float(update.num_examples)
        deltas: dict[str, Tensor] = {}
        kept: dict[str, Tensor | None] = {}
        sq_norm = 0.0
        for name, prev in self._previous.items():
            if not prev.dtype.is_floating_point:
                continue
            m = update.mask.get(name)
            d = self.lipschitz * (prev.to(torch.float64) - update.weights[name].to(torch.float64))
            if m is not None:
                d = torch.where(m, d, 0.0)
            deltas[name], kept[name] = d, m
            sq_norm += float(d.pow(2).sum())
        try:
            fq, h = client_terms(loss, self.q, self.lipschitz, sq_norm)
        except ValueError as exc:
            raise ValueError(f"client {label}: {exc}") from None
        for name in self._previous:
            if name not in deltas:  # integer buffer: the weighted mean, as masked_mean gives it
                self._num[name].add_(update.weights[name], alpha=n)
                self._den[name].add_(n)
                continue
            self._num[name].add_(deltas[name], alpha=n * fq)
            m = kept[name]
            if m is None:
                self._den[name].add_(n * h)
            else:
                self._den[name].add_(m, alpha=n * h)
        self._count += 1

    def result(self) -> Weights:
        """The new global weights for the updates folded so far (a copy of `previous` if none)."""
        out: Weights = {}
        for name, prev in self._previous.items():
            num, den = self._num[name], self._den[name]
            kept = den > 0
            safe = torch.where(kept, den, 1.0)
            p64 = prev.to(torch.float64)
            if prev.dtype.is_floating_point:
                out[name] = torch.where(kept, p64 - num / safe, p64).to(prev.dtype)
            else:
                out[name] = torch.round(torch.where(kept, num / safe, p64)).to(prev.dtype)
        return out


def qffl(previous: Weights, updates: Sequence[Update], losses: Sequence[float], q: float, lipschitz: float) -> Weights:
    """The q-FFL step over `updates` (losses[i]: client i's loss at the model it received),
    per weight over the clients that keep it; see the module docstring."""
    if len(losses) != len(updates):
        raise ValueError(f"q-FFL needs one loss per update; got {len(losses)} losses for {len(updates)} updates")
    stream = QFFLStream(previous, q, lipschitz)
    for i, (u, f) in enumerate(zip(updates, losses, strict=True)):
        stream.add(u, f, client=i)
    return stream.result()
