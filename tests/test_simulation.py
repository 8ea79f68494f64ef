"""End to end through `fedlth run` (in-process by default, and on Flower's Ray engine): every
algorithm runs, outputs are complete and the same seed gives the same metrics (that Ray and the
in-process grid give the very same results is checked with Ray's Ctrl-C and resume in
tests/test_interrupt.py, so that the suite starts Ray once less)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedlth.cli import main
from fedlth.config.scenario import ALGORITHM_NAMES

ROOT = Path(__file__).parent.parent

SCENARIO = """
dataset = "digits"
model = "mlp"
partition = "pathological"
classes-per-client = 4
num-clients = 3
clients-per-round = 3
rounds = 2
local-epochs = 1
prune-rate = 0.5
target-density = 0.2
acc-threshold = 0.0
prune-tolerance = 1.0
eval-every = 1
"""

SUMMARY_KEYS = {
    "algorithm", "dataset", "seed", "rounds", "num_clients", "personalized_accuracy", "global_accuracy",
    "density", "bytes", "wall_seconds",
}


def _run(tmp_path: Path, name: str, *overrides: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    out = tmp_path / name
    args = ["run", str(path), "--out", str(out), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def _metrics(out: Path) -> list[dict]:
    drop = {"seconds", "wall_seconds"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm", ["subfedavg", "local"])
def test_two_rounds_three_clients_on_flowers_engine(tmp_path, algorithm):
    _check_two_rounds(_run(tmp_path, algorithm, f"algorithm={algorithm}"), algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_two_rounds_three_clients_every_algorithm(tmp_path, algorithm):
    """The same checks for every algorithm, on the in-process grid (seconds, not Ray's 20 s)."""
    from clients.client_app import app as client_app
    from fedlth.config.scenario import resolve
    from server.local_grid import LocalGrid
    from server.server_app import run_federation

    # shared-ticket's server prunes after round 1 here (its default schedule starts at round 30)
    schedule = {"prune-start": 0, "prune-end": 1} if algorithm == "shared-ticket" else {}
    sc = resolve({**tomllib.loads(SCENARIO), "algorithm": algorithm, **schedule})
    out = tmp_path / algorithm
    run_federation(LocalGrid(client_app, 3), sc, out, client_state_dir=out / "client-state")
    _check_two_rounds(out, algorithm)


def _check_two_rounds(out: Path, algorithm: str) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["provenance"]["fedlth"] and summary["provenance"]["python"]
    assert summary["algorithm"] == algorithm and summary["rounds"] == 2 and summary["num_clients"] == 3
    acc = summary["personalized_accuracy"]
    assert set(acc["per_client"]) == {"0", "1", "2"}
    assert 0.0 <= acc["worst10"] <= acc["mean"] <= 1.0
    for name in ("metrics.jsonl", "report.md", "scenario.toml", "accuracy_by_round.png", "density_by_round.png", "accuracy_vs_upload.png"):
        assert (out / name).is_file(), name
    rounds = _metrics(out)
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(len(r["train"]) == 3 and r["evaluate"] for r in rounds)
    b = summary["bytes"]
    if algorithm == "local":
        assert b["upload"] == 0 and b["download"] == 0 and summary["global_accuracy"] is None
    elif algorithm in ("fedper", "fedrep"):
        # the body both ways (the head as mask bits only); no global model to score
        assert b["upload"] < b["dense_fedavg_upload"] and b["download"] < b["dense_fedavg_download"]
        assert summary["global_accuracy"] is None and summary["density"]["mean"] == 1.0
    elif algorithm == "personal-ticket":
        # the dense global model down; up, the upload-density (0.3) share that changed most, with its bits;
        # each client's ticket is pruned to target-density (0.2) at evaluation
        assert b["download"] == b["dense_fedavg_download"] and b["upload"] < 0.45 * b["dense_fedavg_upload"]
        assert 0.0 <= summary["global_accuracy"] <= 1.0
        assert abs(summary["density"]["mean"] - 0.2) < 0.01
    elif algorithm == "shared-ticket":
        # round 1 dense, then the server's shared mask at 0.2 both ways
        assert abs(summary["density"]["mean"] - 0.2) < 0.01
        assert rounds[1]["bytes"]["upload"] < 0.4 * rounds[0]["bytes"]["upload"]
        assert rounds[1]["bytes"]["download"] < 0.4 * rounds[0]["bytes"]["download"]
    elif algorithm == "fedpm":
        # up: one sampled mask as packed bits (~1/32 of float32); down: the probabilities, float32,
        # as many as the dense model here (every tensor of the MLP is a masked weight or bias)
        assert b["upload"] < 0.05 * b["dense_fedavg_upload"] and b["download"] == b["dense_fedavg_download"]
        assert 0.0 <= summary["global_accuracy"] <= 1.0 and 0.3 < summary["density"]["mean"] < 0.7
        assert 0.99 < summary["mask_upload_bits_per_parameter"]["raw"] < 1.01
    elif algorithm in ("fedavg", "fedavg-ft", "ditto"):
        # dense both ways; the wire bytes are exactly dense FedAvg's
        assert b["upload"] == b["dense_fedavg_upload"] and b["download"] == b["dense_fedavg_download"]
        assert 0.0 <= summary["global_accuracy"] <= 1.0
        assert summary["density"]["mean"] == 1.0
    elif algorithm == "dispfl":
        # each client's own mask at dispfl-density (0.5) from its first download on: both ways sparse every round
        assert abs(summary["density"]["mean"] - 0.5) < 0.01
        assert b["upload"] < 0.6 * b["dense_fedavg_upload"] and b["download"] < 0.6 * b["dense_fedavg_download"]
        assert rounds[1]["bytes"]["download"] == rounds[0]["bytes"]["download"]  # constant density
        assert summary["global_accuracy"] is None
    else:
        # clients pruned to 0.5 after round 1 and sent sparse tickets
        assert summary["density"]["mean"] < 0.6
        assert b["upload"] < 0.8 * b["dense_fedavg_upload"]
        assert b["download"] < b["dense_fedavg_download"] + 3 * 2_000  # round 1 dense, round 2 subnets
        assert rounds[1]["bytes"]["download"] < 0.7 * rounds[0]["bytes"]["download"]


def test_same_seed_same_metrics(tmp_path):
    a = _metrics(_run(tmp_path, "a", "algorithm=subfedavg", "num-clients=3", "clients-per-round=2"))
    b = _metrics(_run(tmp_path, "b", "algorithm=subfedavg", "num-clients=3", "clients-per-round=2"))
    assert a == b
    sampled = [sorted(r["train"]) for r in a]
    assert all(len(s) == 2 for s in sampled)


FAIR = """
dataset = "arrests"
model = "tabular-mlp"
partition = "natural-id"
num-clients = 6
clients-per-round = 6
rounds = 2
local-epochs = 1
algorithm = "subfedavg"
prune-rate = 0.5
acc-threshold = 0.0
prune-tolerance = 1.0
evaluators = "fairness,robustness"
attack-eps = "0.1"
attack-steps = 5
attack-samples = 40
"""


def test_evaluators_in_a_run_and_reevaluation_of_its_saved_tickets(tmp_path):
    path = tmp_path / "fair.toml"
    path.write_text(FAIR)
    out = tmp_path / "fair"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    ev = summary["evaluation"]
    assert set(ev["pooled_fairness"]) == {"colour", "sex"}
    assert "robustness.pgd.eps=0.1.robust_accuracy" in ev["evaluators_mean"]
    assert ev["across_clients"]["n"] == 6 and 0 < ev["across_clients"]["jain_index"] <= 1
    assert "Group fairness by `sex`" in (out / "report.md").read_text()
    assert (out / "fairness-sex.csv").read_text().startswith("group,count,accuracy,selection_rate,tpr,fpr\n")
    assert "robustness.pgd.eps=0.1.robust_accuracy," in (out / "evaluators.csv").read_text()
    assert sorted(p.name for p in (out / "tickets").iterdir()) == [f"client-{i}.pt" for i in range(6)]
    # the saved tickets give back exactly the accuracies the run reported
    again = CliRunner().invoke(main, ["evaluate", str(out), "--evaluators", "fairness"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "tickets: accuracy" in again.output and " % (mean over the clients' own test splits)" in again.output
    (evaluation,) = out.glob("evaluation-*.json")
    re = json.loads(evaluation.read_text())
    assert {int(k): v["accuracy"] for k, v in re["per_client"].items()} == {
        int(k): v for k, v in summary["personalized_accuracy"]["per_client"].items()
    }
    assert re["summary"]["pooled_fairness"] == ev["pooled_fairness"]
    # an exported ticket, loaded without Flower, scores exactly what the run reported
    import torch

    import fedlth
    from fedlth.config.scenario import load_scenario
    from fedlth.data.client_data import client_data

    file = tmp_path / "client-0.fltk"
    exported = CliRunner().invoke(main, ["export", str(out), "--client", "0", "--out", str(file)], catch_exceptions=False)
    assert exported.exit_code == 0, exported.output
    model = fedlth.load_ticket(file)
    data = client_data(load_scenario(out / "scenario.toml"), 0)
    with torch.no_grad():
        acc = (model(data.x_test).argmax(1) == data.y_test).sum().item() / len(data.y_test)
    assert acc == pytest.approx(summary["personalized_accuracy"]["per_client"]["0"], abs=1e-9)


def test_evaluate_bad_inputs_exit_2(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "run").mkdir()
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "run")])
    assert result.exit_code == 2 and "not a fedlth run folder" in result.output


