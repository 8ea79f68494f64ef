"""A client's ticket lasts: Context.state between rounds, a state file across restarts."""

from __future__ import annotations

import logging

import torch
from flwr.app import Context, RecordDict

from clients.client_app import load_state, persist_state_, restore_state, save_state_
from fedlth.algorithms import ClientState
from fedlth.scenario import resolve
from fedlth.state_store import load_state as load_file
from fedlth.state_store import save_state as save_file
from fedlth.state_store import state_tag


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
    assert load_state(ctx).mask is None
    save_state_(ctx, _state())
    assert _same(load_state(ctx), _state())


def test_a_restarted_node_reads_its_ticket_from_its_state_dir(tmp_path):
    sc = resolve({})
    before = _context({"partition-id": 2, "state-dir": str(tmp_path)})
    persist_state_(before, sc, _state())
    assert (tmp_path / "ticket-2.pt").is_file()
    after = _context({"partition-id": 2, "state-dir": str(tmp_path)})  # fresh Context: a restart
    assert _same(restore_state(after, sc), _state())


def test_corrupt_or_foreign_state_files_are_ignored_with_a_log_line(tmp_path, caplog):
    sc = resolve({})
    path = tmp_path / "ticket-0.pt"
    path.write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="fedlth"):
        assert load_file(path, state_tag(sc, 0)) is None
    assert "unreadable state file" in caplog.text
    save_file(path, _state(), state_tag(resolve({"seed": 9}), 0))
    with caplog.at_level(logging.WARNING, logger="fedlth"):
        assert load_file(path, state_tag(sc, 0)) is None
    assert "belongs to" in caplog.text
    assert restore_state(_context({"partition-id": 0, "state-dir": str(tmp_path)}), sc).mask is None
