"""The one component table: every built-in loads what its module registers, names are unique."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedlth.config import registry


def test_every_builtin_loads_the_object_its_module_holds():
    from fedlth.data.datasets import DATASETS
    from fedlth.evaluation.evaluators import RobustnessEvaluator
    from fedlth.federation.aggregate import masked_mean, masked_trimmed_mean
    from fedlth.federation.algorithms import ALGORITHMS
    from fedlth.learning.models import MODELS
    from fedlth.tickets.pruning import PRUNERS
    from fedlth.tickets.ticket_run import TicketRun

    by_kind = {"algorithm": ALGORITHMS, "dataset": DATASETS, "model": MODELS, "pruner": PRUNERS}
    for comp in registry.BUILTINS:
        obj = comp.load()
        if comp.kind in by_kind:
            assert obj is by_kind[comp.kind][comp.name], comp
        assert obj is not None
    assert registry.load("aggregation", "mean") is masked_mean
    assert registry.load("aggregation", "trimmed-mean") is masked_trimmed_mean
    assert registry.load("evaluator", "robustness") == RobustnessEvaluator.from_options
    assert registry.load("command", registry.CENTRAL) is TicketRun
    for kind, table in by_kind.items():
        assert set(registry.builtin_names(kind)) == set(table)


def test_names_are_unique_per_kind_and_unknown_ones_list_the_valid():
    keys = [(c.kind, c.name) for c in registry.BUILTINS]
    assert len(keys) == len(set(keys)) and {c.kind for c in registry.BUILTINS} == set(registry.KINDS)
    with pytest.raises(ValueError, match="unknown pruner 'nope'; valid: magnitude-layer, magnitude-global"):
        registry.get("pruner", "nope")
    with pytest.raises(ValueError, match="unknown component kind 'widget'"):
        registry.builtin_names("widget")
    assert registry.option_keys("evaluator", "fairness") == ("sensitive",)
    assert registry.option_keys("algorithm", "fedavg") == () and registry.option_keys("evaluator", "nope") == ()


def test_shared_gate_options_are_one_dataclass_reused():
    from fedlth.config.component_options import LotteryFLOptions, PruneGateOptions, SubFedAvgOptions

    gate = {"acc-threshold", "prune-rate"}
    for name in ("lotteryfl", "lotteryfl-faithful", "subfedavg", "subfedavg-hybrid"):
        cls = registry.get("algorithm", name).options_class()
        assert issubclass(cls, PruneGateOptions) and gate <= set(registry.option_keys("algorithm", name))
    assert issubclass(LotteryFLOptions, PruneGateOptions) and issubclass(SubFedAvgOptions, PruneGateOptions)


def test_listing_components_and_their_keys_imports_no_torch():
    code = ("import sys\nfrom fedlth.config import registry\nimport fedlth.config.scenario\n"
            "[c.options_class() for c in registry.components()]\nprint('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pruner_choices_of_the_ticket_keys_are_registry_subsets():
    from fedlth.config.component_options import SERVER_PRUNERS, TICKET_PRUNERS
    from fedlth.config.scenario import KEYS
    from fedlth.federation.shared_ticket import SERVER_PRUNERS as server_side

    assert KEYS["server-pruner"].choices == SERVER_PRUNERS == ("magnitude-global", "magnitude-layer", "random")
    assert KEYS["ticket-pruner"].choices == TICKET_PRUNERS == ("magnitude-global", "magnitude-layer")
    assert server_side is SERVER_PRUNERS and set(SERVER_PRUNERS) <= set(registry.builtin_names("pruner"))
    assert registry.builtin_subset("pruner", "random") == ("random",)
    with pytest.raises(ValueError, match="magnitude-local: not a built-in pruner; built-ins: magnitude-layer, "):
        registry.builtin_subset("pruner", "random", "magnitude-local")


def test_attack_names_have_one_source_and_a_display_name_each():
    from fedlth.config.component_options import ATTACK_NAMES
    from fedlth.evaluation.robustness import ATTACKS
    from fedlth.reporting.tables import ATTACK_NAMES as display

    assert ATTACKS is ATTACK_NAMES  # every name is built by fedlth.evaluation.robustness (tests/test_robustness.py runs each)
    assert set(display) == set(ATTACK_NAMES)