def test_bad_evaluator_fails_before_training(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO + 'evaluators = "robustness,fairnes"\n')
    out = tmp_path / "x"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 2
    assert "unknown evaluator(s) ['fairnes']; available: fairness, robustness" in result.output
    assert not out.exists()
    path.write_text(SCENARIO + 'evaluators = "fairness"\n')
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 2 and "needs a binary task" in result.output


def test_study_over_densities_writes_table_and_plot(tmp_path):
    path = tmp_path / "fair.toml"
    path.write_text(FAIR.replace('evaluators = "fairness,robustness"', 'evaluators = "fairness"'))
    out = tmp_path / "study"
    result = CliRunner().invoke(main, ["study", str(path), "--densities", "1.0,0.5", "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "study.json").read_text())["rows"]
    assert [r["target_density"] for r in rows] == [1.0, 0.5]
    assert rows[0]["density"] == 1.0 and rows[1]["density"] <= 0.55
    assert "sex.demographic_parity_difference" in rows[0]
    assert (out / "study.png").stat().st_size > 1000
    assert json.loads((out / "study.json").read_text())["provenance"]["flwr"]
    assert "## Provenance" in (out / "study.md").read_text()


def test_study_rejects_bad_densities(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    result = CliRunner().invoke(main, ["study", str(path), "--densities", "1.0,0", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "every density must be in (0, 1]" in result.output
