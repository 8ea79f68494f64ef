"""A client's ticket lasts: Context.state between rounds, a state file across restarts (a node
process restarted mid-run: the ClientApp's handlers called with a fresh Context and the same
state-dir), and a damaged or foreign state file means a clean start from the server's copy."""

from __future__ import annotations

import io
import logging
import time

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.app.metadata import Metadata
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import app, context_state, persist_state_, restore_state, set_context_state_
from fedlth.config.scenario import resolve
from fedlth.data.client_data import dataset_info
from fedlth.federation.algorithms import ClientState, initial_weights
from fedlth.federation.records import config_to_record, decode_record, encode_record
from fedlth.federation.state_store import mask_digest, read_state_file, state_tag, write_state_file
from fedlth.tickets.masks import density


def _state() -> ClientState:
    g = torch.Generator().manual_seed(0)
    mask = {"0.weight": torch.rand(4, 3, generator=g) > 0.5}
    personal = {"0.weight": torch.randn(4, 3, generator=g) * mask["0.weight"], "0.bias": torch.randn(4, generator=g)}
    return ClientState(mask=mask, personal=personal, candidate=None, rounds=3)


def _same(a: ClientState, b: ClientState) -> bool:
    return (
        a.rounds == b.rounds and a.candidate is None and b.candidate is None
        and all(torch.equal(a.mask[k], b.mask[k]) for k in a.mask)
        and all(torch.equal(a.personal[k], b.personal[k]) for k in a.personal)
    )


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_context_state_round_trip_is_exact():
    ctx = _context({"partition-id": 0})
    assert context_state(ctx).mask is None
    set_context_state_(ctx, _state())
    assert _same(context_state(ctx), _state())


def test_a_restarted_node_reads_its_ticket_from_its_state_dir(tmp_path):
    sc = resolve({})
    before = _context({"partition-id": 2, "state-dir": str(tmp_path)})
    persist_state_(before, sc, _state())
    assert (tmp_path / "ticket-2.pt").is_file()
    after = _context({"partition-id": 2, "state-dir": str(tmp_path)})  # fresh Context: a restart
    assert _same(restore_state(after, sc)[0], _state())


def test_corrupt_or_foreign_state_files_are_ignored_with_a_log_line(tmp_path, caplog):
    sc = resolve({})
    path = tmp_path / "ticket-0.pt"
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="fedlth"):
        assert read_state_file(path, state_tag(sc, 0)) is None
    assert "unreadable state file" in caplog.text
    write_state_file(path, _state(), state_tag(resolve({"seed": 9}), 0))
    with caplog.at_level(logging.WARNING, logger="fedlth"):
        assert read_state_file(path, state_tag(sc, 0)) is None
    assert "belongs to" in caplog.text
    assert restore_state(_context({"partition-id": 0, "state-dir": str(tmp_path)}), sc)[0].mask is None


# --- a node restarted mid-run, driven through the ClientApp's handlers -------------------

RESTART = {"dataset": "digits", "model": "mlp", "num-clients": 3, "clients-per-round": 3, "algorithm": "lotteryfl",
           "prune-rate": 0.5, "target-density": 0.05, "acc-threshold": 0.0, "prune-tolerance": 1.0}
RUN = 5


@pytest.fixture
def task_identity():
    """Flower builds reply metadata from the running task's identity; give these calls one."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN, 7, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class Server:
    """The server's half of one client's ticket: the global weights and the client's mask."""

    def __init__(self, sc):
        self.sc = sc
        self.weights = initial_weights(sc, *dataset_info(sc))
        self.mask = None

    def train(self, context: Context, rnd: int) -> dict:
        content = RecordDict({
            "arrays": encode_record(self.weights, self.mask, with_shapes=False),
            "config": ConfigRecord({"server-round": rnd}), "scenario": config_to_record(self.sc),
        })
        md = Metadata(run_id=RUN, message_id=f"train-{rnd}", src_node_id=1, dst_node_id=7, reply_to_message_id="",
                      group_id=str(rnd), created_at=time.time(), ttl=600.0, message_type=MessageType.TRAIN)
        reply = app(Message(content, metadata=md), context)
        assert not reply.has_error(), reply.error
        shapes = {k: tuple(v.shape) for k, v in self.weights.items()}
        self.weights, self.mask = decode_record(reply.content["arrays"], shapes)
        return dict(reply.content["metrics"])


def _node(state_dir, run_id: int = RUN) -> Context:
    """A freshly started node process: an empty Context.state, the node config on disk."""
    return Context(run_id=run_id, node_id=7, node_config={"partition-id": 0, "state-dir": str(state_dir)},
                   state=RecordDict(), run_config={})


def _file(state_dir) -> dict:
    return torch.load(state_dir / "ticket-0.pt", weights_only=True)


