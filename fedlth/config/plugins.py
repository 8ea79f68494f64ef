"""Components from outside fedlth: an algorithm, pruner, aggregation rule or evaluator, with its
own options dataclass, declared in one module and found by name like the built-ins."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from fedlth.config.options import declared_keys
from fedlth.config.registry import Component

GROUP = "fedlth.plugins"  # each entry point loads a Plugin, or a list of them
KINDS = ("algorithm", "pruner", "aggregation", "evaluator")

# A plug-in is a registry component like the built-ins: Plugin(kind, name, target, options, help).
Plugin = Component

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
    from fedlth.config.scenario import BUILTIN_KEYS

    if not isinstance(plugin, Component):
        raise ValueError(f"plug-in {plugin!r}: expected a fedlth.config.plugins.Plugin")
    if plugin.kind not in KINDS:
        raise ValueError(f"plug-in {plugin.name!r}: kind {plugin.kind!r}; allowed: {', '.join(KINDS)}")
    cls = plugin.options_class()
    try:
        keys = declared_keys(cls) if cls is not None else {}
    except TypeError as exc:
        raise ValueError(f"plug-in {plugin.name!r}: options: {exc}") from None
    for key in keys:
        if key in BUILTIN_KEYS:
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
    packages use the entry-point group instead, which every process (Ray's workers too) sees.
    A plug-in whose keys clash with another's (fedlth.config.scenario.declarations) is refused and not kept."""
    key = (plugin.kind, plugin.name)
    before = _registered.get(key)
    _registered[key] = _checked(plugin)
    try:
        _publish()
    except ValueError:
        if before is None:
            _registered.pop(key)
        else:
            _registered[key] = before
        _publish()
        raise
    return plugin


def unregister(kind: str, name: str) -> None:
    """Forget a registered component (tests)."""
    _registered.pop((kind, name), None)
    _publish()


def names(kind: str) -> tuple[str, ...]:
    return tuple(name for k, name in plugins() if k == kind)


def get(kind: str, name: str) -> Plugin | None:
    return plugins().get((kind, name))


_listeners: list[Callable[[], None]] = []


def on_change(listener: Callable[[], None]) -> None:
    """Call `listener` now and whenever the plug-ins change (the scenario's key table follows)."""
    _listeners.append(listener)
    listener()


def _publish() -> None:
    for listener in _listeners:
        listener()


def merged(builtin: Mapping[str, Any], kind: str, value: Callable[[Plugin], Any] = lambda p: p.load()) -> dict[str, Any]:
    """Built-ins plus this kind's plug-ins (a plug-in never shadows a built-in)."""
    out = dict(builtin)
    for (k, name), plugin in plugins().items():
        if k == kind and name not in out:
            out[name] = value(plugin)
    return out


def describe(items: Iterable[Plugin]) -> str:
    return ", ".join(f"{p.kind} {p.name}" for p in items)
