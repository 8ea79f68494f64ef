"""Lottery-ticket rules: IMP mask steps, rewinding, one-shot amounts, controls, early-bird."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedlth.tickets.masks import Mask, Weights, hamming_distance, ones_mask
from fedlth.tickets.pruning import get_pruner, random_mask_like

REWIND_MODES = ("init", "iteration", "lr")


def one_shot_amount(prune_rate: float, level: int) -> float:
    """Fraction of a dense net to prune at once to match `level` iterative steps of `prune_rate`."""
    return 1.0 - (1.0 - prune_rate) ** level


def next_mask(
    weights: Weights,
    mask: Mask,
    *,
    pruner: str,
    amount: float,
    generator: torch.Generator | None = None,
    bn_of: dict[str, str] | None = None,
) -> Mask:
    """One pruning step: a new mask ⊆ `mask` that removes `amount` of its kept entries."""
    return get_pruner(pruner)(weights, mask, amount, generator=generator, bn_of=bn_of)


def one_shot_mask(
    dense_weights: Weights,
    names: Sequence[str],
    *,
    pruner: str,
    prune_rate: float,
    level: int,
    generator: torch.Generator | None = None,
    bn_of: dict[str, str] | None = None,
) -> Mask:
    """The mask of one-shot pruning: prune the trained dense net straight to level's density."""
    start = ones_mask(dense_weights, list(names))
    return next_mask(
        dense_weights, start, pruner=pruner, amount=one_shot_amount(prune_rate, level), generator=generator, bn_of=bn_of
    )


def rewind(rewind_point: Weights, mask: Mask) -> Weights:
    """Weights reset to the rewind point (θ0 or θk), with pruned entries exactly 0."""
    out: Weights = {}
    for name, w in rewind_point.items():
        out[name] = w * mask[name].to(w.dtype) if name in mask else w.clone()
    return out


def random_mask_control(mask: Mask, seed: int) -> Mask:
    """The random-mask control: same kept count per layer, random positions."""
    return random_mask_like(mask, torch.Generator().manual_seed(seed))


def mask_distances(masks: Sequence[Mask]) -> list[float]:
    """Hamming distance between each mask and the one before it."""
    return [hamming_distance(a, b) for a, b in zip(masks, masks[1:], strict=False)]


def early_bird_epoch(masks: Sequence[Mask], epsilon: float, window: int) -> int | None:
    """First epoch (1-based index into `masks`) after which `window` successive distances stay < epsilon.

    You et al. (2020): draw the ticket once the mask a prune would give stops changing.
    """
    dists = mask_distances(masks)
    for end in range(window, len(dists) + 1):
        if all(d < epsilon for d in dists[end - window : end]):
            return end + 1  # masks[end] is the epoch (1-based) whose mask closes the window
    return None
