"""Flower record conversion: exact round trips (also through protobuf) and honest byte counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

# Flower internals, in tests only: prove what actually goes over the wire.
from flwr.common.serde import array_record_from_proto, array_record_to_proto
from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord

from fedlth.federation import records as R
from fedlth.federation.wire import WireError


def _model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(16, 8, 3, 3, generator=g),
        "conv.bias": torch.randn(16, generator=g),
        "bn.running_mean": torch.randn(16, generator=g, dtype=torch.float64),
        "bn.num_batches_tracked": torch.tensor(42),
        "fc.weight": torch.randn(10, 128, generator=g),
        "fc.bias": torch.randn(10, generator=g),
        "half": torch.randn(3, generator=g).half(),
    }


def _mask(state, density: float, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.rand(state[k].shape, generator=g) < density for k in ("conv.weight", "fc.weight")
    }


def _through_protobuf(record: ArrayRecord) -> tuple[ArrayRecord, int]:
    data = array_record_to_proto(record).SerializeToString()
    return array_record_from_proto(ProtoArrayRecord.FromString(data)), len(data)


def test_array_record_keeps_order_and_values_exactly():
    rng = np.random.default_rng(0)
    arrays = {
        "z": rng.standard_normal((3, 4)).astype(np.float32),
        "a": np.arange(5, dtype=np.int64),
        "m": rng.standard_normal(7) > 0,
        "s": np.array(3.5),
        "f": np.asfortranarray(rng.standard_normal((2, 3))),
        "e": np.zeros((0, 4), np.float32),
    }
    record = R.to_array_record(arrays)
    assert list(record) == list(arrays)
    for rec in (record, _through_protobuf(record)[0]):
        back = R.from_array_record(rec)
        assert list(back) == list(arrays)
        for k, a in arrays.items():
            assert back[k].dtype == a.dtype and back[k].shape == a.shape
            np.testing.assert_array_equal(back[k], a)
            assert back[k].flags.writeable


def test_weights_and_mask_round_trip_exactly_through_protobuf():
    state = _model_state()
    mask = _mask(state, 0.3)
    w_rec, m_rec = R.weights_to_record(state), R.mask_to_record(mask)
    for w_back in (
        R.weights_from_record(w_rec),
        R.weights_from_record(_through_protobuf(w_rec)[0]),
    ):
        assert list(w_back) == list(state)
        for k, t in state.items():
            assert w_back[k].dtype == t.dtype and torch.equal(w_back[k], t)
    m_back = R.mask_from_record(_through_protobuf(m_rec)[0])
    assert all(m_back[k].dtype == torch.bool and torch.equal(m_back[k], mask[k]) for k in mask)
    with pytest.raises(ValueError, match="bool"):
        R.mask_from_record(w_rec)
    with pytest.raises(ValueError, match="bool"):
        R.mask_to_record({"w": torch.ones(2)})


def test_sparse_record_round_trips_exactly_through_protobuf():
    state = _model_state()
    mask = _mask(state, 0.2)
    record = R.encode_record(state, mask)
    for rec in (record, _through_protobuf(record)[0]):
        w, m = R.decode_record(rec)
        assert list(w) == list(state)
        for k, t in state.items():
            want = torch.where(mask[k], t, 0.0) if k in mask else t
            assert w[k].dtype == t.dtype and torch.equal(w[k], want)
        assert all(torch.equal(m[k], mask[k]) for k in mask)


def test_decode_record_rejects_a_malformed_record():
    state = _model_state()
    arrays = R.from_array_record(R.encode_record(state, _mask(state, 0.5)))
    arrays["fc.weight@values"] = arrays["fc.weight@values"][:-1]
    with pytest.raises(WireError, match="values"):
        R.decode_record(R.to_array_record(arrays))


def test_record_bytes_is_what_array_stores_plus_keys():
    state = _model_state()
    for record in (R.weights_to_record(state), R.encode_record(state, _mask(state, 0.1))):
        data_bytes = sum(len(a.data) for a in record.values())
        assert R.record_bytes(record) == data_bytes + sum(len(k) for k in record)
        # Array.data is the np.save file: header plus the raw buffer.
        raw = sum(a.nbytes for a in R.from_array_record(record).values())
        assert raw < data_bytes <= raw + 128 * len(record)
        # protobuf adds only a few framing bytes per entry (dtype, shape, stype, tags).
        _, proto_len = _through_protobuf(record)
        assert data_bytes < proto_len < R.record_bytes(record) + 64 * len(record)


def test_sparse_record_at_density_01_is_much_smaller():
    g = torch.Generator().manual_seed(0)
    state = {
        "fc1.weight": torch.randn(256, 512, generator=g),
        "fc1.bias": torch.randn(256, generator=g),
    }
    mask = {"fc1.weight": torch.rand(256, 512, generator=g) < 0.1}
    dense, sparse = (
        R.record_bytes(R.weights_to_record(state)),
        R.record_bytes(R.encode_record(state, mask)),
    )
    # 0.1 * 32 + 1 = 4.2 bits per entry instead of 32: about 7.6x smaller.
    assert sparse < dense / 6
    # Tiny tensors: the three .npy headers make a sparse entry cost more than a dense one.
    tiny = {"w": torch.ones(4)}
    tiny_mask = {"w": torch.tensor([True, False, False, False])}
    assert R.record_bytes(R.encode_record(tiny, tiny_mask)) > R.record_bytes(
        R.weights_to_record(tiny)
    )


def test_config_and_metric_records():
    cfg = R.config_to_record(
        {
            "lr": 0.01,
            "epochs": 2,
            "prune": True,
            "algo": "lotteryfl",
            "skip": None,
            "n": np.int64(3),
        }
    )
    assert isinstance(cfg, ConfigRecord)
    assert R.config_from_record(cfg) == {
        "lr": 0.01,
        "epochs": 2,
        "prune": True,
        "algo": "lotteryfl",
        "n": 3,
    }
    met = R.metrics_to_record(
        {"num-examples": 120, "loss": 0.25, "pruned": True, "acc": np.float32(0.5), "none": None}
    )
    assert isinstance(met, MetricRecord)
    back = R.metrics_from_record(met)
    assert back == {"num-examples": 120, "loss": 0.25, "pruned": 1, "acc": 0.5}
    assert type(back["num-examples"]) is int and type(back["pruned"]) is int
    with pytest.raises(TypeError):
        R.metrics_to_record({"name": "x"})
    with pytest.raises(TypeError):
        R.config_to_record({"obj": [object()]})


def test_cached_npy_headers_give_np_saves_bytes_and_np_loads_arrays():
    """records encodes with a cached .npy header and decodes a header it has seen from a cache:
    the bytes are np.save's (Array(ndarray)), the arrays np.load's, each time, whatever the layout."""
    from flwr.app import Array

    rng = np.random.default_rng(0)
    arrays = {
        "scalar": np.asarray(3.5), "empty": np.zeros((0, 3), np.float32), "bits": np.packbits(rng.random(13) < 0.5),
        "f16": rng.standard_normal((4, 5)).astype(np.float16), "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "strided": rng.standard_normal((6, 4))[:, ::2], "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
        "bool": rng.random((2, 2, 2)) < 0.5,
    }
    for _ in range(2):  # the first pass fills the caches, the second reads them
        record = R.to_array_record(arrays)
        for k, a in arrays.items():
            assert np.array_equal(record[k].numpy(), a) and record[k].numpy().dtype == a.dtype
            if a.flags.c_contiguous:
                assert record[k].data == Array(a).data
        back = R.from_array_record(record)
        for k, a in arrays.items():
            assert back[k].shape == a.shape and back[k].dtype == a.dtype and np.array_equal(back[k], a)
            assert back[k].flags.writeable
    # a peer's Fortran-order payload decodes as np.load reads it, first time and after
    fortran = ArrayRecord({"w": Array(np.asfortranarray(rng.standard_normal((3, 4))))})
    for _ in range(2):
        assert np.array_equal(R.from_array_record(fortran)["w"], fortran["w"].numpy())
    # a truncated payload whose header is cached is refused, not read past its end
    good = R.to_array_record({"w": np.ones((4, 4), np.float32)})
    R.from_array_record(good)
    cut = ArrayRecord({"w": Array(dtype="float32", shape=(4, 4), stype="numpy.ndarray", data=good["w"].data[:-4])})
    with pytest.raises(ValueError):
        R.from_array_record(cut)