def test_a_restarted_node_goes_on_with_its_ticket(tmp_path, caplog, task_identity):
    server = Server(resolve(RESTART))
    assert server.train(_node(tmp_path), 1)["density"] == 0.5
    before = _file(tmp_path)
    assert before["rounds"] == 1
    with caplog.at_level(logging.WARNING, logger="fedlth"):
        metrics = server.train(_node(tmp_path), 2)  # the process died; a new one starts
    assert f"(1 rounds trained, density 0.5000, mask {mask_digest(before['mask'])})" in caplog.text
    assert metrics["density"] == 0.25  # pruned on from its 0.5 ticket, not from scratch
    after = _file(tmp_path)
    assert after["rounds"] == 2 and all(not (after["mask"][k] & ~before["mask"][k]).any() for k in before["mask"])
    assert torch.equal(after["mask"][next(iter(after["mask"]))], server.mask[next(iter(server.mask))])


@pytest.mark.parametrize("damage", ["corrupt", "truncated", "foreign run", "wrong shapes"])
def test_a_damaged_state_file_restarts_clean_from_the_servers_copy(tmp_path, caplog, task_identity, damage):
    sc = resolve(RESTART)
    server = Server(sc)
    server.train(_node(tmp_path), 1)
    server.train(_node(tmp_path), 2)
    path, run_id = tmp_path / "ticket-0.pt", RUN
    if damage == "corrupt":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "truncated":  # a crash mid-write can't do this (atomic rename), a full disk might
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "foreign run":
        run_id = RUN + 1
    else:
        blob = _file(tmp_path)
        blob["mask"] = {k: torch.ones(3, 3, dtype=torch.bool) for k in blob["mask"]}
        torch.save(blob, path)
    server_mask = {k: v.clone() for k, v in server.mask.items()}
    with caplog.at_level(logging.WARNING, logger="fedlth"):
        metrics = server.train(_node(tmp_path, run_id), 3)
    expected = {"corrupt": "unreadable state file", "truncated": "unreadable state file",
                "foreign run": "belongs to", "wrong shapes": "does not fit the model"}[damage]
    assert expected in caplog.text and "starting from the server's copy" in caplog.text
    assert "taking the server's copy of its mask" in caplog.text
    # no crash, and the ticket goes on from the server's copy of the mask (0.25 -> 0.125)
    assert metrics["density"] == pytest.approx(0.5 * density(server_mask), abs=1e-3)
    assert _file(tmp_path)["rounds"] == 1  # a clean start


def test_a_round_sent_again_after_a_server_resume_starts_from_the_ticket_before_it(tmp_path, caplog, task_identity):
    """The server died after this client trained round 2 and resumed from its round-1
    checkpoint: round 2 arrives again and must give the same result, not a second prune."""
    server = Server(resolve(RESTART))
    server.train(_node(tmp_path), 1)
    checkpoint = ({k: v.clone() for k, v in server.weights.items()}, {k: v.clone() for k, v in server.mask.items()})
    node = _node(tmp_path)
    first = server.train(node, 2)
    assert first["density"] == 0.25
    for again in (node, _node(tmp_path)):  # the same process, and a restarted one
        server.weights, server.mask = ({k: v.clone() for k, v in t.items()} for t in checkpoint)
        with caplog.at_level(logging.WARNING, logger="fedlth"):
            assert server.train(again, 2) == first
        assert "(1 rounds trained, density 0.5000" in caplog.text
        assert _file(tmp_path)["rounds"] == 2 and _file(tmp_path)["previous"]["rounds"] == 1


def test_only_simulated_clients_whose_server_syncs_skip_the_fsync(tmp_path, monkeypatch):
    """A deployed node (its own state-dir) fsyncs its ticket file; a simulated client writing into
    the folder its server names skips it when the server says it syncs the disk before each
    checkpoint (state-sync = disk), and in the server's process (state-sync = process) writes it,
    fsync included, in a background thread, which a read of the file and wait_for_writes wait
    for; the file reads back the same either way."""
    import os

    from fedlth.reporting import io as fio

    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    sc = resolve({})
    persist_state_(_context({"partition-id": 1, "state-dir": str(tmp_path / "node")}), sc, _state())
    assert len(calls) == 1
    simulated = {"state-dir": str(tmp_path / "sim"), "run-key": "k"}
    persist_state_(_context({"partition-id": 1}), sc, _state(), simulated)
    assert len(calls) == 2  # the server did not say it syncs
    persist_state_(_context({"partition-id": 1}), sc, _state(), {**simulated, "state-sync": "disk"})
    assert len(calls) == 2 and not fio._writes
    assert _same(restore_state(_context({"partition-id": 1}), sc, simulated)[0], _state())
    later = ClientState(mask=_state().mask, personal=_state().personal, rounds=4)
    persist_state_(_context({"partition-id": 1}), sc, later, {**simulated, "state-sync": "process"}, round_=4)
    assert restore_state(_context({"partition-id": 1}), sc, simulated)[1] == 4  # the read waited for the write
    persist_state_(_context({"partition-id": 2}), sc, later, {**simulated, "state-sync": "process"}, round_=4)
    fio.wait_for_writes()
    assert not fio._writes and torch.load(tmp_path / "sim" / "ticket-2.pt", weights_only=True)["round"] == 4
    assert len(calls) == 4  # the background writes fsync, in their thread


