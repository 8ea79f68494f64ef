"""Model zoo: small nets for federated lottery tickets, built by name from a registry."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

ModelBuilder = Callable[[tuple[int, ...], int], nn.Module]


def _mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


class _Cnn1d(nn.Sequential):
    """A Sequential that also takes channel-less (N, L) input, so state_dict names stay flat."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return super().forward(x)


def _cnn1d(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) == 1:
        length = input_shape[0]
    elif len(input_shape) == 2 and input_shape[0] == 1:
        length = input_shape[1]
    else:
        raise ValueError(f"cnn1d expects input shape (L,) or (1, L); got {input_shape}")
    return _Cnn1d(
        nn.Conv1d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv1d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * length, num_classes),
    )


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    # Two 2x2 poolings need at least 4 pixels per side to leave a 1x1 map.
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ValueError(f"{name} expects input shape (C, H, W) with H, W >= 4; got {input_shape}")
    c, h, w = input_shape
    return c, h, w


def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    # A dummy forward avoids hand-deriving the size for every image resolution.
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


def _lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, _, _ = _image_shape("lenet5", input_shape)
    features = [
        nn.Conv2d(c, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    ]
    flat = _flat_size(nn.Sequential(*features), input_shape)
    return nn.Sequential(
        *features,
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    # No conv bias: the BN shift makes it redundant, and BN gammas rank channels.
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


def _cifar_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, _, _ = _image_shape("cifar-cnn", input_shape)
    features = [
        *_conv_bn(c, 32),
        *_conv_bn(32, 32),
        nn.MaxPool2d(2),
        *_conv_bn(32, 64),
        *_conv_bn(64, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
    ]
    probe = nn.Sequential(*features).eval()  # eval: BN on a batch of one must not fail
    flat = _flat_size(probe, input_shape)
    model = nn.Sequential(*features, nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, num_classes))
    return model.train()


def _tabular_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 1:
        raise ValueError(f"tabular-mlp expects input shape (d,); got {input_shape}")
    return nn.Sequential(
        nn.Linear(input_shape[0], 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )


MODELS: dict[str, ModelBuilder] = {
    "mlp": _mlp,
    "cnn1d": _cnn1d,
    "lenet5": _lenet5,
    "cifar-cnn": _cifar_cnn,
    "tabular-mlp": _tabular_mlp,
}


def model_names() -> list[str]:
    """Names accepted by build_model."""
    return sorted(MODELS)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A freshly initialised model; seed torch's global RNG first for a reproducible init."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {model_names()}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive; got {num_classes}")
    return MODELS[name](tuple(input_shape), num_classes)


def bn_pairs(model: nn.Module) -> dict[str, str]:
    """Map each conv/linear weight name to the weight name of the BatchNorm right after it."""
    pairs: dict[str, str] = {}
    previous: tuple[str, nn.Module] | None = None
    # Leaf modules only: containers appear in named_modules before their children and
    # would otherwise break the "directly follows" relation.
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue
        is_bn = isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d)
        if is_bn and previous is not None and module.affine:
            prev_name, prev = previous
            out_channels = prev.weight.shape[0]  # type: ignore[union-attr]
            if module.num_features == out_channels:
                pairs[f"{prev_name}.weight" if prev_name else "weight"] = (
                    f"{name}.weight" if name else "weight"
                )
        is_layer = isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear)
        previous = (name, module) if is_layer else None
    return pairs


def count_params(model: nn.Module, names: list[str] | None = None) -> int:
    """Number of entries in the named parameters (all parameters when names is None)."""
    params = dict(model.named_parameters())
    if names is None:
        return sum(p.numel() for p in params.values())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"no parameters named {missing}; known: {sorted(params)}")
    return sum(params[n].numel() for n in names)
