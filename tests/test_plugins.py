"""A new algorithm, pruner, aggregation rule with a parameter and evaluator with its own key,
each declared in one throw-away module, are found by name and run end to end."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

from fedlth.cli import main
from fedlth.config import plugins
from fedlth.config.scenario import KEYS, ScenarioError, resolve

THROWAWAY = '''
"""One file: everything a user adds to fedlth."""
from dataclasses import dataclass

import torch

from fedlth.federation.aggregate import masked_mean
from fedlth.federation.algorithms import Algorithm, fedavg_train, global_model
from fedlth.config.options import opt, options
from fedlth.config.plugins import Plugin
from fedlth.tickets.pruning import magnitude_layer

CALLS = {"train": 0, "prune": 0}


@dataclass(frozen=True)
class CountedOptions:
    counted_fedavg_step: int = opt(1, "Added to the count at each client round.", lo=1)


def counted_train(received, state, ctx):
    CALLS["train"] += ctx.opts(CountedOptions).counted_fedavg_step
    return fedavg_train(received, state, ctx)


def counted_prune(weights, mask, amount, *, generator=None, bn_of=None):
    CALLS["prune"] += 1
    return magnitude_layer(weights, mask, amount, generator=generator, bn_of=bn_of)


@dataclass(frozen=True)
class ShrunkMeanOptions:
    shrunk_mean_factor: float = opt(1.0, "Share of the way to the mean.", lo=0.0, hi=1.0)


def shrunk_mean(sc):
    factor = options(sc, ShrunkMeanOptions).shrunk_mean_factor

    def rule(previous, updates):  # move only `factor` of the way to the masked mean
        mean = masked_mean(previous, updates)
        return {k: previous[k] + factor * (mean[k] - previous[k]) for k in previous}

    return rule


@dataclass(frozen=True)
class WeightCountOptions:
    weight_count_scale: float = opt(1.0, "Multiplies the count.")


class WeightCount:
    name = "weight-count"

    def __init__(self, scale):
        self.scale = scale

    def check(self, info):
        pass

    def __call__(self, model, data):
        kept = sum(int((p != 0).sum()) for p in model.parameters())
        return {"weight-count": float(kept * self.scale)}


PLUGINS = [
    Plugin("algorithm", "counted-fedavg", Algorithm("counted-fedavg", counted_train, global_model, False, True, True, "FedAvg, counted."),
           CountedOptions),
    Plugin("pruner", "counted-magnitude", counted_prune),
    Plugin("aggregation", "shrunk-mean", shrunk_mean, ShrunkMeanOptions),
    Plugin("evaluator", "weight-count", lambda sc: WeightCount(options(sc, WeightCountOptions).weight_count_scale),
           WeightCountOptions),
]
'''

SCENARIO = """
dataset = "digits"
model = "mlp"
partition = "iid"
num-clients = 3
clients-per-round = 3
rounds = 2
local-epochs = 1
eval-every = 0
save-tickets = false
plots = false
algorithm = "counted-fedavg"
aggregation = "shrunk-mean"
shrunk-mean-factor = 0.0
counted-fedavg-step = 2
evaluators = "weight-count"
weight-count-scale = 2.0
"""


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    """The user's module, importable; every plug-in forgotten afterwards."""
    (tmp_path / "throwaway_fl.py").write_text(textwrap.dedent(THROWAWAY))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("throwaway_fl")
    yield module
    # off sys.path first (monkeypatch restores it only after this fixture), so that reloading the
    # entry points finds no trace of the throw-away package: later tests see fedlth's own keys
    sys.path[:] = [x for x in sys.path if not x.startswith(str(tmp_path))]
    importlib.invalidate_caches()
    sys.modules.pop("throwaway_fl", None)
    plugins._registered.clear()
    plugins._loaded = None
    plugins._publish()
    assert not plugins.plugins(), "a plug-in outlived its test"


