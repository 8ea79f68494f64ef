"""DisPFL: per-client random masks of constant density, cosine-annealed prune and regrow with
regrown weights at zero, the server's mean over the entries a client was sent, and a reply
that grows its density refused."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from flwr.app import Message

import fedlth.federation.algorithms as algorithms
from clients.client_app import app as client_app
from fedlth.config.scenario import ScenarioError, resolve
from fedlth.data.client_data import client_data, dataset_info
from fedlth.federation import dispfl
from fedlth.federation.aggregate import Update, masked_mean
from fedlth.federation.algorithms import (
    ClientState,
    Ctx,
    dispfl_mask,
    get_algorithm,
    initial_weights,
    model_names,
)
from fedlth.federation.records import decode_record, encode_record
from fedlth.tickets.saved import load_ticket_file, ticket_path
from server.local_grid import LocalGrid
from server.server_app import load_checkpoint, run_federation

BASE = {
    "dataset": "digits", "model": "mlp", "partition": "pathological", "classes-per-client": 4, "num-clients": 3,
    "clients-per-round": 3, "rounds": 2, "local-epochs": 1, "eval-every": 0, "save-tickets": False, "lr": 0.05,
    "example-cap": 0.0, "algorithm": "dispfl",
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}


def _model_info(sc: dict) -> tuple[dict, list[str]]:
    shape, classes = dataset_info(sc)
    return initial_weights(sc, shape, classes), model_names(sc, shape, classes)


def _data(sc: dict, pid: int = 0):
    """Client `pid`'s data with 96 training samples: the rules, not the learning, are under test."""
    d = client_data(sc, pid)
    return replace(d, x_train=d.x_train[:96], y_train=d.y_train[:96])


def _counts(mask: dict) -> dict[str, int]:
    return {k: int(m.sum()) for k, m in mask.items()}


def test_prune_and_regrow_by_hand_keeps_every_layers_count():
    w = {"a": torch.tensor([[0.9, -0.1, 0.0, 0.5], [0.0, 0.3, -0.7, 0.0]]), "b": torch.tensor([1.0, 0.0, -2.0])}
    mask = {"a": w["a"] != 0, "b": torch.tensor([True, False, True])}
    g = {"a": torch.tensor([[9.0, 0.5, 4.0, 9.0], [3.0, 6.0, 9.0, 0.1]]), "b": torch.tensor([0.0, 9.0, 0.0])}
    new = dispfl.prune_and_regrow(w, mask, g, {"a": 2, "b": 1})
    # a keeps 5: drop the 2 smallest |w| kept, (0, 1) = -0.1 and (1, 1) = 0.3; regrow the 2 largest |g|
    # among the 5 entries not kept after the drop: (1, 1) = 6 (a weight just dropped may come back, as
    # in the reference) and (0, 2) = 4, not (1, 0) = 3
    assert new["a"].tolist() == [[True, False, True, True], [False, True, True, False]]
    assert _counts(new) == _counts(mask) == {"a": 5, "b": 2}
    # b: drop 1.0, regrow position 1 (gradient 9)
    assert new["b"].tolist() == [False, True, True]
    assert all(torch.equal(mask[k], m) for k, m in {"a": w["a"] != 0, "b": torch.tensor([True, False, True])}.items())


def test_the_cosine_schedule_and_its_counts():
    assert dispfl.drop_fraction(0, 10, 0.5) == 0.5
    assert dispfl.drop_fraction(5, 10, 0.5) == pytest.approx(0.25)
    assert dispfl.drop_fraction(10, 10, 0.5) == pytest.approx(0.0)
    assert dispfl.drop_fraction(2, 10, 0.5) == pytest.approx(0.25 * (1 + math.cos(math.pi * 0.2)))
    mask = {"a": torch.tensor([True] * 7 + [False] * 3), "b": torch.ones(4, dtype=torch.bool)}
    assert dispfl.replace_counts(mask, 0.5) == {"a": 4, "b": 2}  # ceil(3.5), ceil(2)
    assert dispfl.replace_counts(mask, 0.1) == {"a": 1, "b": 1}  # ceil: at least one while the fraction is > 0
    assert dispfl.replace_counts(mask, 0.0) == {"a": 0, "b": 0}


