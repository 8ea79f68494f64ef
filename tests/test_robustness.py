"""Attacks in model space: they bite, stay in budget, and leave models and RNGs untouched."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedlth.evaluation import robustness
from fedlth.evaluation.robustness import (
    ATTACKS,
    AUTOATTACK_FALLBACK,
    NOTE_AUTOATTACK,
    UnitBoxAdapter,
    attack,
    pgd_adversarial_examples,
    robust_accuracy,
)
from fedlth.learning.models import build_model

torch.set_num_threads(1)

LINF = ("fgsm", "pgd", "square", "autoattack")


@pytest.fixture(autouse=True)
def _few_square_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    # Square's 5,000 queries per robust sample dominate runtime; 200 still exercise it.
    monkeypatch.setattr(robustness, "SQUARE_QUERIES", 200)


def _fit(model: nn.Module, x: Tensor, y: Tensor, epochs: int = 80, lr: float = 1e-2) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


def _signals(n: int, seed: int) -> tuple[Tensor, Tensor]:
    # Two 1-D templates (a bump left or right) plus noise, inside the range (-3, 3).
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    t = torch.linspace(-1, 1, 40)
    templates = torch.stack([torch.exp(-((t + 0.5) ** 2) * 20), torch.exp(-((t - 0.5) ** 2) * 20)])
    x = templates[y] - 1.0 + 0.5 * torch.randn(n, 40, generator=g)
    return x.clamp(-3.0, 3.0), y


def _tabular(n: int, seed: int, classes: int = 2) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 8, generator=g)
    score = x[:, 0] + x[:, 1]
    y = torch.bucketize(score, torch.linspace(0, 2, classes + 1)[1:-1])
    return x, y


@pytest.fixture(scope="module")
def cnn1d() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    x, y = _signals(256, seed=1)
    model = _fit(build_model("cnn1d", (40,), 2), x, y, epochs=15, lr=1e-3)
    x_test, y_test = _signals(64, seed=2)
    return model, x_test, y_test


@pytest.fixture(scope="module")
def tabular() -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    x, y = _tabular(512, seed=3)
    model = _fit(build_model("tabular-mlp", (8,), 2), x, y)
    x_test, y_test = _tabular(64, seed=4)
    return model, x_test, y_test


def _small_bn_net(classes: int) -> nn.Module:
    # BatchNorm and dropout make eval mode and untouched running stats observable.
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, classes)
    )


def test_pgd_bites_on_1d_data(cnn1d):
    model, x, y = cnn1d
    res = robust_accuracy(
        model,
        x,
        y,
        name="pgd",
        eps=1.0,
        input_range=(-3.0, 3.0),
        input_shape=(40,),
        num_classes=2,
        steps=5,
    )
    assert res["clean_accuracy"] >= 0.9
    assert res["robust_accuracy"] < res["clean_accuracy"]
    assert res["attack_success_rate"] > 0.0


def test_pgd_bites_on_tabular_data(tabular):
    model, x, y = tabular
    res = robust_accuracy(
        model,
        x,
        y,
        name="pgd",
        eps=0.2,
        input_range=(0.0, 1.0),
        input_shape=(8,),
        num_classes=2,
        steps=5,
    )
    assert res["clean_accuracy"] >= 0.85
    assert res["robust_accuracy"] < res["clean_accuracy"]


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_leaves_no_trace(name):
    model = _small_bn_net(4).train()
    model[4].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    x, y = _tabular(16, seed=6, classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    torch_state, py_state, np_state = (
        torch.get_rng_state(),
        random.getstate(),
        np.random.get_state(),
    )

    x_adv = attack(
        model,
        x,
        y,
        name=name,
        eps=0.3,
        input_range=(0.0, 1.0),
        input_shape=(8,),
        num_classes=4,
        steps=3,
    )

    assert x_adv.shape == x.shape
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state
    after_np = np.random.get_state()
    assert after_np[0] == np_state[0] and np.array_equal(after_np[1], np_state[1])
    assert after_np[2:] == np_state[2:]
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_attack_keeps_mixed_modes_and_existing_grads():
    model = _small_bn_net(4).train()
    model[1].eval()
    x, y = _tabular(8, seed=7, classes=4)
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    attack(
        model,
        x,
        y,
        name="cw",
        eps=0.0,
        input_range=(0.0, 1.0),
        input_shape=(8,),
        num_classes=4,
        steps=3,
    )
    assert [m.training for m in model.modules()] == [True, True, False, True, True, True]
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))


@pytest.mark.parametrize("name", ATTACKS)
def test_examples_stay_in_range_and_budget(name, cnn1d):
    model, x, y = cnn1d
    x, y = x[:16], y[:16]
    lo, hi, eps = -3.0, 3.0, 0.5
    x_adv = attack(
        model,
        x,
        y,
        name=name,
        eps=eps,
        input_range=(lo, hi),
        input_shape=(40,),
        num_classes=2,
        steps=3,
    )
    assert x_adv.shape == x.shape
    assert x_adv.min() >= lo and x_adv.max() <= hi
    tol = 1e-5 * (hi - lo)
    if name in LINF:
        assert (x_adv - x).abs().max() <= eps + tol
    if name == "pgd-l2":
        assert (x_adv - x).flatten(1).norm(dim=1).max() <= eps + tol


def test_attack_is_reproducible_for_a_seed(tabular):
    model, x, y = tabular
    kwargs = dict(name="pgd", eps=0.2, input_range=(0.0, 1.0), input_shape=(8,), num_classes=2)
    a = attack(model, x, y, steps=3, seed=1, **kwargs)
    b = attack(model, x, y, steps=3, seed=1, **kwargs)
    assert torch.equal(a, b)


def test_image_and_channel_shapes_round_trip():
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 8, 8), 3).eval()
    x = torch.rand(4, 1, 8, 8)
    x_adv = attack(
        model,
        x,
        torch.zeros(4, dtype=torch.long),
        name="fgsm",
        eps=0.1,
        input_range=(0.0, 1.0),
        input_shape=(1, 8, 8),
        num_classes=3,
    )
    assert x_adv.shape == x.shape
    adapter = UnitBoxAdapter(build_model("cnn1d", (1, 40), 2), (1, 40), (-2.0, 6.0))
    x1 = torch.rand(3, 1, 40) * 8 - 2
    u = adapter.to_unit(x1)
    assert u.shape == (3, 1, 1, 40) and u.min() >= 0 and u.max() <= 1
    assert torch.allclose(adapter.from_unit(u), x1, atol=1e-5)
    assert adapter.eps_to_unit(0.8) == pytest.approx(0.1)


@pytest.mark.parametrize("classes", [2, 3])
def test_autoattack_falls_back_below_four_classes(classes):
    model = _small_bn_net(classes).eval()
    x, y = _tabular(16, seed=8, classes=classes)
    res = robust_accuracy(
        model,
        x,
        y,
        name="autoattack",
        eps=0.3,
        input_range=(0.0, 1.0),
        input_shape=(8,),
        num_classes=classes,
    )
    assert res["fallback"] == AUTOATTACK_FALLBACK
    assert res["note"] == NOTE_AUTOATTACK and "weaker than the official" in NOTE_AUTOATTACK
    assert 0.0 <= res["robust_accuracy"] <= res["clean_accuracy"]


def test_autoattack_with_four_classes_has_no_fallback():
    model = _small_bn_net(4).eval()
    x, y = _tabular(16, seed=9, classes=4)
    res = robust_accuracy(
        model,
        x,
        y,
        name="autoattack",
        eps=0.3,
        input_range=(0.0, 1.0),
        input_shape=(8,),
        num_classes=4,
    )
    assert "fallback" not in res and res["note"] == NOTE_AUTOATTACK


def test_cw_reports_its_own_budget(tabular):
    model, x, y = tabular
    res = robust_accuracy(
        model,
        x[:16],
        y[:16],
        name="cw",
        eps=0.0,
        input_range=(0.0, 1.0),
        input_shape=(8,),
        num_classes=2,
        steps=5,
    )
    assert "eps is not used" in str(res["note"])


def test_pgd_training_examples(cnn1d):
    model, x, y = cnn1d
    model = model.train()
    lo, hi, eps = -3.0, 3.0, 0.5
    x_adv = pgd_adversarial_examples(
        model, x, y, eps=eps, steps=5, alpha=0.2, input_range=(lo, hi), generator=torch.Generator().manual_seed(0)
    )
    model.eval()
    assert not x_adv.requires_grad and x_adv.shape == x.shape
    assert x_adv.min() >= lo and x_adv.max() <= hi
    assert (x_adv - x.clamp(lo, hi)).abs().max() <= eps + 1e-6
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)


def test_pgd_training_start_comes_from_its_generator_alone(cnn1d):
    # the random start reads only the generator it is given: the same seed gives the same
    # examples whatever the global RNGs hold (i.e. whichever clients ran before), and the
    # global RNG is neither read nor moved
    model, x, y = cnn1d
    model = model.train()

    def examples(global_seed: int, steps: int = 3) -> Tensor:
        torch.manual_seed(global_seed)
        random.seed(global_seed)
        before = torch.get_rng_state()
        out = pgd_adversarial_examples(
            model, x, y, eps=0.3, steps=steps, alpha=0.1, input_range=(-3.0, 3.0), generator=torch.Generator().manual_seed(7)
        )
        assert torch.equal(torch.get_rng_state(), before)
        return out

    assert torch.equal(examples(0), examples(12345))
    assert torch.equal(examples(0, steps=0), examples(99, steps=0))  # the start itself
    other = pgd_adversarial_examples(
        model, x, y, eps=0.3, steps=0, alpha=0.1, input_range=(-3.0, 3.0), generator=torch.Generator().manual_seed(8)
    )
    assert not torch.equal(other, examples(0, steps=0))


def test_unknown_attack_lists_valid_names(tabular):
    model, x, y = tabular
    with pytest.raises(ValueError, match="valid names.*pgd-l2"):
        attack(
            model,
            x,
            y,
            name="deepfool",
            eps=0.1,
            input_range=(0.0, 1.0),
            input_shape=(8,),
            num_classes=2,
        )
    with pytest.raises(ValueError, match="valid names"):
        robust_accuracy(
            model,
            x,
            y,
            name="nope",
            eps=0.1,
            input_range=(0.0, 1.0),
            input_shape=(8,),
            num_classes=2,
        )
