"""Which scenario keys only some components read (derived from their options), so a setting nobody reads is caught."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from functools import lru_cache
from typing import Any

from fedlth.config.registry import CENTRAL

__all__ = ["CENTRAL", "HINTS", "check_run_keys", "readers", "readers_of", "unread"]


def readers() -> dict[str, tuple[str, ...]]:
    """Each key that only some components read, with those that declare it in their options
    (fedlth.config.registry: built-ins and plug-ins; CENTRAL is the `fedlth ticket` command). A key
    absent here is the core's: every run reads it."""
    from fedlth.config import registry

    return _readers(registry.components())


@lru_cache(maxsize=4)
def _readers(components: tuple[Any, ...]) -> dict[str, tuple[str, ...]]:
    from fedlth.config.scenario import declarations

    return {key: who for key, (_, who) in declarations(components).items() if who}


# What a user who set a central key on a federated run most likely meant.
HINTS = {
    "epochs": "federated runs train local-epochs per round",
    "pruner": "federated algorithms prune each layer by magnitude; personal-ticket's rule is ticket-pruner",
    "lr-schedule": "federated rounds train at a constant lr",
}


def readers_of(key: str) -> tuple[str, ...] | None:
    """Who reads `key`, or None when every run does."""
    return readers().get(key)


def unread(keys: Iterable[str], present: Collection[str]) -> dict[str, tuple[str, ...]]:
    """Those of `keys` that none of the `present` readers (algorithm names, CENTRAL, or other
    components' labels such as `aggregation qffl`) read, each with who would."""
    out = {}
    for key in keys:
        who = readers_of(key)
        if who is not None and not set(who) & set(present):
            out[key] = who
    return out


def _what(present: Collection[str]) -> str:
    names = sorted(present)
    if names == [CENTRAL]:
        return CENTRAL
    return ("algorithm " if len(names) == 1 else "algorithms ") + ", ".join(names)


def refusal(key: str, who: tuple[str, ...], present: Collection[str], chosen: Collection[str] = ()) -> str:
    """The error for a key given at the command line that nobody in this run reads; of the
    run's `chosen` components (labels) it names those of the readers' kinds (`partition iid`)."""
    hint = f" ({HINTS[key]})" if key in HINTS and CENTRAL not in present else ""
    kinds = {w.split(" ", 1)[0] for w in who}
    same = sorted(c for c in chosen if c.split(" ", 1)[0] in kinds)
    run = ", ".join([_what(present), *same])
    return f"key {key!r} is not read by {run}; it is read by: {', '.join(who)}{hint}"


def overridden_keys(pairs: Iterable[str]) -> list[str]:
    """The keys of `key=value` overrides (several space-separated pairs allowed per item)."""
    from fedlth.config.scenario import split_pairs

    return [pair.split("=", 1)[0].strip() for text in pairs for pair in split_pairs(text)]


def ignored_settings(sc: Mapping[str, Any], present: Collection[str]) -> dict[str, tuple[str, ...]]:
    """Keys set away from their default (in a scenario file, say) that this run ignores: a
    file may serve several algorithms, so these are noted, not refused."""
    from fedlth.config.scenario import KEYS

    return unread((k for k, v in sc.items() if k in KEYS and v != KEYS[k].default), present)


def selected(sc: Mapping[str, Any]) -> set[str]:
    """The components a scenario selects besides its algorithm, by label (fedlth.config.registry): its
    partition, aggregation rule, pruner and evaluators (each reads its own keys)."""
    names = {f"{kind} {sc[kind]}" for kind in ("partition", "aggregation", "pruner") if sc.get(kind)}
    return names | {f"evaluator {n.strip()}" for n in str(sc.get("evaluators", "")).split(",") if n.strip()}


def check_run_keys(sc: Mapping[str, Any], overrides: Iterable[str], present: Collection[str]) -> list[str]:
    """Refuse (ValueError) a `--set` key that no reader in `present` reads; return a note per
    scenario-file key the run ignores."""
    chosen = selected(sc)
    readers = {*present, *chosen}
    wanted = overridden_keys(overrides)
    bad = unread(wanted, readers)
    if bad:
        raise ValueError("; ".join(refusal(k, who, present, chosen) for k, who in bad.items()))
    ignored = ignored_settings(sc, readers)
    if not ignored:
        return []
    listed = ", ".join(f"{k} ({'/'.join(who)})" for k, who in ignored.items())
    return [f"note: {_what(present)} ignores {listed}: set in the scenario, read only by the runs named"]
