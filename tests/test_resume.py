"""Resume after a crash: a killed run continued from its checkpoint ends with the same
metrics as an uninterrupted run with the same seed, whether it died between rounds or mid-round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from flwr.app import Message

from clients.client_app import app as client_app
from fedlth.cli import main
from fedlth.config.scenario import resolve, to_toml
from server.local_grid import LocalGrid, Tamper
from server.server_app import load_checkpoint, run_federation

SCENARIO = {
    "dataset": "digits", "model": "mlp", "partition": "pathological", "classes-per-client": 4,
    "num-clients": 4, "clients-per-round": 3, "rounds": 4, "local-epochs": 1, "algorithm": "subfedavg",
    "prune-rate": 0.5, "target-density": 0.2, "acc-threshold": 0.0, "prune-tolerance": 1.0, "eval-every": 2,
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the server catches it."""


def _sc() -> dict:
    return resolve(SCENARIO)


def _run(out: Path, resume: bool = False, tamper: dict[int, Tamper] | None = None, on_round=None) -> None:
    sc = _sc()
    grid = LocalGrid(client_app, sc["num-clients"], tamper=tamper)
    run_federation(grid, sc, out, on_round=on_round, resume=resume, client_state_dir=out / "client-state")


def _outcome(out: Path) -> tuple[dict, list[dict]]:
    summary = json.loads((out / "summary.json").read_text())
    for key in ("wall_seconds", "wall_seconds_segments", "wall_seconds_note", "timing"):  # time, by design
        summary.pop(key, None)
    summary.pop("provenance")  # who ran it and when: differs between the runs by design
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rounds:
        r.pop("seconds")
    return summary, rounds


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, list[dict]]:
    out = tmp_path_factory.mktemp("whole") / "run"
    _run(out)
    return _outcome(out)


def _kill_after_round(k: int):
    def hook(entry: dict) -> None:
        if entry["round"] == k:
            raise Killed

    return hook


def test_killed_between_rounds_resumes_to_the_same_metrics(tmp_path, uninterrupted):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        _run(out, on_round=_kill_after_round(2))
    assert load_checkpoint(out)["round"] == 2 and not (out / "summary.json").exists()
    _run(out, resume=True)
    assert _outcome(out) == uninterrupted


def test_killed_mid_round_resumes_to_the_same_metrics(tmp_path, uninterrupted):
    """Some clients of round 3 already trained (and saved their round-3 tickets) when the
    server died: on resume they redo round 3 from the ticket they had before it."""

    seen: list[int] = []

    def die_in_round_3(msg: Message, reply: Message) -> Message:
        if msg.metadata.message_type == "train" and int(msg.content["config"]["server-round"]) == 3:
            seen.append(1)
            if len(seen) == 2:  # one client has trained round 3 and saved its ticket
                raise Killed
        return reply

    out = tmp_path / "run"
    with pytest.raises(Killed):
        _run(out, tamper={p: die_in_round_3 for p in range(4)})
    assert load_checkpoint(out)["round"] == 2
    _run(out, resume=True)
    assert _outcome(out) == uninterrupted


def test_resume_through_the_cli_on_flowers_engine(tmp_path, uninterrupted):
    """A run killed after round 2 is finished by `fedlth run --resume` (the CLI's simulation, in-process by default)."""
    out = tmp_path / "run"
    with pytest.raises(Killed):
        _run(out, on_round=_kill_after_round(2))
    result = CliRunner().invoke(main, ["run", "--resume", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert _outcome(out) == uninterrupted


def test_resume_bad_inputs_exit_2_and_touch_nothing(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["run", "--resume", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no run folder" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    no_ckpt = runner.invoke(main, ["run", "--resume", str(empty)])
    assert no_ckpt.exit_code == 2 and "no checkpoint.pt" in no_ckpt.output
    done = tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text("{}")
    (done / "checkpoint.pt").write_bytes(b"x")
    finished = runner.invoke(main, ["run", "--resume", str(done)])
    assert finished.exit_code == 2 and "already finished" in finished.output
    scenario = tmp_path / "s.toml"
    scenario.write_text(to_toml(_sc()))
    both = runner.invoke(main, ["run", str(scenario), "--resume", str(done)])
    assert both.exit_code == 2 and "--resume takes" in both.output
    assert (done / "summary.json").read_text() == "{}" and (done / "checkpoint.pt").read_bytes() == b"x"
    (done / "summary.json").unlink()
    (done / "scenario.toml").write_text(to_toml(_sc()))
    damaged = runner.invoke(main, ["run", "--resume", str(done)])
    assert damaged.exit_code == 2 and "checkpoint.pt' is unreadable" in damaged.output
