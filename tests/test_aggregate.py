"""Masked aggregation against a per-element brute force, the old list-based mean, Flower's
FedAvg, and (robust rules) numpy/scipy per entry."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

import fedlth.federation.aggregate as agg
from fedlth.federation.aggregate import (
    AGGREGATORS,
    MaskedMeanStream,
    Update,
    dense_mean,
    get_aggregator,
    masked_mean,
    masked_median,
    masked_trimmed_mean,
    validate_update,
)

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


# (change to the second client's update, error it must raise)
BAD_CHANGES = [
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
        lambda u: Update(u.weights, {**u.mask, "fc.weight": torch.ones(5, 4, dtype=torch.bool)}, 3),
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
]


@pytest.mark.parametrize("change,match", BAD_CHANGES)
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


# --- MaskedMeanStream: the mean folded one update at a time ----------------------------


def _reference_masked_mean(previous, updates):
    """The list-based masked_mean as it was before the stream: the oracle for the stream."""
    if not updates:
        return {name: t.clone() for name, t in previous.items()}
    masked = set().union(*(u.mask for u in updates))
    total = float(sum(u.num_examples for u in updates))
    out = {}
    for name, prev in previous.items():
        num = torch.zeros(prev.shape, dtype=torch.float64)
        if name not in masked:
            for u in updates:
                num += float(u.num_examples) * u.weights[name].to(torch.float64)
            out[name] = agg._cast_like(num / total, prev)
            continue
        den = torch.zeros(prev.shape, dtype=torch.float64)
        for u in updates:
            n = float(u.num_examples)
            w = u.weights[name].to(torch.float64)
            m = u.mask.get(name)
            if m is None:
                num += n * w
                den += n
            else:
                num += torch.where(m, n * w, 0.0)
                den += n * m.to(torch.float64)
        kept = den > 0
        mean = num / torch.where(kept, den, 1.0)
        out[name] = agg._cast_like(torch.where(kept, mean, prev.to(torch.float64)), prev)
    return out


def _as64(w):
    return {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in w.items()}


def _mixed_updates(g, num_clients, density, dtype=torch.float32):
    """Fully masked, partly masked (fc.weight dense) and dense clients, dense ones first."""
    updates = []
    for i in range(num_clients):
        n = int(torch.randint(1, 50, (), generator=g))
        kind = i % 3
        if kind == 0:
            u = Update(_state(g), {}, n)
        elif kind == 1:
            u = _update(g, density, n, names=("conv.weight",))
        else:
            u = _update(g, density, n)
        if dtype == torch.float64:
            u = Update(_as64(u.weights), u.mask, n)
        updates.append(u)
    return updates


def _stream(previous, updates):
    s = MaskedMeanStream(previous)
    for u in updates:
        s.add(u)
    return s


@pytest.mark.parametrize(
    "seed,num_clients,density",
    list(itertools.product(range(3), (1, 2, 4, 7), (0.0, 0.2, 0.9))),
)
def test_stream_matches_list_based_mean_and_brute_force(seed, num_clients, density):
    g = torch.Generator().manual_seed(1000 + seed * 10 + num_clients)
    previous = _state(g)
    updates = _mixed_updates(g, num_clients, density) + [
        _update(g, density, int(torch.randint(1, 50, (), generator=g))) for _ in range(2)
    ]
    before, prev_before = _snapshot(updates, previous)
    s = _stream(previous, updates)
    got = s.result()
    assert s.count == len(updates)
    _assert_close(got, _reference_masked_mean(previous, updates), atol=1e-6)
    _assert_close(got, _brute_force(previous, updates), atol=1e-6)
    # masked_mean is the same code path, folded in the same order: identical bits
    want = masked_mean(previous, updates)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in previous.items()}
    for u, (w, m) in zip(updates, before, strict=True):
        assert all(torch.equal(u.weights[k], w[k]) for k in w)
        assert all(torch.equal(u.mask[k], m[k]) for k in m)
    assert all(torch.equal(previous[k], prev_before[k]) for k in previous)


@pytest.mark.parametrize("seed", range(3))
def test_stream_in_float64_agrees_to_rounding_in_any_order(seed):
    # float64 weights: no cast back to float32 hides the differences, so compare tightly.
    g = torch.Generator().manual_seed(seed)
    previous = _as64(_state(g))
    updates = _mixed_updates(g, 9, 0.3, dtype=torch.float64)
    want = _reference_masked_mean(previous, updates)
    for order in (updates, updates[::-1], updates[3:] + updates[:3]):
        got = _stream(previous, order).result()
        for k in want:
            assert torch.allclose(got[k].double(), want[k].double(), rtol=1e-12, atol=1e-12), k


def test_stream_tiny_example_by_hand():
    previous = {"w": torch.tensor([7.0, 8.0, 9.0]), "b": torch.tensor([1.0])}
    a = Update(
        {"w": torch.tensor([1.0, 2.0, 0.0]), "b": torch.tensor([2.0])},
        {"w": torch.tensor([True, True, False])},
        1,
    )
    b = Update(
        {"w": torch.tensor([5.0, 0.0, 0.0]), "b": torch.tensor([6.0])},
        {"w": torch.tensor([True, False, False])},
        3,
    )
    s = MaskedMeanStream(previous)
    s.add(a)
    assert torch.equal(s.result()["w"], torch.tensor([1.0, 2.0, 9.0]))
    s.add(b)
    got = s.result()
    # w[0]: (1·1 + 3·5) / 4 = 4; w[1]: only a keeps it; w[2]: nobody, previous 9
    assert torch.equal(got["w"], torch.tensor([4.0, 2.0, 9.0]))
    assert torch.equal(got["b"], torch.tensor([(2.0 + 18.0) / 4]))
    assert s.count == 2


def test_stream_dense_client_before_the_first_mask_counts_everywhere():
    previous = {"w": torch.zeros(2)}
    s = MaskedMeanStream(previous)
    s.add(Update({"w": torch.tensor([2.0, 4.0])}, {}, 2))  # keeps all of w
    s.add(Update({"w": torch.tensor([8.0, 0.0])}, {"w": torch.tensor([True, False])}, 1))
    # w[0] = (2·2 + 1·8) / 3 = 4; w[1] = 2·4 / 2 = 4
    assert torch.equal(s.result()["w"], torch.tensor([4.0, 4.0]))


def test_stream_integer_buffer_is_rounded_half_to_even():
    s = MaskedMeanStream({"n": torch.tensor(0)})
    s.add(Update({"n": torch.tensor(10)}, {}, 1))
    s.add(Update({"n": torch.tensor(13)}, {}, 1))  # 11.5 -> 12
    got = s.result()["n"]
    assert got.dtype == torch.int64 and int(got) == 12
    s.add(Update({"n": torch.tensor(10)}, {}, 1))  # 11 exactly
    assert int(s.result()["n"]) == 11


def test_stream_result_is_repeatable_and_adding_continues():
    g = torch.Generator().manual_seed(11)
    previous = _state(g)
    updates = [_update(g, 0.4, i + 1) for i in range(4)]
    s = _stream(previous, updates[:2])
    first = s.result()
    again = s.result()
    assert all(torch.equal(first[k], again[k]) for k in first)
    first["fc.weight"].fill_(123.0)  # the result is the caller's to change
    s.add(updates[2])
    s.add(updates[3])
    _assert_close(s.result(), _reference_masked_mean(previous, updates))


def test_stream_empty_result_is_a_copy_of_previous():
    previous = {"w": torch.ones(3), "n": torch.tensor(4)}
    s = MaskedMeanStream(previous)
    assert s.count == 0
    got = s.result()
    assert torch.equal(got["w"], previous["w"]) and torch.equal(got["n"], previous["n"])
    got["w"][0] = 5.0
    assert previous["w"][0] == 1.0


def test_stream_is_not_changed_by_later_edits_of_previous():
    previous = {"w": torch.tensor([1.0, 2.0])}
    s = MaskedMeanStream(previous)
    s.add(Update({"w": torch.tensor([0.0, 6.0])}, {"w": torch.tensor([False, True])}, 1))
    previous["w"].fill_(-1.0)
    assert torch.equal(s.result()["w"], torch.tensor([1.0, 6.0]))


def test_stream_keeps_no_reference_to_an_update():
    # O(model) memory: once added, an update (and its tensors) can be freed.
    import gc
    import weakref

    g = torch.Generator().manual_seed(12)
    previous = _state(g)
    s = MaskedMeanStream(previous)
    u = _update(g, 0.5, 3)
    refs = [weakref.ref(t) for t in (*u.weights.values(), *u.mask.values())]
    s.add(u)
    del u
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("change,match", BAD_CHANGES)
def test_stream_rejects_an_invalid_update_and_stays_unchanged(change, match):
    g = torch.Generator().manual_seed(5)
    previous = _state(g)
    good, later = _update(g, 0.5, 3), _update(g, 0.7, 4)
    s = MaskedMeanStream(previous)
    s.add(good)
    before = s.result()
    with pytest.raises(ValueError, match=match):
        s.add(change(_update(g, 0.5, 3)))
    assert s.count == 1
    after = s.result()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # still usable; the error named the call's position, and the next add is call 2
    s.add(later)
    _assert_close(s.result(), _reference_masked_mean(previous, [good, later]))
    with pytest.raises(ValueError, match="client 3: num_examples"):
        s.add(Update(later.weights, later.mask, 0))
    with pytest.raises(ValueError, match="client 'node-7': num_examples"):
        s.add(Update(later.weights, later.mask, 0), client="'node-7'")


def test_stream_rejects_inf_that_a_float32_sum_would_hide_behind_overflow():
    # The fast finiteness check is a sum; an overflowing sum of finite values must not
    # reject, and an Inf among them must.
    previous = {"w": torch.zeros(4)}
    big = torch.full((4,), 3e38)
    s = MaskedMeanStream(previous)
    s.add(Update({"w": big}, {}, 1))
    assert torch.equal(s.result()["w"], big)
    with pytest.raises(ValueError, match="NaN or Inf"):
        s.add(Update({"w": torch.tensor([3e38, 3e38, float("inf"), 1.0])}, {}, 1))


# --- robust rules: coordinate-wise median and trimmed mean -----------------------------


def _robust_brute_force(previous, updates, rule):
    """Entry by entry: numpy/scipy over the kept values, `previous` where nobody keeps."""
    out = {}
    for name, prev in previous.items():
        flat_prev = prev.reshape(-1).tolist()
        res = []
        for j in range(len(flat_prev)):
            kept = [
                float(u.weights[name].reshape(-1)[j])
                for u in updates
                if name not in u.mask or bool(u.mask[name].reshape(-1)[j])
            ]
            res.append(rule(np.array(kept)) if kept else flat_prev[j])
        t = torch.tensor(res, dtype=torch.float64).reshape(prev.shape)
        out[name] = t if prev.dtype.is_floating_point else torch.round(t)
    return out


def _trim_mean(trim_fraction):
    scipy_stats = pytest.importorskip("scipy.stats")
    return lambda x: float(scipy_stats.trim_mean(x, trim_fraction))


def test_median_and_trimmed_mean_tiny_examples_by_hand():
    previous = {"w": torch.tensor([-1.0, -2.0, -3.0])}

    def u(values, keep):
        return Update({"w": torch.tensor(values)}, {"w": torch.tensor(keep)}, 1)

    updates = [
        u([1.0, 4.0, 0.0], [True, True, False]),
        u([2.0, 6.0, 0.0], [True, True, False]),
        u([3.0, 0.0, 0.0], [True, False, False]),
        u([100.0, 5.0, 0.0], [True, True, False]),
    ]
    # w[0]: keepers 1, 2, 3, 100: median (2 + 3) / 2; w[1]: 4, 5, 6; w[2]: nobody
    assert torch.equal(masked_median(previous, updates)["w"], torch.tensor([2.5, 5.0, -3.0]))
    # trim 0.25: w[0] cuts floor(1) from each end -> (2 + 3) / 2; w[1]: floor(0.75) = 0
    got = masked_trimmed_mean(previous, updates, 0.25)["w"]
    assert torch.equal(got, torch.tensor([2.5, 5.0, -3.0]))
    # trim 0: the plain unweighted mean of the keepers
    got = masked_trimmed_mean(previous, updates, 0.0)["w"]
    assert torch.allclose(got, torch.tensor([106.0 / 4, 5.0, -3.0]))
    # trim 0.4 of 4 keepers: cut floor(1.6) = 1
    assert torch.equal(masked_trimmed_mean(previous, updates, 0.4)["w"][0], torch.tensor(2.5))


def test_robust_rules_ignore_example_counts():
    previous = {"w": torch.zeros(1)}
    updates = [
        Update({"w": torch.tensor([v])}, {}, n) for v, n in ((1.0, 1), (2.0, 1), (9.0, 1000))
    ]
    assert float(masked_median(previous, updates)["w"]) == 2.0
    assert float(masked_trimmed_mean(previous, updates, 0.0)["w"]) == 4.0


def test_robust_integer_buffer_is_rounded_half_to_even():
    previous = {"n": torch.tensor(0)}
    ups = [Update({"n": torch.tensor(v)}, {}, 1) for v in (1, 2, 4, 9)]
    got = masked_median(previous, ups)["n"]  # (2 + 4) / 2 = 3
    assert got.dtype == torch.int64 and int(got) == 3
    assert int(masked_median(previous, ups[:2])["n"]) == 2  # 1.5 -> 2
    assert int(masked_median(previous, ups[1:3])["n"]) == 3  # 3 exactly
    assert int(masked_trimmed_mean(previous, ups[:2], 0.0)["n"]) == 2


@pytest.mark.parametrize("num_clients", (1, 2, 3, 6, 11))
@pytest.mark.parametrize("trim_fraction", (0.0, 0.1, 0.2, 0.25, 0.49))
def test_robust_rules_match_numpy_and_scipy_on_dense_data(num_clients, trim_fraction):
    g = torch.Generator().manual_seed(num_clients)
    previous = _as64(_state(g))
    updates = [Update(_as64(_state(g)), {}, i + 1) for i in range(num_clients)]
    stack = {k: np.stack([u.weights[k].numpy() for u in updates]) for k in previous}
    got = masked_median(previous, updates)
    for k, v in stack.items():
        want = np.median(v.astype(np.float64), axis=0)
        if not previous[k].is_floating_point():
            want = np.round(want)
        assert np.allclose(got[k].numpy(), want, rtol=1e-12, atol=1e-12), k
    scipy_stats = pytest.importorskip("scipy.stats")
    got = masked_trimmed_mean(previous, updates, trim_fraction)
    for k, v in stack.items():
        want = scipy_stats.trim_mean(v.astype(np.float64), trim_fraction, axis=0)
        if not previous[k].is_floating_point():
            want = np.round(want)
        assert np.allclose(got[k].numpy(), want, rtol=1e-12, atol=1e-12), k


@pytest.mark.parametrize(
    "seed,num_clients,density", list(itertools.product(range(2), (1, 4, 9), (0.1, 0.6)))
)
def test_robust_rules_match_per_entry_brute_force_with_masks(seed, num_clients, density):
    g = torch.Generator().manual_seed(2000 + seed * 10 + num_clients)
    previous = _state(g)
    updates = _mixed_updates(g, num_clients, density) + [
        _update(g, density, 1 + i) for i in range(num_clients)
    ]
    before, prev_before = _snapshot(updates, previous)
    for rule, oracle in (
        (masked_median, np.median),
        (lambda p, us: masked_trimmed_mean(p, us, 0.2), _trim_mean(0.2)),
        (lambda p, us: masked_trimmed_mean(p, us, 0.0), np.mean),
    ):
        got = rule(previous, updates)
        _assert_close(got, _robust_brute_force(previous, updates, oracle), atol=1e-6)
        assert {k: v.dtype for k, v in got.items()} == {k: v.dtype for k, v in previous.items()}
    for u, (w, m) in zip(updates, before, strict=True):
        assert all(torch.equal(u.weights[k], w[k]) for k in w)
        assert all(torch.equal(u.mask[k], m[k]) for k in m)
    assert all(torch.equal(previous[k], prev_before[k]) for k in previous)


def test_robust_rules_keep_previous_where_nobody_keeps_and_copy_when_empty():
    g = torch.Generator().manual_seed(3)
    previous = _state(g)
    updates = [_update(g, 0.0, 5), _update(g, 0.0, 9)]
    for got in (masked_median(previous, updates), masked_trimmed_mean(previous, updates, 0.1)):
        for k in MASKED:
            assert torch.equal(got[k], previous[k])
    for got in (masked_median(previous, []), masked_trimmed_mean(previous, [], 0.3)):
        assert all(torch.equal(got[k], previous[k]) for k in previous)
        got["fc.bias"].fill_(9.0)
        assert not torch.equal(previous["fc.bias"], got["fc.bias"])


@pytest.mark.parametrize("chunk", (1, 7, 64))
def test_robust_rules_chunking_does_not_change_the_result(monkeypatch, chunk):
    g = torch.Generator().manual_seed(21)
    previous = _state(g)
    updates = _mixed_updates(g, 6, 0.5)
    whole = masked_median(previous, updates), masked_trimmed_mean(previous, updates, 0.2)
    monkeypatch.setattr(agg, "_CHUNK_ELEMENTS", chunk)
    parts = masked_median(previous, updates), masked_trimmed_mean(previous, updates, 0.2)
    for a, b in zip(whole, parts, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("change,match", BAD_CHANGES)
def test_robust_rules_validate_like_the_mean(change, match):
    g = torch.Generator().manual_seed(5)
    previous = _state(g)
    good = _update(g, 0.5, 3)
    bad = change(_update(g, 0.5, 3))
    with pytest.raises(ValueError, match=match):
        masked_median(previous, [good, bad])
    with pytest.raises(ValueError, match=match):
        masked_trimmed_mean(previous, [good, bad], 0.1)


@pytest.mark.parametrize("bad", (-0.1, 0.5, 0.7, float("nan"), True, "0.1", None))
def test_trim_fraction_outside_zero_to_half_is_rejected(bad):
    previous = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="trim_fraction"):
        masked_trimmed_mean(previous, [Update({"w": torch.ones(2)}, {}, 1)], bad)
    with pytest.raises(ValueError, match="trim_fraction"):
        get_aggregator("trimmed-mean", bad)


@pytest.mark.parametrize("attack", ("scale100", "sign-flip"))
@pytest.mark.parametrize("masked", (False, True))
def test_robust_rules_resist_a_fifth_of_clients_attacking(attack, masked):
    """20 % attackers: median and trimmed mean stay near the honest mean; the mean does not."""
    g = torch.Generator().manual_seed(31)
    clients, attackers, shape = 20, 4, (64, 32)
    truth = 1.0 + torch.rand(shape, generator=g)  # in [1, 2]: a sign flip is a big move
    previous = {"w": torch.zeros(shape)}
    updates, honest, evil = [], [], []
    for i in range(clients):
        w = truth + 0.05 * torch.randn(shape, generator=g)
        m = torch.rand(shape, generator=g) < 0.7 if masked else torch.ones(shape, dtype=torch.bool)
        if i < attackers:
            w = 100.0 * w if attack == "scale100" else -w
            evil.append(m)
        else:
            honest.append((w, m))
        updates.append(Update({"w": w * m}, {"w": m} if masked else {}, 10 + i))
    hw = torch.stack([w for w, _ in honest]).double()
    hm = torch.stack([m for _, m in honest])
    k_honest = hm.sum(0)
    k_evil = torch.stack(evil).sum(0)
    k = k_honest + k_evil
    honest_mean = torch.where(hm, hw, 0.0).sum(0) / k_honest.clamp(min=1)
    lo = torch.where(hm, hw, torch.inf).amin(0)
    hi = torch.where(hm, hw, -torch.inf).amax(0)

    mean = masked_mean(previous, updates)["w"].double()
    med = masked_median(previous, updates)["w"].double()
    trim_fraction = 0.25
    trim = masked_trimmed_mean(previous, updates, trim_fraction)["w"].double()
    cut = torch.floor(trim_fraction * k.double())

    # Provable: fewer than half the keepers attacking (median), or no more than the cut
    # (trimmed mean), leaves the result inside the honest keepers' range.
    ok_med = (k_honest > 0) & (2 * k_evil < k)
    ok_trim = (k_honest > 0) & (k_evil <= cut)
    assert ok_med.float().mean() > 0.95 and ok_trim.float().mean() > 0.8
    for got, ok in ((med, ok_med), (trim, ok_trim)):
        assert bool(((got >= lo - 1e-6) & (got <= hi + 1e-6))[ok].all())
    # And on the whole tensor: near the honest mean, where the plain mean is far off.
    attacked = (k_evil > 0) & (k_honest > 0)
    err = {
        n: float((v - honest_mean)[attacked].abs().median())
        for n, v in (("mean", mean), ("median", med), ("trimmed", trim))
    }
    assert err["median"] < 0.1 and err["trimmed"] < 0.1, err
    assert err["mean"] > 0.2 and err["mean"] > 10 * max(err["median"], err["trimmed"]), err


# --- registry -------------------------------------------------------------------------


def test_registry_names_match_the_scenario_choices():
    from fedlth.config.scenario import KEYS

    # qffl folds each update with its client's loss (fedlth.federation.qffl.QFFLStream), so it is no (previous, updates) rule
    assert tuple(AGGREGATORS) + ("qffl",) == KEYS["aggregation"].choices
    with pytest.raises(TypeError):
        AGGREGATORS["evil"] = masked_mean  # read-only


def test_get_aggregator_binds_trim_fraction_and_rejects_unknown_names():
    g = torch.Generator().manual_seed(41)
    previous = _state(g)
    updates = [_update(g, 0.6, 1 + i) for i in range(5)]
    assert get_aggregator("mean") is masked_mean
    assert get_aggregator("median", 0.3) is masked_median
    got = get_aggregator("trimmed-mean", 0.2)(previous, updates)
    want = masked_trimmed_mean(previous, updates, 0.2)
    assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="'krum'.*mean, median, trimmed-mean"):
        get_aggregator("krum")


def test_stream_denominator_widens_past_int32_example_counts():
    big = 2**31 - 5
    previous = {"w": torch.zeros(2, dtype=torch.float64)}
    s = MaskedMeanStream(previous)
    s.add(
        Update(
            {"w": torch.tensor([1.0, 0.0], dtype=torch.float64)},
            {"w": torch.tensor([True, False])},
            big,
        )
    )
    s.add(
        Update(
            {"w": torch.tensor([3.0, 4.0], dtype=torch.float64)},
            {"w": torch.tensor([True, True])},
            10,
        )
    )
    s.add(Update({"w": torch.tensor([5.0, 6.0], dtype=torch.float64)}, {}, big))
    got = s.result()["w"]
    want = torch.tensor(
        [(big * 1.0 + 10 * 3.0 + big * 5.0) / (2 * big + 10), (10 * 4.0 + big * 6.0) / (big + 10)],
        dtype=torch.float64,
    )
    assert torch.allclose(got, want, rtol=1e-15)


@pytest.mark.parametrize("change,match", BAD_CHANGES)
def test_validate_update_checks_one_update_like_the_rules(change, match):
    g = torch.Generator().manual_seed(5)
    previous = _state(g)
    validate_update(previous, _update(g, 0.5, 3), client=1)  # a good one passes
    with pytest.raises(ValueError, match=match):
        validate_update(previous, change(_update(g, 0.5, 3)), client=1)