def test_erk_gives_small_layers_more_and_keeps_the_total():
    shapes = {"big": (100, 200), "small": (10, 100), "tiny": (10, 3)}
    d = dispfl.layer_densities(shapes, 0.1)
    assert d["tiny"] == 1.0  # ERK would push it past 1: dense, the others rescaled
    assert d["small"] > d["big"]
    numel = {k: math.prod(s) for k, s in shapes.items()}
    assert sum(d[k] * numel[k] for k in shapes) == pytest.approx(0.1 * sum(numel.values()))
    assert d["small"] / d["big"] == pytest.approx((110 / 1000) / (300 / 20000))
    assert dispfl.layer_densities(shapes, 0.3, "uniform") == dict.fromkeys(shapes, 0.3)
    with pytest.raises(ValueError, match="valid: erk, uniform"):
        dispfl.layer_densities(shapes, 0.3, "gaussian")


def test_masks_differ_across_clients_and_are_reproducible_for_a_seed():
    sc = resolve(BASE)
    theta0, names = _model_info(sc)
    m0, m1, again = dispfl_mask(sc, theta0, names, 0), dispfl_mask(sc, theta0, names, 1), dispfl_mask(sc, theta0, names, 0)
    assert all(torch.equal(m0[k], again[k]) for k in names)
    assert all(not torch.equal(m0[k], m1[k]) for k in names if 0 < int(m0[k].sum()) < m0[k].numel())
    assert _counts(m0) == _counts(m1)
    other_seed = dispfl_mask(sc | {"seed": 1}, theta0, names, 0)
    assert any(not torch.equal(m0[k], other_seed[k]) for k in names)
    total = sum(m.numel() for m in m0.values())
    assert abs(sum(_counts(m0).values()) / total - 0.5) < 0.01


def test_a_round_keeps_the_density_regrows_at_zero_and_moves_the_mask():
    sc = resolve(BASE)
    theta0, names = _model_info(sc)
    ctx = Ctx(sc, _data(sc), 0, 1)
    reply = get_algorithm("dispfl").train(theta0, ClientState(), ctx)
    start = dispfl_mask(sc, theta0, names, 0)
    new = reply.mask
    assert _counts(new) == _counts(start)
    regrown = {k: new[k] & ~start[k] for k in names}
    assert sum(int(r.sum()) for r in regrown.values()) > 0.1 * sum(_counts(start).values())  # round 1: half replaced
    for k in names:
        assert torch.all(reply.weights[k][regrown[k]] == 0) and torch.all(reply.state.personal[k][regrown[k]] == 0)
        assert torch.all(reply.weights[k][~new[k]] == 0)
    assert reply.metrics["density"] == pytest.approx(sum(_counts(start).values()) / sum(m.numel() for m in start.values()))
    assert reply.metrics["drop-fraction"] == 0.5
    # the last round replaces almost nothing
    late = get_algorithm("dispfl").train(theta0, reply.state, Ctx(sc, _data(sc), 0, sc["rounds"]))
    assert _counts(late.mask) == _counts(start) and late.metrics["drop-fraction"] == pytest.approx(0.25)


def test_regrowth_follows_the_gradient_not_chance():
    sc = resolve(BASE)
    theta0, names = _model_info(sc)
    ctx = Ctx(sc, _data(sc), 0, 1)
    by_grad = get_algorithm("dispfl").train(theta0, ClientState(), ctx).mask
    by_chance = get_algorithm("dispfl").train(theta0, ClientState(), Ctx(sc | {"dispfl-regrow": "random"}, ctx.data, 0, 1)).mask
    assert _counts(by_grad) == _counts(by_chance)
    assert any(not torch.equal(by_grad[k], by_chance[k]) for k in names)


