"""Pruners: pure functions (weights, old mask, amount) -> new mask that never revives an entry."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from fedlth.tickets.masks import Mask, Weights, validate_mask

Amount = float | dict[str, float]


class Pruner(Protocol):
    """Remove `amount` of the kept entries (or channels) of every masked tensor."""

    def __call__(
        self,
        weights: Weights,
        mask: Mask,
        amount: Amount,
        *,
        generator: torch.Generator | None = None,
        bn_of: dict[str, str] | None = None,
    ) -> Mask: ...


def _check_fraction(value: float, what: str) -> float:
    # bool is an int subclass; True as "prune everything" is almost surely a bug.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number in [0, 1]; got {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # also rejects NaN
        raise ValueError(f"{what} must be in [0, 1]; got {value!r}")
    return float(value)


def _layer_amounts(mask: Mask, amount: Amount) -> dict[str, float]:
    """One validated amount per masked name; a dict must name every masked tensor exactly."""
    if isinstance(amount, dict):
        missing = sorted(set(mask) - set(amount))
        unknown = sorted(set(amount) - set(mask))
        if missing or unknown:
            raise ValueError(
                f"amount dict must give every masked name; missing {missing}, unknown {unknown}"
            )
        return {n: _check_fraction(amount[n], f"amount[{n!r}]") for n in mask}
    value = _check_fraction(amount, "amount")
    return dict.fromkeys(mask, value)


def _count(amount: float, kept: int) -> int:
    # Same rounding as torch.nn.utils.prune (Python's round: half to even).
    return round(amount * kept)


def _start(weights: Weights, mask: Mask) -> None:
    validate_mask(mask, weights)


def _prune_smallest(scores: Tensor, keep: Tensor, k: int) -> Tensor:
    """Fresh flat bool mask: `keep` minus the k kept entries with the smallest score."""
    new = keep.clone()
    if k == 0:
        return new
    kept_idx = keep.nonzero().squeeze(1)
    # Rank only the kept entries, as torch's PruningContainer does (t[mask == 1]),
    # so ties and the chosen indices match torch.nn.utils.prune exactly.
    drop = torch.topk(scores[kept_idx], k, largest=False).indices
    new[kept_idx[drop]] = False
    return new


def magnitude_layer(
    weights: Weights,
    mask: Mask,
    amount: Amount,
    *,
    generator: torch.Generator | None = None,
    bn_of: dict[str, str] | None = None,
) -> Mask:
    """Per layer, remove round(amount * kept) kept entries with the smallest |w|."""
    _start(weights, mask)
    amounts = _layer_amounts(mask, amount)
    out: Mask = {}
    for name, m in mask.items():
        flat = m.reshape(-1)
        k = _count(amounts[name], int(flat.sum()))
        scores = weights[name].detach().abs().reshape(-1).to(m.device)
        out[name] = _prune_smallest(scores, flat, k).reshape(m.shape)
    return out


def magnitude_global(
    weights: Weights,
    mask: Mask,
    amount: Amount,
    *,
    generator: torch.Generator | None = None,
    bn_of: dict[str, str] | None = None,
) -> Mask:
    """Remove round(amount * total kept) kept entries with the smallest |w| over all layers."""
    _start(weights, mask)
    if isinstance(amount, dict):
        raise ValueError("magnitude-global takes one float amount, not a per-layer dict")
    value = _check_fraction(amount, "amount")
    if not mask:
        return {}
    names = list(mask)
    device = mask[names[0]].device
    # Flatten -> one topk -> split back: the same recipe as prune.global_unstructured.
    scores = torch.cat([weights[n].detach().abs().reshape(-1).to(device) for n in names])
    flat = torch.cat([mask[n].reshape(-1).to(device) for n in names])
    new = _prune_smallest(scores, flat, _count(value, int(flat.sum())))
    pieces = new.split([mask[n].numel() for n in names])
    return {
        n: p.reshape(mask[n].shape).to(mask[n].device) for n, p in zip(names, pieces, strict=True)
    }


def random_prune(
    weights: Weights,
    mask: Mask,
    amount: Amount,
    *,
    generator: torch.Generator | None = None,
    bn_of: dict[str, str] | None = None,
) -> Mask:
    """Per layer, remove round(amount * kept) kept entries chosen uniformly at random."""
    _start(weights, mask)
    amounts = _layer_amounts(mask, amount)
    # A fixed default seed keeps runs reproducible when the caller passes no generator.
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    out: Mask = {}
    for name, m in mask.items():
        flat = m.reshape(-1).clone()
        kept_idx = flat.nonzero().squeeze(1)
        k = _count(amounts[name], kept_idx.numel())
        if k:
            drop = torch.randperm(kept_idx.numel(), generator=gen)[:k].to(kept_idx.device)
            flat[kept_idx[drop]] = False
        out[name] = flat.reshape(m.shape)
    return out


def _prune_channels(m: Tensor, scores: Tensor, amount: float) -> Tensor:
    """Fresh mask with round(amount * kept channels) lowest-score kept dim-0 slices removed."""
    rows = m.reshape(m.shape[0], -1)
    alive = rows.any(dim=1)
    alive_idx = alive.nonzero().squeeze(1)
    k = _count(amount, alive_idx.numel())
    if k == 0:
        return m.clone()
    # Keep the top (alive - k) channels, as prune.ln_structured does, so ties match it.
    keep_local = torch.topk(scores[alive_idx], alive_idx.numel() - k, largest=True).indices
    keep_channel = torch.zeros_like(alive)
    keep_channel[alive_idx[keep_local]] = True
    return (rows & keep_channel.unsqueeze(1)).reshape(m.shape)


def _l1_channel_scores(w: Tensor, m: Tensor) -> Tensor:
    # Norm of the kept weights only: pruned entries may still hold stale values.
    kept = w.detach().to(m.device) * m.to(w.dtype)
    return kept.abs().reshape(m.shape[0], -1).sum(dim=1)


def structured_l1(
    weights: Weights,
    mask: Mask,
    amount: Amount,
    *,
    generator: torch.Generator | None = None,
    bn_of: dict[str, str] | None = None,
) -> Mask:
    """Per layer, remove whole output channels (dim-0 slices) with the smallest L1 norm."""
    _start(weights, mask)
    amounts = _layer_amounts(mask, amount)
    return {
        name: _prune_channels(m, _l1_channel_scores(weights[name], m), amounts[name])
        for name, m in mask.items()
    }


def structured_bn(
    weights: Weights,
    mask: Mask,
    amount: Amount,
    *,
    generator: torch.Generator | None = None,
    bn_of: dict[str, str] | None = None,
) -> Mask:
    """Like structured-l1, but rank a layer's channels by |gamma| of its BatchNorm if it has one."""
    _start(weights, mask)
    amounts = _layer_amounts(mask, amount)
    bn_of = bn_of or {}
    out: Mask = {}
    for name, m in mask.items():
        if name in bn_of:
            gamma_name = bn_of[name]
            if gamma_name not in weights:
                raise ValueError(f"BatchNorm weight {gamma_name!r} for {name!r} not in weights")
            gamma = weights[gamma_name].detach()
            if gamma.shape != (m.shape[0],):
                raise ValueError(
                    f"BatchNorm weight {gamma_name!r} has shape {tuple(gamma.shape)}; "
                    f"{name!r} has {m.shape[0]} channels"
                )
            scores = gamma.abs().to(m.device)
        else:
            scores = _l1_channel_scores(weights[name], m)
        out[name] = _prune_channels(m, scores, amounts[name])
    return out


