"""Lottery-ticket rules: rewinding, one-shot amounts, controls and early-bird detection."""

from __future__ import annotations

import torch
from torch import nn

from fedlth.learning.training import TrainConfig, train_
from fedlth.tickets.lottery import (
    early_bird_epoch,
    next_mask,
    one_shot_amount,
    one_shot_mask,
    random_mask_control,
    rewind,
)
from fedlth.tickets.masks import density, is_subset, ones_mask, prunable_names


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 2))


def test_rewinding_restores_theta0_exactly_on_kept_weights():
    model = _model()
    theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    mask = ones_mask(theta0, prunable_names(model))
    x, y = torch.randn(64, 5), torch.randint(0, 2, (64,))
    train_(model, x, y, mask, TrainConfig(lr=0.1), epochs=3, generator=torch.Generator().manual_seed(0))
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    new = next_mask(trained, mask, pruner="magnitude-global", amount=0.5)
    start = rewind(theta0, new)
    for name, w in start.items():
        if name in new:
            assert torch.equal(w[new[name]], theta0[name][new[name]])
            assert torch.all(w[~new[name]] == 0)
        else:
            assert torch.equal(w, theta0[name])
    # the mask came from trained weights, not θ0
    assert not torch.equal(trained["0.weight"], theta0["0.weight"])
    assert theta0["0.weight"].data_ptr() != start["0.weight"].data_ptr()


def test_iterative_prune_rate_compounds_and_one_shot_matches_it():
    model = _model()
    w = {k: v.detach() for k, v in model.state_dict().items()}
    mask = ones_mask(w, prunable_names(model))
    for _ in range(3):
        new = next_mask(w, mask, pruner="magnitude-layer", amount=0.2)
        assert is_subset(new, mask)
        mask = new
    assert abs(one_shot_amount(0.2, 3) - (1 - 0.8**3)) < 1e-12
    shot = one_shot_mask(w, prunable_names(model), pruner="magnitude-layer", prune_rate=0.2, level=3)
    assert abs(density(shot) - density(mask)) < 0.02
    # on fixed weights, magnitude masks nest: the sparser one is a subset (counts differ by rounding)
    assert is_subset(mask, shot) or is_subset(shot, mask)


def test_random_mask_control_keeps_per_layer_counts_and_moves_positions():
    model = _model()
    w = {k: v.detach() for k, v in model.state_dict().items()}
    mask = next_mask(w, ones_mask(w, prunable_names(model)), pruner="magnitude-layer", amount=0.7)
    rand = random_mask_control(mask, seed=3)
    for n in mask:
        assert int(rand[n].sum()) == int(mask[n].sum())
    assert any(not torch.equal(rand[n], mask[n]) for n in mask)
    assert all(torch.equal(rand[n], random_mask_control(mask, seed=3)[n]) for n in mask)


def _m(bits: list[int]) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(bits, dtype=torch.bool)}


def test_early_bird_by_hand():
    masks = [_m([1, 1, 1, 1, 0, 0, 0, 0, 0, 0]), _m([1, 1, 0, 0, 1, 1, 0, 0, 0, 0]),  # d = 0.4
             _m([1, 1, 0, 0, 1, 0, 1, 0, 0, 0]), _m([1, 1, 0, 0, 1, 0, 1, 0, 0, 0]),  # d = 0.2, 0.0
             _m([1, 1, 0, 0, 1, 0, 1, 0, 0, 0])]  # d = 0.0
    assert early_bird_epoch(masks, epsilon=0.1, window=2) == 5
    assert early_bird_epoch(masks, epsilon=0.25, window=2) == 4
    assert early_bird_epoch(masks, epsilon=0.1, window=3) is None
    assert early_bird_epoch(masks[:1], epsilon=0.5, window=1) is None
