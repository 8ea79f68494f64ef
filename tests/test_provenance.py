"""Provenance: every output of a run and of a comparison says which code, versions, command,
machine and time produced it."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pytest

import fedlth
from clients.client_app import app as client_app
from fedlth.config.scenario import resolve
from fedlth.reporting.compare import compare
from fedlth.reporting.provenance import PACKAGE_ROOT, command_line, git_state, provenance
from server.local_grid import LocalGrid
from server.server_app import PROVENANCE, run_federation

FIELDS = {"fedlth", "flwr", "torch", "python", "git_commit", "git_dirty", "command", "host", "started"}
TINY = {
    "dataset": "digits", "model": "mlp", "partition": "iid", "num-clients": 3, "clients-per-round": 2,
    "rounds": 2, "local-epochs": 1, "algorithm": "subfedavg",
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}


def _git(root: Path, *args: str) -> str:
    cmd = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def test_version_comes_from_the_package_metadata():
    from click.testing import CliRunner

    from fedlth.cli import main

    assert fedlth.__version__ == version("fedlth")
    assert CliRunner().invoke(main, ["--version"]).output == f"fedlth, version {fedlth.__version__}\n"


def test_record_has_every_field_with_this_process_values():
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    prov = provenance(["/usr/bin/fedlth", "run", "my scenario.toml"], started)
    assert set(prov) == FIELDS
    assert prov["fedlth"] == fedlth.__version__
    assert prov["flwr"] == version("flwr") and prov["torch"] == version("torch")
    assert prov["python"] == platform.python_version()
    assert prov["command"] == "fedlth run 'my scenario.toml'"
    assert prov["host"] == socket.gethostname()
    assert prov["started"] == "2026-01-02T03:04:05+00:00"
    assert (prov["git_commit"], prov["git_dirty"]) == git_state(PACKAGE_ROOT)
    assert command_line(["python", "-x"], program="fedlth") == "fedlth -x"


def test_git_state_commit_dirty_and_not_a_checkout(tmp_path):
    assert git_state(tmp_path) == (None, None)
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "one")
    head = _git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("not counted\n")
    assert git_state(tmp_path) == (head, False)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (head, True)
    sub = tmp_path / "pkg"
    sub.mkdir()
    assert git_state(sub) == (None, None)  # inside someone else's checkout: not ours


class Killed(BaseException):
    """Stands in for a kill after a round."""


def _kill_after_first(entry: dict) -> None:
    if entry["round"] == 1:
        raise Killed


def test_run_outputs_record_provenance_and_a_resume_keeps_the_first(tmp_path):
    sc = resolve(TINY)
    out = tmp_path / "run"
    first = provenance(["fedlth", "run", "tiny.toml"])
    with pytest.raises(Killed):
        run_federation(LocalGrid(client_app, 3), sc, out, _kill_after_first, client_state_dir=out / "cs", prov=first)
    assert json.loads((out / PROVENANCE).read_text()) == first
    again = provenance(["fedlth", "run", "--resume", str(out)])
    run_federation(LocalGrid(client_app, 3), sc, out, resume=True, client_state_dir=out / "cs", prov=again)
    recorded = json.loads((out / "summary.json").read_text())["provenance"]
    assert recorded == again | {"resumed_from": first}
    report = (out / "report.md").read_text()
    assert "## Provenance" in report and f"flwr {first['flwr']}" in report and "fedlth run --resume" in report
    assert "Resumed a run started" in report


def test_comparison_files_record_provenance(tmp_path):
    sc = resolve(TINY)
    prov = provenance(["fedlth", "compare", "tiny.toml"])

    def runner(s: dict, d: Path) -> None:
        run_federation(LocalGrid(client_app, 3), s, d, client_state_dir=d / "cs", prov=prov)

    compare(sc, ["fedavg", "subfedavg"], [0], tmp_path, runner, prov=prov)
    assert json.loads((tmp_path / "comparison.json").read_text())["provenance"] == prov
    md = (tmp_path / "comparison.md").read_text()
    assert "## Provenance" in md and "fedlth compare tiny.toml" in md and prov["started"] in md
    assert json.loads((tmp_path / "fedavg" / "seed-0" / "summary.json").read_text())["provenance"] == prov


def test_reevaluation_records_provenance(tmp_path):
    from click.testing import CliRunner

    from fedlth.cli import main

    out = tmp_path / "run"
    run_federation(LocalGrid(client_app, 3), resolve(TINY), out, client_state_dir=out / "cs")
    result = CliRunner().invoke(main, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output
    (written,) = out.glob("evaluation-*.json")
    prov = json.loads(written.read_text())["provenance"]
    assert set(prov) == FIELDS and prov["command"].startswith("fedlth")
