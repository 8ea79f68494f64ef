"""Masks: validated name -> bool tensor mappings over a model's prunable weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

Weights = dict[str, Tensor]
Mask = dict[str, Tensor]  # name -> bool tensor of the weight's shape; True = kept


class MaskError(ValueError):
    """A mask does not match the weights it is meant for."""


def prunable_names(model: nn.Module, *, skip_first: bool = False, skip_last: bool = False) -> list[str]:
    """Names of conv and linear weights in definition order; biases and norms never."""
    names = [
        f"{mod_name}.weight" if mod_name else "weight"
        for mod_name, module in model.named_modules()
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear)
    ]
    if skip_first and names:
        names = names[1:]
    if skip_last and names:
        names = names[:-1]
    return names


def ones_mask(weights: Weights, names: list[str]) -> Mask:
    """A mask that keeps every entry of the named weights."""
    missing = [n for n in names if n not in weights]
    if missing:
        raise MaskError(f"no weights named {missing}; known: {sorted(weights)}")
    return {n: torch.ones_like(weights[n], dtype=torch.bool) for n in names}


def validate_mask(mask: Mask, weights: Weights) -> None:
    """Raise MaskError unless every mask entry is a bool tensor shaped like its weight."""
    for name, m in mask.items():
        if name not in weights:
            raise MaskError(f"mask names unknown weight {name!r}")
        if m.dtype != torch.bool:
            raise MaskError(f"mask {name!r} has dtype {m.dtype}; expected torch.bool")
        if m.shape != weights[name].shape:
            raise MaskError(
                f"mask {name!r} has shape {tuple(m.shape)}; weight has {tuple(weights[name].shape)}"
            )


def density(mask: Mask) -> float:
    """Fraction of masked entries that are kept (1.0 for an empty mask)."""
    total = sum(m.numel() for m in mask.values())
    if total == 0:
        return 1.0
    return float(sum(int(m.sum()) for m in mask.values()) / total)


def layer_densities(mask: Mask) -> dict[str, float]:
    """Kept fraction per masked tensor."""
    return {n: float(m.float().mean()) for n, m in mask.items()}


def count_kept(mask: Mask) -> int:
    """Number of kept entries over all masked tensors."""
    return sum(int(m.sum()) for m in mask.values())


def apply_mask(weights: Weights, mask: Mask) -> Weights:
    """A new weight dict with pruned entries set to exactly 0; unmasked tensors copied."""
    out: Weights = {}
    for name, w in weights.items():
        out[name] = w * mask[name].to(w.dtype) if name in mask else w.clone()
    return out


@torch.no_grad()
def apply_mask_(model: nn.Module, mask: Mask) -> None:
    """Zero the pruned entries of the model's parameters in place."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        params[name].mul_(m.to(params[name].dtype))


def mask_grads_(model: nn.Module, mask: Mask) -> None:
    """Zero gradients of pruned entries in place so the optimizer sees no signal there."""
    params = dict(model.named_parameters())
    for name, m in mask.items():
        g = params[name].grad
        if g is not None:
            g.mul_(m.to(g.dtype))


def is_subset(new: Mask, old: Mask) -> bool:
    """True when `new` keeps nothing that `old` had pruned (no revival)."""
    return all(not bool((new[n] & ~old[n]).any()) for n in old)


def hamming_distance(a: Mask, b: Mask) -> float:
    """Fraction of masked entries on which two masks differ."""
    total = sum(m.numel() for m in a.values())
    if total == 0:
        return 0.0
    return float(sum(int((a[n] ^ b[n]).sum()) for n in a) / total)
