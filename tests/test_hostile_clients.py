"""Hostile clients, in process: every kind of reply (query, train, evaluate) is checked and
attributed to the node the instruction went to; a bad one is rejected for that client only and
counted, an inflated example count is bounded, and the honest clients' results are untouched."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Error, Message, RecordDict

from clients.client_app import app as client_app
from fedlth.config.scenario import resolve
from fedlth.data.client_data import dataset_info
from fedlth.evaluation.evaluators import COUNTS_PREFIX
from fedlth.federation.aggregate import Update, masked_mean
from fedlth.federation.algorithms import initial_weights
from fedlth.federation.records import decode_record, encode_record
from fedlth.tickets.saved import load_ticket_file, ticket_path
from server.local_grid import LocalGrid, Tamper
from server.replies import EVALUATE, TRAIN, ReplyError, check_metrics
from server.server_app import run_federation
from server.strategy import TicketStrategy

BASE = {
    "dataset": "digits", "model": "mlp", "partition": "iid", "num-clients": 3, "clients-per-round": 3,
    "rounds": 1, "local-epochs": 1, "algorithm": "subfedavg", "prune-rate": 0.5, "target-density": 0.2,
    "acc-threshold": 0.0, "prune-tolerance": 1.0, "mask-epsilon": 0.0, "eval-every": 0, "save-tickets": True,
    "round-timeout": 5.0,
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}


def _scenario(**over) -> dict:
    return resolve({**BASE, **over})


def _shapes(sc: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in initial_weights(sc, *dataset_info(sc)).items()}


def _run(sc: dict, out: Path, tamper: dict[int, Tamper] | None = None, nodes: int | None = None,
         on_round: Callable[[dict], None] | None = None, grid: LocalGrid | None = None) -> tuple[dict, list[dict]]:
    grid = grid or LocalGrid(client_app, nodes or sc["num-clients"], tamper=tamper)
    summary = run_federation(grid, sc, out, on_round=on_round)
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, rounds


def _global(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "server_state.pt", weights_only=True)["global"]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _only(kind: str, tamper: Tamper, rnd: int | None = None) -> Tamper:
    """Apply `tamper` to replies of one message kind (and one server round)."""

    def t(msg: Message, reply: Message) -> Message | None:
        if msg.metadata.message_type != kind:
            return reply
        if rnd is not None and int(msg.content["config"]["server-round"]) != rnd:
            return reply
        return tamper(msg, reply)

    return t


def _set_metric(key: str, value) -> Tamper:
    def t(msg: Message, reply: Message) -> Message:
        reply.content["metrics"][key] = value
        return reply

    return t


def _drop_metric(key: str) -> Tamper:
    def t(msg: Message, reply: Message) -> Message:
        del reply.content["metrics"][key]
        return reply

    return t


def _both(*tampers: Tamper) -> Tamper:
    def t(msg: Message, reply: Message) -> Message | None:
        for tamper in tampers:
            reply = tamper(msg, reply)
        return reply

    return t


def _record_change(sc: dict, name: str, change, with_shapes: bool) -> Tamper:
    """Decode the record `name` of an honest reply, change (weights, mask), re-encode it."""
    shapes = _shapes(sc)

    def t(msg: Message, reply: Message) -> Message:
        weights, mask = decode_record(reply.content[name], shapes)
        weights, mask = change(dict(weights), dict(mask))
        reply.content[name] = encode_record(weights, mask, with_shapes=with_shapes)
        return reply

    return t


def _nan(w, m):
    k = sorted(m)[0]
    w[k] = w[k].clone()
    w[k].view(-1)[torch.nonzero(m[k].view(-1))[0]] = float("nan")
    return w, m


def _revive(w, m):
    return w, {k: torch.ones_like(v) for k, v in m.items()}


def _scaled(factor: float):
    def change(w, m):
        return {k: v * factor if v.dtype.is_floating_point else v for k, v in w.items()}, m

    return change


def _pad(name: str) -> Tamper:
    def t(msg: Message, reply: Message) -> Message:
        reply.content[name]["padding"] = Array(np.zeros(1_000_000, dtype=np.float32))
        return reply

    return t


def _crash(msg: Message, reply: Message) -> Message:
    return Message(Error(code=2, reason="RuntimeError('down')"), reply_to=msg)


def _silent(msg: Message, reply: Message) -> None:
    return None


# --- train replies -------------------------------------------------------------------------------


def test_bad_train_replies_are_rejected_and_the_honest_update_is_intact(tmp_path):
    """Round 2 (the server knows every round-1 mask): clients 1..8 attack, client 0 is honest;
    the global model equals that of a run where clients 1..8 simply failed."""
    sc = _scenario(**{"num-clients": 9, "clients-per-round": 9, "rounds": 2, "save-tickets": False})
    train = {
        1: (_record_change(sc, "arrays", _nan, False), "NaN or Inf"),
        2: (_record_change(sc, "arrays", _revive, False), "revives"),
        3: (_pad("arrays"), "exceeds the limit"),
        4: (_set_metric("num-examples", float("nan")), "'num-examples' is nan"),
        5: (_drop_metric("num-examples"), "lacks num-examples"),
        6: (_set_metric("partition-id", 0), "claims partition 0"),
        7: (_set_metric("train-loss", [1.0, 2.0]), "expected a number"),
        8: (_set_metric("density", 3.0), "'density' is 3.0"),
    }
    attacked, rounds = _run(sc, tmp_path / "attacked", {p: _only("train", t, 2) for p, (t, _) in train.items()})
    failed, _ = _run(sc, tmp_path / "failed", {p: _only("train", _crash, 2) for p in train})
    r2 = rounds[1]
    reasons = {r["client"]: r["reason"] for r in r2["rejected"]}
    assert sorted(reasons) == sorted(train) and {r["kind"] for r in r2["rejected"]} == {"train"}
    for pid, (_, words) in train.items():
        assert words in reasons[pid], (pid, reasons[pid])
    assert r2["aggregated"] and list(r2["train"]) == ["0"]
    assert _same_weights(_global(tmp_path / "attacked"), _global(tmp_path / "failed"))
    assert attacked["personalized_accuracy"]["per_client"]["0"] == failed["personalized_accuracy"]["per_client"]["0"]
    # a rejected payload is not an upload: the 4 MB of padding are counted apart
    assert r2["bytes"]["upload"] == sum(m["upload_bytes"] for m in r2["train"].values())
    assert r2["bytes"]["rejected"] >= 4_000_000 > r2["bytes"]["upload"]
    assert attacked["bytes"]["rejected"] == r2["bytes"]["rejected"]
    assert attacked["rejected_by_kind"] == {"train": len(train)}


# --- example counts ------------------------------------------------------------------------------

FEDAVG = {"algorithm": "fedavg", "num-clients": 4, "clients-per-round": 4, "save-tickets": False}
ATTACKER = 3
LIE = 10**12


def _recorder(sc: dict, seen: dict[int, Update], pid: int, tamper: Tamper | None = None) -> Tamper:
    """Keep (after `tamper`) the update client `pid` sends in round 1, as the server will read it."""
    shapes = _shapes(sc)

    def t(msg: Message, reply: Message) -> Message | None:
        if tamper is not None:
            reply = tamper(msg, reply)
        if msg.metadata.message_type == "train" and int(msg.content["config"]["server-round"]) == 1:
            weights, mask = decode_record(reply.content["arrays"], shapes)
            seen[pid] = Update(weights, mask, int(reply.content["metrics"]["num-examples"]))
        return reply

    return t


def _poison(factor: float = -50.0, count: int | None = LIE) -> Callable[[dict], Tamper]:
    def make(sc: dict) -> Tamper:
        scale = _record_change(sc, "arrays", _scaled(factor), False)
        return _both(scale, _set_metric("num-examples", count)) if count is not None else scale

    return make


def test_an_inflated_count_after_first_contact_weighs_as_the_first_count(tmp_path):
    """Honest in round 1, then weights × (−50) claiming 10¹² examples: weighted exactly as with
    its first count, so it moves the mean by its fair share and no more."""
    sc = _scenario(**FEDAVG, rounds=2)
    lie, _ = _run(sc, tmp_path / "lie", {ATTACKER: _only("train", _poison()(sc), 2)})
    fair, _ = _run(sc, tmp_path / "fair", {ATTACKER: _only("train", _poison(count=None)(sc), 2)})
    assert _same_weights(_global(tmp_path / "lie"), _global(tmp_path / "fair"))
    rounds = [json.loads(x) for x in (tmp_path / "lie" / "metrics.jsonl").read_text().splitlines()]
    first = rounds[0]["train"][str(ATTACKER)]["num-examples"]
    assert rounds[1]["train"][str(ATTACKER)]["weight"] == first < LIE


def _first_round(sc: dict, out: Path, attack: Tamper) -> tuple[dict[str, torch.Tensor], dict[int, Update]]:
    seen: dict[int, Update] = {}
    attack = _only("train", attack)
    tamper = {p: _recorder(sc, seen, p, attack if p == ATTACKER else None) for p in range(sc["num-clients"])}
    _run(sc, out, tamper)
    return _global(out), seen


def test_a_count_inflated_at_first_contact_is_bounded_by_the_median(tmp_path):
    """Lying from the first reply: the weight is example-cap × the median first count, and the
    global model is exactly the mean with that weight."""
    sc = _scenario(**FEDAVG)
    got, seen = _first_round(sc, tmp_path, _poison()(sc))
    median = statistics.median(u.num_examples for u in seen.values())
    bound = int(sc["example-cap"] * median)
    fair = [Update(u.weights, u.mask, min(u.num_examples, bound)) for _, u in sorted(seen.items())]
    want = masked_mean(initial_weights(sc, *dataset_info(sc)), fair)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
    honest = sum(u.num_examples for p, u in seen.items() if p != ATTACKER)
    assert bound / (honest + bound) <= sc["example-cap"] / (sc["num-clients"] - 1 + sc["example-cap"]) + 0.01
    # the attacker's own weights × (−50) are far from what the server kept
    assert all(not torch.allclose(got[k], w, atol=1e-3) for k, w in seen[ATTACKER].weights.items())


def test_without_the_cap_the_inflated_count_takes_over_the_global_model(tmp_path):
    """example-cap = 0 is the old behaviour: the global model becomes the attacker's weights."""
    sc = _scenario(**FEDAVG, **{"example-cap": 0.0})
    got, seen = _first_round(sc, tmp_path, _poison()(sc))
    for k, w in seen[ATTACKER].weights.items():
        if w.dtype.is_floating_point:
            assert torch.allclose(got[k], w, rtol=1e-4, atol=1e-5), k


