"""Statistics over seeds, figure data and paste-ready tables: intervals by hand, clamped bands,
whole-number ticks, human column names, and CSV rows equal to the markdown rows."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedlth.config.scenario import defaults
from fedlth.reporting.stats import SPREAD_NOTE, format_stats, seed_stats, t_quantile
from fedlth.reporting.tables import Table, format_cell, human_name


def test_t_interval_over_three_values_equals_the_hand_computation():
    st = seed_stats([0.80, 0.90, 1.00])
    # mean 0.9; sample std sqrt((0.01 + 0 + 0.01) / 2) = 0.1; t(0.975, df 2) = 4.302652729911275
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert st["n"] == 3 and st["ddof"] == 1
    assert st["mean"] == pytest.approx(0.9) and st["std"] == pytest.approx(0.1)
    assert st["ci95"] == pytest.approx([0.9 - half, 0.9 + half])
    assert st["ci95"][1] == pytest.approx(1.14841, abs=1e-5)  # a t interval can pass 1 ...
    assert format_stats(st, 100, 1, bounds=(0, 1)) == "90.0 ± 10.0 [65.2, 100.0]"  # ... the printed one is clipped


def test_t_quantiles_match_tables_and_one_value_has_no_spread():
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(29) == pytest.approx(2.0452, abs=1e-4)
    one = seed_stats([0.7, None])
    assert one["n"] == 1 and one["mean"] == 0.7 and one["std"] is None and one["ci95"] is None
    assert format_stats(one, 100) == "70.0"
    assert "ddof 1" in SPREAD_NOTE and "95 %" in SPREAD_NOTE
    with pytest.raises(ValueError):
        t_quantile(0)


def test_human_names_and_precision():
    assert human_name("robustness.pgd.eps=0.05.attack_success_rate") == "PGD ε=0.05 attack success (%)"
    assert human_name("robustness.pgd-l2.eps=0.5.robust_accuracy") == "PGD-L2 ε=0.5 robust acc. (%)"
    assert human_name("race.demographic_parity_difference") == "race: demographic parity diff."
    assert human_name("accuracy_std_over_clients") == "std over clients (pp)"
    assert format_cell("accuracy", 0.91234) == "91.2"
    assert format_cell("robustness.pgd.eps=0.05.attack_success_rate", 0.5) == "50.0"
    assert format_cell("sex.equalized_odds_difference", 0.01234) == "0.012"
    assert format_cell("density", 0.30012) == "0.300"
    assert format_cell("accuracy", None) == "n/a"


def _md_rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]


def _csv_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    return reader.fieldnames, list(reader)


def test_csv_has_the_markdown_rows_at_full_precision():
    rows = [{"algorithm": "a", "personalized": seed_stats([0.8, 0.9, 1.0]), "density": 0.3},
            {"algorithm": "b", "personalized": seed_stats([0.5, 0.6, 0.7]), "density": 1.0}]
    table = Table(["algorithm", "personalized", "density"], rows)
    md, (cols, data) = _md_rows(table.markdown()), _csv_rows(table.csv())
    assert cols == ["algorithm", "personalized_mean", "personalized_std", "personalized_ci95_low", "personalized_ci95_high",
                    "personalized_n", "density"]
    assert [r[0] for r in md] == [r["algorithm"] for r in data]
    for m, c in zip(md, data, strict=True):
        assert m[1].startswith(f"{100 * float(c['personalized_mean']):.1f} ± {100 * float(c['personalized_std']):.1f}")
        assert m[2] == f"{float(c['density']):.3f}"
    assert float(data[0]["personalized_ci95_high"]) == pytest.approx(1.14841, abs=1e-5)  # not clipped in the CSV


def test_accuracy_band_is_clamped_and_round_ticks_are_integers():
    from fedlth.reporting.plots import (
        accuracy_limits,
        clamped_band,
        integer_ticks,
        percent_label,
        plain_log_ticks,
        seed_curve,
    )

    lo, hi = clamped_band([0.95, 0.5, 0.02], [0.1, 0.1, 0.05])
    assert hi == pytest.approx([1.0, 0.6, 0.07]) and lo == pytest.approx([0.85, 0.4, 0.0])
    assert clamped_band([0.5], [None]) == ([0.5], [0.5])
    for xs in ([1, 2, 3], [1, 5], list(range(1, 101)), [3, 7, 30], [0, 250]):
        ticks = integer_ticks(xs)
        assert all(isinstance(t, int) for t in ticks) and 2 <= len(ticks) <= 8 or len(set(xs)) == 1
        assert min(xs) <= ticks[0] and ticks[-1] <= max(xs)
    assert integer_ticks([1, 2, 3]) == [1, 2, 3]  # never 1.5, 2.5
    assert [percent_label(x) for x in (0.85, 0.975, 0.3, 1.0)] == ["85%", "97.5%", "30%", "100%"]  # plain, no 3×10⁻¹
    # a 0.002 wobble is drawn on a span of at least 0.2, inside [0, 1]
    a, b = accuracy_limits([0.991, 0.993])
    assert b - a >= 0.2 - 1e-9 and a >= 0.0 and b <= 1.0
    assert accuracy_limits([0.01, 0.02])[0] == 0.0
    assert plain_log_ticks([1.0, 0.3, 0.05, 0.3, 0.36662]) == ([0.05, 0.3, 0.3666, 1.0], ["0.05", "0.3", "0.37", "1"])
    rounds, means, lower, upper = seed_curve([[(1, 0.9), (2, 0.99)], [(1, 0.7), (2, 0.97)], [(1, 0.8), (2, 1.0)]])
    assert rounds == [1, 2] and means == pytest.approx([0.8, 0.98667], abs=1e-5)
    assert max(upper) <= 1.0 and min(lower) >= 0.0 and upper[1] == 1.0


def _round(rnd: int, accs: list[float] | None, density: float = 0.5) -> dict:
    entry = {"round": rnd, "train": {str(i): {"density": density} for i in range(3)},
             "bytes": {"upload": 1000 * rnd, "dense_fedavg_upload": 3000}}
    if accs is not None:
        entry["evaluate"] = {str(i): {"accuracy": a} for i, a in enumerate(accs)}
    return entry


def test_federated_figures_skip_what_has_no_curve(tmp_path):
    from fedlth.reporting.plots import density_series, plot_federated

    done_none = "skipped: 0 evaluation round(s); a curve needs 2 (set eval-every to evaluate during the run)"
    one_eval = [_round(1, None), _round(2, None), _round(3, [0.5, 0.6, 1.0])]
    done = plot_federated(one_eval, "t", tmp_path)
    assert done["density_by_round.png"] == "written" and (tmp_path / "density_by_round.png").is_file()
    assert done["accuracy_by_round.png"].startswith("skipped") and not (tmp_path / "accuracy_by_round.png").exists()
    assert not (tmp_path / "accuracy_vs_upload.png").exists()
    done = plot_federated([_round(1, [0.9, 1.0, 1.0]), _round(2, [0.95, 1.0, 1.0])], "t", tmp_path)
    assert set(done.values()) == {"written"} and (tmp_path / "accuracy_vs_upload.png").stat().st_size > 1000
    # clients keep their last density when not sampled: what the figure's title says
    rounds = [{"round": 1, "train": {"0": {"density": 1.0}}}, {"round": 2, "train": {"1": {"density": 0.5}}}]
    assert density_series(rounds) == ([1, 2], [1.0, 0.75])
    # a run whose every update was rejected: no density to draw either, and nothing drawn
    nobody = [{"round": r, "train": {}, "bytes": {"upload": 0}} for r in (1, 2)]
    empty = tmp_path / "nobody"
    assert plot_federated(nobody, "t", empty) == {"accuracy_by_round.png": done_none, "accuracy_vs_upload.png": done_none,
                                                  "density_by_round.png": "skipped: no client trained"}
    assert not empty.exists()


def _fake_federated_run(sc: dict, out: Path) -> None:
    """Writes what a run writes for compare/study to read; accuracy depends on the seed."""
    out.mkdir(parents=True)
    acc = 0.6 + 0.1 * sc["seed"] + (0.05 if sc["algorithm"] == "fedavg" else 0.0)
    rounds = [_round(r, [acc - 0.1 / r, acc, acc + 0.05]) for r in (1, 2, 3)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rounds))
    summary = {
        "personalized_accuracy": {"mean": acc, "std": 0.02, "worst10": acc - 0.1},
        "personalized_accuracy_pooled": acc, "global_accuracy": None,
        "density": {"mean": sc.get("target-density", 1.0)},
        "bytes": {"upload": 6000, "download": 9000, "dense_fedavg_upload": 9000, "dense_fedavg_download": 9000},
        "upload_ratio_vs_dense_fedavg": 6000 / 9000, "wall_seconds": 1.0,
        "evaluation": {"evaluators_mean": {"robustness.pgd.eps=0.05.attack_success_rate": 0.25 + 0.01 * sc["seed"]},
                       "pooled_fairness": {"sex": {"overall": {"selection_rate": 0.999}, "demographic_parity_difference": 0.01, "equalized_odds_difference": 0.02,
                                                   "equal_opportunity_difference": 0.015}}},
        "reference": {"majority_rate": 0.75, "logistic_regression": 0.85, "local_majority": 0.8},
    }
    (out / "summary.json").write_text(json.dumps(summary))


def test_compare_over_seeds_writes_intervals_csv_and_banded_figure(tmp_path):
    from fedlth.config.scenario import resolve
    from fedlth.reporting.compare import compare

    sc = resolve({"dataset": "digits", "model": "mlp", "num-clients": 3, "clients-per-round": 3, "rounds": 3})
    res = compare(sc, ["fedavg", "local"], [0, 1, 2], tmp_path, _fake_federated_run)
    md = (tmp_path / "comparison.md").read_text()
    assert "personalized acc. (%)" in md and "ddof 1" in md and "95 % Student-t interval" in md
    st = res["rows"][0]["stats"]["personalized"]
    assert st["mean"] == pytest.approx(0.75) and st["std"] == pytest.approx(0.1)
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert f"| fedavg | 75.0 ± 10.0 [{100 * (0.75 - half):.1f}, {100 * (0.75 + half):.1f}] |" in md
    assert "| 0.300 ± 0.000 | 0.01 ± 0.00 |" in md  # no interval on costs
    md_rows = _md_rows(res["table"])
    cols, csv_rows = _csv_rows((tmp_path / "comparison.csv").read_text())
    assert [r[0] for r in md_rows] == [r["algorithm"] for r in csv_rows] == ["fedavg", "local"]
    assert float(csv_rows[0]["personalized_ci95_low"]) == pytest.approx(0.75 - half)
    assert (tmp_path / "comparison.png").stat().st_size > 5000
    assert res["rows"][0]["raw"]["personalized"] == pytest.approx([0.65, 0.75, 0.85])  # benchmarks read `raw`


def test_study_over_seeds_names_columns_and_carries_baselines(tmp_path):
    from fedlth.reporting.study import study

    sc = defaults() | {"algorithm": "subfedavg", "dataset": "adult", "name": "s", "seed": 0}
    seen = []
    rows = study(sc, [1.0, 0.2], tmp_path, _fake_federated_run, on_run=lambda d, s: seen.append((d, s)), seeds=[0, 1, 2])
    assert seen == [(1.0, 0), (1.0, 1), (1.0, 2), (0.2, 0), (0.2, 1), (0.2, 2)]
    assert (tmp_path / "density-0.2" / "seed-2" / "summary.json").is_file()
    assert rows[1]["accuracy"]["mean"] == pytest.approx(0.7) and rows[1]["accuracy"]["std"] == pytest.approx(0.1)
    md = (tmp_path / "study.md").read_text()
    for name in ("PGD ε=0.05 attack success (%)", "sex: demographic parity diff.", "std over clients (pp)",
                 "majority class (constant)", "each client's majority class", "ddof 1", "positive rate (%)"):
        assert name in md, name
    assert "accuracy_std |" not in md and "robustness.pgd" not in md
    md_rows = _md_rows(md.split("\n\n")[1])
    cols, csv_rows = _csv_rows((tmp_path / "study.csv").read_text())
    assert [r[0] for r in md_rows] == [r["predictor"] for r in csv_rows]
    assert len(csv_rows) == 5  # 2 densities + 3 baselines
    majority = csv_rows[2]
    assert float(majority["pooled_accuracy_mean"]) == 0.75 and float(majority["sex.equalized_odds_difference_mean"]) == 0.0
    assert (tmp_path / "study.png").stat().st_size > 5000


def test_single_seed_study_labels_the_spread_over_clients(tmp_path):
    from fedlth.reporting.study import study

    rows = study(defaults() | {"algorithm": "subfedavg", "dataset": "adult", "name": "s", "seed": 3}, [1.0], tmp_path, _fake_federated_run)
    assert rows[0]["accuracy_std_over_clients"] == 0.02 and "accuracy_std" not in rows[0]
    md = (tmp_path / "study.md").read_text()
    assert "One seed (3): no spread over seeds" in md and "population std" in md


def test_run_report_uses_human_names_and_the_majority_baseline():
    from fedlth.reporting.report import report_markdown

    sc = defaults() | {"name": "x", "partition": "iid", "local-epochs": 1, "attack": "pgd"}
    ev = {"across_clients": {k: 0.5 for k in ("mean", "variance", "variance_x1e4", "worst10", "best10", "worst", "jain_index")},
          "evaluators_mean": {"robustness.pgd.eps=0.05.robust_accuracy": 0.4321},
          "pooled_fairness": {"race": {"overall": {"accuracy": 0.76, "selection_rate": 0.01}, "demographic_parity_difference": 0.004,
                                       "equalized_odds_difference": 0.01, "equal_opportunity_difference": 0.01,
                                       "by_group": {"a": {"count": 5, "accuracy": 0.8, "selection_rate": 0.0, "tpr": None, "fpr": 0.0}}}}}
    summary = {"personalized_accuracy": {"mean": 0.8, "std": 0.1, "worst10": 0.6, "worst": 0.5}, "num_clients": 2, "clients_per_round": 2,
               "rounds": 3, "model": "mlp", "seed": 0, "algorithm": "fedavg", "dataset": "arrests", "global_accuracy": None,
               "density": {"mean": 1.0}, "bytes": {"upload": 1, "download": 1, "dense_fedavg_upload": 1, "dense_fedavg_download": 1},
               "rejected_updates": 0, "wall_seconds": 1.0, "evaluation": ev,
               "reference": {"majority_rate": 0.75, "logistic_regression": 0.85, "local_majority": 0.8}}
    md = report_markdown(sc, summary, {"accuracy_by_round.png": "skipped: 1 evaluation round(s)", "density_by_round.png": "written"})
    assert "| PGD ε=0.05 robust acc. (%) | 43.2 |" in md
    assert "| majority class (constant, pooled) | 75.0 % | all one class | 0.000 | 0.000 | 0.000 |" in md
    assert "| this run's tickets | 76.0 % | 1.0 % | 0.004 |" in md
    assert "![density](density_by_round.png)" in md and "accuracy_by_round.png)" not in md
    assert "`accuracy_by_round.png` skipped: 1 evaluation round(s)." in md
    assert "| group | n | accuracy (%) | positive rate (%) | TPR (%) | FPR (%) |\n|---|---|---|---|---|---|\n| a | 5 | 80.0 | 0.0 | n/a | 0.0 |" in md
    from fedlth.reporting.report import report_csvs

    files = report_csvs(summary)
    assert files["evaluators.csv"] == "metric,mean_over_clients\nrobustness.pgd.eps=0.05.robust_accuracy,0.4321\n"
    assert _csv_rows(files["fairness-race.csv"]) == (["group", "count", "accuracy", "selection_rate", "tpr", "fpr"],
                                                     [{"group": "a", "count": "5", "accuracy": "0.8", "selection_rate": "0.0", "tpr": "", "fpr": "0.0"}])
    assert "`fairness-race.csv`" in md and "`evaluators.csv`" in md


TICKET = """
dataset = "digits"
model = "mlp"
epochs = 2
batch-size = 64
lr = 0.05
imp-levels = 1
prune-rate = 0.5
rewind = "init"
controls = false
"""


def test_ticket_over_seeds_writes_per_seed_folders_and_an_aggregate(tmp_path):
    from fedlth.cli import main

    path = tmp_path / "s.toml"
    path.write_text(TICKET)
    out = tmp_path / "t"
    result = CliRunner().invoke(main, ["ticket", str(path), "--out", str(out), "--seeds", "2", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    per_seed = [json.loads((out / f"seed-{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert [s["seed"] for s in per_seed] == [0, 1]
    agg = json.loads((out / "summary.json").read_text())
    dense = agg["levels"][0]["ticket_accuracy"]
    assert dense["n"] == 2 and dense["mean"] == pytest.approx((per_seed[0]["dense_accuracy"] + per_seed[1]["dense_accuracy"]) / 2)
    md = (out / "report.md").read_text()
    assert "ticket acc. (%)" in md and "ddof 1" in md and "## Provenance" in md
    cols, rows = _csv_rows((out / "levels.csv").read_text())
    assert [r["level"] for r in rows] == [r[0] for r in _md_rows(md)] == ["0", "1"]
    assert (out / "accuracy_vs_density.png").stat().st_size > 5000 and (out / "seed-1" / "report.md").is_file()


def _inprocess_simulate(sc: dict, out: Path, *args: object, **kwargs: object) -> None:
    """fedlth run's engine swapped for the in-process grid (no Ray on shared cores)."""
    from clients.client_app import app as client_app
    from server.local_grid import LocalGrid
    from server.server_app import run_federation

    run_federation(LocalGrid(client_app, sc["num-clients"]), sc, out, client_state_dir=out / "client-state", prov=kwargs.get("prov"))


