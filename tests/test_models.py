"""Tests for the model zoo: shapes, parameter counts, BatchNorm pairing, registry errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedlth.learning.models import MODELS, bn_pairs, build_model, count_params, model_names
from fedlth.tickets.masks import prunable_names

CASES = [
    ("mlp", (1, 8, 8), 10),
    ("mlp", (40,), 10),
    ("cnn1d", (40,), 10),
    ("cnn1d", (1, 40), 10),
    ("lenet5", (1, 8, 8), 10),
    ("lenet5", (1, 28, 28), 10),
    ("lenet5", (3, 32, 32), 10),
    ("lenet5", (1, 4, 4), 3),
    ("cifar-cnn", (3, 32, 32), 10),
    ("cifar-cnn", (1, 8, 8), 10),
    ("tabular-mlp", (12,), 2),
]


@pytest.mark.parametrize(("name", "shape", "classes"), CASES)
def test_models_build_and_give_logits(name: str, shape: tuple[int, ...], classes: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, shape, classes)
    out = model(torch.randn(5, *shape))
    assert out.shape == (5, classes)
    assert torch.isfinite(out).all()
    assert prunable_names(model), "every model must have prunable weights"


def test_registry_matches_model_names() -> None:
    assert model_names() == sorted(MODELS)
    assert set(model_names()) == {"mlp", "cnn1d", "lenet5", "cifar-cnn", "tabular-mlp"}


def test_cnn1d_prunable_count_and_architecture() -> None:
    model = build_model("cnn1d", (40,), 10)
    names = prunable_names(model)
    assert count_params(model, names) == 19_104
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (1, 32, 5),
        (32, 32, 3),
        (32, 32, 3),
    ]


def test_cnn1d_accepts_both_input_layouts() -> None:
    torch.manual_seed(0)
    model = build_model("cnn1d", (40,), 10).eval()
    x = torch.randn(4, 40)
    assert torch.equal(model(x), model(x.unsqueeze(1)))


def test_bn_pairs_on_cifar_cnn_maps_every_conv_to_its_bn() -> None:
    model = build_model("cifar-cnn", (3, 32, 32), 10)
    pairs = bn_pairs(model)
    modules = dict(model.named_modules())
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(pairs) == sorted(f"{c}.weight" for c in convs)
    assert len(pairs) == 4
    for conv_w, bn_w in pairs.items():
        bn = modules[bn_w.removesuffix(".weight")]
        conv = modules[conv_w.removesuffix(".weight")]
        assert isinstance(bn, nn.BatchNorm2d)
        assert bn.num_features == conv.out_channels
    assert pairs["0.weight"] == "1.weight"


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "lenet5", "tabular-mlp"])
def test_bn_pairs_empty_without_batchnorm(name: str) -> None:
    shape = {"mlp": (20,), "cnn1d": (40,), "lenet5": (1, 8, 8), "tabular-mlp": (20,)}[name]
    assert bn_pairs(build_model(name, shape, 3)) == {}


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid names") as err:
        build_model("resnet9000", (3, 32, 32), 10)
    for name in model_names():
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("cnn1d", (2, 40)), ("lenet5", (1, 3, 3)), ("cifar-cnn", (32, 32)), ("tabular-mlp", (2, 3))],
)
def test_bad_input_shapes_raise(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        build_model(name, shape, 10)


def test_count_params_rejects_unknown_names() -> None:
    model = build_model("tabular-mlp", (5,), 2)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError):
        count_params(model, ["nope.weight"])