# --- evaluate replies ----------------------------------------------------------------------------

def _evaluate_attacks(sc: dict) -> dict[int, tuple[Tamper, str]]:
    """Client → (tamper of its evaluate reply, words its rejection must contain); client 0 is honest."""
    return {
        1: (_both(_set_metric("partition-id", 0), _set_metric("accuracy", 1.0)), "claims partition 0"),
        2: (_drop_metric("partition-id"), "lacks partition-id"),
        3: (_set_metric("accuracy", 7.0), "'accuracy' is 7.0"),
        4: (_record_change(sc, "ticket", _nan, True), "NaN or Inf"),
        5: (_record_change(sc, "ticket", _revive, True), "revives"),
        6: (_pad("ticket"), "exceeds the limit"),
        7: (_set_metric("accuracy", float("nan")), "with num-examples"),
        8: (_drop_metric("accuracy"), "lacks accuracy"),
    }


def test_bad_evaluate_replies_are_rejected_and_honest_scores_and_tickets_are_intact(tmp_path):
    sc = _scenario(**{"num-clients": 10, "clients-per-round": 10})
    attacks = _evaluate_attacks(sc)
    tamper = {p: _only("evaluate", t) for p, (t, _) in attacks.items()}
    tamper[9] = _only("evaluate", _silent)
    attacked, rounds = _run(sc, tmp_path / "attacked", tamper)
    clean, clean_rounds = _run(sc, tmp_path / "clean")
    entry = rounds[0]
    reasons = {r["client"]: r["reason"] for r in entry["rejected"] if r["kind"] == "evaluate"}
    assert sorted(reasons) == sorted(attacks)
    for pid, (_, words) in attacks.items():
        assert words in reasons[pid], (pid, reasons[pid])
    # only client 0 was scored, with exactly its clean-run score; its saved ticket is its own
    assert list(entry["evaluate"]) == ["0"] and entry["eval_missing"] == list(range(1, 10))
    assert entry["evaluate"]["0"] == clean_rounds[0]["evaluate"]["0"]
    mine = load_ticket_file(ticket_path(tmp_path / "attacked" / "tickets", 0))
    ref = load_ticket_file(ticket_path(tmp_path / "clean" / "tickets", 0))
    assert _same_weights(mine[0], ref[0]) and _same_weights(mine[1], ref[1])
    assert not ticket_path(tmp_path / "attacked" / "tickets", 1).exists()
    acc = attacked["personalized_accuracy"]
    assert acc["missing_clients"] == 9 and acc["scored_clients"] == 1 and acc["unscored_clients"] == 9
    assert acc["mean"] == clean["personalized_accuracy"]["per_client"]["0"]
    assert "over 1 of 10 clients (9 sent no valid score)" in (tmp_path / "attacked" / "report.md").read_text()
    assert "over all 10 clients" in (tmp_path / "clean" / "report.md").read_text()
    assert attacked["rejected_by_kind"] == {"evaluate": len(attacks)}
    assert attacked["bytes"]["rejected"] >= 4_000_000  # the padded ticket
    assert entry["rejected_updates"] == len(attacks)


