"""Pluggable evaluators: named, configurable judges of a ticket that return flat metrics.

Built-ins are registered in fedlth.config.registry with their options (fedlth.config.component_options);
other packages add theirs as plug-ins (fedlth.config.plugins), or through the older entry-point group
`fedlth.evaluation.evaluators` (the entry point loads a factory `options -> Evaluator`, without keys).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol

import numpy as np
from torch import Tensor, nn

from fedlth.config.component_options import FairnessOptions, RobustnessOptions
from fedlth.config.options import options, with_defaults
from fedlth.evaluation.fairness import flatten_counts, group_counts
from fedlth.evaluation.robustness import ATTACKS, robust_accuracy
from fedlth.learning.training import predict

ENTRY_POINT_GROUP = "fedlth.evaluators"
COUNTS_PREFIX = "counts"  # metrics under this prefix are summed over clients, not averaged


@dataclass(frozen=True)
class EvalData:
    """What an evaluator sees of one client: its test split and what the dataset declares."""

    x: Tensor
    y: Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    input_range: tuple[float, float]
    sensitive: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class DataInfo:
    """What is known of a dataset before training, for checking evaluators early."""

    num_classes: int
    sensitive: tuple[str, ...]


class Evaluator(Protocol):
    """A named judge of a ticket (the model holds the ticket: pruned weights are 0)."""

    name: str

    def check(self, info: DataInfo) -> None:
        """Raise ValueError, before any training, if this evaluator can't run on the data."""

    def __call__(self, model: nn.Module, data: EvalData) -> dict[str, float]:
        """Flat metrics; keys under `counts.` are summed across clients by the server."""


Factory = Callable[[Mapping[str, Any]], Evaluator]


def parse_floats(text: str, key: str) -> tuple[float, ...]:
    """A comma-separated list of non-negative floats, e.g. an ε sweep."""
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"key {key!r} is {text!r}; allowed: comma-separated numbers, e.g. 0.1,0.3") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"key {key!r} is {text!r}; allowed: one or more finite numbers >= 0")
    return values


@dataclass(frozen=True)
class RobustnessEvaluator:
    """Clean and robust accuracy under each torchattacks attack (`attack`: one name or a
    comma-separated list) at each ε (in input units)."""

    attacks: tuple[str, ...]
    eps: tuple[float, ...]
    steps: int
    samples: int
    seed: int
    name: str = "robustness"

    @classmethod
    def from_options(cls, opts: Mapping[str, Any]) -> RobustnessEvaluator:
        o = options(with_defaults(opts, RobustnessOptions), RobustnessOptions)
        attacks = tuple(dict.fromkeys(a.strip() for a in o.attack.split(",") if a.strip()))
        if not attacks or any(a not in ATTACKS for a in attacks):
            raise ValueError(f"key 'attack' is {o.attack!r}; allowed: {', '.join(ATTACKS)} (one, or several comma-separated)")
        return cls(
            attacks=attacks, eps=parse_floats(str(o.attack_eps), "attack-eps"), steps=int(o.attack_steps),
            samples=int(o.attack_samples), seed=int(opts.get("seed", 0)),
        )

    def check(self, info: DataInfo) -> None:
        if info.num_classes < 2:
            raise ValueError("the robustness evaluator needs at least 2 classes")

    def __call__(self, model: nn.Module, data: EvalData) -> dict[str, float]:
        # A fixed, seeded subset bounds the cost of strong attacks on big clients.
        x, y = data.x[: self.samples], data.y[: self.samples]
        out: dict[str, float] = {}
        for attack in self.attacks:
            for eps in self.eps:
                res = robust_accuracy(
                    model, x, y, name=attack, eps=eps, input_range=data.input_range,
                    input_shape=data.input_shape, num_classes=data.num_classes, steps=self.steps, seed=self.seed,
                )
                out["robustness.clean_accuracy"] = float(res["clean_accuracy"])
                tag = f"robustness.{attack}.eps={eps:g}"
                out[f"{tag}.robust_accuracy"] = float(res["robust_accuracy"])
                out[f"{tag}.attack_success_rate"] = float(res["attack_success_rate"])
        out["robustness.samples"] = float(len(x))
        return out


@dataclass(frozen=True)
class FairnessEvaluator:
    """Per-group confusion counts (summed into exact federation-wide metrics by the server)."""

    features: tuple[str, ...]  # empty: every sensitive feature the dataset declares
    name: str = "fairness"

    @classmethod
    def from_options(cls, opts: Mapping[str, Any]) -> FairnessEvaluator:
        sensitive = options(with_defaults(opts, FairnessOptions), FairnessOptions).sensitive
        return cls(tuple(s.strip() for s in str(sensitive).split(",") if s.strip()))

    def check(self, info: DataInfo) -> None:
        if info.num_classes != 2:
            raise ValueError(f"the fairness evaluator needs a binary task; this dataset has {info.num_classes} classes")
        if not info.sensitive:
            raise ValueError("the fairness evaluator needs sensitive features; this dataset declares none (try arrests, adult, compas or german)")
        unknown = [f for f in self.features if f not in info.sensitive]
        if unknown:
            raise ValueError(f"key 'sensitive' names {unknown}; the dataset has: {', '.join(info.sensitive)}")

    def __call__(self, model: nn.Module, data: EvalData) -> dict[str, float]:
        pred = predict(model, data.x).numpy()
        out: dict[str, float] = {}
        for feat in self.features or tuple(data.sensitive):
            counts = group_counts(data.y.numpy(), pred, data.sensitive[feat])
            out |= flatten_counts(counts, f"{COUNTS_PREFIX}.fair.{feat}")
        return out


def registry() -> dict[str, Factory]:
    """Every evaluator by name: fedlth.config.registry's (built-ins, then plug-ins), then those installed
    under the older `fedlth.evaluation.evaluators` entry points (none shadows another)."""
    from fedlth.config.registry import components

    found = {c.name: c.load() for c in components("evaluator")}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in found:
            found[ep.name] = ep.load()
    return found


def build_evaluators(spec: str, options: Mapping[str, Any], info: DataInfo | None = None) -> list[Evaluator]:
    """Evaluators from a comma-separated list of names; bad names or options raise ValueError."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = registry()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown evaluator(s) {unknown}; available: {', '.join(sorted(known))}")
    evaluators = [known[n](options) for n in names]
    if info is not None:
        for ev in evaluators:
            ev.check(info)
    return evaluators


def run_evaluators(evaluators: Sequence[Evaluator], model: nn.Module, data: EvalData) -> dict[str, float]:
    """Every evaluator's metrics in one flat dict."""
    out: dict[str, float] = {}
    for ev in evaluators:
        out |= ev(model, data)
    return out
