"""Tests for the pruners: torch.nn.utils.prune as oracle, exact counts, no revival, purity."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from fedlth.tickets.masks import Mask, MaskError, Weights, count_kept, is_subset, ones_mask
from fedlth.tickets.pruning import (
    PRUNERS,
    get_pruner,
    magnitude_global,
    magnitude_layer,
    pruner_names,
    random_mask_like,
    random_prune,
    structured_bn,
    structured_channels_kept,
    structured_l1,
)

STRUCTURED = {"structured-l1", "structured-bn"}


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.BatchNorm2d(6),
        nn.Conv1d(6, 4, 2),  # 3-D weight; the net is never run forward
        nn.Flatten(),
        nn.Linear(24, 10),
        nn.Linear(10, 5),
    )


PRUNABLE = ["0.weight", "2.weight", "4.weight", "5.weight"]
BN_OF = {"0.weight": "1.weight"}


def weights_of(model: nn.Module) -> Weights:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def prunable_modules(model: nn.Sequential) -> list[nn.Module]:
    return [model[int(n.split(".")[0])] for n in PRUNABLE]


def torch_masks(model: nn.Sequential) -> Mask:
    return {n: m.weight_mask.bool() for n, m in zip(PRUNABLE, prunable_modules(model), strict=True)}


def assert_masks_equal(a: Mask, b: Mask) -> None:
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n


# --- torch.nn.utils.prune as oracle -------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_magnitude_global_matches_torch_global_unstructured(ties: bool) -> None:
    model = small_net(1)
    if ties:  # coarse values create many equal magnitudes: tie-breaking must match too
        with torch.no_grad():
            for m in prunable_modules(model):
                m.weight.copy_(torch.round(m.weight * 8) / 8)
    weights = weights_of(model)
    ours = ones_mask(weights, PRUNABLE)
    params = [(m, "weight") for m in prunable_modules(model)]
    for _ in range(2):
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.3)
        ours = magnitude_global(weights, ours, 0.3)
        assert_masks_equal(ours, torch_masks(model))


def test_magnitude_layer_matches_torch_l1_unstructured() -> None:
    model = small_net(2)
    weights = weights_of(model)
    ours = ones_mask(weights, PRUNABLE)
    for amount in (0.3, 0.45):
        for m in prunable_modules(model):
            prune.l1_unstructured(m, "weight", amount=amount)
        ours = magnitude_layer(weights, ours, amount)
        assert_masks_equal(ours, torch_masks(model))


def test_structured_l1_matches_torch_ln_structured() -> None:
    model = small_net(3)
    weights = weights_of(model)
    for m in prunable_modules(model):
        prune.ln_structured(m, "weight", amount=0.4, n=1, dim=0)
    ours = structured_l1(weights, ones_mask(weights, PRUNABLE), 0.4)
    assert_masks_equal(ours, torch_masks(model))


# --- contract shared by every pruner ------------------------------------------------------


def kept_units(name: str, mask: Mask) -> dict[str, int]:
    if name in STRUCTURED:
        return structured_channels_kept(mask)
    return {n: int(m.sum()) for n, m in mask.items()}


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_pruners_never_revive_and_hit_exact_counts(name: str) -> None:
    pruner = get_pruner(name)
    weights = weights_of(small_net(4))
    rng = random.Random(0)
    mask = ones_mask(weights, PRUNABLE)
    gen = torch.Generator().manual_seed(0)
    amounts: list[float | dict[str, float]] = [0.0, 0.2, rng.random(), 0.5, rng.random(), 0.0]
    if name != "magnitude-global":
        amounts.append({n: rng.random() for n in PRUNABLE})
        amounts.append({n: (0.0 if i == 0 else 0.6) for i, n in enumerate(PRUNABLE)})
    amounts.append(1.0)
    for amount in amounts:
        before = kept_units(name, mask)
        new = pruner(weights, mask, amount, generator=gen, bn_of=BN_OF)
        after = kept_units(name, new)
        assert is_subset(new, mask)
        assert all(m.dtype == torch.bool for m in new.values())
        if name == "magnitude-global":
            total = sum(before.values())
            assert total - sum(after.values()) == round(amount * total)
        else:
            for n in PRUNABLE:
                a = amount[n] if isinstance(amount, dict) else amount
                assert before[n] - after[n] == round(a * before[n]), (n, amount)
        mask = new
    assert count_kept(mask) == 0  # the final amount 1.0 removes everything left


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_pruners_do_not_mutate_inputs_and_return_fresh_tensors(name: str) -> None:
    weights = weights_of(small_net(5))
    mask = magnitude_layer(weights, ones_mask(weights, PRUNABLE), 0.3)
    weights_copy = {k: v.clone() for k, v in weights.items()}
    mask_copy = {k: v.clone() for k, v in mask.items()}
    for amount in (0.0, 0.5):
        new = get_pruner(name)(weights, mask, amount, bn_of=BN_OF)
        assert_masks_equal(mask, mask_copy)
        for k in weights:
            assert torch.equal(weights[k], weights_copy[k])
        for n in new:
            new[n].fill_(True)  # writing to the result must not reach the input
        assert_masks_equal(mask, mask_copy)


@pytest.mark.parametrize("name", sorted(PRUNERS))
@pytest.mark.parametrize("amount", [-0.1, 1.1, float("nan"), True])
def test_pruners_reject_bad_amounts(name: str, amount: float) -> None:
    weights = weights_of(small_net(6))
    with pytest.raises(ValueError):
        get_pruner(name)(weights, ones_mask(weights, PRUNABLE), amount)


@pytest.mark.parametrize("name", sorted(set(PRUNERS) - {"magnitude-global"}))
def test_dict_amount_must_name_every_masked_tensor(name: str) -> None:
    weights = weights_of(small_net(6))
    mask = ones_mask(weights, PRUNABLE)
    with pytest.raises(ValueError, match="missing"):
        get_pruner(name)(weights, mask, {"0.weight": 0.2})
    with pytest.raises(ValueError, match="unknown"):
        get_pruner(name)(weights, mask, {**dict.fromkeys(PRUNABLE, 0.2), "x.weight": 0.1})
    with pytest.raises(ValueError):
        get_pruner(name)(weights, mask, {**dict.fromkeys(PRUNABLE, 0.2), "0.weight": 2.0})


def test_magnitude_global_rejects_dict_amount() -> None:
    weights = weights_of(small_net(6))
    with pytest.raises(ValueError):
        magnitude_global(weights, ones_mask(weights, PRUNABLE), dict.fromkeys(PRUNABLE, 0.2))


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_pruners_validate_masks(name: str) -> None:
    weights = weights_of(small_net(6))
    bad = {"4.weight": torch.ones(3, 3, dtype=torch.bool)}
    with pytest.raises(MaskError):
        get_pruner(name)(weights, bad, 0.2)
    not_bool = {"4.weight": torch.ones_like(weights["4.weight"])}
    with pytest.raises(MaskError):
        get_pruner(name)(weights, not_bool, 0.2)


def test_magnitude_layer_removes_smallest_magnitudes() -> None:
    w = torch.tensor([[0.5, -0.1, 3.0], [-2.0, 0.05, 1.0]])
    mask = {"w": torch.tensor([[True, True, True], [True, False, True]])}
    new = magnitude_layer({"w": w}, mask, 0.4)  # round(0.4 * 5) = 2: drop -0.1 and 0.5
    assert new["w"].tolist() == [[False, False, True], [True, False, True]]


# --- structured ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STRUCTURED))
def test_structured_removes_whole_channels(name: str) -> None:
    weights = weights_of(small_net(7))
    mask = ones_mask(weights, PRUNABLE)
    for amount in (0.3, 0.5):
        mask = get_pruner(name)(weights, mask, amount, bn_of=BN_OF)
        for n, m in mask.items():
            rows = m.reshape(m.shape[0], -1)
            assert (rows.all(dim=1) | ~rows.any(dim=1)).all(), n


def test_structured_keeps_old_mask_inside_surviving_channels() -> None:
    weights = {"w": torch.tensor([[1.0, 1.0], [5.0, 5.0], [3.0, 3.0]])}
    mask = {"w": torch.tensor([[True, True], [True, False], [False, True]])}
    new = structured_l1(weights, mask, 0.34)  # round(0.34 * 3) = 1: channel 0 (norm 2) goes
    assert new["w"].tolist() == [[False, False], [True, False], [False, True]]


def test_structured_bn_picks_smallest_gamma() -> None:
    # L1 norms would drop channels 0 and 1; |gamma| says channels 2 and 3 matter least.
    conv = torch.stack([torch.full((2, 3, 3), float(i + 1)) for i in range(4)])
    gamma = torch.tensor([0.9, -1.5, -0.05, 0.2])
    weights = {"c.weight": conv, "bn.weight": gamma, "fc.weight": torch.tensor([[1.0], [2.0]])}
    mask = ones_mask(weights, ["c.weight", "fc.weight"])
    new = structured_bn(weights, mask, 0.5, bn_of={"c.weight": "bn.weight"})
    kept = new["c.weight"].reshape(4, -1).all(dim=1).tolist()
    assert kept == [True, True, False, False]
    # A layer without a BN falls back to L1: the smaller row goes.
    assert new["fc.weight"].tolist() == [[False], [True]]
    # And structured-l1 on the same conv ranks by norm instead.
    l1 = structured_l1(weights, mask, 0.5)
    assert l1["c.weight"].reshape(4, -1).all(dim=1).tolist() == [False, False, True, True]


def test_structured_bn_rejects_missing_or_misshaped_gamma() -> None:
    weights = {"c.weight": torch.randn(4, 2), "bn.weight": torch.randn(3)}
    mask = ones_mask(weights, ["c.weight"])
    with pytest.raises(ValueError):
        structured_bn(weights, mask, 0.5, bn_of={"c.weight": "bn.weight"})
    with pytest.raises(ValueError):
        structured_bn(weights, mask, 0.5, bn_of={"c.weight": "missing.weight"})


def test_structured_channels_kept_counts_partial_channels() -> None:
    mask = {"w": torch.tensor([[True, False], [False, False], [False, True]])}
    assert structured_channels_kept(mask) == {"w": 2}


# --- randomness ---------------------------------------------------------------------------


def test_random_is_deterministic_per_seed() -> None:
    weights = weights_of(small_net(8))
    mask = ones_mask(weights, PRUNABLE)

    def run(seed: int) -> Mask:
        return random_prune(weights, mask, 0.5, generator=torch.Generator().manual_seed(seed))

    assert_masks_equal(run(3), run(3))
    assert any(not torch.equal(run(3)[n], run(4)[n]) for n in PRUNABLE)
    assert_masks_equal(random_prune(weights, mask, 0.5), random_prune(weights, mask, 0.5))


def test_random_mask_like_keeps_per_layer_counts() -> None:
    weights = weights_of(small_net(9))
    mask = magnitude_layer(weights, ones_mask(weights, PRUNABLE), 0.7)
    rnd = random_mask_like(mask, torch.Generator().manual_seed(0))
    again = random_mask_like(mask, torch.Generator().manual_seed(0))
    assert_masks_equal(rnd, again)
    for n in PRUNABLE:
        assert rnd[n].dtype == torch.bool and rnd[n].shape == mask[n].shape
        assert int(rnd[n].sum()) == int(mask[n].sum())
    assert any(not torch.equal(rnd[n], mask[n]) for n in PRUNABLE)


# --- registry -----------------------------------------------------------------------------


def test_registry_and_unknown_pruner() -> None:
    assert set(pruner_names()) == {
        "magnitude-layer",
        "magnitude-global",
        "random",
        "structured-l1",
        "structured-bn",
    }
    with pytest.raises(ValueError, match="valid names") as err:
        get_pruner("snip")
    for name in pruner_names():
        assert name in str(err.value)
