"""The personal-ticket study: one federation per seed, tickets and both controls re-made from it
at each density, with the ticket's exact per-layer counts; several attacks in one evaluator."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from clients.client_app import app as client_app
from fedlth.config.scenario import ScenarioError, resolve
from fedlth.reporting.study import layer_kept, study_arms, study_row
from server.local_grid import LocalGrid
from server.server_app import run_federation

TINY = {
    "dataset": "digits", "model": "mlp", "partition": "pathological", "classes-per-client": 2, "num-clients": 3,
    "clients-per-round": 3, "rounds": 2, "local-epochs": 1, "algorithm": "personal-ticket", "finetune-epochs": 1,
    "ticket-warmup-epochs": 1, "save-tickets": False, "lr": 0.05,
}


def _runner(sc: dict, out):
    run_federation(LocalGrid(client_app, sc["num-clients"]), sc, out)


def test_controls_use_the_tickets_exact_per_layer_counts_for_every_client(tmp_path):
    sc = resolve(TINY)
    models: dict[tuple[float, str, int], dict[str, torch.Tensor]] = {}

    def personalizer(run_dir, run_sc, on_model):
        from fedlth.evaluation.reevaluate import repersonalize

        def keep(pid, w):
            models[(run_sc["target-density"], run_sc["ticket-control"], pid)] = w
            on_model(pid, w)

        return repersonalize(run_dir, run_sc, on_model=keep)

    rows = study_arms(sc, [0.5, 0.1], tmp_path, _runner, arms=("ticket", "random-mask", "reinit"), personalizer=personalizer)
    assert [(r["arm"], r["target_density"]) for r in rows] == [
        ("ticket", 0.5), ("ticket", 0.1), ("random-mask", 0.5), ("random-mask", 0.1), ("reinit", 0.5), ("reinit", 0.1)]
    for d in (0.5, 0.1):
        for pid in range(3):
            ticket = layer_kept(models[(d, "none", pid)])
            assert layer_kept(models[(d, "random-mask", pid)]) == ticket  # same count in every layer ...
            assert layer_kept(models[(d, "reinit", pid)]) == ticket
            total = sum(v.numel() for k, v in models[(d, "none", pid)].items() if k in ticket)
            assert sum(ticket.values()) == pytest.approx(d * total, abs=2)  # ... and the target density overall
            ticket_pos = {k: models[(d, "none", pid)][k] != 0 for k in ticket}
            # random-mask moves the positions; reinit keeps them
            assert any(not torch.equal(ticket_pos[k], models[(d, "random-mask", pid)][k] != 0) for k in ticket)
            assert all(torch.equal(ticket_pos[k], models[(d, "reinit", pid)][k] != 0) for k in ticket)
        # global magnitude pruning gives layers different densities: equal counts are not a coincidence
        layers = layer_kept(models[(d, "none", 0)])
        sizes = {k: models[(d, "none", 0)][k].numel() for k in layers}
        assert len({round(layers[k] / sizes[k], 3) for k in layers}) > 1
    out = json.loads((tmp_path / "study.json").read_text())
    assert out["controls_keep_layer_counts"] is True
    assert out["layer_kept"][str(sc["seed"])]["0.1"]["reinit"]["2"] == layer_kept(models[(0.1, "none", 2)])
    assert (tmp_path / f"seed-{sc['seed']}" / "personalized" / "reinit-density-0.1.json").is_file()
    assert (tmp_path / "study.png").stat().st_size > 5000
    md = (tmp_path / "study.md").read_text()
    assert "| tickets | random-mask | 0.100 |" in md and "per-layer counts for every client, density and seed: yes" in md


def test_the_ticket_arm_reproduces_the_runs_own_evaluation_over_seeds(tmp_path):
    sc = resolve(TINY)
    seen = []
    rows = study_arms(sc, [0.3], tmp_path, _runner, seeds=[0, 1], on_run=seen.append)
    assert seen == [0, 1] and len(rows) == 1 and rows[0]["accuracy"]["n"] == 2
    out = json.loads((tmp_path / "study.json").read_text())
    assert out["ticket_reproduces_run"] == {"0": True, "1": True}
    for seed in (0, 1):  # the federation itself ran once per seed, at the first density, without evaluators
        run = json.loads((tmp_path / f"seed-{seed}" / "summary.json").read_text())
        per_client = json.loads((tmp_path / f"seed-{seed}" / "personalized" / "ticket-density-0.3.json").read_text())["per_client"]
        assert {p: m["accuracy"] for p, m in per_client.items()} == run["personalized_accuracy"]["per_client"]
        assert out["per_seed"]["ticket"]["0.3"][seed]["accuracy"] == run["personalized_accuracy"]["mean"]


def test_study_row_has_the_pooled_accuracy_gap_between_groups():
    pooled = {"sex": {"overall": {"selection_rate": 0.4}, "demographic_parity_difference": 0.1, "equalized_odds_difference": 0.2,
                      "equal_opportunity_difference": 0.15,
                      "by_group": {"f": {"accuracy": 0.9, "count": 40}, "m": {"accuracy": 0.75, "count": 30},
                                   "x": {"accuracy": None, "count": 0}, "tiny": {"accuracy": 0.0, "count": 2}}}}
    summary = {"personalized_accuracy": {"mean": 0.8, "std": 0.1, "worst10": 0.6}, "density": {"mean": 0.2},
               "evaluation": {"pooled_fairness": pooled}}
    row = study_row(0.2, summary)
    assert row["sex.accuracy_difference"] == pytest.approx(0.15)  # 0.90 - 0.75; neither the undefined group nor the 2-sample one takes part


def test_attack_takes_several_names_each_at_every_eps():
    from fedlth.evaluation.evaluators import EvalData, RobustnessEvaluator, build_evaluators

    ev = RobustnessEvaluator.from_options({"attack": "fgsm, pgd", "attack-eps": "0.1,0.2", "attack-steps": 2, "attack-samples": 8})
    assert ev.attacks == ("fgsm", "pgd")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.rand(8, 4, generator=torch.Generator().manual_seed(0))
    out = ev(net, EvalData(x, torch.arange(8) % 3, (4,), 3, (0.0, 1.0)))
    assert {k for k in out if k.endswith("robust_accuracy")} == {
        f"robustness.{a}.eps={e}.robust_accuracy" for a in ("fgsm", "pgd") for e in ("0.1", "0.2")}
    with pytest.raises(ValueError, match="key 'attack' is 'pgd,foo'; allowed: fgsm, pgd"):
        build_evaluators("robustness", {"attack": "pgd,foo"})
    assert resolve({"attack": "pgd,autoattack"})["attack"] == "pgd,autoattack"
    with pytest.raises(ScenarioError, match="attack"):
        resolve({"attack": "pgd,foo"})


def test_controls_flag_refuses_an_algorithm_without_cut_tickets(tmp_path):
    from fedlth.cli import main

    scenario = tmp_path / "s.toml"
    scenario.write_text('dataset = "digits"\nmodel = "mlp"\nalgorithm = "subfedavg"\n')
    result = CliRunner().invoke(main, ["study", str(scenario), "--controls", "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 2 and "--controls needs algorithm = personal-ticket" in result.output
    assert not (tmp_path / "out").exists()


def test_reuse_gathers_finished_seeds_without_running_anything_again(tmp_path):
    sc = resolve(TINY)
    first = study_arms(sc, [0.3], tmp_path, _runner, arms=("ticket", "reinit"), seeds=[0, 1])

    def refuse(*_a):
        raise AssertionError("nothing should run again")

    again = study_arms(sc, [0.3], tmp_path, refuse, arms=("ticket", "reinit"), seeds=[0, 1], personalizer=refuse, reuse=True)
    assert again == first
    assert json.loads((tmp_path / "study.json").read_text())["controls_keep_layer_counts"] is True


def _toml(path, values: dict) -> None:
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))


def test_cli_study_with_controls_writes_every_arm(tmp_path):
    from fedlth.cli import main

    _toml(tmp_path / "s.toml", TINY | {"backend": "inprocess"})
    result = CliRunner().invoke(main, ["study", str(tmp_path / "s.toml"), "--densities", "0.5", "--controls", "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "out" / "study.md").read_text()
    assert all(f"| tickets | {arm} | 0.500 |" in md for arm in ("ticket", "random-mask", "reinit"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["seed-0", "study.csv", "study.json", "study.md", "study.png"]


def test_cli_study_of_personal_ticket_interrupted_exits_130(tmp_path, monkeypatch):
    import server.simulate
    from fedlth.cli import main
    from fedlth.reporting.interrupt import EXIT_INTERRUPTED, RunInterrupted

    def interrupted(*_args, **_kwargs):
        raise RunInterrupted("interrupted by the user")

    monkeypatch.setattr(server.simulate, "simulate", interrupted)
    _toml(tmp_path / "s.toml", TINY)
    result = CliRunner().invoke(main, ["study", str(tmp_path / "s.toml"), "--controls", "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == EXIT_INTERRUPTED and "Traceback" not in result.output