def test_an_evaluation_that_fails_is_counted_not_averaged_silently(tmp_path):
    sc = _scenario()
    summary, rounds = _run(sc, tmp_path, {2: _only("evaluate", _crash)})
    assert rounds[0]["eval_missing"] == [2]
    assert summary["personalized_accuracy"]["missing_clients"] == 1
    assert "over 2 of 3 clients (1 sent no valid score)" in (tmp_path / "report.md").read_text()


# --- query replies: who holds which partition ----------------------------------------------------


def test_a_node_claiming_a_held_partition_is_refused_and_displaces_nobody(tmp_path):
    """Nodes 1004..1006 join a 3-client federation: one claims partition 0 (held by node 1001),
    one sends no partition id, one sends 4 MB of arrays with its (valid) partition id. None is
    bound; the run equals a run without them."""
    sc = _scenario(rounds=2, **{"save-tickets": False})

    def stuffed(msg: Message, reply: Message) -> Message:
        reply.content["metrics"]["partition-id"] = 1
        reply.content["arrays"] = ArrayRecord({"x": Array(np.zeros(1_000_000, dtype=np.float32))})
        return reply

    tamper = {3: _only("query", _set_metric("partition-id", 0)), 4: _only("query", _drop_metric("partition-id")),
              5: _only("query", stuffed)}
    summary, rounds = _run(sc, tmp_path / "hostile", tamper, nodes=6)
    _, clean_rounds = _run(sc, tmp_path / "clean")
    for entry, clean in zip(rounds, clean_rounds, strict=True):
        reasons = {r["node"]: r["reason"] for r in entry["rejected"]}
        assert {r["kind"] for r in entry["rejected"]} == {"query"}
        assert "claims partition 0, which node 1001 holds" in reasons[1004]
        assert "lacks partition-id" in reasons[1005]
        assert "unexpected records in a query reply: ['arrays']" in reasons[1006]
        assert len(entry["rejected"]) == 3  # asked again every round, counted once a round
        assert entry["bytes"]["rejected"] >= 4_000_000 and entry["bytes"]["upload"] == clean["bytes"]["upload"]
        assert sorted(entry["train"]) == ["0", "1", "2"]
    assert _same_weights(_global(tmp_path / "hostile"), _global(tmp_path / "clean"))
    assert rounds[-1]["evaluate"] == clean_rounds[-1]["evaluate"]
    assert summary["rejected_by_kind"] == {"query": 6}