RUN = """
dataset = "digits"
model = "mlp"
partition = "iid"
num-clients = 3
clients-per-round = 3
rounds = 2
local-epochs = 1
eval-every = 1
algorithm = "fedavg"
"""


def test_run_over_seeds_writes_a_folder_per_seed_and_the_statistics(tmp_path, monkeypatch):
    import server.simulate
    from fedlth.cli import main

    monkeypatch.setattr(server.simulate, "simulate", _inprocess_simulate)
    path = tmp_path / "s.toml"
    path.write_text(RUN)
    bad = CliRunner().invoke(main, ["run", "--resume", str(tmp_path), "--seeds", "2"])
    assert bad.exit_code == 2 and "--resume continues one run" in bad.output
    out = tmp_path / "r"
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--seeds", "2", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    accs = [json.loads((out / f"seed-{s}" / "summary.json").read_text())["personalized_accuracy"]["mean"] for s in (0, 1)]
    assert [json.loads((out / f"seed-{s}" / "summary.json").read_text())["seed"] for s in (0, 1)] == [0, 1]
    row = json.loads((out / "seeds.json").read_text())["rows"][0]
    assert row["stats"]["personalized"]["mean"] == pytest.approx(sum(accs) / 2)
    assert row["stats"]["personalized"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2))
    md = (out / "seeds.md").read_text()
    assert md.startswith("# fedavg over seeds [0, 1]") and "ddof 1" in md and "## Provenance" in md
    assert [r["algorithm"] for r in _csv_rows((out / "seeds.csv").read_text())[1]] == ["fedavg"]
    assert (out / "seeds.png").stat().st_size > 5000
