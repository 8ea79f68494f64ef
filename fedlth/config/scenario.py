"""Scenarios: flat kebab-case TOML keys, validated in full before any work starts."""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
import textwrap
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from fedlth.config import registry
from fedlth.config.core_options import CORE, GROUPS
from fedlth.config.options import Key, declared_keys

__all__ = ["KEYS", "Key", "ScenarioError", "load_scenario", "resolve"]  # Key: plug-ins and tests import it here


class ScenarioError(ValueError):
    """A scenario file or override is invalid; the message names the key and what is allowed."""


# The registry's names, not its modules: validating a scenario imports no torch.
DATASET_NAMES = registry.builtin_names("dataset")
MODEL_NAMES = registry.builtin_names("model")
PRUNER_NAMES = registry.builtin_names("pruner")
PARTITION_NAMES = registry.builtin_names("partition")
ALGORITHM_NAMES = registry.builtin_names("algorithm")
AGGREGATION_NAMES = registry.builtin_names("aggregation")

# Plug-ins (fedlth.config.plugins) add their names to these keys' choices and bring their own keys.
PLUGIN_CHOICES = {"algorithm": "algorithm", "pruner": "pruner", "aggregation": "aggregation"}


PLUGIN_GROUP = "plug-in "  # a plug-in's keys are listed under "plug-in NAME" (or "plug-in A, B" when shared)


def _shared_by_plugins(a: Key, b: Key) -> bool:
    """Two plug-in components declaring one key alike (one options dataclass for both): the
    same Key but for the group each component's name gives it."""
    plugged = a.group.startswith(PLUGIN_GROUP) and b.group.startswith(PLUGIN_GROUP)
    return plugged and replace(a, group="") == replace(b, group="")


def declarations(components: Iterable[registry.Component]) -> dict[str, tuple[Key, tuple[str, ...]]]:
    """Each key of the core and of `components`' options, with the components declaring it (their
    labels; none for a core key: every run reads those). A key declared twice must be the same Key
    (plug-ins sharing one options dataclass: the same but for the group, which then names them all)."""
    out: dict[str, tuple[Key, tuple[str, ...]]] = {}

    def add(key: str, spec: Key, who: tuple[str, ...]) -> None:
        if key in out and out[key][0] != spec:
            have = out[key][0]
            if not _shared_by_plugins(have, spec):
                raise ValueError(f"key {key!r} is declared twice, differently (by {', '.join(out[key][1]) or 'the core'} and {', '.join(who) or 'the core'})")
            spec = replace(have, group=f"{have.group}, {spec.group.removeprefix(PLUGIN_GROUP)}")
        out[key] = (spec, (*out[key][1], *who) if key in out else who)

    for cls in CORE:
        for key, spec in declared_keys(cls).items():
            add(key, spec, ())
    for comp in components:
        cls = comp.options_class()
        if cls is None:
            continue
        plug_in = (comp.kind, comp.name) not in {(c.kind, c.name) for c in registry.BUILTINS}
        for key, spec in declared_keys(cls).items():
            add(key, replace(spec, group=f"{PLUGIN_GROUP}{comp.name}") if plug_in else spec, (comp.label,))
    return out


def _table(components: Iterable[registry.Component]) -> dict[str, Key]:
    """The key table: core and component keys, the concerns in GROUPS order (plug-ins' last),
    the name keys' choices those of the registry (plug-ins included)."""
    comps = tuple(components)
    table = {k: spec for k, (spec, _) in declarations(comps).items()}
    for key, kind in PLUGIN_CHOICES.items():
        table[key] = replace(table[key], choices=tuple(c.name for c in comps if c.kind == kind) or table[key].choices)
    rank = {g: i for i, g in enumerate(GROUPS)}
    return dict(sorted(table.items(), key=lambda item: rank.get(item[1].group, len(rank))))


KEYS: dict[str, Key] = _table(registry.BUILTINS)
BUILTIN_KEYS = dict(KEYS)


def _follow_plugins() -> None:
    """KEYS = the built-ins' and every plug-in's keys, plug-in names among their kind's choices."""
    table = _table(registry.components())
    KEYS.clear()
    KEYS.update(table)


# local uploads nothing, fedpm uploads masks, fedper/fedrep start from their own head, not the received one
QFFL_REFUSED = ("local", "fedpm", "fedper", "fedrep")


