"""Masked aggregation against a per-element brute force and against Flower's own FedAvg."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedlth.aggregate import Update, dense_mean, masked_mean

SHAPES = {"conv.weight": (3, 2, 2), "conv.bias": (3,), "fc.weight": (4, 5), "fc.bias": (4,)}
MASKED = ("conv.weight", "fc.weight")


def _state(g: torch.Generator) -> dict[str, torch.Tensor]:
    w = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    w["bn.num_batches_tracked"] = torch.randint(0, 100, (), generator=g)
    return w


def _update(g: torch.Generator, density: float, n: int, names=MASKED) -> Update:
    w = _state(g)
    mask = {k: torch.rand(SHAPES[k], generator=g) < density for k in names}
    for k, m in mask.items():
        w[k] = w[k] * m  # clients send zeros at pruned positions
    return Update(w, mask, n)


def _brute_force(previous, updates):
    """Element by element in Python floats: the rule written out literally."""
    masked = set().union(*(u.mask for u in updates))
    out = {}
    for name, prev in previous.items():
        flat_prev = prev.reshape(-1).tolist()
        res = []
        for j in range(len(flat_prev)):
            num = den = 0.0
            for u in updates:
                m = 1.0
                if name in masked and name in u.mask:
                    m = float(u.mask[name].reshape(-1)[j])
                num += u.num_examples * m * float(u.weights[name].reshape(-1)[j])
                den += u.num_examples * m
            res.append(num / den if den > 0 else flat_prev[j])
        t = torch.tensor(res, dtype=torch.float64).reshape(prev.shape)
        out[name] = t if prev.dtype.is_floating_point else torch.round(t)
    return out


def _assert_close(got, want, atol=1e-6):
    assert list(got) == list(want)
    for k in want:
        assert torch.allclose(got[k].to(torch.float64), want[k].to(torch.float64), atol=atol), k


def _snapshot(updates, previous):
    return [
        ({k: v.clone() for k, v in u.weights.items()}, {k: v.clone() for k, v in u.mask.items()})
        for u in updates
    ], {k: v.clone() for k, v in previous.items()}


@pytest.mark.parametrize(
    "seed,num_clients,density", list(itertools.product(range(3), (1, 2, 5), (0.1, 0.5, 0.9)))
)
def test_matches_brute_force_on_random_masks(seed, num_clients, density):
    g = torch.Generator().manual_seed(seed * 100 + num_clients)
    previous = _state(g)
    updates = [
        _update(g, density, int(torch.randint(1, 50, (), generator=g))) for _ in range(num_clients)
    ]
    before, prev_before = _snapshot(updates, previous)
    got = masked_mean(previous, updates)
    _assert_close(got, _brute_force(previous, updates))
    # inputs untouched, dtypes kept
    for u, (w, m) in zip(updates, before, strict=True):
        assert all(torch.equal(u.weights[k], w[k]) for k in w)
        assert all(torch.equal(u.mask[k], m[k]) for k in m)
    assert all(torch.equal(previous[k], prev_before[k]) for k in previous)
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in previous.items()}
    assert got["bn.num_batches_tracked"].dtype == torch.int64


def test_disjoint_masks_take_each_clients_value_and_keep_previous_elsewhere():
    g = torch.Generator().manual_seed(7)
    previous = _state(g)
    owner = torch.randint(0, 3, SHAPES["fc.weight"], generator=g)  # 2 = nobody keeps it
    updates = []
    for i, n in enumerate((3, 11)):
        w = _state(g)
        m = owner == i
        w["fc.weight"] = w["fc.weight"] * m
        updates.append(Update(w, {"fc.weight": m}, n))
    got = masked_mean(previous, updates)
    want = torch.where(
        owner == 0,
        updates[0].weights["fc.weight"],
        torch.where(owner == 1, updates[1].weights["fc.weight"], previous["fc.weight"]),
    )
    assert torch.equal(got["fc.weight"], want)
    _assert_close(got, _brute_force(previous, updates))


def test_nobody_keeps_anything_keeps_previous_exactly():
    g = torch.Generator().manual_seed(3)
    previous = _state(g)
    updates = [_update(g, 0.0, 5), _update(g, 0.0, 9)]
    got = masked_mean(previous, updates)
    for k in MASKED:
        assert torch.equal(got[k], previous[k])


def test_mask_missing_a_name_counts_as_keeping_it_all():
    g = torch.Generator().manual_seed(4)
    previous = _state(g)
    sparse = _update(g, 0.3, 4, names=("fc.weight",))
    partial = _update(g, 0.5, 6, names=("conv.weight",))  # keeps all of fc.weight
    dense_client = Update(_state(g), {}, 2)
    updates = [sparse, partial, dense_client]
    _assert_close(masked_mean(previous, updates), _brute_force(previous, updates))


def test_integer_buffer_is_rounded_weighted_mean():
    previous = {"n": torch.tensor(0, dtype=torch.int64)}
    updates = [Update({"n": torch.tensor(10)}, {}, 1), Update({"n": torch.tensor(13)}, {}, 2)]
    got = masked_mean(previous, updates)  # (10 + 26) / 3 = 12
    assert got["n"].dtype == torch.int64 and int(got["n"]) == 12


def test_empty_updates_return_a_copy():
    previous = {"w": torch.ones(3)}
    got = masked_mean(previous, [])
    assert torch.equal(got["w"], previous["w"])
    got["w"][0] = 5.0
    assert previous["w"][0] == 1.0
    with pytest.raises(ValueError):
        dense_mean([])


def test_float64_accumulation_keeps_float32_precision():
    # Many clients of nearly equal values: float32 accumulation would drift visibly.
    previous = {"w": torch.zeros(4)}
    updates = [Update({"w": torch.full((4,), 1.0 + 1e-7 * i)}, {}, 1000 + i) for i in range(200)]
    got = masked_mean(previous, updates)
    n = np.array([u.num_examples for u in updates], dtype=np.float64)
    v = np.array([float(u.weights["w"][0]) for u in updates])
    assert abs(float(got["w"][0]) - float((n * v).sum() / n.sum())) < 1e-7


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda u: Update(u.weights, u.mask, 0), "client 1: num_examples"),
        (lambda u: Update(u.weights, u.mask, True), "client 1: num_examples"),
        (
            lambda u: Update({k: v for k, v in u.weights.items() if k != "fc.bias"}, u.mask, 3),
            "client 1: .*missing",
        ),
        (lambda u: Update({**u.weights, "extra": torch.ones(1)}, u.mask, 3), "client 1: .*unknown"),
        (
            lambda u: Update({**u.weights, "fc.bias": torch.ones(5)}, u.mask, 3),
            "client 1: 'fc.bias' has shape",
        ),
        (
            lambda u: Update({**u.weights, "fc.bias": torch.full((4,), float("nan"))}, u.mask, 3),
            "client 1: 'fc.bias' has NaN",
        ),
        (
            lambda u: Update(u.weights, {**u.mask, "fc.weight": torch.ones(4, 5)}, 3),
            "client 1: mask 'fc.weight' has dtype",
        ),
        (
            lambda u: Update(
                u.weights, {**u.mask, "fc.weight": torch.ones(5, 4, dtype=torch.bool)}, 3
            ),
            "client 1: mask 'fc.weight' has shape",
        ),
        (
            lambda u: Update(u.weights, {"nope": torch.ones(1, dtype=torch.bool)}, 3),
            "client 1: mask names unknown",
        ),
        (
            lambda u: Update({**u.weights, "bn.num_batches_tracked": torch.tensor(1.5)}, u.mask, 3),
            "client 1: 'bn.num_batches_tracked' has dtype",
        ),
    ],
)
def test_invalid_updates_name_the_client(change, match):
    g = torch.Generator().manual_seed(5)
    previous = _state(g)
    good = _update(g, 0.5, 3)
    with pytest.raises(ValueError, match=match):
        masked_mean(previous, [good, change(_update(g, 0.5, 3))])


# --- Flower's FedAvg as the oracle for the dense case ---------------------------------


def _reply(arrays: dict[str, np.ndarray], n: int, node_id: int) -> Message:
    """A train reply as the ServerApp would receive it.

    Message(content, reply_to=instruction) needs an instruction message, and building one
    outside a running app fails (TaskIdentity.run_id is not set), so give the reply its
    metadata directly, as Flower's own deserialization does.
    """
    metadata = Metadata(
        run_id=1,
        message_id=f"reply-{node_id}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id=f"ins-{node_id}",
        group_id="1",
        created_at=time.time(),
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": n}),
        }
    )
    return Message(content, metadata=metadata)


@pytest.mark.parametrize("num_clients", (1, 3, 6))
def test_all_ones_masks_equal_flower_fedavg(num_clients):
    g = torch.Generator().manual_seed(num_clients)
    previous = _state(g)
    updates = [
        _update(g, 1.1, int(torch.randint(1, 100, (), generator=g))) for _ in range(num_clients)
    ]
    assert all(bool(m.all()) for u in updates for m in u.mask.values())
    replies = [
        _reply({k: v.numpy() for k, v in u.weights.items()}, u.num_examples, i + 1)
        for i, u in enumerate(updates)
    ]
    arrays, _ = FedAvg().aggregate_train(1, replies)
    oracle = {k: torch.from_numpy(a.numpy()) for k, a in arrays.items()}
    # FedAvg turns the int64 counter into a float64 mean; we round it and keep int64.
    oracle["bn.num_batches_tracked"] = torch.round(oracle["bn.num_batches_tracked"])
    got = masked_mean(previous, updates)
    _assert_close(got, oracle, atol=1e-6)
    _assert_close(dense_mean(updates), oracle, atol=1e-6)
    assert got["bn.num_batches_tracked"].dtype == torch.int64
