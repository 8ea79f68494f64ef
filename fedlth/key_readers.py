"""Which scenario keys only some algorithms or commands read, so a setting nobody reads is caught."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

CENTRAL = "fedlth ticket"
LOTTERYFL = ("lotteryfl", "lotteryfl-faithful")
SUBFEDAVG = ("subfedavg", "subfedavg-hybrid")

# Keys absent here are read by every federated algorithm (or by the run itself). Kept beside
# the code that reads them by tests/test_key_readers.py, which greps each reader's source.
READERS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("epochs", "imp-levels", "pruner", "rewind", "rewind-iteration", "one-shot", "skip-first-layer",
         "skip-last-layer", "controls", "early-bird-epsilon", "early-bird-window", "lr-schedule"),
        (CENTRAL,),
    ),
    "prune-rate": (CENTRAL, *LOTTERYFL, *SUBFEDAVG),
    "acc-threshold": (*LOTTERYFL, *SUBFEDAVG),
    "prune-tolerance": ("lotteryfl", *SUBFEDAVG),
    "mask-epsilon": SUBFEDAVG,
    "lotteryfl-prune-from": ("lotteryfl",),
    "lotteryfl-rewind": ("lotteryfl",),
    "prune-start": ("shared-ticket",),
    "prune-end": ("shared-ticket",),
    "server-pruner": ("shared-ticket",),
    "ticket-control": ("personal-ticket", "shared-ticket"),
    "upload-density": ("personal-ticket",),
    "sparse-fill": ("personal-ticket",),
    "ticket-pruner": ("personal-ticket",),
    "ticket-warmup-epochs": ("personal-ticket",),
    "local-total-epochs": ("local",),
    "fedrep-head-epochs": ("fedrep",),
}
PREFIXES = ("ditto", "dispfl", "fedpm")  # every `<name>-…` key is read by algorithm <name> alone

# What a user who set a central key on a federated run most likely meant.
HINTS = {
    "epochs": "federated runs train local-epochs per round",
    "pruner": "federated algorithms prune each layer by magnitude; personal-ticket's rule is ticket-pruner",
    "lr-schedule": "federated rounds train at a constant lr",
}


def readers_of(key: str) -> tuple[str, ...] | None:
    """Who reads `key`, or None when every run does."""
    if key in READERS:
        return READERS[key]
    from fedlth import plugins

    owner = plugins.keys().get(key)
    if owner is not None:
        return (owner[1],)  # a plug-in's own key: read by that component alone
    prefix = key.split("-", 1)[0]
    return (prefix,) if prefix in PREFIXES and key != prefix else None


def unread(keys: Iterable[str], present: Collection[str]) -> dict[str, tuple[str, ...]]:
    """Those of `keys` that none of the `present` readers (algorithm names, or CENTRAL) read,
    each with who would."""
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


def refusal(key: str, who: tuple[str, ...], present: Collection[str]) -> str:
    """The error for a key given at the command line that nobody in this run reads."""
    hint = f" ({HINTS[key]})" if key in HINTS and CENTRAL not in present else ""
    return f"key {key!r} is not read by {_what(present)}; it is read by: {', '.join(who)}{hint}"


def overridden_keys(pairs: Iterable[str]) -> list[str]:
    """The keys of `key=value` overrides (several space-separated pairs allowed per item)."""
    from fedlth.scenario import split_pairs

    return [pair.split("=", 1)[0].strip() for text in pairs for pair in split_pairs(text)]


def ignored_settings(sc: Mapping[str, Any], present: Collection[str]) -> dict[str, tuple[str, ...]]:
    """Keys set away from their default (in a scenario file, say) that this run ignores: a
    file may serve several algorithms, so these are noted, not refused."""
    from fedlth.scenario import KEYS

    return unread((k for k, v in sc.items() if k in KEYS and v != KEYS[k].default), present)


def selected(sc: Mapping[str, Any]) -> set[str]:
    """The components a scenario selects besides its algorithm: its aggregation rule, pruner and
    evaluators (a plug-in among them reads its own keys)."""
    names = {sc.get("aggregation", ""), sc.get("pruner", "")}
    names |= {n.strip() for n in str(sc.get("evaluators", "")).split(",") if n.strip()}
    return names - {""}


def check_run_keys(sc: Mapping[str, Any], overrides: Iterable[str], present: Collection[str]) -> list[str]:
    """Refuse (ValueError) a `--set` key that no reader in `present` reads; return a note per
    scenario-file key the run ignores."""
    readers = {*present, *selected(sc)}
    wanted = overridden_keys(overrides)
    bad = unread(wanted, readers)
    if bad:
        raise ValueError("; ".join(refusal(k, who, present) for k, who in bad.items()))
    ignored = ignored_settings(sc, readers)
    if not ignored:
        return []
    listed = ", ".join(f"{k} ({'/'.join(who)})" for k, who in ignored.items())
    return [f"note: {_what(present)} ignores {listed}: set in the scenario, read only by the runs named"]
