"""FedPer, FedRep and Ditto: the head (FedPer, FedRep) and the personal model (Ditto) never
leave the client, the server averages only what is shared, FedRep's phases freeze what they
say, Ditto's proximal term pulls the personal model to the global one."""

from __future__ import annotations

import json

import pytest
import torch
from flwr.app import Message
from torch import nn

import fedlth.federation.algorithms as algorithms
from clients.client_app import app as client_app
from clients.client_app import context_state
from fedlth.config.scenario import resolve
from fedlth.data.client_data import client_data, dataset_info
from fedlth.federation.algorithms import (
    ClientState,
    Ctx,
    get_algorithm,
    head_names,
    head_off,
    initial_weights,
    model_names,
)
from fedlth.federation.records import decode_record, encode_record, record_bytes
from fedlth.learning.training import TrainConfig, train_
from server.local_grid import LocalGrid
from server.server_app import run_federation

BASE = {
    "dataset": "digits", "model": "mlp", "partition": "pathological", "classes-per-client": 4, "num-clients": 3,
    "clients-per-round": 3, "rounds": 2, "local-epochs": 1, "eval-every": 0, "save-tickets": False, "lr": 0.05,
    "example-cap": 0.0, "fedrep-head-epochs": 2,
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}


def _model_info(sc: dict) -> tuple[dict, list[str]]:
    shape, classes = dataset_info(sc)
    return initial_weights(sc, shape, classes), model_names(sc, shape, classes)


def test_the_head_is_the_last_linear_layer_weight_and_bias():
    sc = resolve(BASE | {"algorithm": "fedper"})
    theta0, prunable = _model_info(sc)
    head = head_names(theta0, prunable)
    assert head == [prunable[-1], prunable[-1].replace("weight", "bias")]
    assert theta0[head[0]].shape[0] == dataset_info(sc)[1]  # one row per class
    assert all(not m.any() for m in head_off(theta0, prunable).values())