PRUNERS: dict[str, Pruner] = {
    "magnitude-layer": magnitude_layer,
    "magnitude-global": magnitude_global,
    "random": random_prune,
    "structured-l1": structured_l1,
    "structured-bn": structured_bn,
}


def pruner_names() -> list[str]:
    """Every pruner's name, built-in or plug-in (fedlth.config.registry)."""
    from fedlth.config import registry

    return sorted(registry.names("pruner"))


def get_pruner(name: str) -> Pruner:
    """The pruner registered under `name` (fedlth.config.registry: built-in or plug-in)."""
    from fedlth.config import registry

    if name in PRUNERS:  # the hot path: clients prune every round
        return PRUNERS[name]
    if name not in registry.names("pruner"):
        raise ValueError(f"unknown pruner {name!r}; valid names: {pruner_names()}")
    return registry.load("pruner", name)


def random_mask_like(mask: Mask, generator: torch.Generator) -> Mask:
    """Same kept count per tensor at uniformly random positions (the LTH random-mask control)."""
    out: Mask = {}
    for name, m in mask.items():
        kept = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=generator)[:kept]] = True
        out[name] = flat.reshape(m.shape).to(m.device)
    return out


def structured_channels_kept(mask: Mask) -> dict[str, int]:
    """Number of dim-0 slices per tensor with at least one kept entry."""
    return {name: int(m.reshape(m.shape[0], -1).any(dim=1).sum()) for name, m in mask.items()}
