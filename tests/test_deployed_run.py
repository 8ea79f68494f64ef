"""The ServerApp as `flwr run` starts it (the run config names the scenario), driven in process
by LocalGrid nodes that keep their tickets in a state-dir: a log line per round, a used out-dir
refused, a run without a result marked failed, and a run killed mid-round continued with
`resume-from` to the same metrics as an uninterrupted run."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flwr.app import Context, Message, RecordDict

from clients.client_app import app as client_app
from fedlth.cli import _print_run_summary, main
from fedlth.config.scenario import resolve
from server.local_grid import LocalGrid, Tamper
from server.server_app import (
    ResumeError,
    RunFailed,
    load_checkpoint,
    make_server_app,
    run_federation,
)

SCENARIO = {
    "dataset": "digits", "model": "mlp", "partition": "pathological", "classes-per-client": 4,
    "num-clients": 3, "clients-per-round": 3, "rounds": 3, "local-epochs": 1, "algorithm": "subfedavg",
    "prune-rate": 0.5, "target-density": 0.2, "acc-threshold": 0.0, "prune-tolerance": 1.0, "eval-every": 2,
    "round-timeout": 5.0,
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}


class Killed(BaseException):
    """Stands in for SIGKILL of the ServerApp (or the SuperLink under it): nothing catches it."""


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def flwr_log() -> Iterator[list[str]]:
    """What the ServerApp logs through Flower's logger (what `flwr run --stream` shows)."""
    handler, logger = _Lines(), logging.getLogger("flwr")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _flwr_run(run_config: dict, state: Path, tamper: dict[int, Tamper] | None = None) -> None:
    """One `flwr run`: a new run (fresh Context.state on every node), nodes keeping their state-dir."""
    grid = LocalGrid(client_app, SCENARIO["num-clients"], state_dir=state, tamper=tamper)
    make_server_app()(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))


def _outcome(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    for key in ("wall_seconds", "wall_seconds_segments", "wall_seconds_note", "provenance", "timing"):  # when and how long: differ by design
        summary.pop(key, None)
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rounds:
        r.pop("seconds")
    return summary, rounds


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, list[dict]]:
    root = tmp_path_factory.mktemp("whole")
    _flwr_run({**SCENARIO, "out-dir": str(root / "run")}, root / "state")
    return _outcome(root / "run")


