"""Scenario validation: every bad key is one clear error; the CLI exits 2 and writes nothing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedlth.cli import main
from fedlth.config import scenario as sc_mod
from fedlth.config.scenario import (
    KEYS,
    ScenarioError,
    load_scenario,
    parse_override,
    resolve,
    to_toml,
)

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_validates(path):
    sc = load_scenario(path)
    assert set(sc) == set(KEYS)


def test_registries_match_the_names_the_validator_allows():
    from fedlth.data.datasets import DATASETS
    from fedlth.data.partition import PARTITIONERS
    from fedlth.data.partition_file import METHOD
    from fedlth.data.sampled_partition import SAMPLED
    from fedlth.learning.models import MODELS
    from fedlth.tickets.pruning import PRUNERS

    assert set(sc_mod.DATASET_NAMES) == set(DATASETS)
    assert set(sc_mod.MODEL_NAMES) == set(MODELS)
    assert set(sc_mod.PRUNER_NAMES) == set(PRUNERS)
    assert set(sc_mod.PARTITION_NAMES) == {*PARTITIONERS, METHOD, *SAMPLED}  # flwr-datasets', "file", drawn per client


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"epochz": 3}, "unknown key 'epochz'"),
        ({"epochs": "3"}, "key 'epochs' must be of type int"),
        ({"epochs": 0}, "key 'epochs' is 0; allowed: an integer with 1 <= x"),
        ({"prune-rate": 1.0}, "key 'prune-rate' is 1.0; allowed"),
        ({"controls": 1}, "key 'controls' must be of type bool"),
        ({"model": "resnet"}, "allowed: mlp, cnn1d"),
        ({"lr": True}, "key 'lr' must be of type float"),
        # NaN passes every range comparison, inf is no number a run can use
        ({"lr": float("nan")}, "key 'lr' is nan; allowed: a finite number"),
        ({"target-density": float("nan")}, "key 'target-density' is nan; allowed: a finite number"),
        ({"alpha": float("inf")}, "key 'alpha' is inf; allowed: a finite number"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(values, needle):
    with pytest.raises(ScenarioError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        resolve(values)


def test_overrides_parse_by_type_and_win():
    sc = resolve({"epochs": 3}, ["epochs=7", "lr=0.5", "controls=false", "model=mlp"])
    assert (sc["epochs"], sc["lr"], sc["controls"], sc["model"]) == (7, 0.5, False, "mlp")
    assert parse_override("lr=1") == ("lr", 1.0)
    with pytest.raises(ScenarioError, match="needs a int"):
        parse_override("epochs=many")
    with pytest.raises(ScenarioError, match="expected key=value"):
        parse_override("epochs")


def test_int_is_accepted_for_float_and_roundtrips(tmp_path):
    sc = resolve({"lr": 1, "name": 'a "quoted" name'})
    assert sc["lr"] == 1.0 and isinstance(sc["lr"], float)
    path = tmp_path / "s.toml"
    path.write_text(to_toml(sc))
    assert load_scenario(path) == sc


def test_tables_and_broken_toml_are_rejected(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text("[tool]\nx = 1\n")
    with pytest.raises(ScenarioError, match="tables are not allowed"):
        load_scenario(p)
    p.write_text("epochs = \n")
    with pytest.raises(ScenarioError, match="not valid TOML"):
        load_scenario(p)
    with pytest.raises(ScenarioError, match="does not exist"):
        load_scenario(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("content", "args", "needle"),
    [
        ("epochs = 0\n", [], "key 'epochs'"),
        ("colour = 'red'\n", [], "unknown key 'colour'"),
        ("", ["--set", "prune-rate=2"], "key 'prune-rate'"),
        ("", ["--set", "rewind=sideways"], "allowed: init, iteration, lr"),
        ("rewind-iteration = 100000\nepochs = 1\ndataset = 'digits'\nmodel = 'mlp'\n", [], "rewind-iteration"),
    ],
)
def test_cli_bad_scenario_exits_2_and_writes_nothing(tmp_path, content, args, needle):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["ticket", str(path), "--out", str(out), "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert result.output.count("fedlth: error:") == 1
    assert not out.exists()


def test_cli_refuses_a_non_empty_out_dir_and_leaves_it_alone(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("dataset = 'digits'\nmodel = 'mlp'\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("precious")
    result = CliRunner().invoke(main, ["ticket", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 2
    assert "not empty" in result.output
    assert (out / "summary.json").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda: resolve({}, ["round=5"]), "--set: unknown key 'round'; did you mean 'rounds'?"),
        (lambda: resolve({"num_clients": 4}), "unknown key 'num_clients'; did you mean 'num-clients'?"),
        (lambda: resolve({"colour": "red"}), "unknown key 'colour'; `fedlth keys` lists every key"),
    ],
)
def test_unknown_keys_suggest_the_closest_name_instead_of_listing_all(call, needle):
    with pytest.raises(ScenarioError) as info:
        call()
    assert str(info.value).endswith(needle)
    assert "rewind-iteration" not in str(info.value)  # no dump of every name


def test_cli_unknown_key_in_a_file_or_set_suggests_one(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("epochz = 3\n")
    result = CliRunner().invoke(main, ["run", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown key 'epochz'; did you mean 'epochs'?" in result.output
    result = CliRunner().invoke(main, ["run", "scenarios/quickstart.toml", "--set", "round=5", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "fedlth: error: --set: unknown key 'round'; did you mean 'rounds'?" in result.output


def test_every_key_has_a_group_and_groups_are_contiguous():
    groups = [spec.group for spec in KEYS.values()]
    assert all(groups)
    order = list(dict.fromkeys(groups))
    assert groups == sorted(groups, key=order.index)  # each concern is one block in KEYS
    assert {"data", "federation", "compute"} <= set(order)


def test_fedlth_keys_lists_every_key_grouped_and_is_a_valid_scenario():
    result = CliRunner().invoke(main, ["keys"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.output) == sc_mod.defaults()  # every key, at its default
    heads = [line for line in result.output.splitlines() if line.startswith("# --- ")]
    assert heads == [f"# --- {g} ---" for g in dict.fromkeys(s.group for s in KEYS.values())]
    assert 'partition = "iid"  # str; one of iid, dirichlet, pathological, shard, natural-id' in result.output
    assert "lr = 0.05  # float; a number with 0.0 < x\n    # Learning rate." in result.output


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("attack-*", {"attack-eps", "attack-steps", "attack-samples"}),
        ("ROUND", {"rounds", "clients-per-round", "round-timeout"}),
        ("compute", {"device", "client-cpus", "client-gpus", "backend", "ray-address"}),
    ],
)
def test_fedlth_keys_pattern_filters_by_name_glob_or_group(pattern, expected):
    result = CliRunner().invoke(main, ["keys", pattern])
    assert result.exit_code == 0, result.output
    assert set(tomllib.loads(result.output)) == expected


def test_fedlth_keys_without_a_match_exits_2_with_a_suggestion():
    result = CliRunner().invoke(main, ["keys", "roundz"])
    assert result.exit_code == 2
    assert "no scenario key matches 'roundz'; did you mean 'rounds'?" in result.output


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (['algorithm="fedavg"'], {"algorithm": "fedavg"}),
        (["algorithm='local'"], {"algorithm": "local"}),
        (["rounds=3 lr=0.1"], {"rounds": 3, "lr": 0.1}),
        (['name="my run" seed=4 controls=false'], {"name": "my run", "seed": 4, "controls": False}),
        (["name=my run"], {"name": "my run"}),  # not all pairs: one override, as before
        (['attack-eps="0.1,0.2"', "attack-eps=0.3"], {"attack-eps": "0.3"}),
        (['rounds="5"'], {"rounds": 5}),
    ],
)
def test_set_takes_flowers_forms_quoted_values_and_several_pairs(overrides, expected):
    sc = resolve({}, overrides)
    assert {k: sc[k] for k in expected} == expected


def test_several_pairs_report_the_bad_one():
    with pytest.raises(ScenarioError, match="unknown key 'round'; did you mean 'rounds'"):
        resolve({}, ["lr=0.1 round=3"])
    with pytest.raises(ScenarioError, match="key 'rounds' needs a int"):
        resolve({}, ['lr=0.1 rounds="many"'])


def test_run_accepts_flowers_run_config_form(tmp_path, monkeypatch):
    """`fedlth run --run-config "k=v k2=v2"` overrides like --set (the simulation is stubbed)."""
    import server.simulate

    seen = {}

    def fake_simulate(sc, out, *args, **kwargs):
        seen.update(sc)
        raise SystemExit(0)

    monkeypatch.setattr(server.simulate, "simulate", fake_simulate)
    path = tmp_path / "s.toml"
    path.write_text("dataset = 'digits'\nmodel = 'mlp'\nnum-clients = 2\nclients-per-round = 2\n")
    args = ["run", str(path), "--out", str(tmp_path / "o"), "--quiet",
            "--run-config", 'algorithm="fedavg" rounds=3', "--set", "lr=0.1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (seen["algorithm"], seen["rounds"], seen["lr"]) == ("fedavg", 3, 0.1)
    result = CliRunner().invoke(main, ["run", "--resume", str(tmp_path), "--run-config", "rounds=3"])
    assert result.exit_code == 2 and "drop SCENARIO, --set, --run-config and --out" in result.output


def test_nan_on_the_command_line_exits_2_before_any_work(tmp_path):
    """`--set lr=nan` (TOML's nan) is refused at once, exit 2, nothing written."""
    from click.testing import CliRunner

    from fedlth.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "scenarios/quickstart.toml", "--set", "lr=nan", "--out", str(out)])
    assert result.exit_code == 2 and "key 'lr' is nan; allowed: a finite number" in result.output
    assert not out.exists()