def test_a_partition_moves_to_a_new_node_only_once_its_node_is_gone(tmp_path):
    """A SuperNode restarted without authentication comes back under a new node id: once the
    old id has left the grid, the newcomer gets the partition back."""
    sc = _scenario(rounds=2, **{"save-tickets": False})
    grid = LocalGrid(client_app, 3)

    def restart_under_new_id(entry: dict) -> None:
        if entry["round"] == 1:
            old = grid.contexts.pop(1001)
            grid.contexts[2001] = Context(run_id=1, node_id=2001, node_config=dict(old.node_config), state=RecordDict(),
                                          run_config={})

    summary, rounds = _run(sc, tmp_path, on_round=restart_under_new_id, grid=grid)
    assert rounds[1]["rejected"] == [] and sorted(rounds[1]["train"]) == ["0", "1", "2"]
    assert sorted(summary["personalized_accuracy"]["per_client"]) == ["0", "1", "2"]


def test_query_reply_with_an_out_of_range_partition_is_refused(tmp_path):
    sc = _scenario(**{"save-tickets": False})
    _, rounds = _run(sc, tmp_path, {3: _only("query", _set_metric("partition-id", 7))}, nodes=4)
    (rej,) = rounds[0]["rejected"]
    assert rej["kind"] == "query" and "allowed: 0 .. 2" in rej["reason"]