def test_a_deployed_run_logs_every_round_and_never_overwrites_an_out_dir(tmp_path, flwr_log, uninterrupted):
    out = tmp_path / "run"
    _flwr_run({**SCENARIO, "out-dir": str(out)}, tmp_path / "state")
    rounds = [line for line in flwr_log if line.startswith("fedlth: round ")]
    assert [r.split(":")[1] for r in rounds] == [" round 1/3", " round 2/3", " round 3/3"], flwr_log
    assert "3 updates accepted, 0 rejected, 0 missing" in rounds[0] and "mean train loss" in rounds[0]
    assert "training-mask density 0.500 (mean over the round's clients)" in rounds[0]
    assert "personalized accuracy" in rounds[1] and "personalized accuracy" not in rounds[0]
    assert any(f"outputs in {out}" in line and line.startswith("fedlth: finished") for line in flwr_log)
    assert _outcome(out) == uninterrupted and uninterrupted[0]["status"] == "ok"
    assert load_checkpoint(out)["deployed"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(ResumeError, match="already holds a finished run"):
        _flwr_run({**SCENARIO, "out-dir": str(out)}, tmp_path / "state")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written
    assert any(line.startswith("fedlth: FAILED: out-dir") for line in flwr_log)


def _kill_in_round_3() -> dict[int, Tamper]:
    """The server dies once two clients have trained round 3 (and saved its tickets)."""
    seen: list[int] = []

    def die(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train" and int(msg.content["config"]["server-round"]) == 3:
            seen.append(1)
            if len(seen) == 2:
                raise Killed
        return reply

    return {p: die for p in range(SCENARIO["num-clients"])}


def test_a_deployed_run_killed_mid_round_resumes_from_its_folder_to_the_same_metrics(tmp_path, flwr_log, uninterrupted):
    out, state = tmp_path / "run", tmp_path / "state"
    with pytest.raises(Killed):
        _flwr_run({**SCENARIO, "out-dir": str(out)}, state, tamper=_kill_in_round_3())
    assert load_checkpoint(out)["round"] == 2 and not (out / "summary.json").exists()

    # fedlth run --resume can't finish it: its clients are the SuperNodes
    refused = CliRunner().invoke(main, ["run", "--resume", str(out)])
    assert refused.exit_code == 2 and "holds a deployed run" in refused.output
    assert f"resume-from='{out}'" in refused.output, refused.output
    # a new run into the killed run's folder is refused, naming the way to continue it
    with pytest.raises(ResumeError, match="already holds a killed run; continue it with"):
        _flwr_run({**SCENARIO, "out-dir": str(out)}, state)
    # resume-from takes the run's own scenario; a key set to something else is refused
    with pytest.raises(ResumeError, match=r"rounds = 5 \(the run has 3\)"):
        _flwr_run({"resume-from": str(out), "rounds": 5}, state)
    with pytest.raises(ResumeError, match="drop out-dir"):
        _flwr_run({"resume-from": str(out), "out-dir": str(tmp_path / "elsewhere")}, state)

    flwr_log.clear()
    _flwr_run({"resume-from": str(out)}, state)  # a new flwr run, the nodes' state-dirs kept
    assert any(line.startswith("fedlth: resuming subfedavg on 3 nodes") for line in flwr_log), flwr_log
    assert [line.split(":")[1] for line in flwr_log if line.startswith("fedlth: round ")] == [" round 3/3"]
    assert _outcome(out) == uninterrupted
    with pytest.raises(ResumeError, match="already finished"):
        _flwr_run({"resume-from": str(out)}, state)


def test_resume_from_refuses_a_simulation_folder(tmp_path):
    out = tmp_path / "sim"
    sc = resolve(SCENARIO)

    def kill_after_1(entry: dict) -> None:
        if entry["round"] == 1:
            raise Killed

    with pytest.raises(Killed):
        run_federation(LocalGrid(client_app, 3), sc, out, on_round=kill_after_1, client_state_dir=out / "client-state")
    with pytest.raises(ResumeError, match="fedlth run --resume"):
        _flwr_run({"resume-from": str(out)}, tmp_path / "state")
    with pytest.raises(ResumeError, match="no run folder"):
        _flwr_run({"resume-from": str(tmp_path / "nope")}, tmp_path / "state")


def _bad_count(msg: Message, reply: Message) -> Message:
    if msg.metadata.message_type == "train":
        reply.content["metrics"]["num-examples"] = -1
    return reply


def test_a_run_whose_every_update_is_rejected_fails_loudly(tmp_path, flwr_log):
    out = tmp_path / "run"
    with pytest.raises(RunFailed, match="no training reply was accepted in 3 rounds"):
        _flwr_run({**SCENARIO, "out-dir": str(out)}, tmp_path / "state", tamper=dict.fromkeys(range(3), _bad_count))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "9 rejected" in summary["failure"], summary["failure"]
    assert "**FAILED: no training reply was accepted" in (out / "report.md").read_text()
    assert [line for line in flwr_log if line.startswith("fedlth: FAILED:")], flwr_log
    assert "0 updates accepted, 3 rejected" in next(line for line in flwr_log if line.startswith("fedlth: round 1/3"))
    with pytest.raises(SystemExit) as exited:  # fedlth run's exit status for the same outcome
        _print_run_summary(out, quiet=True)
    assert exited.value.code == 1


def test_fedlth_run_refuses_resume_from(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('dataset = "digits"\n')
    result = CliRunner().invoke(main, ["run", str(scenario), "--set", f"resume-from='{tmp_path}'", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "fedlth run continues a run with --resume" in result.output
    assert not (tmp_path / "o").exists()
