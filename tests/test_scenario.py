"""Scenario validation: every bad key is one clear error; the CLI exits 2 and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fedlth import scenario as sc_mod
from fedlth.cli import main
from fedlth.scenario import KEYS, ScenarioError, load_scenario, parse_override, resolve, to_toml

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_validates(path):
    sc = load_scenario(path)
    assert set(sc) == set(KEYS)


def test_registries_match_the_names_the_validator_allows():
    from fedlth.data import DATASETS
    from fedlth.models import MODELS
    from fedlth.partition import PARTITIONERS
    from fedlth.partition_file import METHOD
    from fedlth.pruning import PRUNERS

    assert set(sc_mod.DATASET_NAMES) == set(DATASETS)
    assert set(sc_mod.MODEL_NAMES) == set(MODELS)
    assert set(sc_mod.PRUNER_NAMES) == set(PRUNERS)
    assert set(sc_mod.PARTITION_NAMES) == {*PARTITIONERS, METHOD}  # flwr-datasets' and "file"


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
