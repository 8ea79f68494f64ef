"""Progress lines, one name per number, and a quiet terminal (issue 15, items 3, 8 and 9)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedlth.reporting.labels import (
    TICKET_DENSITY,
    TRAINING_MASK_DENSITY,
    UPLOAD_KEPT_FRACTION,
    accuracy_headline,
    round_info,
    trained_split,
)
from fedlth.reporting.progress import CLEAR_LINE, CountingGrid, Progress, clock_text, eta_seconds

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eta_counts_from_where_a_resumed_task_started():
    assert eta_seconds(10.0, 2, 10) == pytest.approx(40.0)
    assert eta_seconds(10.0, 7, 10, start=5) == pytest.approx(15.0)  # 2 rounds in 10 s, 3 to go
    assert eta_seconds(5.0, 5, 10, start=5) is None and eta_seconds(3.0, 10, 10) == 0.0
    assert clock_text(3725) == "1:02:05" and clock_text(65) == "1:05"


def test_off_a_terminal_lines_are_plain_and_rate_bounded():
    lines: list[str] = []
    clock = Clock()
    p = Progress(sink=lines.append, interval=10.0, clock=clock)
    p.task("rounds", total=100)
    for r in range(1, 101):
        clock.t += 1.0  # a round per second: 100 updates in 100 s
        p.update(done=r, info=f"accuracy {r}")
    assert 10 <= len(lines) <= 13  # the first (after a 2 s grace), about one per 10 s, the last
    assert lines[0].startswith("rounds 2/100 (2 %, 0:02, ETA 1:38)")
    assert lines[-1].startswith("rounds 100/100 (100 %, 1:40, ETA 0:00)") and lines[-1].endswith("accuracy 100")
    assert "rounds 12/100 (12 %, 0:12, ETA 1:28)" in lines[1]  # 12 of 100 done in 12 s
    assert not any("\r" in x or "\x1b" in x for x in lines)


def test_steps_never_flood_a_log_even_at_interval_zero():
    lines: list[str] = []
    clock = Clock()
    p = Progress.for_log(lines.append)
    p.clock = clock
    p.task("rounds", total=2)
    p.step("round 1: clients trained", total=1000)
    for _ in range(1000):
        clock.t += 0.001
        p.advance_step()
    p.update(done=1)
    p.update(done=2)
    assert len(lines) == 3  # a line per round (for_log), none per reply
    assert "rounds 1/2" in lines[1] and "rounds 2/2" in lines[2]


def test_a_terminal_gets_one_line_redrawn_and_other_output_gets_a_clean_line(monkeypatch):
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    p = Progress.for_terminal(stream=tty)
    assert p.live
    with p.active():
        p.task("rounds", total=3)
        p.update(done=1)
        print("WARNING: a warning that matters", file=sys.stderr)  # what logging and warnings do
        p.update(done=2)
    out = tty.getvalue()
    assert CLEAR_LINE + "WARNING: a warning that matters\n" in out  # the live line is cleared first
    assert out.endswith("\n") and "rounds 2/3" in out.splitlines()[-1]
    assert sys.stderr is tty  # restored


def test_quiet_prints_nothing():
    stream = Tty()
    p = Progress.for_terminal(quiet=True, stream=stream)
    with p.active():
        p.task("rounds", total=3)
        p.update(done=3)
        p.note("done")
    assert stream.getvalue() == ""


def test_counting_grid_counts_replies_once_whether_pulled_or_computed_on_push():
    lines: list[str] = []
    p = Progress(sink=lines.append)

    class Pulled:
        def pull_messages(self, ids):
            return list(ids)

    class OnPush(Pulled):
        def set_reply_hook(self, hook):
            self.hook = hook

    p.task("rounds", total=1)
    p.step("replies", total=4)
    CountingGrid(Pulled(), p).pull_messages([1, 2, 3])
    assert "replies 3/4" in p.line()
    grid = OnPush()
    counting = CountingGrid(grid, p)
    p.step("replies", total=4)
    grid.hook()
    counting.pull_messages([1])  # already counted when computed
    assert "replies 1/4" in p.line()


# --- one meaning per number ------------------------------------------------------------------


def test_round_info_names_each_density_and_what_each_mean_is_over():
    entry = {
        "train": {"1": {"density": 1.0, "upload-density": 0.5}, "2": {"density": 1.0, "upload-density": 0.5}},
        "evaluate": {"0": {"accuracy": 0.5, "num-examples": 10.0}, "1": {"accuracy": 0.7, "num-examples": 10.0},
                     "2": {"accuracy": float("nan"), "num-examples": 0.0}},
    }
    text = round_info(entry)
    assert "personalized accuracy 0.6000 (mean over 2 scored clients)" in text
    assert f"{TRAINING_MASK_DENSITY} 1.000, {UPLOAD_KEPT_FRACTION} 0.500 (mean over this round's 2 clients)" in text
    assert "density" not in round_info({"train": {}, "evaluate": None})


def _summary(per_client: dict[str, float | None], trained: set[str]) -> dict:
    scored = [v for v in per_client.values() if v is not None]
    acc = {"mean": sum(scored) / len(scored), "std": 0.1, "worst10": min(scored), "per_client": per_client,
           "scored_clients": len(scored), "unscored_clients": len(per_client) - len(scored)}
    acc |= trained_split(per_client, trained)
    return {"algorithm": "subfedavg", "personalized_accuracy": acc, "density": {"mean": 0.3},
            "bytes": {"upload": 2e6}, "upload_ratio_vs_dense_fedavg": 0.3, "wall_seconds": 12.0}


def test_the_headline_says_who_never_trained_and_gives_the_trained_only_mean():
    s = _summary({"0": 0.9, "1": 0.8, "2": 0.0, "3": 0.1, "4": None}, trained={"0", "1", "4"})
    acc = s["personalized_accuracy"]
    assert (acc["trained_clients"], acc["never_trained_clients"]) == (2, 2)
    assert acc["mean_trained"] == pytest.approx(0.85)
    line = accuracy_headline(s)
    assert "mean ± std over 4 scored clients" in line
    assert "over the 2 that took part in training: 0.8500; 2 never sampled for training" in line
    assert "1 client(s) unscored" in line and f"{TICKET_DENSITY} 0.300 (mean over clients)" in line
    everyone = accuracy_headline(_summary({"0": 0.9, "1": 0.8}, trained={"0", "1"}))
    assert "never" not in everyone


def test_a_resumed_runs_wall_seconds_is_the_sum_of_its_segments(tmp_path):
    from clients.client_app import app as client_app
    from fedlth.config.scenario import resolve
    from server.local_grid import LocalGrid
    from server.server_app import load_checkpoint, run_federation

    sc = resolve({"dataset": "digits", "model": "mlp", "num-clients": 2, "clients-per-round": 2, "rounds": 2,
                  "local-epochs": 1, "algorithm": "fedavg", "eval-every": 0, "save-tickets": False})

    class Killed(BaseException):
        pass

    def kill(entry: dict) -> None:
        raise Killed

    out = tmp_path / "run"
    with pytest.raises(Killed):
        run_federation(LocalGrid(client_app, 2), sc, out, on_round=kill, client_state_dir=out / "cs")
    first = load_checkpoint(out)["wall_segments"]
    assert len(first) == 1 and first[0] > 0
    run_federation(LocalGrid(client_app, 2), sc, out, resume=True, client_state_dir=out / "cs")
    s = json.loads((out / "summary.json").read_text())
    assert len(s["wall_seconds_segments"]) == 2 and s["wall_seconds_segments"][0] == pytest.approx(first[0])
    assert s["wall_seconds"] == pytest.approx(sum(s["wall_seconds_segments"]))
    assert "sum of the run's segments" in s["wall_seconds_note"]
    assert "over 2 segments (resumed)" in accuracy_headline(s)


def test_export_says_kept_weights_apart_from_the_models_parameters():
    from fedlth.tickets.export import export_line

    head = {"client": 3, "density": 0.3, "file_bytes": 9000, "dense_bytes": 77000, "shrunk": {"0": {"kept": [1]}, "2": {}},
            "params": {"dense": 19210, "exported": 18394, "prunable": 18554, "kept": 5566}}
    line = export_line(head, Path("t.fltk"))
    assert "ticket keeps 5,566 of 18,554 prunable weights (density 0.300)" in line
    assert "model 19,210 parameters, 18,394 with 1 layer(s) cut to their kept channels" in line


def test_default_folders_name_the_algorithm_and_seed():
    from fedlth.config.scenario import defaults
    from fedlth.reporting.io import default_run_dir

    def sc(name: str, algorithm: str, seed: int) -> dict:
        return defaults() | {"name": name, "algorithm": algorithm, "seed": seed}

    run = default_run_dir(sc("quickstart", "fedavg", 3))
    assert run.parent == Path("runs") and run.name.startswith("run-quickstart-fedavg-s3-")
    assert default_run_dir(sc("", "local", 0)).name.startswith("run-local-s0-")
    assert default_run_dir(sc("central", "fedavg", 1), "ticket").name.startswith("ticket-central-s1-")


# --- a quiet terminal ------------------------------------------------------------------------


def test_colour_only_on_a_terminal_and_never_under_no_color():
    from fedlth.reporting.terminal import flower_console, use_colour

    assert use_colour(Tty(), env={}) and not use_colour(Tty(), env={"NO_COLOR": "1"})
    assert not use_colour(io.StringIO(), env={})
    from flwr.supercore.logger import ConsoleHandler

    handler = next(h for h in logging.getLogger("flwr").handlers if isinstance(h, ConsoleHandler))
    was = handler.colored
    try:
        flower_console(io.StringIO())
        assert handler.colored is False
        record = logging.LogRecord("flwr", logging.WARNING, __file__, 1, "round 3: a warning", None, None)
        assert "\x1b" not in handler.format(record)
    finally:
        handler.colored = was


def test_partitioning_draws_no_datasets_progress_bars_and_restores_the_setting(monkeypatch):
    from datasets.utils import logging as ds_logging

    import fedlth.data.partition
    from fedlth.reporting.terminal import no_datasets_progress_bars

    seen: list[bool] = []
    real = fedlth.data.partition._make_partitioner

    def spy(*args, **kwargs):
        partitioner = real(*args, **kwargs)
        load = partitioner.load_partition

        def load_partition(i):
            seen.append(ds_logging.is_progress_bar_enabled())
            return load(i)

        partitioner.load_partition = load_partition
        return partitioner

    monkeypatch.setattr(fedlth.data.partition, "_make_partitioner", spy)
    from fedlth.data.datasets import load_dataset

    fedlth.data.partition.partition_train_pool(load_dataset("digits"), "iid", 3, seed=0)
    assert seen == [False] * 3 and ds_logging.is_progress_bar_enabled()
    with no_datasets_progress_bars():
        assert not ds_logging.is_progress_bar_enabled()
    assert ds_logging.is_progress_bar_enabled()


TINY = """dataset = "digits"
model = "mlp"
partition = "iid"
num-clients = 3
clients-per-round = 2
rounds = 2
local-epochs = 1
algorithm = "subfedavg"
eval-every = 1
"""
# what third parties print on a run that a fedlth user can do nothing about
NOISE = ("DEPRECATED FEATURE", "run_simulation", "FutureWarning", "Tip: In future versions of Ray", "it/s]",
         "Map:", "Filter:", "cli.py:", "DeprecationWarning", "UserWarning")


def piped_env(**extra: str) -> dict[str, str]:
    """A colour terminal's settings (TERM set, NO_COLOR unset): only the pipe may turn colour off."""
    env = {**os.environ, "TERM": "xterm-256color", **extra}
    env.pop("NO_COLOR", None)
    return env


