"""What the in-process engine no longer repeats per message gives what repeating it gave: one
encoding of a shared download, one decoding of it per process (fresh copies for each client),
a client's partition cut once, each round's JSON encoded once, the RNG states as one tensor."""

from __future__ import annotations

import json
import math
import random

import torch
from flwr.app import Context, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import _decode_download, _Run
from fedlth.config.scenario import resolve
from fedlth.data.client_data import client_data, dataset_info
from fedlth.federation.algorithms import initial_weights, model_names
from fedlth.federation.records import decode_record, encode_record, record_bytes
from server.strategy import TicketStrategy, rng_state_compact, rng_state_tuple


def _sc(**extra: object) -> dict:
    return resolve({"dataset": "mnist1d", "model": "cnn1d", "num-clients": 4, "clients-per-round": 3, "rounds": 2,
                    "algorithm": "fedavg", **extra})


def _strategy(sc: dict) -> TicketStrategy:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # Message() reads the sender from it (as LocalGrid sets it)
    shape, classes = dataset_info(sc)
    strategy = TicketStrategy(sc, initial_weights(sc, shape, classes), model_names(sc, shape, classes))
    strategy.node_of = {pid: 1001 + pid for pid in range(sc["num-clients"])}
    strategy.pid_of = {1001 + pid: pid for pid in range(sc["num-clients"])}
    return strategy


def test_a_dense_download_is_encoded_once_a_round_and_decodes_as_before():
    sc = _sc()
    strategy = _strategy(sc)
    messages = strategy._messages([0, 1, 2], 1, MessageType.TRAIN)
    records = [m.content.array_records["arrays"] for m in messages]
    assert all(r is records[0] for r in records)  # one record for the round's three clients
    alone = encode_record(strategy.global_weights, None, with_shapes=False)  # what each got before
    assert [record_bytes(r) for r in records] == [record_bytes(alone)] * 3
    assert strategy.sent_bytes == {pid: record_bytes(alone) for pid in (0, 1, 2)}
    assert all(a.data == b.data for a, b in zip(records[0].values(), alone.values(), strict=True))
    # the next batch encodes afresh: the global model may have changed in between
    strategy.global_weights = {k: v + 1 for k, v in strategy.global_weights.items()}
    later = strategy._messages([0, 1], 2, MessageType.TRAIN)[0].content.array_records["arrays"]
    assert later is not records[0]
    weights, _ = decode_record(later, strategy.shapes, strategy.dtypes)
    assert all(torch.equal(weights[k], strategy.global_weights[k]) for k in weights)


def test_each_client_gets_its_own_copy_of_a_download_decoded_once():
    sc = _sc()
    strategy = _strategy(sc)
    record = strategy._messages([0, 1], 1, MessageType.TRAIN)[0].content.array_records["arrays"]
    shapes, dtypes = strategy.shapes, strategy.dtypes
    first, _ = _decode_download(record, shapes, dtypes, None)
    second, _ = _decode_download(record, shapes, dtypes, None)
    expected, _ = decode_record(record, shapes, dtypes)
    for k in expected:
        assert torch.equal(first[k], expected[k]) and torch.equal(second[k], expected[k])
        assert first[k].data_ptr() != second[k].data_ptr()
    first["7.weight"].add_(1.0)  # one client changing its copy changes no other client's
    third, _ = _decode_download(record, shapes, dtypes, None)
    assert torch.equal(third["7.weight"], expected["7.weight"])
    other = encode_record({k: v * 2 for k, v in expected.items()}, None, with_shapes=False)
    fresh, _ = _decode_download(other, shapes, dtypes, None)
    assert torch.equal(fresh["7.weight"], expected["7.weight"] * 2)


def test_a_clients_partition_is_cut_once_and_the_cache_stays_bounded():
    sc = _sc()
    run = _Run(tuple(sc.items()))

    def context(pid: int) -> Context:
        return Context(run_id=1, node_id=1001 + pid, node_config={"partition-id": pid}, state=RecordDict(), run_config={})

    a, b = run.data(context(1), run.sc), run.data(context(1), run.sc)
    assert a is b  # the same tensors, as the plain loop keeps them
    assert torch.equal(a.x_train, client_data(sc, 1).x_train)
    run.DATA_BYTES = sum(t.nbytes for t in (a.x_train, a.y_train, a.x_val, a.y_val, a.x_test, a.y_test))
    run.data(context(2), run.sc)  # one partition fits: the other goes
    assert run._bytes <= run.DATA_BYTES and len(run._data) == 1
    assert run.data(context(1), run.sc) is not a


def test_round_lines_joined_are_the_json_of_the_rounds():
    rounds = [{"round": 1, "train": {"3": {"loss": 0.5, "x": [1, 2]}}, "evaluate": None},
              {"round": 2, "train": {}, "nan": math.nan, "text": "é \"q\""}]
    assert "[" + ", ".join(json.dumps(r) for r in rounds) + "]" == json.dumps(rounds)
    assert "[" + ", ".join([]) + "]" == json.dumps([])


def test_rng_states_go_in_one_tensor_and_come_back_exactly():
    rng = random.Random(7)
    rng.random()
    state = rng.getstate()
    compact = rng_state_compact(state)
    assert isinstance(compact[1], torch.Tensor) and compact[1].numel() == len(state[1])
    assert rng_state_tuple(compact) == state
    assert rng_state_tuple([state[0], list(state[1]), state[2]]) == state  # what older checkpoints hold
    again = random.Random()
    again.setstate(rng_state_tuple(compact))
    assert again.random() == rng.random()