def check_cross(sc: dict[str, Any]) -> None:
    """Rules between keys."""
    if sc["prune-end"] <= sc["prune-start"]:
        raise ScenarioError(f"key 'prune-end' is {sc['prune-end']}; allowed: greater than prune-start ({sc['prune-start']})")
    if (sc["partition"] == "file") != bool(sc["partition-file"]):
        raise ScenarioError(
            "key 'partition' is 'file' but 'partition-file' is empty; allowed: a path to the JSON partition file"
            if sc["partition"] == "file"
            else f"key 'partition-file' is set but partition is {sc['partition']!r}; allowed: partition = \"file\", or no partition-file"
        )
    if sc["clients-per-round"] > sc["num-clients"]:
        raise ScenarioError(
            f"key 'clients-per-round' is {sc['clients-per-round']}; allowed: at most num-clients ({sc['num-clients']})"
        )
    if sc["algorithm"] == "fedpm" and sc["model"] == "cifar-cnn":
        raise ScenarioError(
            "key 'model' is 'cifar-cnn' with algorithm fedpm; allowed: a model without norm layers "
            f"({', '.join(m for m in MODEL_NAMES if m != 'cifar-cnn')}): FedPM masks frozen random weights, and its code has no norm layers"
        )
    if sc["aggregation"] == "qffl" and sc["algorithm"] in QFFL_REFUSED:
        raise ScenarioError(
            f"key 'aggregation' is 'qffl' with algorithm {sc['algorithm']}; allowed: an algorithm whose clients train the "
            f"global model they receive and upload weights (not {', '.join(QFFL_REFUSED)}): q-FFL weighs each client by its "
            "loss at that model"
        )
    wanted = [n.strip() for n in str(sc["evaluators"]).split(",") if n.strip()]
    known = registry.names("evaluator")
    if unknown := [n for n in wanted if n not in known]:  # names are torch-free: refused before any import
        raise ScenarioError(f"evaluators: unknown evaluator(s) {unknown}; available: {', '.join(sorted(known))}")
    if sc["min-clients"] > sc["clients-per-round"]:
        raise ScenarioError(
            f"key 'min-clients' is {sc['min-clients']}; allowed: at most clients-per-round ({sc['clients-per-round']})"
        )


def suggest_key(key: str) -> str:
    """'did you mean X?' for the closest known key (difflib), or where to find them all."""
    close = difflib.get_close_matches(key, KEYS, n=1)
    return f"did you mean {close[0]!r}?" if close else "`fedlth keys` lists every key"


def unknown_key(key: str, source: str) -> ScenarioError:
    """The error for a key nobody reads."""
    return ScenarioError(f"{source}: unknown key {key!r}; {suggest_key(key)}")


def matching_keys(pattern: str = "") -> dict[str, Key]:
    """The keys whose name matches `pattern` (a glob such as attack-*, or a substring of the
    name or of its group), in KEYS order; every key for an empty pattern."""
    pat = pattern.strip().lower()
    if any(c in pat for c in "*?["):
        return {k: spec for k, spec in KEYS.items() if fnmatch.fnmatchcase(k, pat)}
    return {k: spec for k, spec in KEYS.items() if pat in k or pat in spec.group}


def allowed_values(spec: Key) -> str:
    """What a key accepts, in words."""
    if spec.choices:
        return "one of " + ", ".join(spec.choices)
    if spec.type is bool:
        return "true or false"
    return spec.allowed or ("any text" if spec.type is str else f"any {spec.type.__name__}")


def describe_keys(keys: Mapping[str, Key]) -> str:
    """Keys grouped by concern, as TOML: `key = default  # type; allowed` and the help below as
    comments, so the full listing is itself a valid scenario with every key at its default."""
    groups = dict.fromkeys(spec.group for spec in keys.values())
    blocks = [
        "\n".join([f"# --- {group} ---", *(_describe_key(k, spec) for k, spec in keys.items() if spec.group == group)])
        for group in groups
    ]
    return "\n\n".join(blocks) + "\n"


def _describe_key(key: str, spec: Key) -> str:
    """One key's line and its wrapped help."""
    from fedlth.config.key_readers import readers_of

    head = f"{key} = {toml_value(spec.default)}  # {spec.type.__name__}; {allowed_values(spec)}"
    who = readers_of(key)
    text = spec.help + (f" Read only by: {', '.join(who)}." if who else "")
    return "\n".join([head, *textwrap.wrap(text, 96, initial_indent="    # ", subsequent_indent="    # ")])