def _fedlth(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = piped_env(PYTHONPATH=str(ROOT), FLWR_HOME=str(tmp_path / "flwr"))
    return subprocess.run([sys.executable, "-c", "from fedlth.cli import main; main()", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


# On Ray, a piped run is checked the same way where a Ray run is made anyway (one Ray start less):
# the resumed run of tests/test_interrupt.py's Ctrl-C test, which uses NOISE and piped_env
def test_a_piped_run_is_plain_says_what_it_does_and_carries_no_third_party_noise(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY + 'backend = "inprocess"\n')
    res = _fedlth(tmp_path, "run", "tiny.toml")
    assert res.returncode == 0, res.stderr
    both = res.stdout + res.stderr
    assert "\x1b" not in both and "\r" not in both  # no colour, no carriage return into a log
    for noise in NOISE:
        assert noise not in both, noise
    assert "subfedavg rounds 2/2 (100 %" in res.stderr and "personalized accuracy" in res.stderr
    assert res.stdout.startswith("subfedavg: personalized accuracy") and "scored clients" in res.stdout
    folder = next((tmp_path / "runs").iterdir())  # default folder: algorithm and seed in its name
    assert folder.name.startswith("run-tiny-subfedavg-s0-") and str(folder.relative_to(tmp_path)) in res.stdout
    assert not any(line.startswith("WARNING") for line in res.stderr.splitlines())  # nothing went wrong


def test_quiet_keeps_only_the_result(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY + 'backend = "inprocess"\n')
    res = _fedlth(tmp_path, "run", "tiny.toml", "--quiet", "--out", "o")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "" and res.stdout.startswith("subfedavg: personalized accuracy")


def test_the_serverapp_under_flwr_run_logs_its_phases_and_a_line_per_round(tmp_path, caplog):
    """`flwr run --stream` shows what the ServerApp logs: no terminal there, so log lines."""
    from flwr.app import Context, RecordDict

    from clients.client_app import app as client_app
    from server.local_grid import LocalGrid
    from server.server_app import make_server_app

    config = {"dataset": "digits", "model": "mlp", "num-clients": 2, "clients-per-round": 2, "rounds": 3,
              "local-epochs": 1, "algorithm": "fedavg", "eval-every": 0, "save-tickets": False,
              "out-dir": str(tmp_path / "run")}
    with caplog.at_level(logging.INFO, logger="flwr"):
        make_server_app()(LocalGrid(client_app, 2), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                                                            run_config=config))
    lines = [r.getMessage() for r in caplog.records if r.name == "flwr"]
    assert any(x.startswith("fedlth: starting fedavg on 2 nodes; outputs in") for x in lines), lines
    for r in (1, 2, 3):
        assert sum(x.startswith(f"fedlth: round {r}/3:") for x in lines) == 1, lines
    assert any(x.startswith("fedlth: finished; personalized accuracy") for x in lines), lines
    assert (tmp_path / "run" / "summary.json").is_file()


def test_ticket_progress_counts_every_imp_model_to_the_end():
    from fedlth.reporting.progress import imp_models

    lines: list[str] = []
    p = Progress(sink=lines.append, interval=0.0)
    say = imp_models(p, 2, True)
    for msg in ("level 0: dense training", "level 1: density 0.800, ticket", "level 1: density 0.800, re-init control",
                "level 1: density 0.800, random-mask control", "level 2: density 0.640, ticket",
                "level 2: density 0.640, re-init control", "level 2: density 0.640, random-mask control"):
        say(msg)
    assert "IMP models trained 6/7" in p.line() and "now level 2: density 0.640, random-mask control" in p.line()
    p.update(advance=1, info="done")  # what `fedlth ticket` does when the run returns
    assert lines[-1].startswith("IMP models trained 7/7 (100 %")


def test_evaluate_gives_the_trained_only_mean_where_some_clients_never_trained(tmp_path):
    from fedlth.reporting.labels import trained_note

    rounds = [{"round": 1, "train": {"0": {}, "1": {}}}, {"round": 2, "train": {"1": {}}}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    per_client = {0: {"accuracy": 0.8, "num-examples": 5.0}, 1: {"accuracy": 0.6, "num-examples": 5.0},
                  2: {"accuracy": 0.1, "num-examples": 5.0}}
    note = trained_note(tmp_path / "metrics.jsonl", per_client)
    assert note == "; over the 2 that took part in training: 0.7000; 1 never sampled for training"
    assert trained_note(tmp_path / "metrics.jsonl", {k: v for k, v in per_client.items() if k < 2}) == ""
