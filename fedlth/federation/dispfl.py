"""DisPFL's mask math (Dai et al., ICML 2022): constant-density personal masks, cosine-annealed prune and regrow."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fedlth.tickets.masks import Mask, Weights

Shapes = Mapping[str, tuple[int, ...]]
DISTRIBUTIONS = ("erk", "uniform")
REGROW = ("gradient", "random")


def layer_densities(shapes: Shapes, density: float, distribution: str = "erk", power: float = 1.0) -> dict[str, float]:
    """Kept share per layer: the same everywhere (uniform), or Erdős–Rényi-kernel (erk), which
    gives a layer a share ∝ (Σ shape / Π shape)^power scaled so the model keeps `density`
    overall; layers it would push past 1 are made dense and the rest rescaled, as the
    reference code (`calculate_sparsities`) does."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown mask distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}")
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1]; got {density!r}")
    if distribution == "uniform":
        return dict.fromkeys(shapes, density)
    numel = {k: math.prod(s) for k, s in shapes.items()}
    raw = {k: (sum(s) / numel[k]) ** power for k, s in shapes.items()}
    dense: set[str] = set()
    while True:
        rhs = sum(density * numel[k] if k not in dense else -(1.0 - density) * numel[k] for k in shapes)
        divisor = sum(raw[k] * numel[k] for k in shapes if k not in dense)
        if divisor == 0:  # every layer dense
            return dict.fromkeys(shapes, 1.0)
        eps = rhs / divisor
        top = max(raw[k] for k in shapes if k not in dense)
        if top * eps <= 1.0:  # (≥ 0: dense layers past the budget leave the others nothing)
            return {k: 1.0 if k in dense else max(0.0, eps * raw[k]) for k in shapes}
        dense |= {k for k in shapes if k not in dense and raw[k] == top}


def layer_counts(shapes: Shapes, density: float, distribution: str = "erk") -> dict[str, int]:
    """Kept entries per layer, int(share × size) as the reference code rounds (`init_masks`)."""
    return {k: int(d * math.prod(shapes[k])) for k, d in layer_densities(shapes, density, distribution).items()}


def mask_generator(seed: int, client: int) -> torch.Generator:
    """The generator of client `client`'s initial mask: the client and the server draw the same one."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * (client + 1))


def initial_mask(shapes: Shapes, density: float, distribution: str, generator: torch.Generator) -> Mask:
    """A random mask with layer_counts() kept entries per layer, at positions drawn from `generator`."""
    out: Mask = {}
    for name, kept in layer_counts(shapes, density, distribution).items():
        n = math.prod(shapes[name])
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=generator)[:kept]] = True
        out[name] = flat.reshape(shapes[name])
    return out


def drop_fraction(round_index: int, rounds: int, anneal: float) -> float:
    """Share of each layer's kept weights replaced after round `round_index` (0-based) of
    `rounds`: anneal/2 · (1 + cos(π t / T)), from `anneal` down towards 0 (reference: fire_mask)."""
    return anneal / 2.0 * (1.0 + math.cos(math.pi * round_index / rounds))


def replace_counts(mask: Mask, fraction: float) -> dict[str, int]:
    """Weights dropped (and regrown) per layer: ceil(fraction × kept), as the reference rounds."""
    return {k: math.ceil(fraction * int(m.sum())) for k, m in mask.items()}


def prune_and_regrow(weights: Weights, mask: Mask, scores: Weights, counts: Mapping[str, int]) -> Mask:
    """Per layer, drop the counts[k] kept entries with the smallest |weight| and keep as many
    more where `scores` is largest among the entries not kept after the drop (a weight just
    dropped may come back: the reference's order). The kept count of every layer is unchanged."""
    out: Mask = {}
    for name, m in mask.items():
        flat = m.reshape(-1).clone()
        k = counts[name]
        if k:
            kept = flat.nonzero().squeeze(1)
            magnitude = weights[name].detach().abs().reshape(-1)[kept]
            flat[kept[torch.topk(magnitude, k, largest=False).indices]] = False
            free = (~flat).nonzero().squeeze(1)
            grow = torch.topk(scores[name].detach().reshape(-1)[free].to(torch.float64), k).indices
            flat[free[grow]] = True
        out[name] = flat.reshape(m.shape)
    return out


def gradient_scores(net: nn.Module, x: Tensor, y: Tensor, names: list[str]) -> Weights:
    """|∂loss/∂w| of the dense gradient on one batch (x, y), for every named weight, pruned
    entries included (they hold 0, but their gradient says how much they would help);
    eval mode, as the reference's screen_gradients."""
    was_training = net.training
    net.eval()
    params = dict(net.named_parameters())
    dev = params[names[0]].device
    loss = nn.functional.cross_entropy(net(x.to(dev)), y.to(dev))
    grads = torch.autograd.grad(loss, [params[k] for k in names])
    net.train(was_training)
    return {k: g.detach().abs().cpu() for k, g in zip(names, grads, strict=True)}


def random_scores(mask: Mask, generator: torch.Generator) -> Weights:
    """Uniform random scores: regrowth at random positions (the reference's --dis_gradient_check,
    which its published scripts use)."""
    return {k: torch.rand(m.shape, generator=generator) for k, m in mask.items()}
