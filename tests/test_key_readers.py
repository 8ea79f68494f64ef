"""A key that the selected run does not read is refused at the command line, noted in a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedlth.cli import main
from fedlth.config import registry
from fedlth.config.key_readers import CENTRAL, check_run_keys, readers, readers_of, unread
from fedlth.config.options import declared_keys
from fedlth.config.scenario import KEYS, load_scenario

ROOT = Path(__file__).resolve().parent.parent
FEDERATED_SOURCES = [*ROOT.glob("server/*.py"), *ROOT.glob("clients/*.py"),
                     *(ROOT / "fedlth" / f for f in ("federation/algorithms.py", "federation/dispfl.py", "federation/fedpm.py",
                                                     "learning/training.py", "federation/shared_ticket.py", "federation/aggregate.py"))]
COMPONENT_SOURCES = [*FEDERATED_SOURCES, *(ROOT / "fedlth" / f for f in ("evaluation/evaluators.py", "tickets/ticket_run.py", "cli.py",
                                                                         "config/scenario.py", "data/client_data.py"))]


def _read_in(paths: list[Path], key: str) -> bool:
    pattern = re.compile(r"""sc\[["']""" + re.escape(key) + r"""["']\]""")
    return any(pattern.search(p.read_text()) for p in paths)  # a missing file fails loudly here


def _typed_read_in(paths: list[Path], key: str) -> bool:
    """`opts.field` (a typed options read) or a scenario lookup of `key`."""
    attr = re.compile(r"\." + re.escape(key.replace("-", "_")) + r"\b")
    return _read_in(paths, key) or any(attr.search(p.read_text()) for p in paths)


def test_readers_are_the_components_that_declare_the_key():
    assert set(readers()) <= set(KEYS)
    every = {c.label for c in registry.components()}
    assert {r for who in readers().values() for r in who} <= every and CENTRAL in every
    assert readers_of("ditto-lambda") == ("ditto",) and readers_of("fedpm-lr") == ("fedpm",)
    assert readers_of("qffl-q") == ("aggregation qffl",) and readers_of("attack-eps") == ("evaluator robustness",)
    assert readers_of("alpha") == ("partition dirichlet", "partition sample-dirichlet")
    assert set(readers_of("prune-rate")) == {CENTRAL, "lotteryfl", "lotteryfl-faithful", "subfedavg", "subfedavg-hybrid"}
    assert readers_of("prune-tolerance") == ("lotteryfl", "subfedavg", "subfedavg-hybrid")  # faithful: never refuses
    assert readers_of("lr") is None and readers_of("rounds") is None


def test_every_key_a_builtin_declares_is_read_by_code():
    """A declared key that no code reads would be accepted and ignored: each one is read, typed
    (`opts.field`) or by name."""
    for comp in registry.BUILTINS:
        cls = comp.options_class()
        for key in declared_keys(cls) if cls is not None else ():
            assert _typed_read_in(COMPONENT_SOURCES, key), (comp.name, key)


@pytest.mark.parametrize("source", ["fedlth/federation/algorithms.py", "server/strategy.py", "server/server_app.py",
                                    "clients/client_app.py"])
def test_the_federated_modules_read_component_keys_typed(source):
    """These modules read no component's key by name (sc["..."] or sc.get("...")): each reads
    its options class (options(sc, Cls), ctx.opts, the strategy's opts)."""
    text = (ROOT / source).read_text()
    by_name = set(re.findall(r"""sc(?:\[|\.get\()["']([a-z0-9-]+)["']""", text))
    assert not by_name & set(readers()), by_name & set(readers())


@pytest.mark.parametrize("source", ["server/strategy.py", "server/server_app.py", "clients/client_app.py"])
def test_the_server_and_client_apps_read_no_key_by_name(source):
    """The apps read core keys typed too (core(sc)); the scenario dict only travels whole."""
    text = (ROOT / source).read_text()
    assert not re.findall(r"""sc(?:\[|\.get\()["'][a-z0-9-]+["']""", text)


def test_central_only_keys_are_really_not_read_by_federated_code():
    """The declaration's claim, checked against the source: a key only `fedlth ticket` reads appears
    in no federated module's sc[...] lookups, and the central run reads it (typed or by name)."""
    central_only = [k for k, who in readers().items() if who == (CENTRAL,)]
    assert "epochs" in central_only and "pruner" in central_only
    for key in central_only:
        assert not _read_in(FEDERATED_SOURCES, key), key
        assert _typed_read_in([ROOT / "fedlth" / "tickets" / "ticket_run.py", ROOT / "fedlth" / "cli.py"], key), key


def test_unread_names_who_would_read():
    assert unread(["epochs", "lr", "upload-density"], {"subfedavg"}) == {
        "epochs": (CENTRAL,), "upload-density": ("personal-ticket",)}
    assert unread(["prune-rate"], {"fedavg", "subfedavg"}) == {}


def test_a_scenario_file_key_the_algorithm_ignores_is_a_note_not_an_error():
    sc = load_scenario(ROOT / "scenarios" / "w1-pathological-mnist1d.toml", ["algorithm=fedavg"])
    notes = check_run_keys(sc, ["algorithm=fedavg"], {"fedavg"})
    assert len(notes) == 1 and "prune-rate" in notes[0] and "acc-threshold" in notes[0]
    assert check_run_keys(load_scenario(ROOT / "scenarios" / "w1-pathological-mnist1d.toml"), [], {"subfedavg"}) == []


@pytest.mark.parametrize("command, setting, says", [
    (["run", "scenarios/quickstart.toml"], "epochs=10", "read by: fedlth ticket (federated runs train local-epochs per round)"),
    (["run", "scenarios/quickstart.toml"], "skip-first-layer=true", "read by: fedlth ticket"),
    (["run", "scenarios/quickstart.toml", "--set", "algorithm=fedavg"], "upload-density=0.2", "read by: personal-ticket"),
    (["ticket", "scenarios/central-ticket.toml"], "upload-density=0.2", "not read by fedlth ticket"),
    (["compare", "scenarios/quickstart.toml", "--algorithms", "fedavg,local"], "dispfl-density=0.2", "read by: dispfl"),
    (["run", "scenarios/quickstart.toml", "--set", "partition=iid"], "alpha=0.1",
     "key 'alpha' is not read by algorithm personal-ticket, partition iid; it is read by: partition dirichlet, partition sample-dirichlet"),
    (["run", "scenarios/quickstart.toml"], "trim-fraction=0.2", "read by: aggregation trimmed-mean"),
])
def test_a_set_key_nobody_reads_exits_2_before_any_work(tmp_path, command, setting, says):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [*command, "--set", setting, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert not out.exists()


def test_the_shipped_scenarios_set_no_key_their_algorithm_ignores():
    for path in sorted((ROOT / "scenarios").glob("*.toml")):
        sc = load_scenario(path)
        present = {CENTRAL} if path.stem.startswith("central") else {sc["algorithm"]}
        assert check_run_keys(sc, [], present) == [], path.name


def test_fedlth_keys_says_who_reads_a_key():
    result = CliRunner().invoke(main, ["keys", "upload-density"])
    assert result.exit_code == 0 and "Read only by: personal-ticket." in result.output


def test_a_compare_variant_may_select_the_reader_of_its_own_key(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "taken").write_text("")  # a non-empty --out: the command stops right after the key checks
    args = ["compare", "scenarios/quickstart.toml", "--out", str(out), "--algorithms"]
    ok = CliRunner().invoke(main, [*args, "fedavg:aggregation=qffl:qffl-q=2"])
    assert ok.exit_code == 2 and "qffl-q" not in ok.output and "not empty" in ok.output, ok.output
    bad = CliRunner().invoke(main, [*args, "fedavg:qffl-q=2"])
    assert bad.exit_code == 2 and "key 'qffl-q' is not read by algorithm fedavg, aggregation mean; it is read by: aggregation qffl" in bad.output, bad.output
