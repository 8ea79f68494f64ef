"""Components from outside fedlth: an algorithm, pruner, aggregation rule or evaluator, with its
own scenario keys, declared in one place and found by name like the built-ins."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

GROUP = "fedlth.plugins"  # each entry point loads a Plugin, or a list of them
KINDS = ("algorithm", "pruner", "aggregation", "evaluator")


@dataclass(frozen=True)
class Plugin:
    """One component. `target` by kind: algorithm, an `Algorithm`; pruner, a function
    `(weights, mask, amount, *, generator=None, bn_of=None) -> Mask`; aggregation, a factory
    `scenario -> (previous, updates) -> weights`; evaluator, a factory `scenario -> Evaluator`.
    `keys`: its own scenario keys (`fedlth.scenario.Key`), read only by runs that select it."""

    kind: str
    name: str
    target: Any
    keys: Mapping[str, Any] = field(default_factory=dict)
    help: str = ""


_registered: dict[tuple[str, str], Plugin] = {}
_loaded: dict[tuple[str, str], Plugin] | None = None


def _from_entry_points() -> dict[tuple[str, str], Plugin]:
    found: dict[tuple[str, str], Plugin] = {}
    for ep in entry_points(group=GROUP):
        obj = ep.load()
        for plugin in obj if isinstance(obj, list | tuple) else [obj]:
            found[(plugin.kind, plugin.name)] = _checked(plugin)
    return found


def _checked(plugin: Plugin) -> Plugin:
    from fedlth.scenario import KEYS, Key

    if plugin.kind not in KINDS:
        raise ValueError(f"plug-in {plugin.name!r}: kind {plugin.kind!r}; allowed: {', '.join(KINDS)}")
    for key, spec in plugin.keys.items():
        if not isinstance(spec, Key):
            raise ValueError(f"plug-in {plugin.name!r}: key {key!r} must be a fedlth.scenario.Key")
        if key in KEYS and KEYS[key].group != f"plug-in {plugin.name}":
            raise ValueError(f"plug-in {plugin.name!r}: key {key!r} is already fedlth's; give it a name of its own (e.g. {plugin.name}-…)")
    return plugin


def plugins() -> dict[tuple[str, str], Plugin]:
    """Every plug-in: installed ones (entry points, loaded once per process) and registered ones."""
    global _loaded
    if _loaded is None:
        _loaded = _from_entry_points()
    return {**_loaded, **_registered}


def register(plugin: Plugin) -> Plugin:
    """Add a component in this process (a notebook, a test, the in-process backend); installed
    packages use the entry-point group instead, which every process (Ray's workers too) sees."""
    _registered[(plugin.kind, plugin.name)] = _checked(plugin)
    _publish()
    return plugin


def unregister(kind: str, name: str) -> None:
    """Forget a registered component (tests)."""
    _registered.pop((kind, name), None)
    _publish()


def names(kind: str) -> tuple[str, ...]:
    return tuple(name for k, name in plugins() if k == kind)


def get(kind: str, name: str) -> Plugin | None:
    return plugins().get((kind, name))


def keys() -> dict[str, tuple[Any, str]]:
    """Each plug-in key with its spec and the component that reads it."""
    return {key: (spec, name) for (_, name), p in plugins().items() for key, spec in p.keys.items()}


_listeners: list[Callable[[], None]] = []


def on_change(listener: Callable[[], None]) -> None:
    """Call `listener` now and whenever the plug-ins change (the scenario's key table follows)."""
    _listeners.append(listener)
    listener()


def _publish() -> None:
    for listener in _listeners:
        listener()


def merged(builtin: Mapping[str, Any], kind: str, value: Callable[[Plugin], Any] = lambda p: p.target) -> dict[str, Any]:
    """Built-ins plus this kind's plug-ins (a plug-in never shadows a built-in)."""
    out = dict(builtin)
    for (k, name), plugin in plugins().items():
        if k == kind and name not in out:
            out[name] = value(plugin)
    return out


def describe(items: Iterable[Plugin]) -> str:
    return ", ".join(f"{p.kind} {p.name}" for p in items)
