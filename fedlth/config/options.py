"""Typed options: a scenario key declared as a dataclass field (type, default, range or choices, help)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, TypeVar

T = TypeVar("T")
META = "fedlth"  # the dataclasses.field metadata entry that holds a field's Key


@dataclass(frozen=True)
class Key:
    """One scenario key: its type, default, allowed values and help."""

    type: type
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None
    allowed: str = ""  # human wording of `check`, shown in errors
    choices: tuple[str, ...] = ()
    group: str = ""  # the concern it belongs to (what `fedlth keys` shows)


def _range(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> tuple[Callable[[float], bool], str]:
    """A checker for lo <(=) x <(=) hi, and its wording."""

    def check(x: float) -> bool:
        if lo is not None and (x <= lo if lo_open else x < lo):
            return False
        return not (hi is not None and (x >= hi if hi_open else x > hi))

    left = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
    right = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
    return check, f"a number with {left}x{right}"


def make_key(
    default: Any, help: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
    hi_open: bool = False, choices: Iterable[str] = (), check: Callable[[Any], bool] | None = None,
    allowed: str = "", group: str = "",
) -> Key:
    """A Key whose type is its default's (bool, int, float or str); lo/hi give a range check."""
    kind = type(default)
    if kind not in (bool, int, float, str):
        raise TypeError(f"option default {default!r}: the type must be bool, int, float or str")
    if lo is not None or hi is not None:
        check, allowed = _range(lo, hi, lo_open, hi_open)
        if kind is int:
            allowed = allowed.replace("a number", "an integer")
    return Key(kind, default, help, check, allowed, tuple(choices), group)


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field declaring the scenario key named like the field (`target_density` ↔
    `target-density`); keyword arguments as `make_key` (lo, hi, lo_open, hi_open, choices,
    check, allowed, group: overrides the dataclass's GROUP)."""
    return dataclasses.field(default=default, metadata={META: make_key(default, help, **kw)})


def key_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def declared_keys(cls: type) -> dict[str, Key]:
    """The keys an options dataclass declares, each in its group (field's, else the class's GROUP)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not an options dataclass")
    out = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(META)
        if spec is None:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with fedlth.config.options.opt(default, help, ...)")
        out[key_name(f.name)] = spec if spec.group else dataclasses.replace(spec, group=getattr(cls, "GROUP", ""))
    return out


@lru_cache(maxsize=256)
def _build(cls: type, values: tuple[tuple[str, Any], ...]) -> Any:
    return cls(**dict(values))


@cache
def _field_keys(cls: type) -> tuple[tuple[str, str], ...]:
    # (field, scenario key) of an options class, worked out once: a message reads several views
    return tuple((f.name, key_name(f.name)) for f in dataclasses.fields(cls))


def options(sc: Mapping[str, Any], cls: type[T]) -> T:
    """The typed view `cls` of a (validated) scenario, built once per distinct set of values."""
    return _build(cls, tuple([(name, sc[key]) for name, key in _field_keys(cls)]))


def with_defaults(values: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """`values` completed with `cls`'s defaults for the keys it lacks (a partial mapping, as tests
    and library callers pass, instead of a whole scenario)."""
    return {**{key_name(f.name): f.default for f in dataclasses.fields(cls)}, **values}
