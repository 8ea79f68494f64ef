"""The server's rule of `shared-ticket`: a gradual pruning schedule for one shared sparse mask."""

from __future__ import annotations

import torch

from fedlth.config.component_options import SERVER_PRUNERS
from fedlth.tickets.masks import Mask, Weights, apply_mask, density
from fedlth.tickets.pruning import get_pruner


def density_at(round_: int, start: int, end: int, target: float) -> float:
    """Density of the shared mask after aggregating round `round_`: dense through `start`,
    `target` from `end` on, and the cubic decay of Zhu & Gupta (2017) in between (prune fast
    while the network is redundant, slowly as it nears the target)."""
    if round_ <= start:
        return 1.0
    if round_ >= end:
        return target
    t = (round_ - start) / (end - start)
    return target + (1.0 - target) * (1.0 - t) ** 3


def server_prune(weights: Weights, mask: Mask, target: float, pruner: str, generator: torch.Generator) -> Mask:
    """`mask` pruned down to density `target` (never revives; unchanged when already there).

    magnitude-global ranks the kept weights of all layers together, magnitude-layer prunes
    each layer by the same share, random (the random-mask control) drops uniformly at random
    per layer, so its per-layer densities follow the same schedule as magnitude-layer's.
    """
    if pruner not in SERVER_PRUNERS:
        raise ValueError(f"unknown server pruner {pruner!r}; valid: {', '.join(SERVER_PRUNERS)}")
    now = density(mask)
    if now <= target + 1e-9:
        return mask
    return get_pruner(pruner)(apply_mask(weights, mask), mask, 1.0 - target / now, generator=generator)


def reinit_kept(mask: Mask, fresh: Weights) -> Weights:
    """The re-init control: a fresh random init (another seed) under the same mask."""
    return {k: (fresh[k] * mask[k] if k in mask else fresh[k].clone()) for k in fresh}
