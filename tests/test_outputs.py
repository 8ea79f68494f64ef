"""Output files are readable by the group and others (0o644 under the usual umask), as files
open() makes; private keys stay 0o600."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clients.client_app import app as client_app
from fedlth.config.scenario import resolve
from fedlth.deployment.deploy import make_certs, make_node_keys
from fedlth.reporting.io import file_mode, write_bytes_atomic, write_json_atomic
from server.local_grid import LocalGrid
from server.server_app import run_federation


@pytest.fixture
def umask_022():
    """The usual umask for the test, whatever the runner's is."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask_022):
    assert file_mode() == 0o644
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert _mode(tmp_path / "a.json") == 0o644
    write_bytes_atomic(tmp_path / "k", b"secret", mode=0o600)
    assert _mode(tmp_path / "k") == 0o600
    os.umask(0o077)  # a user who keeps everything private gets that
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    assert _mode(tmp_path / "b.json") == 0o600


def test_every_file_of_a_run_is_readable_by_others(tmp_path, umask_022):
    sc = resolve({"dataset": "digits", "model": "mlp", "num-clients": 2, "clients-per-round": 2, "rounds": 1, "local-epochs": 1})
    out = tmp_path / "run"
    run_federation(LocalGrid(client_app, 2), sc, out, client_state_dir=out / "client-state")
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"summary.json", "report.md", "metrics.jsonl", "checkpoint.pt", "provenance.json"} <= {p.name for p in files}
    assert {str(p.relative_to(out)): oct(_mode(p)) for p in files if _mode(p) != 0o644} == {}


def test_certificates_and_public_keys_are_readable_private_keys_are_not(tmp_path, umask_022):
    certs = make_certs(tmp_path / "certs")
    assert _mode(certs.ca_cert) == _mode(certs.server_cert) == 0o644
    assert _mode(certs.ca_key) == _mode(certs.server_key) == 0o600
    (key,) = make_node_keys(tmp_path / "keys", ["node-0"])
    assert (_mode(key.public), _mode(key.private)) == (0o644, 0o600)
