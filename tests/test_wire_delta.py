"""The coded wire format (fedlth.federation.wire_delta): bit-exact round trips for every value dtype, codec
and delta, deltas refused against any other base, and federations that run lossless through it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message

from clients.client_app import app as client_app
from fedlth.config.scenario import resolve
from fedlth.federation import wire_delta as wd
from fedlth.federation.records import decode_record, encode_record
from fedlth.federation.wire import WireError
from server.local_grid import LocalGrid, Tamper
from server.server_app import run_federation

SHAPES = {"a.weight": (6, 5), "a.bias": (6,), "b.weight": (3, 7), "bn.num_batches_tracked": ()}
DTYPES = {"a.weight": torch.float32, "a.bias": torch.float32, "b.weight": torch.float32, "bn.num_batches_tracked": torch.int64}


def _model(seed: int, density: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    w = {k: torch.randn(s, generator=g) for k, s in SHAPES.items() if DTYPES[k].is_floating_point}
    w["a.weight"][0, :3] = torch.tensor([-0.0, 1e-7, 6.0001e4])  # signed zero, float16 subnormal, past bfloat16's mantissa
    w["bn.num_batches_tracked"] = torch.tensor(17)
    m = {k: torch.rand(SHAPES[k], generator=g) < density for k in ("a.weight", "b.weight")}
    return w, m


def _expected(w, m, value_dtype):
    rec = wd.as_received(w, value_dtype)
    return {k: torch.where(m[k], rec[k], torch.zeros(())) if k in m else rec[k] for k in w}


def _same(a, b):
    """Bit-exact: equal patterns (so -0.0 and +0.0 differ), same dtype."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and np.array_equal(wd.patterns(a[k], a[k].dtype), wd.patterns(b[k], b[k].dtype))
        for k in a
    )


@pytest.mark.parametrize("value_dtype", list(wd.VALUE_DTYPES))
@pytest.mark.parametrize("codec", wd.CODECS)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_full_and_delta_round_trips_are_bit_exact(value_dtype, codec, density):
    w, m = _model(1, density)
    before = {k: v.clone() for k, v in w.items()}
    arrays = wd.encode(w, m, value_dtype=value_dtype, codec=codec)
    got, got_m = wd.decode(arrays, SHAPES, DTYPES)
    assert _same(got, _expected(w, m, value_dtype)) and all(torch.equal(got_m[k], m[k]) for k in m)
    assert got_m.keys() == m.keys() and _same(w, before)  # the input untouched
    assert all(bool((got[k][~m[k]] == 0).all()) for k in m)  # pruned entries exactly zero
    # the next model, a mask that shrank in one tensor and stayed in the other, as a delta
    base = wd.base_of(got, got_m, 4)
    w2, _ = _model(2)
    w2 = {k: (got[k] + 0.01 * w2[k] if k != "bn.num_batches_tracked" else torch.tensor(18)) for k in got}
    m2 = {"a.weight": got_m["a.weight"] & (torch.arange(30).reshape(6, 5) % 3 > 0), "b.weight": got_m["b.weight"]}
    delta = wd.encode(w2, m2, value_dtype=value_dtype, codec=codec, base=base, version=5)
    head = wd.header(delta)
    assert (head["kind"], head["version"], head["base_version"]) == (wd.DELTA, 5, 4)
    shrank = wd.SAME if torch.equal(m2["a.weight"], got_m["a.weight"]) else wd.MASKED
    assert delta[wd.FLAGS].tolist() == [wd.DENSE, shrank, wd.SAME, wd.DENSE]  # sorted names; b.weight's mask unchanged
    back, back_m = wd.decode(delta, SHAPES, DTYPES, base)
    assert _same(back, _expected(w2, m2, value_dtype)) and all(torch.equal(back_m[k], m2[k]) for k in m2)


