"""scenarios/scale-100k.toml runs with its 100,000 clients in seconds (tiny rounds, tiny
clients): the in-process grid sends only the sampled clients' messages (no identification
query), builds only their contexts, and evaluation asks eval-clients of them; knowing the
partitions gives the very same run as asking for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clients.client_app import app as client_app
from fedlth.cli import main
from fedlth.config.scenario import load_scenario, resolve
from server.directory import OffsetIds, known_partitions, sorted_keys
from server.local_grid import LocalGrid
from server.server_app import run_federation
from server.strategy import TicketStrategy

ROOT = Path(__file__).parent.parent
SCENARIO = ROOT / "scenarios" / "scale-100k.toml"
TINY = ("rounds=2", "clients-per-round=3", "client-examples=6", "eval-clients=4", "batch-size=4", "plots=false")  # no figures: none looked at


class CountingLocalGrid(LocalGrid):
    """A LocalGrid that counts the messages it is sent, by kind."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: dict[str, int] = {}

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            self.sent[m.metadata.message_type] = self.sent.get(m.metadata.message_type, 0) + 1
        return super().push_messages(messages)


def test_the_100k_scenario_costs_only_its_sampled_clients(tmp_path, mnist1d_data):
    sc = load_scenario(SCENARIO, TINY)
    assert sc["num-clients"] == 100_000
    grid = CountingLocalGrid(client_app, sc["num-clients"], known_partitions=True)
    out = tmp_path / "run"
    summary = run_federation(grid, sc, out, client_state_dir=out / "client-state")
    # 2 rounds x 3 trainers + 4 evaluated (the final round): no query, no message to anyone else
    assert grid.sent == {"train": 6, "evaluate": 4}
    assert len(grid.contexts) <= 10
    acc = summary["personalized_accuracy"]
    assert (summary["num_clients"], acc["evaluated_clients"], acc["missing_clients"]) == (100_000, 4, 0)
    assert acc["trained_clients"] + acc["never_trained_clients"] == acc["scored_clients"] == 4
    trained = {pid for r in (json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()) for pid in r["train"]}
    assert len(list((out / "client-state").glob("ticket-*.pt"))) == len(trained) <= 6  # tickets of trainers only
    assert summary["timing"]["seconds_before_first_round"] >= 0 and list(summary["timing"]["evaluation_seconds"]) == ["2"]
    report = (out / "report.md").read_text()
    assert "sampled (eval-clients) of 100,000" in report


def test_the_cli_runs_the_100k_scenario(tmp_path, mnist1d_data):
    args = ["run", str(SCENARIO), "--out", str(tmp_path / "cli"), "--quiet"]
    for o in TINY:
        args += ["--set", o]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "of a seeded sample of 4 out of 100,000" in result.output


def _small(**kw) -> dict:
    return resolve({"dataset": "digits", "model": "mlp", "partition": "sample", "client-examples": 10, "num-clients": 7,
                    "clients-per-round": 3, "rounds": 2, "local-epochs": 1, "eval-every": 1, "save-tickets": False,
                    "acc-threshold": 0.0, "prune-rate": 0.5} | kw)


def _outcome(out: Path) -> list[dict]:
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rounds:
        r.pop("seconds")
    return rounds


@pytest.mark.parametrize("eval_clients", [0, 3])
def test_knowing_the_partitions_gives_the_same_run_as_asking_for_them(tmp_path, eval_clients):
    sc = _small(**{"eval-clients": eval_clients})
    outs = {}
    for known in (False, True):
        grid = CountingLocalGrid(client_app, sc["num-clients"], known_partitions=known)
        out = tmp_path / str(known)
        run_federation(grid, sc, out, client_state_dir=out / "client-state")
        outs[known] = (_outcome(out), grid.sent)
    (asked, sent_asked), (known, sent_known) = outs[False], outs[True]
    assert asked == known
    assert sent_asked.pop("query") == 7 and "query" not in sent_known and sent_asked == sent_known
    assert all(r["eval_asked"] == (eval_clients or 7) for r in known)


def test_the_evaluation_sample_is_seeded_by_seed_and_round_and_bounded():
    theta = {"w": __import__("torch").zeros(2, 2)}
    strategy = TicketStrategy(_small(**{"eval-clients": 3}) | {"num-clients": 100_000}, theta)
    strategy.node_of, strategy.pid_of = known_partitions(1001, 100_000)
    first, again, other = strategy.eval_sample(1), strategy.eval_sample(1), strategy.eval_sample(2)
    assert first == again and first != other and len(first) == 3 and first == sorted(first)
    assert all(0 <= p < 100_000 for p in first)
    strategy.sc = strategy.sc | {"eval-clients": 0}
    assert strategy.eval_sample(1) == range(100_000)  # everyone, as a range: no list of 100,000


def test_offset_ids_are_a_mapping_that_stores_nothing_per_client():
    node_of, pid_of = known_partitions(1001, 5)
    assert isinstance(node_of, OffsetIds) and dict(node_of) == {0: 1001, 1: 1002, 2: 1003, 3: 1004, 4: 1005}
    assert dict(pid_of) == {v: k for k, v in dict(node_of).items()}
    assert 5 not in node_of and 1006 not in pid_of and pid_of.get(7) is None and len(node_of) == 5
    with pytest.raises(KeyError):
        node_of[-1]
    assert sorted_keys(node_of) == range(5) and sorted_keys({3: 1, 1: 2}) == [1, 3]


def test_the_report_names_the_trained_clients_mean_when_some_never_trained():
    from fedlth.reporting.report import _over, _trained_row

    acc = {"scored_clients": 200, "evaluated_clients": 200, "trained_clients": 4, "never_trained_clients": 196, "mean_trained": 0.17}
    assert _trained_row(acc) == ["| personalized accuracy of the 4 scored clients that ever trained (196 never did) | 17.0 % |"]
    assert _over(acc, 100_000) == "200 scored of 200 clients sampled (eval-clients) of 100,000; 4 trained, 196 never trained"
    assert _trained_row(acc | {"never_trained_clients": 0}) == [] and _trained_row(acc | {"mean_trained": None}) == []
