"""Ctrl-C: the first SIGINT stops a run at a clean point (exit 130, the resume command printed),
the second quits at once; `fedlth run --resume` then finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from test_progress import NOISE, piped_env

from clients.client_app import app as client_app
from fedlth.config.scenario import resolve
from fedlth.reporting.interrupt import EXIT_INTERRUPTED, RunInterrupted
from server.exchange import StoppableGrid
from server.local_grid import LocalGrid
from server.server_app import load_checkpoint, run_federation

ROOT = Path(__file__).parent.parent
TINY = {
    "dataset": "digits", "model": "mlp", "partition": "iid", "num-clients": 3, "clients-per-round": 2,
    "rounds": 3, "local-epochs": 1, "algorithm": "subfedavg", "client-cpus": 1.0,
}


def _env() -> dict[str, str]:
    """This checkout's fedlth first, whatever is installed."""
    return os.environ | {"PYTHONPATH": str(ROOT)}


def test_stop_raises_at_the_next_grid_call_and_keeps_the_last_checkpoint(tmp_path):
    sc = resolve(TINY)
    stop = threading.Event()
    grid = StoppableGrid(LocalGrid(client_app, sc["num-clients"]), stop)

    def after_round(entry: dict) -> None:
        if entry["round"] == 2:
            stop.set()

    with pytest.raises(RunInterrupted):
        run_federation(grid, sc, tmp_path, on_round=after_round, client_state_dir=tmp_path / "client-state")
    assert load_checkpoint(tmp_path)["round"] == 2
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "summary.json").exists()


