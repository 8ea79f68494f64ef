"""Masked training keeps pruned weights at exactly 0; evaluation counts correctly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fedlth.learning.training import SGD, TrainConfig, evaluate, lr_at, predict, train_
from fedlth.tickets.masks import apply_mask_, mask_grads_, ones_mask, prunable_names
from fedlth.tickets.pruning import get_pruner

ROOT = Path(__file__).parent.parent


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(256, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    weights = {k: v.detach() for k, v in model.state_dict().items()}
    mask = get_pruner("magnitude-layer")(weights, ones_mask(weights, prunable_names(model)), 0.6)
    return model, x, y, mask


def test_pruned_weights_stay_exactly_zero_with_momentum_and_weight_decay():
    model, x, y, mask = _setup()
    cfg = TrainConfig(lr=0.1, momentum=0.9, weight_decay=5e-3, batch_size=16)
    train_(model, x, y, mask, cfg, epochs=5, generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert torch.all(params[name][~m] == 0), name
        assert torch.any(params[name][m] != 0), name


def test_momentum_revives_zeros_without_the_mask_so_the_mask_matters():
    # The control for the test above: zeroing once and training unmasked revives weights.
    model, x, y, mask = _setup()
    apply_mask_(model, mask)
    full = {n: torch.ones_like(m) for n, m in mask.items()}
    cfg = TrainConfig(lr=0.1, momentum=0.9, weight_decay=5e-3, batch_size=16)
    train_(model, x, y, full, cfg, epochs=1, generator=torch.Generator().manual_seed(0))
    params = dict(model.named_parameters())
    assert any(torch.any(params[n][~m] != 0) for n, m in mask.items())


@pytest.mark.parametrize("momentum,decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 5e-3), (0.0, 1e-2)])
def test_sgd_matches_torch_optim_sgd_bit_for_bit(momentum, decay):
    """fedlth's SGD replaces torch.optim.SGD in training: the very same numbers, step for
    step, with a frozen layer (no gradient), a learning rate changed between steps, and a
    mask applied around each step as train_ does."""
    trajectories = []
    for make in (lambda ps, **kw: torch.optim.SGD(ps, **kw), SGD):
        model, x, y, mask = _setup()
        model[0].bias.requires_grad_(False)
        opt = make(model.parameters(), lr=0.1, momentum=momentum, weight_decay=decay)
        gen, seen = torch.Generator().manual_seed(3), []
        for step in range(12):
            opt.param_groups[0]["lr"] = 0.1 / (1 + step)
            idx = torch.randperm(len(x), generator=gen)[:32]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            mask_grads_(model, mask)
            opt.step()
            apply_mask_(model, mask)
            seen.append([p.detach().clone() for p in model.parameters()])
        trajectories.append(seen)
    for ours, theirs in zip(*trajectories, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_training_does_not_import_the_compiler():
    """torch.optim's first step imports torch._dynamo (seconds of CPU in every process that
    trains); train_ needs none of it."""
    code = (
        "import sys, torch; from torch import nn; from fedlth.learning.training import TrainConfig, train_; "
        "m = nn.Linear(3, 2); x = torch.randn(8, 3); y = torch.zeros(8, dtype=torch.long); "
        "train_(m, x, y, {}, TrainConfig(), epochs=1, generator=torch.Generator().manual_seed(0)); "
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_training_learns_and_is_deterministic():
    results = []
    for _ in range(2):
        model, x, y, mask = _setup()
        _, before = evaluate(model, x, y)
        train_(model, x, y, mask, TrainConfig(lr=0.1, batch_size=32), epochs=20, generator=torch.Generator().manual_seed(1))
        _, after = evaluate(model, x, y)
        results.append((after, [p.clone() for p in model.parameters()]))
    assert after > max(before, 0.8)
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1], strict=True))


def test_evaluate_and_predict_by_hand():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])  # the third is wrong: argmax is 0
    _, acc = evaluate(model, x, y, batch_size=3)
    assert acc == 0.75
    assert predict(model, x).tolist() == [0, 1, 0, 1]


def test_cosine_schedule():
    cfg = TrainConfig(lr=0.2, lr_schedule="cosine")
    assert lr_at(0, 100, cfg) == 0.2
    assert abs(lr_at(50, 100, cfg) - 0.1) < 1e-12
    assert lr_at(100, 100, cfg) == 0.0
    assert lr_at(7, 100, TrainConfig(lr=0.3)) == 0.3


def test_adversarial_training_hook_sees_every_batch_and_keeps_the_mask():
    from fedlth.evaluation.robustness import pgd_adversarial_examples

    model, x, y, mask = _setup()
    calls = []
    gen = torch.Generator().manual_seed(1)

    def perturb(m, xb, yb):
        calls.append(len(xb))
        return pgd_adversarial_examples(m, xb, yb, eps=0.3, steps=3, alpha=0.1, input_range=(-4.0, 4.0), generator=gen)

    res = train_(model, x, y, mask, TrainConfig(lr=0.1, batch_size=32), epochs=2, generator=torch.Generator().manual_seed(0), perturb=perturb)
    assert len(calls) == res.steps == 16 and sum(calls) == 2 * len(x)
    params = dict(model.named_parameters())
    assert all(torch.all(params[n][~m] == 0) for n, m in mask.items())
    assert all(p.grad is None or torch.all(p.grad[~mask[n]] == 0) for n, p in params.items() if n in mask)
