"""The sparse wire format: exact round trips, strict rejection of malformed payloads, size."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedlth.federation.wire import WireError, decode, dense_size_bytes, encode, payload_bytes

SHAPES = [(1,), (7,), (8,), (3, 5), (2, 3, 3), (4, 1, 3, 3), (13, 11)]


def _weights_and_mask(density: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = {f"l{i}.weight": torch.randn(s, generator=g) for i, s in enumerate(SHAPES)}
    weights["l0.bias"] = torch.randn(5, generator=g)
    weights["bn.num_batches_tracked"] = torch.tensor(17)
    mask = {f"l{i}.weight": torch.rand(s, generator=g) < density for i, s in enumerate(SHAPES)}
    return weights, mask


@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 0.93, 1.0])
def test_round_trip_is_exact(density):
    weights, mask = _weights_and_mask(density, seed=int(density * 100))
    before = {k: v.clone() for k, v in weights.items()}
    arrays = encode(weights, mask)
    got_w, got_m = decode(arrays)
    assert list(got_w) == list(weights)  # order kept
    assert list(got_m) == list(mask)
    for k, m in mask.items():
        assert got_m[k].dtype == torch.bool and torch.equal(got_m[k], m)
        assert torch.equal(got_w[k], torch.where(m, weights[k], 0.0))  # bit-exact values
        assert bool((got_w[k][~m] == 0).all())
        assert got_w[k].dtype == weights[k].dtype
    for k in ("l0.bias", "bn.num_batches_tracked"):
        assert torch.equal(got_w[k], weights[k]) and got_w[k].dtype == weights[k].dtype
    assert all(torch.equal(weights[k], before[k]) for k in weights)  # input untouched


def test_keys_dtypes_and_layout():
    weights, mask = _weights_and_mask(0.5)
    arrays = encode(weights, mask)
    assert arrays["l1.weight@bits"].dtype == np.uint8
    assert arrays["l1.weight@values"].dtype == np.float32
    assert arrays["l1.weight@shape"].dtype == np.int64
    assert arrays["l1.weight@shape"].tolist() == [7]
    assert "l0.bias" in arrays and "l1.weight" not in arrays
    # values are the kept entries in row-major order
    k = "l4.weight"
    flat_m = mask[k].reshape(-1).numpy()
    np.testing.assert_array_equal(arrays[f"{k}@values"], weights[k].reshape(-1).numpy()[flat_m])
    np.testing.assert_array_equal(arrays[f"{k}@bits"], np.packbits(flat_m))


@pytest.mark.parametrize("mask", [None, {}])
def test_dense_round_trip(mask):
    weights, _ = _weights_and_mask(0.5)
    arrays = encode(weights, mask)
    assert set(arrays) == set(weights)
    got_w, got_m = decode(arrays)
    assert got_m == {}
    assert all(torch.equal(got_w[k], weights[k]) for k in weights)


def test_decoded_tensors_do_not_alias_the_input_arrays():
    weights, mask = _weights_and_mask(0.5)
    arrays = encode(weights, mask)
    got_w, _ = decode(arrays)
    got_w["l0.bias"].zero_()
    assert float(np.abs(arrays["l0.bias"]).sum()) > 0


def test_shapes_argument_checks_and_fills_in_missing_shape():
    weights, mask = _weights_and_mask(0.5)
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    arrays = {k: v for k, v in encode(weights, mask).items() if not k.endswith("@shape")}
    got_w, got_m = decode(arrays, shapes)
    assert all(torch.equal(got_m[k], mask[k]) for k in mask)
    with pytest.raises(WireError, match="'l0.weight' has bits but no 'l0.weight@shape'"):
        decode(arrays)
    bad = {**shapes, "l0.bias": (6,)}
    with pytest.raises(WireError, match="'l0.bias' has shape"):
        decode(encode(weights, mask), bad)
    with pytest.raises(WireError, match="unexpected tensor"):
        decode(encode(weights, mask), {k: s for k, s in shapes.items() if k != "l0.bias"})


def _good():
    w = {"w": torch.arange(1.0, 11.0).reshape(2, 5)}  # 10 entries: 2 bytes, 6 padding bits
    m = {"w": torch.tensor([[1, 0, 1, 1, 0], [0, 0, 1, 0, 1]], dtype=torch.bool)}
    return encode(w, m)


def _with(**changes):
    a = dict(_good())
    for k, v in changes.items():
        key = k.replace("__", "@")
        if v is None:
            del a[key]
        else:
            a[key] = v
    return a


@pytest.mark.parametrize(
    "arrays,match",
    [
        (_with(w__bits=np.zeros(3, np.uint8)), "has 3 bytes"),
        (_with(w__bits=np.zeros(2, np.int8)), "must be 1-D uint8 bytes; got int8"),
        (_with(w__bits=np.zeros((1, 2), np.uint8)), "must be 1-D"),
        (_with(w__bits=np.array([0b10110001, 0b01000001], np.uint8)), "padding bits set"),
        (_with(w__values=np.ones(4, np.float32)), "has 4 values; the mask keeps 5"),
        (_with(w__values=np.ones(6, np.float32)), "has 6 values; the mask keeps 5"),
        (_with(w__values=np.array([1, np.nan, 3, 4, 5], np.float32)), "NaN or Inf"),
        (_with(w__values=np.array([1, np.inf, 3, 4, 5], np.float32)), "NaN or Inf"),
        (_with(w__values=np.ones((5, 1), np.float32)), "must be 1-D"),
        (_with(w__shape=np.array([3, 6], np.int64)), "of shape \\(3, 6\\) has 2 bytes; 18 entries need 3"),
        (_with(w__shape=np.array([2.0, 5.0])), "1-D integer"),
        (_with(w__shape=np.array([-2, -5], np.int64)), "negative"),
        (_with(w__values=None), "needs both"),
        (_with(w__bits=None), "needs both"),
        (_with(w__scale=np.ones(1)), "unknown suffix"),
        (_with(**{"a@b__bits": np.zeros(1, np.uint8)}), "must not contain"),
        (_with(w=np.ones((2, 5), np.float32)), "both dense and sparse"),
        (_with(b=np.array([np.inf], np.float32)), "NaN or Inf"),
        (_with(b=[1.0, 2.0]), "expected a numpy array"),
    ],
)
def test_malformed_payloads_are_rejected(arrays, match):
    with pytest.raises(WireError, match=match):
        decode(arrays)


def test_good_fixture_decodes():
    w, m = decode(_good())
    assert w["w"].tolist() == [[1.0, 0.0, 3.0, 4.0, 0.0], [0.0, 0.0, 8.0, 0.0, 10.0]]
    assert int(m["w"].sum()) == 5


def test_encode_rejects_bad_masks_and_reserved_names():
    w = {"w": torch.ones(3)}
    with pytest.raises(ValueError):
        encode(w, {"w": torch.ones(3)})  # not bool
    with pytest.raises(ValueError):
        encode(w, {"v": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(WireError, match="reserved"):
        encode({"a@b": torch.ones(1)}, None)
    with pytest.raises(WireError, match="bfloat16"):
        encode({"w": torch.ones(2, dtype=torch.bfloat16)}, None)


@pytest.mark.parametrize("density", [0.0, 0.05, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("numel", [8, 1000, 4096, 999])
def test_size_is_d_times_32_plus_1_bits_per_entry(density, numel):
    g = torch.Generator().manual_seed(numel)
    w = {"w": torch.randn(numel, generator=g)}
    m = {"w": torch.rand(numel, generator=g) < density}
    arrays = encode(w, m)
    kept = int(m["w"].sum())
    payload = arrays["w@values"].nbytes + arrays["w@bits"].nbytes
    assert payload == 4 * kept + math.ceil(numel / 8)
    if numel % 8 == 0:
        assert payload * 8 == kept * 32 + numel  # exactly d*32 + 1 bits per entry
    assert payload_bytes(arrays) == payload + 8  # plus one int64 for the 1-D shape
    assert dense_size_bytes(w) == 4 * numel


def test_shapeless_encoding_round_trips_with_known_shapes_and_is_smaller():
    g = torch.Generator().manual_seed(5)
    weights = {"a.weight": torch.randn(6, 5, generator=g), "a.bias": torch.randn(6, generator=g)}
    mask = {"a.weight": torch.rand(6, 5, generator=g) > 0.5}
    lean = encode(weights, mask, with_shapes=False)
    assert not any(k.endswith("@shape") for k in lean)
    back, m = decode(lean, {k: tuple(v.shape) for k, v in weights.items()})
    assert torch.equal(m["a.weight"], mask["a.weight"])
    assert torch.equal(back["a.weight"], weights["a.weight"] * mask["a.weight"])
    with pytest.raises(WireError, match="no 'a.weight@shape'"):
        decode(lean)