def test_a_model_that_does_not_fit_the_data_exits_2_before_any_run(tmp_path):
    """lenet5 needs images; on MNIST-1D it is refused by the data check, exit 2, nothing written."""
    from click.testing import CliRunner

    from fedlth.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "scenarios/quickstart.toml", "--set", "model=lenet5", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "key 'model' is 'lenet5' on mnist1d: lenet5 expects input shape" in result.output
    assert not out.exists()


@pytest.mark.parametrize("evaluators, says", [
    ("robustnes", "robustnes"), ("fairness", "binary task"),
])
def test_evaluator_settings_are_refused_before_any_data_is_loaded(tmp_path, monkeypatch, evaluators, says):
    """An unknown evaluator, or fairness on a dataset with no sensitive features, fails from the
    dataset's declared metadata: exit 2, no data loaded, nothing written."""
    from click.testing import CliRunner

    from fedlth.cli import main
    from fedlth.data import client_data
    from fedlth.data import datasets as data

    def no_loading(*args, **kwargs):
        raise AssertionError("data was loaded before the evaluator check")

    # client_data is imported above, so it keeps the real loader bound once this test ends
    monkeypatch.setattr(data, "load_dataset", no_loading)
    monkeypatch.setattr(client_data, "load_dataset", no_loading)
    monkeypatch.setitem(data.DATASETS, "mnist1d", no_loading)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", "scenarios/quickstart.toml", "--set", f"evaluators={evaluators}", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "evaluators:" in result.output and says in result.output
    assert not out.exists()


ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_and_readme_hold_what_the_key_table_generates():
    """[tool.flwr.app.config] and the README's key tables are `fedlth keys --format toml|markdown`
    (regenerate them with those commands after changing an options dataclass)."""
    from fedlth.config.key_docs import (
        MARKDOWN_BEGIN,
        MARKDOWN_END,
        config_toml,
        markdown_tables,
        section,
    )

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert section(pyproject, "[tool.flwr.app.config]", "") == config_toml(sc_mod.BUILTIN_KEYS)
    assert tomllib.loads(pyproject)["tool"]["flwr"]["app"]["config"] == sc_mod.defaults()
    readme = (ROOT / "README.md").read_text()
    assert section(readme, MARKDOWN_BEGIN, MARKDOWN_END) == markdown_tables(sc_mod.BUILTIN_KEYS)