def test_second_sigint_quits_at_once_although_a_thread_blocks_exit(tmp_path):
    """A non-daemon thread that never ends (as Flower's ServerApp thread waiting for replies)
    would make a normal exit hang; the second Ctrl-C leaves anyway, with 130."""
    script = textwrap.dedent("""
        import threading, time
        from fedlth.reporting.interrupt import stop_on_sigint
        threading.Thread(target=lambda: threading.Event().wait()).start()
        with stop_on_sigint() as stop:
            print("ready", flush=True)
            stop.wait()
            print("stop set", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.stdout.readline().strip() == "stop set"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == EXIT_INTERRUPTED and time.monotonic() - t0 < 5
    assert "Ctrl-C again" in err and "quitting now" in err


def _fedlth(*args: str) -> list[str]:
    return [sys.executable, "-c", "from fedlth.cli import main; main()", *args]


def _wait_for(path: Path, proc: subprocess.Popen, limit: float) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path.name} after {limit:.0f} s"
        time.sleep(0.1)


def _summary_metrics(out: Path) -> dict:
    """summary.json less what differs between two runs of one seed (their clocks and provenance)."""
    drop = {"wall_seconds", "wall_seconds_segments", "wall_seconds_note", "provenance", "timing"}
    return {k: v for k, v in json.loads((out / "summary.json").read_text()).items() if k not in drop}


def _round_metrics(out: Path) -> list[dict]:
    drop = {"seconds", "wall_seconds"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in (out / "metrics.jsonl").read_text().splitlines()]


def _same(a: object, b: object) -> bool:
    """Equal, tensors bit for bit, through nested dicts."""
    import torch

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


# in-process rounds take a fraction of a second: enough of them that the Ctrl-C lands mid-run
@pytest.mark.parametrize("backend,rounds", [("inprocess", 30), pytest.param("ray", TINY["rounds"], marks=pytest.mark.xdist_group("ray"))])
def test_ctrl_c_mid_run_exits_130_with_the_resume_command_and_resume_finishes(tmp_path, backend, rounds):
    """On Ray, also the suite's check that Flower's simulation engine and the in-process grid run the
    same apps: the interrupted and resumed Ray run gives the very same metrics, bytes and tickets as
    one uninterrupted in-process run of its seed (client sampling included: 2 of 3 clients a round),
    floats compared exactly. One test, so that the suite starts Ray once less."""
    scenario = tmp_path / "tiny.toml"
    tiny = TINY | {"backend": backend, "rounds": rounds}
    scenario.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in tiny.items()))
    out = tmp_path / "run"
    # a new session, so that the SIGINT reaches the whole process group as a terminal's Ctrl-C does
    proc = subprocess.Popen(_fedlth("run", str(scenario), "--out", str(out), "--quiet"), env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(out / "checkpoint.pt", proc, limit=180)
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert time.monotonic() - t0 < 30
    assert f"fedlth run --resume {out}" in err
    assert not (out / "summary.json").exists()
    done = load_checkpoint(out)["round"]
    assert 1 <= done < rounds

    # the resume, piped without --quiet: also the piped-run check of tests/test_progress.py on this
    # backend (plain progress lines, no third-party noise), so that Ray starts once less in the suite
    resumed = subprocess.run(_fedlth("run", "--resume", str(out)), env=piped_env(PYTHONPATH=str(ROOT)), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, rounds + 1))
    for noise in ("DEPRECATED FEATURE", "Tip: In future versions of Ray"):  # --quiet is quiet
        assert noise not in err, noise
    both = resumed.stdout + resumed.stderr
    assert "\x1b" not in both and "\r" not in both  # no colour, no carriage return into a log
    for noise in NOISE:
        assert noise not in both, noise
    assert f"subfedavg rounds {rounds}/{rounds} (100 %" in resumed.stderr
    assert not any(line.startswith("WARNING") for line in resumed.stderr.splitlines())  # the success line is no warning
    assert resumed.stdout.startswith("subfedavg: personalized accuracy") and "scored clients" in resumed.stdout
    prov = json.loads((out / "summary.json").read_text())["provenance"]
    assert prov["command"] == f"fedlth run --resume {out}"
    assert prov["resumed_from"]["command"] == f"fedlth run {scenario} --out {out} --quiet"
    if backend != "ray":  # in-process, resume = an uninterrupted run is tests/test_resume.py's
        return
    from click.testing import CliRunner

    from fedlth.cli import main

    here = tmp_path / "inprocess"
    result = CliRunner().invoke(main, ["run", str(scenario), "--out", str(here), "--quiet", "--set", "backend=inprocess"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert all(len(r["train"]) == 2 for r in _round_metrics(here))
    assert _round_metrics(out) == _round_metrics(here)
    assert _summary_metrics(out) == _summary_metrics(here)
    import torch

    tickets = [{p.name: torch.load(p) for p in sorted((o / "tickets").iterdir())} for o in (out, here)]
    assert tickets[0] and _same(tickets[0], tickets[1])


def test_flowers_deprecation_notice_and_rays_tip_are_hidden_other_warnings_kept(caplog):
    import logging
    import warnings

    from server.simulate import _third_party_notices_hidden

    flwr_logger = logging.getLogger("flwr")
    with caplog.at_level(logging.WARNING, logger="flwr"), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with _third_party_notices_hidden(True):
            flwr_logger.warning("DEPRECATED FEATURE: The `run_simulation` function is deprecated and will be removed")
            flwr_logger.warning("round 3: client 2 sent no reply")
            warnings.warn("Tip: In future versions of Ray, Ray will no longer override", FutureWarning, stacklevel=1)
            warnings.warn("something else", FutureWarning, stacklevel=1)
        flwr_logger.warning("DEPRECATED FEATURE: The `run_simulation` function is deprecated (outside)")
    assert "client 2 sent no reply" in caplog.text and "(outside)" in caplog.text
    assert caplog.text.count("run_simulation") == 1
    assert [str(w.message) for w in seen] == ["something else"]


@pytest.mark.parametrize("command", ["run", "compare", "study"])
def test_an_interrupted_command_exits_130_without_a_traceback(tmp_path, monkeypatch, command):
    """The CLI's side, with the simulation stubbed: RunInterrupted becomes a message and 130."""
    from click.testing import CliRunner

    import server.simulate
    from fedlth.cli import main

    def interrupted(*_args, **_kwargs):
        raise RunInterrupted("interrupted by the user")

    monkeypatch.setattr(server.simulate, "simulate", interrupted)
    scenario = tmp_path / "tiny.toml"
    scenario.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items()))
    result = CliRunner().invoke(main, [command, str(scenario), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == EXIT_INTERRUPTED, result.output
    assert "fedlth: interrupted" in result.output and "Traceback" not in result.output
    assert ("--resume" in result.output) == (command == "run" and (tmp_path / "out" / "checkpoint.pt").exists())


def test_a_ctrl_c_outside_the_simulation_exits_130_not_aborted(tmp_path, monkeypatch):
    """E.g. while the data loads, before any thread runs: exit 130 too, not click's "Aborted!" and 1."""
    from click.testing import CliRunner

    import fedlth.cli
    from fedlth.cli import main

    def ctrl_c(_sc: dict) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fedlth.cli, "_check_data", ctrl_c)
    scenario = tmp_path / "tiny.toml"
    scenario.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in TINY.items()))
    result = CliRunner().invoke(main, ["run", str(scenario), "--out", str(tmp_path / "out")])
    assert result.exit_code == EXIT_INTERRUPTED and "Aborted!" not in result.output
    assert "fedlth: interrupted" in result.output