class _Recorder:
    """A tamper hook that keeps every train message and reply (decoded) and passes them on."""

    def __init__(self, shapes: dict) -> None:
        self.shapes = shapes
        self.rounds: list[dict[int, tuple]] = []  # per round: pid -> (uplink arrays, weights, mask, num-examples)
        self.downlinks: list = []

    def __call__(self, msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type != "train" or reply.has_error():
            return reply
        rnd = int(msg.content["config"]["server-round"])
        while len(self.rounds) < rnd:
            self.rounds.append({})
        rec = reply.content["arrays"]
        weights, mask = decode_record(rec, self.shapes)
        pid = int(reply.content["metrics"]["partition-id"])
        self.rounds[rnd - 1][pid] = (dict(rec.items()), weights, mask, int(reply.content["metrics"]["num-examples"]))
        self.downlinks.append(msg.content["arrays"])
        return reply


def _federate(tmp_path, name: str):
    sc = resolve(BASE | {"algorithm": name})
    theta0, prunable = _model_info(sc)
    rec = _Recorder({k: tuple(v.shape) for k, v in theta0.items()})
    grid = LocalGrid(client_app, sc["num-clients"], tamper={pid: rec for pid in range(sc["num-clients"])})
    run_federation(grid, sc, tmp_path / "run")
    server = torch.load(tmp_path / "run" / "server_state.pt")["global"]
    log = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return sc, theta0, prunable, rec, grid, server, log


def _example_mean(ups: list[tuple[dict, int]], name: str) -> torch.Tensor:
    """Σ n_i w_i / Σ n_i, by hand, in float64."""
    total = sum(n for _, n in ups)
    return sum(w[name].double() * n for w, n in ups) / total


@pytest.mark.parametrize("name", ["fedper", "fedrep"])
def test_the_head_never_leaves_the_client_and_the_body_is_the_example_weighted_mean(tmp_path, name):
    sc, theta0, prunable, rec, grid, server, log = _federate(tmp_path, name)
    head = head_names(theta0, prunable)
    assert len(rec.rounds) == sc["rounds"] and all(len(r) == 3 for r in rec.rounds)
    own_heads = {}
    for node, context in grid.contexts.items():
        personal = context_state(context).personal
        assert personal is not None
        own_heads[node - 1001] = personal
        assert not torch.equal(personal[head[0]], theta0[head[0]])  # the head did train: the check below bites
    for rnd in rec.rounds:
        for arrays, weights, mask, _ in rnd.values():
            for k in head:
                assert k not in arrays and arrays[f"{k}@values"].numpy().size == 0  # only the mask's bits travel
                assert not mask[k].any() and not weights[k].any()
            assert set(mask) == set(head)  # the body goes dense, unmasked
    for pid, personal in own_heads.items():  # the last upload holds none of the client's head values
        _, weights, _, _ = rec.rounds[-1][pid]
        assert not any(torch.isin(personal[k], weights[k]).any() for k in head)
    for k in head:
        assert torch.equal(server[k], theta0[k])  # the server's head stays θ0
    last = [(w, n) for _, w, _, n in rec.rounds[-1].values()]
    assert len({n for _, n in last}) > 1  # unequal counts: example weighting is visible
    for k in theta0:
        if k not in head:
            assert torch.allclose(server[k].double(), _example_mean(last, k), atol=1e-6), k
    # bytes: each upload is the body plus one bit per head entry (and two .npy headers more)
    dense = log[0]["bytes"]["dense_fedavg_upload"] / len(log[0]["train"])
    body = record_bytes(encode_record(theta0, head_off(theta0, prunable), with_shapes=False))
    head_bytes = sum(theta0[k].numel() * theta0[k].element_size() for k in head)
    assert dense - body > 0.9 * head_bytes
    for r in log:
        for m in r["train"].values():
            assert m["upload_bytes"] == body
            assert m["download_bytes"] == body  # the server's θ0 head is not sent either


def test_a_head_a_client_uploads_anyway_is_not_averaged(tmp_path):
    sc = resolve(BASE | {"algorithm": "fedper", "rounds": 1})
    theta0, prunable = _model_info(sc)
    shapes = {k: tuple(v.shape) for k, v in theta0.items()}

    def send_head(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train" and not reply.has_error():
            weights, _ = decode_record(reply.content["arrays"], shapes)
            weights = {k: v + 1.0 for k, v in weights.items()}
            reply.content["arrays"] = encode_record(weights, None, with_shapes=False)  # dense: head included
        return reply

    run_federation(LocalGrid(client_app, 3, tamper={0: send_head}), sc, tmp_path / "run")
    server = torch.load(tmp_path / "run" / "server_state.pt")["global"]
    assert all(torch.equal(server[k], theta0[k]) for k in head_names(theta0, prunable))


def _ctx(sc: dict, pid: int = 0, rnd: int = 1) -> Ctx:
    return Ctx(sc, client_data(sc, pid), pid, rnd)


def test_fedrep_freezes_the_body_in_the_head_phase_and_the_head_in_the_body_phase(monkeypatch):
    sc = resolve(BASE | {"algorithm": "fedrep", "weight-decay": 0.01, "momentum": 0.9})
    theta0, prunable = _model_info(sc)
    head = set(head_names(theta0, prunable))
    calls = []
    real = algorithms.local_train

    def spy(ctx, start, mask, epochs=None, **kw):
        out = real(ctx, start, mask, epochs, **kw)
        calls.append((start, out[0], epochs, kw.get("frozen", frozenset())))
        return out

    monkeypatch.setattr(algorithms, "local_train", spy)
    received = {k: v + 0.01 for k, v in theta0.items()}  # a "global" body that differs from θ0
    reply = get_algorithm("fedrep").train(received, ClientState(), _ctx(sc))
    (s1, o1, e1, f1), (s2, o2, e2, f2) = calls
    assert e1 == 2 and e2 is None and set(f1) == set(theta0) - head and set(f2) == head
    assert all(torch.equal(s1[k], received[k]) for k in theta0 if k not in head)  # received body
    assert all(torch.equal(s1[k], theta0[k]) for k in head)  # own head: θ0 before its first round
    assert all(torch.equal(o1[k], s1[k]) for k in theta0 if k not in head)  # head phase: body unchanged
    assert all(not torch.equal(o1[k], s1[k]) for k in head)
    assert all(torch.equal(s2[k], o1[k]) for k in theta0)
    assert all(torch.equal(o2[k], s2[k]) for k in head)  # body phase: head unchanged
    assert all(not torch.equal(o2[k], s2[k]) for k in theta0 if k not in head)
    assert all(torch.equal(reply.state.personal[k], o2[k]) for k in theta0)
    # next round: the client starts from its own head, whatever the server sends there
    again = get_algorithm("fedrep").train(received, reply.state, _ctx(sc, rnd=2))
    assert again.state.rounds == 2
    assert all(torch.equal(calls[2][0][k], o2[k]) for k in head)


def test_ditto_with_lambda_zero_is_plain_local_training_from_the_global_model():
    sc = resolve(BASE | {"algorithm": "ditto", "ditto-lambda": 0.0, "ditto-personal-epochs": 2})
    theta0, _ = _model_info(sc)
    ctx = _ctx(sc)
    reply = get_algorithm("ditto").train(theta0, ClientState(), ctx)
    plain, _ = algorithms.local_train(ctx, theta0, None, 2)
    assert all(torch.equal(reply.state.personal[k], plain[k]) for k in theta0)
    glob, _ = algorithms.local_train(ctx, theta0, None)  # the upload: FedAvg's local model
    assert all(torch.equal(reply.weights[k], glob[k]) for k in theta0)


def test_ditto_with_a_huge_lambda_holds_the_personal_model_at_the_global_one():
    sc = resolve(BASE | {"algorithm": "ditto", "lr": 1e-4, "momentum": 0.0})
    theta0, _ = _model_info(sc)
    gen = torch.Generator().manual_seed(3)
    far = {k: v + torch.randn(v.shape, generator=gen) for k, v in theta0.items()}  # v starts far from w
    start = ClientState(personal=far)
    pulled = get_algorithm("ditto").train(theta0, start, _ctx(sc | {"ditto-lambda": 1e4}))
    free = get_algorithm("ditto").train(theta0, start, _ctx(sc | {"ditto-lambda": 0.0}))
    assert max(float((pulled.state.personal[k] - theta0[k]).abs().max()) for k in theta0) < 1e-3
    assert min(float((free.state.personal[k] - theta0[k]).abs().max()) for k in theta0) > 0.5  # the control


def test_ditto_never_uploads_its_personal_model_and_scores_it(tmp_path):
    sc, theta0, _, rec, grid, server, log = _federate(tmp_path, "ditto")
    for node, context in grid.contexts.items():
        v = context_state(context).personal
        _, weights, mask, _ = rec.rounds[-1][node - 1001]
        assert not mask  # FedAvg's dense upload
        assert all(not torch.equal(weights[k], v[k]) for k in theta0)
        assert all(not torch.equal(server[k], v[k]) for k in theta0)
        ctx = _ctx(sc, node - 1001, sc["rounds"])
        scored = algorithms.evaluate_client(get_algorithm("ditto"), server, context_state(context), ctx)
        net = algorithms._model(ctx, v)
        assert scored["accuracy"] == algorithms.evaluate(net, ctx.data.x_test, ctx.data.y_test)[1]
        assert scored["accuracy"] == log[-1]["evaluate"][str(node - 1001)]["accuracy"]
        assert "global-accuracy" in scored


def test_the_proximal_gradient_is_lambda_times_the_distance_and_respects_the_mask():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=gen), torch.randint(0, 2, (8,), generator=gen)
    net = nn.Linear(3, 2, bias=False)
    w0 = {"weight": torch.randn(2, 3, generator=gen)}
    anchor = {"weight": torch.randn(2, 3, generator=gen)}
    mask = {"weight": torch.tensor([[True, False, True], [True, True, False]])}
    net.load_state_dict({"weight": w0["weight"] * mask["weight"]})
    start = net.weight.detach().clone()
    ce = nn.functional.cross_entropy(nn.functional.linear(x, start.requires_grad_()), y)
    (grad,) = torch.autograd.grad(ce, start)
    lr, lam = 0.1, 2.0
    cfg = TrainConfig(lr=lr, momentum=0.0, batch_size=8)
    train_(net, x, y, mask, cfg, epochs=1, generator=torch.Generator().manual_seed(1), prox=(lam, anchor))
    expected = (start.detach() - lr * (grad + lam * (start.detach() - anchor["weight"]))) * mask["weight"]
    assert torch.allclose(net.weight.detach(), expected, atol=1e-6)
    assert torch.all(net.weight.detach()[~mask["weight"]] == 0)  # the anchor does not revive pruned entries


def test_body_only_encoding_is_smaller_by_the_head():
    sc = resolve(BASE | {"algorithm": "fedper"})
    theta0, prunable = _model_info(sc)
    full = record_bytes(encode_record(theta0, None, with_shapes=False))
    body = record_bytes(encode_record(theta0, head_off(theta0, prunable), with_shapes=False))
    head = head_names(theta0, prunable)
    values = sum(theta0[k].numel() * 4 for k in head)
    bits = sum(-(-theta0[k].numel() // 8) for k in head)
    # per head tensor: its values become its mask bits, plus one more array (128-byte .npy header + key)
    extra = sum(128 + len(f"{k}@bits") + len(f"{k}@values") - len(k) for k in head)
    assert full - body == values - bits - extra > 0.9 * values


def test_fedper_scores_the_final_body_with_its_own_head():
    sc = resolve(BASE | {"algorithm": "fedper"})
    theta0, prunable = _model_info(sc)
    head = head_names(theta0, prunable)
    mine = {k: v + 1.0 for k, v in theta0.items()}
    received = {k: (torch.zeros_like(v) if k in head else v + 2.0) for k, v in theta0.items()}  # the head arrives zeroed
    weights, _ = get_algorithm("fedper").personal(received, ClientState(personal=mine), _ctx(sc))
    assert all(torch.equal(weights[k], mine[k] if k in head else received[k]) for k in theta0)
    fresh, _ = get_algorithm("fedper").personal(received, ClientState(), _ctx(sc))
    assert all(torch.equal(fresh[k], theta0[k]) for k in head)  # never sampled: θ0's head