class _Recorder:
    """Keeps every decoded train reply and the mask of every train message."""

    def __init__(self, shapes: dict) -> None:
        self.shapes = shapes
        self.up: dict[tuple[int, int], tuple[dict, dict, int]] = {}
        self.down: dict[tuple[int, int], dict] = {}
        self.down_weights: dict[tuple[int, int], dict] = {}

    def __call__(self, msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type != "train" or reply.has_error():
            return reply
        rnd, pid = int(msg.content["config"]["server-round"]), int(reply.content["metrics"]["partition-id"])
        self.down_weights[rnd, pid], self.down[rnd, pid] = decode_record(msg.content["arrays"], self.shapes)
        weights, mask = decode_record(reply.content["arrays"], self.shapes)
        self.up[rnd, pid] = (weights, mask, int(reply.content["metrics"]["num-examples"]))
        return reply


def test_two_rounds_in_process_keep_the_density_count_bytes_and_average_what_was_sent(tmp_path):
    sc = resolve(BASE | {"save-tickets": True})
    theta0, names = _model_info(sc)
    rec = _Recorder({k: tuple(v.shape) for k, v in theta0.items()})
    grid = LocalGrid(client_app, 3, tamper={pid: rec for pid in range(3)})
    out = tmp_path / "run"
    run_federation(grid, sc, out, client_state_dir=out / "client-state")
    summary = json.loads((out / "summary.json").read_text())
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["rejected_updates"] == 0 and all(r["aggregated"] for r in log)
    assert abs(summary["density"]["mean"] - 0.5) < 0.01
    b = summary["bytes"]
    assert 0.45 * b["dense_fedavg_upload"] < b["upload"] < 0.6 * b["dense_fedavg_upload"]
    assert 0.45 * b["dense_fedavg_download"] < b["download"] < 0.6 * b["dense_fedavg_download"]  # sparse from round 1
    assert summary["bytes"]["final_ticket_upload"] > 0
    for pid in range(3):
        first = dispfl_mask(sc, theta0, names, pid)
        assert all(torch.equal(rec.down[1, pid][k], first[k]) for k in names)  # round 1: its own initial subnet
        assert all(torch.equal(rec.down[2, pid][k], rec.up[1, pid][1][k]) for k in names)  # then its new mask
        assert _counts(rec.up[2, pid][1]) == _counts(first)
    # round 2 sends each client its new mask's subnet of round 1's mean, the regrown entries included
    server1 = masked_mean(theta0, [Update(w, {k: m[k] & dispfl_mask(sc, theta0, names, pid)[k] for k in names}, n)
                                   for pid in range(3) for (w, m, n) in [rec.up[1, pid]]])
    for pid in range(3):
        new = rec.up[1, pid][1]
        regrown = {k: new[k] & ~dispfl_mask(sc, theta0, names, pid)[k] for k in names}
        assert sum(int(r.sum()) for r in regrown.values()) > 0
        for k in theta0:
            expected = server1[k] * new[k] if k in new else server1[k]
            assert torch.allclose(rec.down_weights[2, pid][k], expected, atol=1e-6), k
    # personal models: the masked model after the last round; the server's tickets carry that mask
    server = torch.load(out / "server_state.pt")
    for pid in range(3):
        weights, mask = load_ticket_file(ticket_path(out / "tickets", pid))
        assert _counts(mask) == _counts(dispfl_mask(sc, theta0, names, pid))
        assert all(torch.equal(mask[k], server["masks"][pid][k]) for k in names)  # the mask of its last round
        assert all(torch.all(weights[k][~mask[k]] == 0) for k in names)
    assert len({tuple(bool(x) for x in m[names[0]].reshape(-1)[:200]) for m in server["masks"].values()}) == 3


def test_round_one_mean_is_over_the_entries_each_client_was_sent(tmp_path):
    sc = resolve(BASE | {"rounds": 1})
    theta0, names = _model_info(sc)
    rec = _Recorder({k: tuple(v.shape) for k, v in theta0.items()})
    out = tmp_path / "run"
    run_federation(LocalGrid(client_app, 3, tamper={pid: rec for pid in range(3)}), sc, out)
    server = torch.load(out / "server_state.pt")["global"]
    ups = [(rec.up[1, pid], dispfl_mask(sc, theta0, names, pid)) for pid in range(3)]
    expected = masked_mean(theta0, [Update(w, {k: m[k] & sent[k] for k in names}, n) for (w, m, n), sent in ups])
    wrong = masked_mean(theta0, [Update(w, m, n) for (w, m, n), _ in ups])  # regrown zeros counted as keepers
    for k in theta0:
        assert torch.allclose(server[k], expected[k], atol=1e-6), k
    assert any(not torch.allclose(server[k], wrong[k], atol=1e-6) for k in names)


def _grow(sc: dict, shapes: dict):
    """A tamper hook: client 0 keeps one more entry of the first layer than its mask allows."""

    def hook(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train" and not reply.has_error():
            weights, mask = decode_record(reply.content["arrays"], shapes)
            name = next(iter(mask))
            free = (~mask[name]).reshape(-1).nonzero()[0]
            grown = mask[name].reshape(-1).clone()
            grown[free] = True
            mask = {**mask, name: grown.reshape(mask[name].shape)}
            reply.content["arrays"] = encode_record({**weights, name: weights[name] + 0.0}, mask, with_shapes=False)
        return reply

    return hook


def test_a_reply_that_grows_its_density_is_rejected_and_one_that_moves_its_mask_is_not(tmp_path):
    sc = resolve(BASE | {"rounds": 1})
    theta0, _ = _model_info(sc)
    shapes = {k: tuple(v.shape) for k, v in theta0.items()}
    out = tmp_path / "run"
    run_federation(LocalGrid(client_app, 3, tamper={0: _grow(sc, shapes)}), sc, out)
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    (rejected,) = log[0]["rejected"]
    assert rejected["client"] == 0 and "at most" in rejected["reason"] and "initial count" in rejected["reason"]
    assert sorted(log[0]["train"]) == ["1", "2"]  # the honest clients moved their masks and were accepted


def test_a_dense_mask_from_the_first_reply_and_nan_weights_are_rejected(tmp_path):
    sc = resolve(BASE | {"rounds": 1})
    theta0, _ = _model_info(sc)
    shapes = {k: tuple(v.shape) for k, v in theta0.items()}

    def dense(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train" and not reply.has_error():
            weights, mask = decode_record(reply.content["arrays"], shapes)
            reply.content["arrays"] = encode_record(weights, {k: torch.ones_like(m) for k, m in mask.items()}, with_shapes=False)
        return reply

    def nan(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train" and not reply.has_error():
            weights, mask = decode_record(reply.content["arrays"], shapes)
            name = next(iter(mask))
            bad = weights[name].clone()
            bad[mask[name]] = float("nan")
            reply.content["arrays"] = encode_record({**weights, name: bad}, mask, with_shapes=False)
        return reply

    out = tmp_path / "run"
    run_federation(LocalGrid(client_app, 3, tamper={1: dense, 2: nan}), sc, out)
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    reasons = {r["client"]: r["reason"] for r in log[0]["rejected"]}
    assert sorted(reasons) == [1, 2] and "initial count" in reasons[1] and "NaN" in reasons[2]
    assert sorted(log[0]["train"]) == ["0"]


def test_a_killed_run_resumes_to_the_same_metrics(tmp_path):
    sc = resolve(BASE | {"rounds": 3, "num-clients": 4, "eval-every": 2})

    class Killed(BaseException):
        pass

    def kill(entry: dict) -> None:
        if entry["round"] == 2:
            raise Killed

    def outcome(out):
        s = json.loads((out / "summary.json").read_text())
        for k in ("wall_seconds", "wall_seconds_segments", "wall_seconds_note", "provenance", "timing"):
            s.pop(k, None)
        rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        for r in rounds:
            r.pop("seconds")
        return s, rounds

    whole = tmp_path / "whole"
    run_federation(LocalGrid(client_app, 4), sc, whole, client_state_dir=whole / "client-state")
    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_federation(LocalGrid(client_app, 4), sc, out, on_round=kill, client_state_dir=out / "client-state")
    assert load_checkpoint(out)["round"] == 2
    run_federation(LocalGrid(client_app, 4), sc, out, resume=True, client_state_dir=out / "client-state")
    assert outcome(out) == outcome(whole)


def test_bad_keys_are_refused_with_the_allowed_values():
    with pytest.raises(ScenarioError, match="dispfl-density"):
        resolve(BASE | {"dispfl-density": 0.0})
    with pytest.raises(ScenarioError, match="erk, uniform"):
        resolve(BASE | {"dispfl-distribution": "er"})
    with pytest.raises(ScenarioError, match="gradient, random"):
        resolve(BASE | {"dispfl-regrow": "magnitude"})


@pytest.mark.parametrize("init", ["mean", "zero"])
def test_regrown_weights_start_from_the_servers_mean_or_from_zero(monkeypatch, init):
    sc = resolve(BASE | {"dispfl-regrow-init": init})
    theta0, names = _model_info(sc)
    data = _data(sc)
    first = get_algorithm("dispfl").train(theta0, ClientState(), Ctx(sc, data, 0, 1))
    regrown = {k: first.mask[k] & ~dispfl_mask(sc, theta0, names, 0)[k] for k in names}
    starts = []
    real = algorithms.local_train
    monkeypatch.setattr(algorithms, "local_train", lambda ctx, start, mask, *a, **kw: (starts.append(start), real(ctx, start, mask, *a, **kw))[1])
    received = {k: v + 0.01 for k, v in theta0.items()}  # the server's mean: nonzero everywhere
    get_algorithm("dispfl").train(received, first.state, Ctx(sc, data, 0, 2))
    (start,) = starts
    for k in names:
        kept_before = first.mask[k] & ~regrown[k]
        assert torch.equal(start[k][kept_before], received[k][kept_before])
        assert torch.all(start[k][~first.mask[k]] == 0)
        expected = received[k][regrown[k]] if init == "mean" else torch.zeros(int(regrown[k].sum()))
        assert torch.equal(start[k][regrown[k]], expected)
