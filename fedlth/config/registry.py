"""One table of every component: kind, name, a lazy "module:attr" reference and its options dataclass."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

KINDS = ("dataset", "model", "partition", "pruner", "algorithm", "aggregation", "evaluator", "command")
CENTRAL = "fedlth ticket"  # the central lottery run: a command, whose keys no federated run reads


def resolve_ref(ref: str) -> Any:
    """Import "package.module:attr.attr[key]": an attribute path, then an optional mapping key."""
    module, sep, path = ref.partition(":")
    if not sep or not path:
        raise ValueError(f"reference {ref!r}; expected 'package.module:attr'")
    path, _, key = path.partition("[")
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj[key.rstrip("]")] if key else obj


@dataclass(frozen=True)
class Component:
    """One component. `target` is what `load()` gives: a "module:attr" reference (imported only
    when first used, so listing components stays torch-free) or the object itself. `options`:
    its options dataclass (fields declared with fedlth.config.options.opt), or a reference to one, or
    None; its keys are read only by runs that select it.

    What `target` is by kind: algorithm, a `fedlth.federation.algorithms.Algorithm`; pruner, a function
    `(weights, mask, amount, *, generator=None, bn_of=None) -> Mask`; aggregation, a factory
    `scenario -> (previous, updates) -> weights`; evaluator, a factory `scenario -> Evaluator`."""

    kind: str
    name: str
    target: Any
    options: Any = None
    help: str = ""

    def load(self) -> Any:
        return resolve_ref(self.target) if isinstance(self.target, str) else self.target

    @property
    def label(self) -> str:
        """How messages name it as a reader of keys: an algorithm or command by its name, any
        other component with its kind (`aggregation qffl`, `partition dirichlet`)."""
        return self.name if self.kind in ("algorithm", "command") else f"{self.kind} {self.name}"

    def options_class(self) -> type | None:
        return resolve_ref(self.options) if isinstance(self.options, str) else self.options


def _c(kind: str, name: str, target: str, options: str | None = None) -> Component:
    return Component(kind, name, target, f"fedlth.config.component_options:{options}" if options else None)


def _each(kind: str, ref: str, names: tuple[str, ...], options: dict[str, str] | None = None) -> tuple[Component, ...]:
    """One component per name, each the entry `name` of the mapping at `ref`."""
    return tuple(_c(kind, n, f"{ref}[{n}]", (options or {}).get(n)) for n in names)


_FLWR_PARTITIONS = ("iid", "dirichlet", "pathological", "shard", "natural-id")  # fedlth.data.partition.PARTITIONERS
_PARTITION_OPTIONS = {"dirichlet": "DirichletOptions", "pathological": "PathologicalOptions", "shard": "ShardOptions"}

BUILTINS: tuple[Component, ...] = (
    *_each("dataset", "fedlth.data.datasets:DATASETS", (
        "mnist1d", "digits", "arrests", "mnist", "fashion-mnist", "cifar10", "femnist", "adult", "compas", "german")),
    *_each("model", "fedlth.learning.models:MODELS", ("mlp", "cnn1d", "lenet5", "cifar-cnn", "tabular-mlp")),
    *(_c("partition", n, "fedlth.data.partition:partition", _PARTITION_OPTIONS.get(n)) for n in _FLWR_PARTITIONS),
    _c("partition", "file", "fedlth.data.partition_file:load_partition_file", "FilePartitionOptions"),
    _c("partition", "sample", "fedlth.data.sampled_partition:sampled_split", "SampleOptions"),
    _c("partition", "sample-dirichlet", "fedlth.data.sampled_partition:sampled_split", "SampleDirichletOptions"),
    *_each("pruner", "fedlth.tickets.pruning:PRUNERS", ("magnitude-layer", "magnitude-global", "random", "structured-l1", "structured-bn")),
    *_each("algorithm", "fedlth.federation.algorithms:ALGORITHMS", (
        "fedavg", "local", "fedavg-ft", "lotteryfl", "lotteryfl-faithful", "subfedavg", "subfedavg-hybrid",
        "shared-ticket", "personal-ticket", "fedper", "fedrep", "ditto", "dispfl", "fedpm",
    ), {
        "local": "LocalOptions", "lotteryfl": "LotteryFLOptions", "lotteryfl-faithful": "PruneGateOptions",
        "subfedavg": "SubFedAvgOptions", "subfedavg-hybrid": "SubFedAvgOptions", "shared-ticket": "SharedTicketOptions",
        "personal-ticket": "PersonalTicketOptions", "fedrep": "FedRepOptions", "ditto": "DittoOptions",
        "dispfl": "DispFLOptions", "fedpm": "FedPMOptions",
    }),
    _c("aggregation", "mean", "fedlth.federation.aggregate:masked_mean"),
    _c("aggregation", "median", "fedlth.federation.aggregate:masked_median"),
    _c("aggregation", "trimmed-mean", "fedlth.federation.aggregate:masked_trimmed_mean", "TrimmedMeanOptions"),
    _c("aggregation", "qffl", "fedlth.federation.qffl:QFFLStream", "QFFLOptions"),  # folds replies with their losses (server/strategy.py)
    _c("evaluator", "robustness", "fedlth.evaluation.evaluators:RobustnessEvaluator.from_options", "RobustnessOptions"),
    _c("evaluator", "fairness", "fedlth.evaluation.evaluators:FairnessEvaluator.from_options", "FairnessOptions"),
    _c("command", CENTRAL, "fedlth.tickets.ticket_run:TicketRun", "CentralTicketOptions"),
)


def builtin_names(kind: str) -> tuple[str, ...]:
    """The built-in names of one kind, in table order."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; allowed: {', '.join(KINDS)}")
    return tuple(c.name for c in BUILTINS if c.kind == kind)


def builtin_subset(kind: str, *names: str) -> tuple[str, ...]:
    """`names`, each a built-in of `kind`: the choices of a key that takes only some of them
    (`server-pruner`: the pruners the server's schedule implements). A name the registry lacks
    fails at import, so the two lists can't drift apart."""
    known = builtin_names(kind)
    if missing := [n for n in names if n not in known]:
        raise ValueError(f"{', '.join(missing)}: not a built-in {kind}; built-ins: {', '.join(known)}")
    return names


def components(kind: str | None = None) -> tuple[Component, ...]:
    """Built-ins, then plug-ins (fedlth.config.plugins; one never shadows a built-in), of `kind` or all."""
    from fedlth.config import plugins

    taken = {(c.kind, c.name) for c in BUILTINS}
    every = (*BUILTINS, *(p for key, p in plugins.plugins().items() if key not in taken))
    return tuple(c for c in every if kind is None or c.kind == kind)


def names(kind: str) -> tuple[str, ...]:
    return tuple(c.name for c in components(kind))


def get(kind: str, name: str) -> Component:
    """The component `name` of `kind`; ValueError listing the valid names."""
    for c in components(kind):
        if c.name == name:
            return c
    raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(names(kind))}")


def load(kind: str, name: str) -> Any:
    return get(kind, name).load()


def option_keys(kind: str, name: str) -> tuple[str, ...]:
    """The scenario keys component `name` declares (none for an unknown name: its user reports that)."""
    from fedlth.config.options import declared_keys

    found = [c for c in components(kind) if c.name == name]
    cls = found[0].options_class() if found else None
    return tuple(declared_keys(cls)) if cls is not None else ()