@pytest.mark.parametrize("value_dtype", ["float16", "bfloat16"])
def test_narrow_transport_keeps_pruned_weights_exactly_zero_through_records(value_dtype):
    w, m = _model(3, 0.4)
    w = {k: v + 5.0 if v.is_floating_point() else v for k, v in w.items()}  # no kept value is near zero
    got, got_m = decode_record(encode_record(w, m, wire_dtype=value_dtype, codec="zlib"), SHAPES, DTYPES)
    for k, mk in m.items():
        assert torch.equal(got_m[k], mk) and bool((got[k][~mk] == 0).all()) and bool((got[k][mk] != 0).all())
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k][mk], w[k][mk].to(wd.VALUE_DTYPES[value_dtype]).float())  # the narrowed value, widened exactly


def test_bfloat16_travels_as_raw_16_bit_patterns():
    w, m = _model(4)
    arrays = encode_record(w, m, wire_dtype="bfloat16")  # no codec: the coded format all the same
    raw = np.frombuffer(arrays[wd.DATA].numpy().tobytes(), np.uint8)
    kept = int(m["a.weight"].sum() + m["b.weight"].sum()) + 6  # + the dense bias
    bits = sum(-(-int(v.numel()) // 8) for v in m.values())
    assert raw.size == bits + 2 * kept + 8  # mask bits, 2 bytes per float, the int64 counter as is


def test_a_delta_against_another_base_or_none_is_refused():
    w, m = _model(5)
    got, got_m = wd.decode(wd.encode(w, m, value_dtype="float16"), SHAPES, DTYPES)
    base = wd.base_of(got, got_m, 7)
    delta = wd.encode(got, got_m, value_dtype="float16", codec="lzma", base=base, version=8)
    with pytest.raises(WireError, match="holds no base"):
        wd.decode(delta, SHAPES, DTYPES)
    with pytest.raises(WireError, match="against version 7 .* holds version 6"):
        wd.decode(delta, SHAPES, DTYPES, wd.Base(base.weights, base.mask, 6))
    moved = {**base.weights, "a.bias": base.weights["a.bias"] + 1}
    with pytest.raises(WireError, match="against version 7"):
        wd.decode(delta, SHAPES, DTYPES, wd.Base(moved, base.mask, 7))  # same version, other content
    with pytest.raises(WireError, match="against version 7"):
        wd.decode(delta, SHAPES, DTYPES, wd.Base(base.weights, {**base.mask, "b.weight": ~base.mask["b.weight"]}, 7))
    with pytest.raises(WireError, match="against version 7"):
        decode_record(encode_record(got, got_m, wire_dtype="float16", base=base), SHAPES, DTYPES, wd.Base(base.weights, base.mask, 3))


def test_a_mask_that_grows_goes_full_and_an_unchanged_model_is_tiny():
    w, m = _model(6)
    base = wd.base_of(w, m, 1)
    grown = {k: torch.ones_like(v) for k, v in m.items()}
    assert wd.header(wd.encode(w, grown, codec="lzma", base=base))["kind"] == wd.FULL
    got, _ = wd.decode(wd.encode(w, grown, codec="lzma", base=base), SHAPES, DTYPES)
    assert _same(got, w)
    same = wd.encode(base.weights, m, codec="lzma", base=base, version=2)
    assert same[wd.FLAGS].tolist().count(wd.SAME) == 2
    assert same[wd.DATA].size < 0.1 * wd.encode(w, m, codec="lzma")[wd.DATA].size  # XOR: all zero bytes


def _arrays(**changes):
    w, m = _model(7)
    a = dict(wd.encode(w, m, value_dtype="float16", codec="zlib"))
    a.update(changes)
    return a


@pytest.mark.parametrize(
    "arrays,match",
    [
        (_arrays(**{wd.HEAD: np.zeros(8, np.int64)}), "not a fedlth coded payload"),
        (_arrays(**{wd.HEAD: np.zeros(3, np.int64)}), "8 int64"),
        (_arrays(**{wd.FLAGS: np.zeros(3, np.uint8)}), "4 uint8 flags"),
        (_arrays(**{wd.FLAGS: np.full(4, 9, np.uint8)}), "uint8 flags"),
        (_arrays(**{wd.DATA: np.zeros(5, np.uint8)}), "zlib"),
        (_arrays(**{"extra": np.zeros(1)}), "exactly"),
        (_arrays(**{wd.FLAGS: np.array([0, 2, 2, 0], np.uint8)}), "no mask there"),
    ],
)
def test_malformed_coded_payloads_are_refused(arrays, match):
    w, m = _model(7)
    with pytest.raises(WireError, match=match):
        wd.decode(arrays, SHAPES, DTYPES, wd.base_of(w, {}, 0) if "no mask" in match else None)


def test_a_payload_claiming_more_raw_bytes_than_the_model_can_hold_is_refused_before_inflating():
    a = _arrays()
    head = a[wd.HEAD].copy()
    head[5] = 10**9
    with pytest.raises(WireError, match="raw bytes; this model needs at most"):
        wd.decode({**a, wd.HEAD: head}, SHAPES, DTYPES)


def test_nan_and_inf_are_refused_after_decoding():
    w, m = _model(8)
    w["a.bias"][2] = float("inf")
    with pytest.raises(WireError, match="NaN or Inf"):
        wd.decode(wd.encode(w, m, value_dtype="bfloat16"), SHAPES, DTYPES)


# --- federations ---------------------------------------------------------------------------------

BASE = {
    "dataset": "digits", "model": "mlp", "partition": "pathological", "classes-per-client": 2, "num-clients": 4,
    "clients-per-round": 2, "rounds": 5, "local-epochs": 1, "eval-every": 0, "save-tickets": False, "lr": 0.05,
    "wire-dtype": "float16", "finetune-epochs": 1, "ticket-warmup-epochs": 1, "upload-density": 0.5,
    "prune-rate": 0.5, "target-density": 0.2, "acc-threshold": 0.0, "prune-tolerance": 1.0,
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}
CODED = {"wire-codec": "lzma", "wire-upload": "delta", "wire-download": "delta"}


def _federate(out: Path, tamper: dict[int, Tamper] | None = None, grid=None, **overrides):
    sc = resolve(BASE | overrides)
    summary = run_federation(grid or LocalGrid(client_app, sc["num-clients"], tamper=tamper), sc, out)
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rounds, torch.load(out / "server_state.pt")["global"]


@pytest.mark.parametrize("algorithm", ["personal-ticket", "subfedavg"])
def test_coded_deltas_are_lossless_and_smaller_in_a_federation(tmp_path, algorithm):
    plain, _, g_plain = _federate(tmp_path / "plain", algorithm=algorithm)
    coded, rounds, g_coded = _federate(tmp_path / "coded", algorithm=algorithm, **CODED)
    assert all(torch.equal(g_plain[k], g_coded[k]) for k in g_plain)  # the same training, bit for bit
    assert coded["personalized_accuracy"] == plain["personalized_accuracy"] and coded["rejected_updates"] == 0
    b, p = coded["bytes"], plain["bytes"]
    assert b["upload"] < 0.8 * p["upload"] and b["download"] < 0.8 * p["download"]
    assert (b["upload_values"], b["download_values"]) == (p["upload_values"], p["download_values"])
    bits = coded["bits_per_weight"]
    assert bits["upload_per_param"] == pytest.approx(8 * b["upload"] / b["upload_params"])
    assert bits["download_per_value"] == pytest.approx(8 * b["download"] / b["download_values"])
    assert plain["bits_per_weight"]["download_per_value"] > 16  # float16 values, mask bits, headers
    assert coded["download_ratio_vs_dense_fedavg"] == pytest.approx(b["download"] / b["dense_fedavg_download"])
    assert all("upload_values" in r["bytes"] for r in rounds)


def test_a_client_that_lost_its_base_is_rejected_once_then_gets_the_full_subnet(tmp_path):
    sc = resolve(BASE | {"algorithm": "personal-ticket", "clients-per-round": 4, "rounds": 3} | CODED)
    grid = LocalGrid(client_app, sc["num-clients"])

    def forget(entry: dict) -> None:
        if entry["round"] == 1:
            grid.restart_node(1001)  # partition 0 restarts with no state (and no state file)

    run_federation(grid, sc, tmp_path / "run", on_round=forget)
    rounds = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rejected = [r for rr in rounds for r in rr["rejected"]]
    assert [(r["round"], r["client"]) for r in rejected] == [(2, 0)]
    assert "delta against version 0, but this side holds no base" in rejected[0]["reason"]
    assert sorted(rounds[1]["train"]) == ["1", "2", "3"] and sorted(rounds[2]["train"]) == ["0", "1", "2", "3"]
    # round 3: client 0 was sent its full subnet, the others a (smaller) delta
    sent = {pid: m["download_bytes"] for pid, m in rounds[2]["train"].items()}
    assert sent["0"] > max(sent[p] for p in ("1", "2", "3"))


def test_an_upload_delta_against_another_base_is_rejected_for_that_client_only(tmp_path):
    def rebase(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type != "train" or reply.has_error():
            return reply
        head = reply.content["arrays"][wd.HEAD].numpy().copy()
        head[3] += 1  # names another base version
        reply.content["arrays"][wd.HEAD] = type(reply.content["arrays"][wd.HEAD])(head)
        return reply

    summary, rounds, _ = _federate(tmp_path / "run", tamper={2: rebase}, algorithm="subfedavg", **CODED)
    rejected = [r for rr in rounds for r in rr["rejected"]]
    assert rejected and all(r["client"] == 2 and "delta against version" in r["reason"] for r in rejected)
    assert all(pid != "2" for r in rounds for pid in r["train"]) and sum(len(r["train"]) for r in rounds) > 0


class Killed(BaseException):
    """Stands in for SIGKILL."""


def test_a_run_killed_mid_round_resumes_to_the_same_bytes_and_metrics(tmp_path):
    sc = resolve(BASE | {"algorithm": "subfedavg", "clients-per-round": 3, "rounds": 4} | CODED)

    def run(out: Path, resume: bool = False, tamper=None) -> list[dict]:
        grid = LocalGrid(client_app, sc["num-clients"], tamper=tamper)
        run_federation(grid, sc, out, resume=resume, client_state_dir=out / "client-state")
        rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]

    whole = run(tmp_path / "whole")
    seen: list[int] = []

    def die_in_round_3(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train" and int(msg.content["config"]["server-round"]) == 3:
            seen.append(1)
            if len(seen) == 2:  # one client trained round 3 and kept its new base
                raise Killed
        return reply

    with pytest.raises(Killed):
        run(tmp_path / "cut", tamper={p: die_in_round_3 for p in range(4)})
    again = run(tmp_path / "cut", resume=True)
    assert again == whole and sum(len(r["rejected"]) for r in whole) == 0
    assert any(m["download_bytes"] < whole[0]["train"][p]["download_bytes"] for r in whole[1:] for p, m in r["train"].items() if p in whole[0]["train"])


@pytest.mark.parametrize("algorithm", ["fedper", "dispfl", "shared-ticket"])
def test_every_kind_of_message_goes_through_the_coded_deltas_losslessly(tmp_path, algorithm):
    """fedper's head mask, dispfl's regrown masks (full replies) and shared-ticket's server mask:
    the same global model as plain bfloat16, nothing rejected."""
    extra = {"algorithm": algorithm, "wire-dtype": "bfloat16", "rounds": 3, "prune-start": 1, "prune-end": 2, "fedrep-head-epochs": 1}
    _, _, plain = _federate(tmp_path / "plain", **extra)
    coded, _, glob = _federate(tmp_path / "coded", **extra, **{**CODED, "wire-codec": "zlib"})
    assert coded["rejected_updates"] == 0 and all(torch.equal(plain[k], glob[k]) for k in plain)