def test_a_ticket_file_read_again_unchanged_comes_from_the_cache_as_fresh_tensors(tmp_path, monkeypatch):
    """The process remembers the file it wrote: an unchanged file skips torch.load, each read gets
    its own tensors, and a file whose bytes changed (another process, a damaged disk) is read anew."""
    from fedlth.federation import state_store

    path, tag = tmp_path / "ticket-0.pt", state_tag(resolve({}), 0)
    write_state_file(path, _state(), tag, 2, (ClientState(rounds=2), 1))
    loads: list[object] = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (loads.append(a), real(*a, **k))[1])
    first = state_store.read_state_file(path, tag)
    assert loads == [] and first[1] == 2 and _same(first[0], _state())
    first[0].mask["0.weight"].fill_(False)  # the reader's copy, not the cache's
    assert _same(state_store.read_state_file(path, tag)[0], _state()) and loads == []
    assert state_store.read_state_file(path, tag, before=2) == (ClientState(rounds=2), 1)
    other = ClientState(mask={"0.weight": torch.ones(4, 3, dtype=torch.bool)}, rounds=5)
    buf = io.BytesIO()
    torch.save({"format": state_store.FORMAT, "tag": tag, "mask": other.mask, "personal": None, "candidate": None,
                "rounds": 5, "round": 7, "previous": None}, buf)
    path.write_bytes(buf.getvalue())  # written by someone else
    again = state_store.read_state_file(path, tag)
    assert len(loads) == 1 and again[1] == 7 and bool(again[0].mask["0.weight"].all())


def test_the_cache_keeps_every_field_of_the_ticket_including_the_wire_base(tmp_path, monkeypatch):
    """A cached read gives back what was written, field for field: a delta download's base
    (wire-download = delta) lost in the cache would make the next delta undecodable."""
    st = _state()
    st = ClientState(mask=st.mask, personal=st.personal, rounds=3, base=st.personal, base_mask=st.mask, base_version=4)
    path, tag = tmp_path / "ticket-0.pt", "run:0"
    write_state_file(path, st, tag, 5)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("cached file parsed again"))
    back, made_in = read_state_file(path, tag)
    assert made_in == 5 and back.base_version == 4
    assert all(torch.equal(back.base[k], st.base[k]) for k in st.base)
    assert all(torch.equal(back.base_mask[k], st.base_mask[k]) for k in st.base_mask)
    assert back.base is not st.base and back.base["0.weight"].data_ptr() != st.base["0.weight"].data_ptr()


def test_a_client_with_nothing_to_restore_writes_no_ticket_file(tmp_path):
    """FedAvg's clients keep no tensors between rounds: no file, no write per message; a file
    already there (a ticket from before) is still replaced, so it never outlives its state."""
    sc = resolve({"algorithm": "fedavg"})
    node = _context({"partition-id": 3, "state-dir": str(tmp_path)})
    persist_state_(node, sc, ClientState(rounds=1), round_=1, previous=(ClientState(), 0))
    assert not (tmp_path / "ticket-3.pt").exists()
    assert restore_state(_context({"partition-id": 3, "state-dir": str(tmp_path)}), sc)[0] == ClientState()
    persist_state_(node, sc, _state(), round_=2)  # a ticket: written
    assert (tmp_path / "ticket-3.pt").is_file()
    persist_state_(node, sc, ClientState(rounds=3), round_=3, previous=(ClientState(), 2))
    assert torch.load(tmp_path / "ticket-3.pt", weights_only=True)["round"] == 3  # replaced, not left stale


def test_a_client_sets_torchs_thread_count_only_when_it_differs(tmp_path, monkeypatch, task_identity):
    """torch-threads is applied before training; setting it again to the same count is skipped
    (it slows the ops that follow), so a node sets it once, not once a message."""
    calls: list[int] = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n))[1])
    before = torch.get_num_threads()
    try:
        real(2 if before == 1 else 1)  # anything but torch-threads = 1 (the default)
        server = Server(resolve({"dataset": "digits", "model": "mlp", "num-clients": 3, "clients-per-round": 3, "algorithm": "fedavg"}))
        for rnd in (1, 2, 3):
            server.train(_node(tmp_path), rnd)
            assert torch.get_num_threads() == 1
        assert calls == [1]
    finally:
        real(before)
