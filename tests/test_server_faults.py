"""Faults at the server: every kind of bad reply is rejected for that client only and counted,
silent clients are left out, the round goes on; robust rules hold off adversarial clients."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, Error, Message

from clients.client_app import app as client_app
from fedlth.config.scenario import resolve
from fedlth.data.client_data import dataset_info
from fedlth.federation.algorithms import initial_weights
from fedlth.federation.records import decode_record, encode_record
from server.local_grid import LocalGrid, Tamper
from server.server_app import run_federation

BASE = {
    "dataset": "digits", "model": "mlp", "partition": "iid", "num-clients": 10, "clients-per-round": 10,
    "rounds": 2, "local-epochs": 1, "algorithm": "subfedavg", "prune-rate": 0.5, "target-density": 0.2,
    "acc-threshold": 0.0, "prune-tolerance": 1.0, "mask-epsilon": 0.0, "eval-every": 0, "save-tickets": False,
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}


def _scenario(**over) -> dict:
    return resolve({**BASE, **over})


def _shapes(sc: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in initial_weights(sc, *dataset_info(sc)).items()}


def _reweigh(sc: dict, change: Callable[[dict, dict], tuple[dict, dict | None]]) -> Tamper:
    """A tamper that decodes the honest reply, changes (weights, mask), and re-encodes it."""
    shapes = _shapes(sc)

    def tamper(msg: Message, reply: Message) -> Message:
        if reply.has_error():
            return reply
        try:
            weights, mask = decode_record(reply.content["arrays"], shapes)
        except ValueError:  # already broken (a poisoned global model can make NaNs): as is
            return reply
        weights, new_mask = change(dict(weights), dict(mask))
        reply.content["arrays"] = encode_record(weights, new_mask, with_shapes=False)
        return reply

    return tamper


def _first_masked(mask: dict) -> str:
    return sorted(mask)[0]


def _nan(w, m):
    k = _first_masked(m)
    w[k] = w[k].clone()
    w[k].view(-1)[torch.nonzero(m[k].view(-1))[0]] = float("nan")
    return w, m


def _dtype(w, m):
    k = sorted(w)[-1]
    w[k] = w[k].double()
    return w, m


def _shape(w, m):
    k = sorted(set(w) - set(m))[0]  # a dense tensor: a bias
    w[k] = torch.zeros(w[k].numel() + 1)
    return w, m


def _no_mask(w, m):
    return w, None


def _revive(w, m):
    return w, {k: torch.ones_like(v) for k, v in m.items()}


def _non_binary(msg: Message, reply: Message) -> Message:
    key = next(k for k in reply.content["arrays"] if k.endswith("@bits"))
    bits = reply.content["arrays"][key].numpy()
    reply.content["arrays"][key] = Array(bits.astype(np.float32) * 0.5)
    return reply


def _oversized(msg: Message, reply: Message) -> Message:
    reply.content["arrays"]["padding"] = Array(np.zeros(1_000_000, dtype=np.float32))
    return reply


def _crash(msg: Message, reply: Message) -> Message:
    return Message(Error(code=2, reason="ZeroDivisionError('boom')"), reply_to=msg)


def _silent(msg: Message, reply: Message) -> None:
    return None


def _liar(msg: Message, reply: Message) -> Message:
    reply.content["metrics"]["partition-id"] = 0
    return reply


def _in_round(rnd: int, tamper: Tamper) -> Tamper:
    def t(msg: Message, reply: Message) -> Message | None:
        if msg.metadata.message_type == "train" and int(msg.content["config"]["server-round"]) == rnd:
            return tamper(msg, reply)
        return reply

    return t


def _train_only(tamper: Tamper) -> Tamper:
    def t(msg: Message, reply: Message) -> Message | None:
        return tamper(msg, reply) if msg.metadata.message_type == "train" else reply

    return t


def _run(sc: dict, tmp: Path, tamper: dict[int, Tamper] | None = None) -> tuple[dict, list[dict]]:
    grid = LocalGrid(client_app, sc["num-clients"], tamper=tamper)
    summary = run_federation(grid, sc, tmp)
    rounds = [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]
    return summary, rounds


def test_each_kind_of_bad_reply_is_rejected_and_counted(tmp_path):
    sc = _scenario()
    # round 2, so that the server knows every client's round-1 mask (revival is checkable)
    bad = {
        1: (_reweigh(sc, _nan), "NaN or Inf"),
        2: (_reweigh(sc, _dtype), "float64"),
        3: (_reweigh(sc, _shape), "bits"),  # any clear reason will do; checked below
        4: (_reweigh(sc, _no_mask), "no mask"),
        5: (_reweigh(sc, _revive), "revives"),
        6: (_non_binary, "uint8"),
        7: (_oversized, "exceeds the limit"),
        8: (_crash, "client error"),
        9: (_liar, "claims partition 0"),
    }
    summary, rounds = _run(sc, tmp_path, {pid: _in_round(2, t) for pid, (t, _) in bad.items()})
    r1, r2 = rounds
    assert r1["rejected_updates"] == 0 and r1["aggregated"]
    assert r2["rejected_updates"] == len(bad)
    reasons = {r["client"]: r["reason"] for r in r2["rejected"]}
    assert sorted(reasons) == sorted(bad)
    for pid, (_, words) in bad.items():
        if pid != 3:
            assert words in reasons[pid], (pid, reasons[pid])
    assert reasons[3]  # a wrong shape is refused, whatever layer of the decoder spots it
    assert r2["aggregated"]  # client 0's valid update still made the round
    assert summary["rejected_updates"] == len(bad)
    assert len(summary["personalized_accuracy"]["per_client"]) == 10


def test_rejected_updates_never_reach_the_global_model(tmp_path):
    sc = _scenario(**{"num-clients": 3, "clients-per-round": 3, "rounds": 1})
    clean_dir, bad_dir = tmp_path / "clean", tmp_path / "bad"
    _run(sc, clean_dir, {2: _in_round(1, _crash)})
    _run(sc, bad_dir, {2: _in_round(1, _reweigh(sc, _nan))})
    clean = torch.load(clean_dir / "server_state.pt", weights_only=True)["global"]
    bad = torch.load(bad_dir / "server_state.pt", weights_only=True)["global"]
    for k in clean:
        assert torch.equal(clean[k], bad[k]), k


def test_silent_clients_are_dropped_and_the_round_goes_on(tmp_path):
    sc = _scenario(**{"num-clients": 4, "clients-per-round": 4, "round-timeout": 0.5})
    summary, rounds = _run(sc, tmp_path, {1: _in_round(1, _silent), 3: _in_round(2, _silent)})
    assert rounds[0]["dropped"] == [1] and rounds[1]["dropped"] == [3]
    assert rounds[0]["aggregated"] and rounds[1]["aggregated"]
    assert summary["rounds"] == 2


def test_below_min_clients_the_global_model_is_kept(tmp_path):
    sc = _scenario(**{"num-clients": 3, "clients-per-round": 3, "rounds": 1, "min-clients": 2})
    _, rounds = _run(sc, tmp_path, {1: _in_round(1, _crash), 2: _in_round(1, _crash)})
    assert not rounds[0]["aggregated"] and rounds[0]["rejected_updates"] == 2
    kept = torch.load(tmp_path / "server_state.pt", weights_only=True)["global"]
    theta0 = initial_weights(sc, *dataset_info(sc))
    for k in theta0:
        assert torch.equal(kept[k], theta0[k]), k


def _scale(w, m):
    return {k: v * -25.0 if v.dtype.is_floating_point else v for k, v in w.items()}, m


ROBUST = {"algorithm": "fedavg-ft", "rounds": 5, "local-epochs": 3, "lr": 0.1, "finetune-epochs": 1, "trim-fraction": 0.2}
HONEST = [str(p) for p in range(2, 10)]


def _honest_mean(summary: dict) -> float:
    per = summary["personalized_accuracy"]["per_client"]
    return float(np.mean([per[p] for p in HONEST]))


def _attack(sc: dict) -> dict[int, Tamper]:
    """Clients 0 and 1 (20 %) send sign-flipped updates scaled by 25 in every round."""
    return {p: _train_only(_reweigh(sc, _scale)) for p in (0, 1)}


@pytest.fixture(scope="module")
def clean_and_attacked(tmp_path_factory) -> tuple[float, float]:
    """Honest clients' personalized accuracy: no attack, and the attack against the plain mean."""
    sc = _scenario(**ROBUST)
    clean, _ = _run(sc, tmp_path_factory.mktemp("clean"))
    attacked, _ = _run(sc, tmp_path_factory.mktemp("mean"), _attack(sc))
    return _honest_mean(clean), _honest_mean(attacked)


def test_the_attack_does_real_harm_to_the_mean(clean_and_attacked):
    clean, attacked = clean_and_attacked
    assert attacked < clean - 0.3


@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
def test_robust_rules_hold_off_20_percent_adversarial_clients(tmp_path, rule, clean_and_attacked):
    """fedavg-ft: clients start from the global model, so a poisoned global model hurts them."""
    clean, _ = clean_and_attacked
    sc = _scenario(**ROBUST, aggregation=rule)
    robust, _ = _run(sc, tmp_path, _attack(sc))
    assert _honest_mean(robust) > clean - 0.03


@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
def test_robust_rules_reject_a_bad_reply_and_aggregate_the_rest(tmp_path, rule):
    sc = _scenario(**{"num-clients": 3, "clients-per-round": 3, "rounds": 1, "aggregation": rule})
    _, rounds = _run(sc, tmp_path, {1: _in_round(1, _reweigh(sc, _dtype))})
    assert rounds[0]["rejected_updates"] == 1 and rounds[0]["aggregated"]