def test_fedlth_keys_prints_the_run_config_block_and_the_readme_tables():
    toml = CliRunner().invoke(main, ["keys", "--format", "toml"])
    assert toml.exit_code == 0, toml.output
    assert tomllib.loads(toml.output)["tool"]["flwr"]["app"]["config"] == sc_mod.defaults()
    md = CliRunner().invoke(main, ["keys", "qffl-*", "--format", "markdown"])
    assert md.exit_code == 0, md.output
    assert "| `qffl-q` | float | `1.0` | a number with 0.0 <= x <= 100.0 | aggregation qffl |" in md.output
    assert "| `rounds` |" not in md.output


def test_keys_come_from_typed_options_declared_once():
    """KEYS is the core's and the components' options; each name key's choices are the registry's."""
    from fedlth.config import registry
    from fedlth.config.core_options import CORE
    from fedlth.config.options import declared_keys

    core = {k for cls in CORE for k in declared_keys(cls)}
    component = {k for c in registry.BUILTINS if c.options for k in declared_keys(c.options_class())}
    assert core | component == set(KEYS) and not core & component
    assert KEYS["algorithm"].choices == registry.builtin_names("algorithm") == sc_mod.ALGORITHM_NAMES
    assert KEYS["aggregation"].choices == ("mean", "median", "trimmed-mean", "qffl")
    assert KEYS["target-density"].group == "federation" and KEYS["prune-rate"].group == "lottery tickets"


def test_an_option_declares_type_range_and_help():
    from dataclasses import dataclass

    from fedlth.config.options import declared_keys, opt, options

    @dataclass(frozen=True)
    class Demo:
        GROUP = "demo"
        demo_rate: float = opt(0.5, "A rate.", lo=0.0, hi=1.0, hi_open=True)
        demo_mode: str = opt("a", "A mode.", choices=("a", "b"), group="other")

    keys = declared_keys(Demo)
    assert list(keys) == ["demo-rate", "demo-mode"]
    rate = keys["demo-rate"]
    assert (rate.type, rate.default, rate.help, rate.group) == (float, 0.5, "A rate.", "demo")
    assert rate.allowed == "a number with 0.0 <= x < 1.0" and rate.check(0.0) and not rate.check(1.0)
    assert keys["demo-mode"].choices == ("a", "b") and keys["demo-mode"].group == "other"
    assert options({"demo-rate": 0.25, "demo-mode": "b", "other": 1}, Demo) == Demo(0.25, "b")


def test_the_core_is_typed_too():
    from fedlth.config.core_options import core

    c = core(resolve({"local-epochs": 3, "lr": 0.1}))
    assert (c.federation.local_epochs, c.training.lr, c.general.seed, c.outputs.evaluators) == (3, 0.1, 0, "")
    assert core(resolve({})) is not c and core(resolve({})).federation.local_epochs == 2