def test_one_module_adds_an_algorithm_an_aggregation_with_a_key_and_an_evaluator_with_a_key(throwaway, tmp_path):
    for p in throwaway.PLUGINS:
        plugins.register(p)
    assert "shrunk-mean-factor" in KEYS and KEYS["shrunk-mean-factor"].group == "plug-in shrunk-mean"
    scenario, out = tmp_path / "s.toml", tmp_path / "run"
    scenario.write_text(SCENARIO)
    result = CliRunner().invoke(main, ["run", str(scenario), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert throwaway.CALLS["train"] == 12  # 3 clients × 2 rounds, through the plug-in's function, each counting its own key's 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "counted-fedavg"
    # the evaluator read its own key: every mlp weight and bias is nonzero, counted twice
    theta = torch.load(out / "server_state.pt", weights_only=False)["global"]
    params = sum(v.numel() for k, v in theta.items())
    assert summary["evaluation"]["evaluators_mean"]["weight-count"] == pytest.approx(2.0 * params, rel=0.01)
    # the aggregation read its own key: factor 0 never moves the global model off θ0
    from fedlth.config.scenario import load_scenario
    from fedlth.data.client_data import dataset_info
    from fedlth.federation.algorithms import initial_weights

    sc = load_scenario(scenario)
    theta0 = initial_weights(sc, *dataset_info(sc))
    assert all(torch.equal(theta[k], theta0[k]) for k in theta0)


def test_a_plugin_pruner_runs_a_central_ticket(throwaway, tmp_path):
    for p in throwaway.PLUGINS:
        plugins.register(p)
    out = tmp_path / "ticket"
    args = ["ticket", "scenarios/central-ticket.toml", "--out", str(out), "--quiet", "--set",
            "pruner=counted-magnitude dataset=digits model=mlp imp-levels=1 epochs=1 controls=false rewind=init"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert throwaway.CALLS["prune"] >= 1


def test_a_plugin_key_is_refused_without_its_component_and_unknown_names_list_plugins(throwaway, tmp_path):
    for p in throwaway.PLUGINS:
        plugins.register(p)
    result = CliRunner().invoke(main, ["run", "scenarios/quickstart.toml", "--set", "weight-count-scale=3", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "read by: evaluator weight-count" in result.output
    with pytest.raises(ScenarioError, match="counted-fedavg"):
        resolve({"algorithm": "nope"})
    plugins.unregister("evaluator", "weight-count")
    with pytest.raises(ScenarioError, match="unknown key 'weight-count-scale'"):
        resolve({"weight-count-scale": 2.0})


def test_an_installed_package_is_found_through_the_entry_point_group(throwaway, tmp_path, monkeypatch):
    """What `pip install` of the user's package leaves: a dist-info naming the module."""
    site = tmp_path / "site"
    info = site / "throwaway_fl-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-fl\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{plugins.GROUP}]\nthrowaway = throwaway_fl:PLUGINS\n")
    monkeypatch.syspath_prepend(str(site))
    plugins._loaded = None
    plugins._publish()
    assert {"counted-fedavg", "shrunk-mean", "counted-magnitude", "weight-count"} <= {n for _, n in plugins.plugins()}
    assert "counted-fedavg" in KEYS["algorithm"].choices and "weight-count-scale" in KEYS


def test_a_plugin_may_not_take_a_fedlth_key():
    from dataclasses import dataclass

    from fedlth.config.options import opt

    @dataclass(frozen=True)
    class Bad:
        lr: float = opt(0.1, "Clashes with fedlth's lr.")

    with pytest.raises(ValueError, match="already fedlth's"):
        plugins.register(plugins.Plugin("evaluator", "bad", object, Bad))
    assert ("evaluator", "bad") not in plugins.plugins()


def test_plugin_options_must_be_declared_with_opt():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Loose:
        bad_scale: float = 1.0

    with pytest.raises(ValueError, match=r"Loose\.bad_scale: declare it with fedlth\.config\.options\.opt"):
        plugins.register(plugins.Plugin("evaluator", "bad", object, Loose))
    assert ("evaluator", "bad") not in plugins.plugins()


def test_a_plugin_key_is_validated_like_a_builtin(throwaway):
    for p in throwaway.PLUGINS:
        plugins.register(p)
    with pytest.raises(ScenarioError, match=r"key 'shrunk-mean-factor' is 1\.5; allowed: a number with 0\.0 <= x <= 1\.0"):
        resolve({"aggregation": "shrunk-mean", "shrunk-mean-factor": 1.5})
    with pytest.raises(ScenarioError, match="key 'shrunk-mean-factor' is nan; allowed: a finite number"):
        resolve({"aggregation": "shrunk-mean", "shrunk-mean-factor": float("nan")})
    from fedlth.config.key_readers import readers_of

    assert readers_of("counted-fedavg-step") == ("counted-fedavg",)
    assert readers_of("shrunk-mean-factor") == ("aggregation shrunk-mean",)


def test_two_plugins_may_share_one_options_dataclass(throwaway):
    from dataclasses import dataclass

    from fedlth.config.key_readers import readers_of
    from fedlth.config.options import opt

    @dataclass(frozen=True)
    class Shared:
        shared_scale: float = opt(1.0, "Read by both evaluators.", lo=0.0)

    plugins.register(plugins.Plugin("evaluator", "scale-a", object, Shared))
    plugins.register(plugins.Plugin("evaluator", "scale-b", object, Shared))
    assert KEYS["shared-scale"].group == "plug-in scale-a, scale-b" and KEYS["shared-scale"].default == 1.0
    assert readers_of("shared-scale") == ("evaluator scale-a", "evaluator scale-b")
    assert resolve({"evaluators": "scale-b", "shared-scale": 2.0})["shared-scale"] == 2.0

    @dataclass(frozen=True)
    class Other:
        shared_scale: float = opt(3.0, "Another default.", lo=0.0)

    with pytest.raises(ValueError, match=r"key 'shared-scale' is declared twice, differently \(by evaluator scale-a, evaluator scale-b and evaluator scale-c\)"):
        plugins.register(plugins.Plugin("evaluator", "scale-c", object, Other))
    assert ("evaluator", "scale-c") not in plugins.plugins() and KEYS["shared-scale"].default == 1.0  # refused, not kept


def test_after_the_plugin_tests_the_key_table_is_fedlths_own():
    """The fixture's clean-up left nothing behind (other test files compare KEYS with pyproject)."""
    from fedlth.config import scenario

    assert KEYS == scenario.BUILTIN_KEYS and not plugins.plugins()
