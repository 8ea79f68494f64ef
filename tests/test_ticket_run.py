"""The central ticket run end to end on sklearn digits: outputs, schema, determinism."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fedlth.cli import main

SCENARIO = """
dataset = "digits"
model = "mlp"
epochs = 3
batch-size = 32
lr = 0.05
imp-levels = 2
prune-rate = 0.5
rewind = "iteration"
rewind-iteration = 10
"""


def _run(tmp_path, name, *extra):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    out = tmp_path / name
    result = CliRunner().invoke(main, ["ticket", str(path), "--out", str(out), "--quiet", *extra])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "summary.json").read_text())


def _strip_times(summary):
    drop = {"wall_seconds", "dense_seconds", "seconds", "seconds_with_controls", "provenance"}  # provenance: start time, command
    if isinstance(summary, dict):
        return {k: _strip_times(v) for k, v in summary.items() if k not in drop}
    if isinstance(summary, list):
        return [_strip_times(v) for v in summary]
    return summary


def test_ticket_run_writes_summary_plot_and_scenario(tmp_path):
    out, summary = _run(tmp_path, "a")
    assert {"dataset", "model", "seed", "levels", "dense_accuracy", "wall_seconds"} <= set(summary)
    assert (out / "accuracy_vs_density.png").stat().st_size > 1000
    assert "imp-levels = 2" in (out / "scenario.toml").read_text()
    levels = summary["levels"]
    assert [lv["level"] for lv in levels] == [1, 2]
    # global magnitude pruning of 50 % of the remaining weights per level, exact counts
    assert levels[0]["density"] == pytest.approx(0.5, abs=1e-4)
    assert levels[1]["density"] == pytest.approx(0.25, abs=1e-4)
    for lv in levels:
        for key in ("ticket_accuracy", "reinit_accuracy", "random_mask_accuracy"):
            assert 0.0 <= lv[key] <= 1.0
    # an MLP on real digits learns something well above chance (0.1)
    assert summary["dense_accuracy"] > 0.8
    assert summary["split_sizes"]["val"] > 0


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    _, a = _run(tmp_path, "a")
    _, b = _run(tmp_path, "b")
    _, c = _run(tmp_path, "c", "--set", "seed=1")
    assert _strip_times(a) == _strip_times(b)
    assert _strip_times(a) != _strip_times(c)


def test_lr_rewinding_and_one_shot_without_controls(tmp_path):
    _, s = _run(tmp_path, "lr", "--set", "rewind=lr", "--set", "one-shot=true", "--set", "controls=false")
    assert s["rewind"] == "lr" and s["one_shot"] is True
    assert s["levels"][1]["density"] == pytest.approx(0.25, abs=1e-4)
    assert s["levels"][0]["reinit_accuracy"] is None
