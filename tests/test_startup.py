"""Start-up: the CLI answers before it loads the heavy stack, and a run in-process never loads Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
HEAVY = ("torch", "flwr", "ray", "matplotlib", "datasets", "flwr_datasets", "sklearn", "pandas", "torchattacks")


def _loaded_after(code: str) -> set[str]:
    """The HEAVY packages a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


def test_cli_and_keys_load_none_of_the_heavy_stack():
    """`fedlth --help`, `fedlth keys` and bad input (exit 2) answer without torch or Flower."""
    code = (
        "from click.testing import CliRunner\nfrom fedlth.cli import main\n"
        "assert CliRunner().invoke(main, ['keys', 'round*']).exit_code == 0\n"
        "assert CliRunner().invoke(main, ['run', 'scenarios/quickstart.toml', '--set', 'roundz=1']).exit_code == 2"
    )
    assert _loaded_after(code) == set()


def test_an_in_process_run_loads_no_ray_and_plots_only_at_the_end(tmp_path):
    """backend = inprocess (the default) runs without importing Ray; with the partitions cached
    (making them imports flwr-datasets, which loads matplotlib), matplotlib comes only after the
    last round, to draw the plots."""
    scenario = tmp_path / "s.toml"
    scenario.write_text('dataset = "digits"\nmodel = "mlp"\nnum-clients = 2\nclients-per-round = 2\nrounds = 1\n')
    out = tmp_path / "out"
    from fedlth.config.scenario import load_scenario
    from fedlth.data.client_data import check_data_settings

    check_data_settings(load_scenario(scenario))  # fills the cache the run reads (FEDLTH_CACHE: the session's, see conftest)
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom fedlth.cli import main\nimport server.server_app as sa\n"
        "seen = []\nplot = sa.plot_federated\n"
        "sa.plot_federated = lambda *a, **k: (seen.append('matplotlib' in sys.modules), plot(*a, **k))[1]\n"
        f"r = CliRunner().invoke(main, ['run', {str(scenario)!r}, '--out', {str(out)!r}, '--quiet'], catch_exceptions=False)\n"
        "assert r.exit_code == 0, r.output\nassert seen == [False], seen"
    )
    loaded = _loaded_after(code)
    assert "ray" not in loaded and {"torch", "flwr", "matplotlib"} <= loaded
    assert (out / "summary.json").is_file()


def test_an_evaluation_rounds_training_line_comes_before_its_evaluation(tmp_path):
    """metrics.jsonl gets a round's training line (evaluation_pending) as soon as the round is
    aggregated; the evaluated line replaces it, so the finished file has one line per round."""
    from clients.client_app import app as client_app
    from fedlth.config.scenario import resolve
    from server import server_app
    from server.local_grid import LocalGrid

    sc = resolve({"dataset": "digits", "model": "mlp", "num-clients": 2, "clients-per-round": 2, "rounds": 2,
                  "local-epochs": 1, "algorithm": "fedavg", "eval-every": 0, "save-tickets": False})
    out = tmp_path / "run"
    seen: list[list[dict]] = []
    evaluate = server_app._evaluate_round

    def spy(*args, **kwargs):  # what a reader of metrics.jsonl sees while round 2 is evaluated
        seen.append([json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()])
        return evaluate(*args, **kwargs)

    server_app._evaluate_round = spy
    try:
        server_app.run_federation(LocalGrid(client_app, 2), sc, out, client_state_dir=out / "cs")
    finally:
        server_app._evaluate_round = evaluate
    [during] = seen  # only the last round evaluates (eval-every = 0)
    assert [r["round"] for r in during] == [1, 2] and during[1][server_app.PENDING] is True
    assert during[1]["evaluate"] is None and set(during[1]["train"]) == {"0", "1"}
    assert server_app.PENDING not in during[0]
    final = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in final] == [1, 2] and not any(server_app.PENDING in r for r in final)
    assert final[1]["train"] == during[1]["train"] and set(final[1]["evaluate"]) == {"0", "1"}
    assert final[1]["seconds"] >= during[1]["seconds"]


def test_plots_false_draws_no_figure_and_report_md_says_so(tmp_path):
    from clients.client_app import app as client_app
    from fedlth.config.scenario import resolve
    from server.local_grid import LocalGrid
    from server.server_app import run_federation

    sc = resolve({"dataset": "digits", "model": "mlp", "num-clients": 2, "clients-per-round": 2, "rounds": 2,
                  "local-epochs": 1, "algorithm": "fedavg", "eval-every": 1, "plots": False})
    out = tmp_path / "run"
    run_federation(LocalGrid(client_app, 2), sc, out, client_state_dir=out / "cs")
    assert not list(out.glob("*.png")) and (out / "summary.json").is_file()
    assert "`accuracy_by_round.png` skipped: plots = false." in (out / "report.md").read_text()