# --- the checks themselves, without a federation ------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "words"),
    [
        ({"partition-id": 0, "num-examples": True}, "expected a number"),
        ({"partition-id": 0, "num-examples": 2.5}, "'num-examples' is 2.5"),
        ({"partition-id": -1, "num-examples": 1}, "'partition-id' is -1"),
        ({"partition-id": 0, "num-examples": 2**41}, "'num-examples'"),
        ({"partition-id": 0, "num-examples": 1, "gate-accuracy": 1.5}, "'gate-accuracy' is 1.5"),
        ({"partition-id": 0, "num-examples": 1, "anything": float("inf")}, "not ±Inf"),
        ({"partition-id": 0, "num-examples": 1, f"{COUNTS_PREFIX}.fair.sex.a.tp": 0.5}, "a whole number"),
        ({"num-examples": 1}, "lacks partition-id"),
    ],
)
def test_train_metrics_are_checked_one_by_one(metrics, words):
    with pytest.raises(ReplyError) as err:
        check_metrics(metrics, TRAIN)
    assert words in str(err.value)


def test_honest_metrics_pass_nan_scores_included_where_there_is_nothing_to_score():
    check_metrics({"partition-id": 3, "num-examples": 100, "train-loss": float("inf"), "pruned": 1, "density": 0.5}, TRAIN)
    check_metrics({"partition-id": 3, "num-examples": 0, "accuracy": float("nan"), "density": 1.0,
                   "loss": float("nan"), "robustness.clean_accuracy": float("nan")}, EVALUATE)
    with pytest.raises(ReplyError, match="with num-examples = 0"):
        check_metrics({"partition-id": 3, "num-examples": 0, "accuracy": 1.0, "density": 1.0}, EVALUATE)


def test_a_global_accuracy_claimed_over_a_trillion_test_samples_weighs_like_example_cap_medians(tmp_path):
    sc = _scenario(algorithm="fedavg", **{"save-tickets": False})
    tamper = {2: _only("evaluate", _both(_set_metric("num-examples", LIE), _set_metric("global-accuracy", 1.0)))}
    summary, rounds = _run(sc, tmp_path, tamper)
    ev = rounds[0]["evaluate"]
    median = statistics.median(m["num-examples"] for m in ev.values())
    assert ev["2"]["weight"] == int(sc["example-cap"] * median)
    share = ev["2"]["weight"] / sum(m["weight"] for m in ev.values())
    others = sum(m["global-accuracy"] * m["weight"] for p, m in ev.items() if p != "2")
    assert summary["global_accuracy"] == pytest.approx(others / sum(m["weight"] for m in ev.values()) + share)
    assert share < 0.65


def test_the_counts_that_bound_weights_survive_a_checkpoint():
    sc = _scenario(algorithm="fedavg")
    strategy = TicketStrategy(sc, initial_weights(sc, *dataset_info(sc)))
    strategy.declared = {0: 10, 2: 30}
    again = TicketStrategy(sc, initial_weights(sc, *dataset_info(sc)))
    again.load_state_dict(strategy.state_dict())
    assert again.declared == {0: 10, 2: 30}
    older = {k: v for k, v in strategy.state_dict().items() if k != "declared"}  # a checkpoint from before
    again.load_state_dict(older)
    assert again.declared == {}
