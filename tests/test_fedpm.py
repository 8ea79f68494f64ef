"""FedPM: the upload is a sampled mask alone (packed bits), the server's Beta posterior is the
hand-computed one and resets on schedule, the random weights never train, bad replies are
refused for their client only, and a run (and a resumed one) reports bits per parameter."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Message

from clients.client_app import app as client_app
from fedlth.config.scenario import ScenarioError, resolve
from fedlth.data.client_data import client_data, dataset_info
from fedlth.federation import fedpm
from fedlth.federation.algorithms import (
    ClientState,
    Ctx,
    fedpm_network,
    get_algorithm,
    initial_weights,
    model_names,
)
from fedlth.federation.records import (
    encode_mask_upload,
    encode_record,
    record_bytes,
    to_array_record,
)
from fedlth.learning.models import build_model
from server.local_grid import LocalGrid
from server.replies import ReplyError, decode_mask_payload
from server.server_app import load_checkpoint, run_federation
from server.strategy import TicketStrategy

BASE = {
    "dataset": "digits", "model": "mlp", "partition": "pathological", "classes-per-client": 4, "num-clients": 3,
    "clients-per-round": 3, "rounds": 2, "local-epochs": 1, "eval-every": 0, "algorithm": "fedpm",
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}


def _net(sc: dict) -> tuple[dict, list[str], dict]:
    shape, classes = dataset_info(sc)
    frozen, names = fedpm_network(sc, shape, classes)
    return frozen, names, {k: tuple(v.shape) for k, v in frozen.items()}


class _Uplinks:
    """A tamper hook that keeps every train reply's arrays (by round and client) and passes them on."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[int, dict[str, np.ndarray]]] = {}
        self.records: dict[int, dict[int, int]] = {}

    def __call__(self, msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train" and not reply.has_error():
            rnd, pid = int(msg.content["config"]["server-round"]), int(reply.content["metrics"]["partition-id"])
            rec = reply.content["arrays"]
            self.rounds.setdefault(rnd, {})[pid] = {k: v.numpy() for k, v in rec.items()}
            self.records.setdefault(rnd, {})[pid] = record_bytes(rec)
        return reply


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-round, 3-client in-process FedPM run with every uplink recorded."""
    sc = resolve(BASE)
    out = tmp_path_factory.mktemp("fedpm") / "run"
    ups = _Uplinks()
    run_federation(LocalGrid(client_app, 3, tamper={p: ups for p in range(3)}), sc, out, client_state_dir=out / "client-state")
    return sc, out, ups


def test_the_upload_is_one_packed_mask_and_nothing_else(run):
    sc, _, ups = run
    _, names, shapes = _net(sc)
    params = sum(math.prod(shapes[k]) for k in names)
    assert len(ups.rounds) == 2 and all(len(r) == 3 for r in ups.rounds.values())
    for rnd, replies in ups.rounds.items():
        for pid, arrays in replies.items():
            assert list(arrays) == ["fedpm@bits"]  # no values, no dense tensors
            bits = arrays["fedpm@bits"]
            assert bits.dtype == np.uint8 and bits.size == math.ceil(params / 8)
            framing = ups.records[rnd][pid] - bits.size
            assert 0 < framing <= 128 + len("fedpm@bits")  # one .npy header and the key
            mask = fedpm.unpack_masks(bits, names, shapes)
            assert 0.3 < sum(int(m.sum()) for m in mask.values()) / params < 0.7  # a sample of σ(s), not all ones


def test_the_run_reports_bits_per_parameter_and_the_bytes_it_moved(run):
    sc, out, ups = run
    _, names, shapes = _net(sc)
    params = sum(math.prod(shapes[k]) for k in names)
    summary = json.loads((out / "summary.json").read_text())
    bpp = summary["mask_upload_bits_per_parameter"]
    assert bpp["uploads"] == 6
    assert bpp["raw"] == pytest.approx(8 * math.ceil(params / 8) / params)
    wire = sum(b for r in ups.records.values() for b in r.values())
    assert summary["bytes"]["upload"] == wire and bpp["wire"] == pytest.approx(8 * wire / (6 * params))
    assert 1.0 < bpp["wire"] < 1.05 and 0.9 < bpp["coded"] < 1.1 and 0.0 < bpp["entropy"] <= 1.0
    assert summary["bytes"]["upload"] < 0.05 * summary["bytes"]["dense_fedavg_upload"]  # ~1/32 of float32
    assert summary["rejected_updates"] == 0 and 0.0 <= summary["global_accuracy"] <= 1.0
    # every client scores the one global model: the same accuracy as the global one, per client
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["evaluate"]
    assert all(m["accuracy"] == m["global-accuracy"] for m in last.values())


def test_the_servers_probabilities_are_the_beta_mode_of_the_last_rounds_masks(run):
    """Reset every round (the code): α = 1 + Σ soft(m), β = 1 + Σ (1 − soft(m)), so the mode is
    Σ soft(m_i) / K with soft(m) = m (1 − ε) + (1 − m) ε."""
    sc, out, ups = run
    _, names, shapes = _net(sc)
    masks = [fedpm.unpack_masks(a["fedpm@bits"], names, shapes) for _, a in sorted(ups.rounds[2].items())]
    probs = torch.load(out / "server_state.pt")["probabilities"]
    eps = sc["fedpm-epsilon"]
    for k in names:
        by_hand = sum(m[k].double() * (1 - eps) + (~m[k]).double() * eps for m in masks) / len(masks)
        assert torch.allclose(probs[k].double(), by_hand, atol=1e-6), k


def test_the_frozen_weights_are_the_seeded_signed_constants_and_never_change(run):
    sc, out, _ = run
    frozen, names, _ = _net(sc)
    shape, classes = dataset_info(sc)
    theta0 = initial_weights(sc, shape, classes)
    for k in names:  # ±e/sqrt(fan_in) of the module, biases included
        module = k.rpartition(".")[0]
        c = math.e / math.sqrt(theta0[f"{module}.weight"][0].numel())
        assert torch.allclose(frozen[k].abs(), torch.full_like(frozen[k], c))
        assert 0.3 < float((frozen[k] > 0).float().mean()) < 0.7
    assert torch.equal(torch.load(out / "server_state.pt")["global"][names[0]], frozen[names[0]])
    assert torch.equal(load_checkpoint(out)["strategy"]["global"][names[-1]], frozen[names[-1]])
    for pid in range(3):  # each saved ticket: the frozen weights where its mask keeps, 0 elsewhere
        ticket = torch.load(out / "tickets" / f"client-{pid}.pt")
        for k in names:
            w = ticket["weights"][k]
            assert torch.equal(w, frozen[k] * (w != 0)), k


def test_local_training_moves_the_scores_only():
    sc = resolve(BASE)
    frozen, names, _ = _net(sc)
    keep = {k: v.clone() for k, v in frozen.items()}
    data = client_data(sc, 0)
    net = build_model(sc["model"], data.input_shape, data.num_classes)
    net.load_state_dict(frozen)
    scores = fedpm.scores_from_probabilities({k: torch.full_like(frozen[k], 0.5) for k in names})
    trained, loss = fedpm.train_scores(
        net, frozen, scores, data.x_train, data.y_train, epochs=1, batch_size=32, lr=0.1,
        generator=torch.Generator().manual_seed(0), sampler=torch.Generator().manual_seed(1),
    )
    assert math.isfinite(loss)
    assert all(torch.equal(frozen[k], keep[k]) and torch.equal(net.state_dict()[k], keep[k]) for k in frozen)
    assert all(not torch.equal(trained[k], scores[k]) for k in names)
    assert all(torch.equal(scores[k], torch.zeros_like(scores[k])) for k in names)  # the input is untouched


def test_a_client_round_uploads_a_sample_of_its_trained_probabilities():
    sc = resolve(BASE)
    frozen, names, _ = _net(sc)
    probs = {k: torch.full_like(frozen[k], 0.5) for k in names}
    reply = get_algorithm("fedpm").train(probs, ClientState(), Ctx(sc, client_data(sc, 1), 1, 1))
    assert reply.weights is None and list(reply.mask) == names
    assert all(m.dtype == torch.bool for m in reply.mask.values())
    again = get_algorithm("fedpm").train(probs, ClientState(), Ctx(sc, client_data(sc, 1), 1, 1))
    assert all(torch.equal(reply.mask[k], again.mask[k]) for k in names)  # seeded: the same sample


def test_beta_update_matches_a_hand_computation_on_three_clients():
    alpha, beta = fedpm.prior({"w": (2, 2)})
    m1 = {"w": torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)}
    m2 = {"w": torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)}
    m3 = {"w": torch.tensor([[1, 1], [0, 0]], dtype=torch.bool)}
    a, b = fedpm.beta_update(alpha, beta, [m1, m2, m3], epsilon=0.0)
    assert torch.equal(a["w"], torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64))  # 1 + ones
    assert torch.equal(b["w"], torch.tensor([[1.0, 3.0], [3.0, 2.0]], dtype=torch.float64))  # 1 + zeros
    mode = fedpm.posterior_probabilities(a, b, "mode")["w"]
    assert torch.allclose(mode, torch.tensor([[1.0, 1 / 3], [1 / 3, 2 / 3]]))
    mean = fedpm.posterior_probabilities(a, b, "mean")["w"]
    assert torch.allclose(mean, torch.tensor([[0.8, 0.4], [0.4, 0.6]]))
    assert torch.equal(alpha["w"], torch.ones(2, 2, dtype=torch.float64))  # inputs untouched
    # the code's ε: an uploaded 1 counts 1 − ε, a 0 counts ε; the mode stays inside (0, 1)
    a, b = fedpm.beta_update(alpha, beta, [m1, m2, m3], epsilon=0.01)
    assert torch.allclose(a["w"], torch.tensor([[1 + 3 * 0.99, 1 + 0.99 + 0.02], [1 + 0.99 + 0.02, 1 + 1.98 + 0.01]], dtype=torch.float64))
    assert torch.allclose(a["w"] + b["w"], torch.full((2, 2), 5.0, dtype=torch.float64))
    assert float(fedpm.posterior_probabilities(a, b, "mode")["w"].max()) == pytest.approx(0.99)


def test_the_prior_resets_on_schedule():
    assert [fedpm.resets_before(r, 1) for r in (1, 2, 3)] == [True, True, True]
    assert [fedpm.resets_before(r, 3) for r in (1, 2, 3, 4, 5, 7)] == [True, False, False, True, False, True]
    assert not any(fedpm.resets_before(r, 0) for r in (1, 2, 50))

    def strategy(every: int) -> tuple[TicketStrategy, list[str]]:
        sc = resolve(BASE | {"fedpm-reset-every": every, "fedpm-epsilon": 0.0})
        shape, classes = dataset_info(sc)
        st = TicketStrategy(sc, initial_weights(sc, shape, classes), model_names(sc, shape, classes))
        return st, st.fedpm_names

    for every, alpha_after_two in ((1, 2.0), (0, 3.0), (2, 3.0)):
        st, names = strategy(every)
        ones = {k: torch.ones(st.shapes[k], dtype=torch.bool) for k in names}
        for rnd in (1, 2):
            st.round, st._sampled = rnd, [ones]
            st._update_posterior()
        assert float(st.alpha[names[0]].max()) == alpha_after_two, every
        assert float(st.beta[names[0]].max()) == 1.0
        assert float(st.probs[names[0]].min()) == 1.0  # ε = 0: every client kept it


def test_bad_fedpm_payloads_are_refused():
    sc = resolve(BASE)
    frozen, names, shapes = _net(sc)
    mask = fedpm.sample_masks({k: torch.full_like(frozen[k], 0.3) for k in names}, torch.Generator().manual_seed(0))
    limit = 10**7
    for codec in fedpm.CODECS:
        got = decode_mask_payload(encode_mask_upload(mask, names, codec), names, shapes, limit, codec)
        assert all(torch.equal(got[k], mask[k]) for k in names), codec
    params = sum(math.prod(s) for s in shapes.values())
    bits = fedpm.pack_masks(mask, names)
    bad = {
        "weight values (the sparse ticket format)": encode_record(fedpm.masked_weights(frozen, mask), mask, with_shapes=False),
        "the bits plus values": to_array_record({"fedpm@bits": bits, "1.weight@values": np.ones(3, np.float32)}),
        "a float mask": to_array_record({"fedpm@bits": np.unpackbits(bits).astype(np.float32)}),
        "a non-binary mask": to_array_record({"fedpm@bits": np.full(bits.size, 0.5, np.float32)}),
        "too few bits": to_array_record({"fedpm@bits": bits[:-1]}),
        "padding bits set": to_array_record({"fedpm@bits": np.concatenate([bits[:-1], [255]]).astype(np.uint8)}),
        "another codec": encode_mask_upload(mask, names, "lzma"),
        "empty": to_array_record({}),
    }
    if params % 8 == 0:
        del bad["padding bits set"]
    for why, record in bad.items():
        with pytest.raises(ReplyError):
            decode_mask_payload(record, names, shapes, limit, "none")
            pytest.fail(why)
    garbage = to_array_record({"fedpm@lzma": np.frombuffer(b"\x00" * 64, np.uint8).copy()})
    bomb = to_array_record({"fedpm@lzma": np.frombuffer(fedpm.compress(bytes(50 * bits.size), "lzma"), np.uint8).copy()})
    for record in (garbage, bomb):
        with pytest.raises(ReplyError):
            decode_mask_payload(record, names, shapes, limit, "lzma")


def test_lzma_codes_a_skewed_mask_under_one_bit_per_parameter():
    sc = resolve(BASE)
    frozen, names, _ = _net(sc)
    sparse = fedpm.sample_masks({k: torch.full_like(frozen[k], 0.05) for k in names}, torch.Generator().manual_seed(0))
    bits = fedpm.upload_bits(sparse, names, "none")
    assert bits["bpp-raw"] == pytest.approx(1.0, abs=0.01)
    assert bits["bpp-entropy"] == pytest.approx(fedpm.binary_entropy(0.05), abs=0.02)  # 0.29
    assert bits["bpp-coded"] < 0.6  # lzma: above the entropy, far under a bit


@pytest.mark.parametrize("preset", [None, 6])
def test_lzma_with_a_dictionary_cut_to_the_data_writes_the_full_presets_stream(preset):
    """The oracle: the standard library's raw LZMA2 at the whole preset (9e: a 64 MiB dictionary).
    Short, skewed, random and float16 payloads code to the very same bytes, and a stream written
    with the whole preset's dictionary (as before) decodes."""
    import lzma

    level = 9 | lzma.PRESET_EXTREME if preset is None else preset
    rng = np.random.default_rng(0)
    payloads = [b"", b"\x01", bytes(5000), np.packbits(rng.random(80_000) < 0.05).tobytes(),
                rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(), rng.normal(0, 0.05, 30_000).astype(np.float16).tobytes()]
    for data in payloads:
        full = lzma.compress(data, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": level}])
        assert fedpm.compress(data, "lzma", preset) == full, len(data)
        assert fedpm.decompress(full, "lzma", len(data), preset) == data


def test_a_reply_with_values_in_it_is_rejected_and_the_round_goes_on(tmp_path):
    sc = resolve(BASE | {"rounds": 1, "wire-dtype": "float16"})
    frozen, names, shapes = _net(sc)

    def send_values(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train" and not reply.has_error():
            mask = fedpm.unpack_masks(reply.content["arrays"]["fedpm@bits"].numpy(), names, shapes)
            reply.content["arrays"] = encode_record(fedpm.masked_weights(frozen, mask), mask, with_shapes=False)
        return reply

    out = tmp_path / "run"
    run_federation(LocalGrid(client_app, 3, tamper={1: send_values}), sc, out)
    entry = json.loads((out / "metrics.jsonl").read_text())
    assert sorted(entry["train"]) == ["0", "2"] and entry["aggregated"]
    assert [(r["client"], r["kind"]) for r in entry["rejected"]] == [(1, "train")]
    assert "sampled mask only" in entry["rejected"][0]["reason"]
    assert json.loads((out / "summary.json").read_text())["mask_upload_bits_per_parameter"]["uploads"] == 2
    # the probabilities went down as float16 (wire-dtype), still what rejected client 1 was sent
    probs16 = record_bytes(encode_record({k: torch.zeros(shapes[k]) for k in names}, None, with_shapes=False, wire_dtype="float16"))
    assert entry["train"]["0"]["download_bytes"] == probs16 and entry["rejected"][0]["download_bytes"] == probs16


class _Killed(BaseException):
    """Stands in for SIGKILL."""


def test_a_killed_run_resumes_with_its_posterior(tmp_path):
    """With the prior never reset, α and β carry every round: a resume must restore them."""
    sc = resolve(BASE | {"rounds": 3, "fedpm-reset-every": 0, "save-tickets": False, "fedpm-codec": "lzma"})

    def outcome(out):
        rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rounds], torch.load(out / "server_state.pt")["probabilities"]

    whole = tmp_path / "whole"
    run_federation(LocalGrid(client_app, 3), sc, whole, client_state_dir=whole / "client-state")

    def kill(entry: dict) -> None:
        if entry["round"] == 2:
            raise _Killed

    out = tmp_path / "run"
    with pytest.raises(_Killed):
        run_federation(LocalGrid(client_app, 3), sc, out, on_round=kill, client_state_dir=out / "client-state")
    run_federation(LocalGrid(client_app, 3), sc, out, resume=True, client_state_dir=out / "client-state")
    (a, pa), (b, pb) = outcome(whole), outcome(out)
    assert a == b and all(torch.equal(pa[k], pb[k]) for k in pa)
    assert all(m["upload_bytes"] < m["mask-params"] / 8 * 1.1 for r in a for m in r["train"].values())  # lzma on the wire


def test_a_model_with_norm_layers_is_refused():
    with pytest.raises(ScenarioError, match="cifar-cnn"):
        resolve(BASE | {"dataset": "cifar10", "model": "cifar-cnn"})