def defaults() -> dict[str, Any]:
    """Every key at its default value."""
    return {k: spec.default for k, spec in KEYS.items()}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check one value against its key; return it in the key's type."""
    if key not in KEYS:
        raise unknown_key(key, source)
    spec = KEYS[key]
    ok_type = isinstance(value, spec.type) and not (spec.type is not bool and isinstance(value, bool))
    if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok_type = float(value), True
    if not ok_type:
        raise ScenarioError(
            f"{source}: key {key!r} must be of type {spec.type.__name__}, got {value!r} ({type(value).__name__})"
        )
    if spec.choices and value not in spec.choices:
        raise ScenarioError(f"{source}: key {key!r} is {value!r}; allowed: {', '.join(spec.choices)}")
    if spec.type is float and not math.isfinite(value):  # NaN passes every range comparison
        raise ScenarioError(f"{source}: key {key!r} is {value!r}; allowed: a finite number"
                            + (f" ({spec.allowed})" if spec.allowed else ""))
    if spec.check is not None and not spec.check(value):
        raise ScenarioError(f"{source}: key {key!r} is {value!r}; allowed: {spec.allowed}")
    return value


# Flower's --run-config pair: key=value, the value 'quoted', "quoted" or up to a space
_PAIR = re.compile(r"""\s*([^\s=]+)=('[^']*'|"[^"]*"|\S*)\s*""")


def split_pairs(text: str) -> list[str]:
    """'rounds=3 lr=0.1' -> ['rounds=3', 'lr=0.1'], as Flower's --run-config reads them; text
    that is not wholly such pairs stays one override, so `name=my run` keeps its space."""
    pairs, pos = [], 0
    while pos < len(text):
        m = _PAIR.match(text, pos)
        if m is None:
            return [text]
        pairs.append(f"{m[1]}={m[2]}")
        pos = m.end()
    return pairs or [text]


def _unquote(raw: str) -> str:
    """A TOML string literal ("fedavg", 'fedavg') becomes its text; anything else is kept."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
    return value if isinstance(value, str) else raw


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one `key=value` override; the value (plain, or TOML-quoted as Flower writes
    strings) is read by the key's type."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ScenarioError(f"--set {text!r}: expected key=value")
    if key not in KEYS:
        raise unknown_key(key, "--set")
    kind = KEYS[key].type
    raw = _unquote(raw.strip())
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            value: Any = raw.lower() in ("true", "1", "yes")
        elif kind is int:
            value = int(raw)
        elif kind is float:
            value = float(raw)
        else:
            value = raw
    except ValueError:
        raise ScenarioError(f"--set: key {key!r} needs a {kind.__name__}, got {raw!r}") from None
    return key, value


def resolve(values: Mapping[str, Any], overrides: Iterable[str] = (), source: str = "scenario") -> dict[str, Any]:
    """Defaults, then `values`, then `--set` overrides (each one `key=value` or several
    space-separated pairs); every value validated."""
    out = defaults()
    for key, value in values.items():
        out[key] = _coerce(key, value, source)
    for pair in (p for text in overrides for p in split_pairs(text)):
        key, value = parse_override(pair)
        out[key] = _coerce(key, value, "--set")
    check_cross(out)
    return out


# Keys naming a file: a relative path in a scenario file is read from that file's folder, one
# given with --set from the current folder; load_scenario stores them absolute.
PATH_KEYS = ("partition-file",)


def anchor_paths(values: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """`values` with relative PATH_KEYS made absolute from `folder` (and ~ expanded)."""
    out = dict(values)
    for key in PATH_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value:
            out[key] = str(folder.absolute() / Path(value).expanduser())
    return out


def load_scenario(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read, merge and validate a scenario file; raises ScenarioError with one clear message."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario file {str(path)!r} does not exist")
    try:
        values = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise ScenarioError(f"{path}: tables are not allowed ({', '.join(nested)}); use flat kebab-case keys")
    values = anchor_paths(values, path.parent)
    resolved = anchor_paths(resolve(values, overrides, source=str(path)), Path.cwd())
    if not resolved["name"]:
        resolved["name"] = path.stem
    return resolved


def to_toml(scenario: Mapping[str, Any]) -> str:
    """Write a resolved scenario back as flat TOML (strings quoted, bools lower-case)."""
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in scenario.items())


def toml_value(value: Any) -> str:
    """One value as TOML: strings quoted, bools lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _listen() -> None:
    from fedlth.config import plugins

    plugins.on_change(_follow_plugins)


_listen()
