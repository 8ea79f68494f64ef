"""The built-in components' own options (torch-free, so validating a scenario stays cheap)."""

from __future__ import annotations

from dataclasses import dataclass

from fedlth.config.options import opt
from fedlth.config.registry import builtin_names, builtin_subset

# The robustness evaluator's attacks: the one list (fedlth.evaluation.robustness.ATTACKS is this tuple; it
# lives here so validating a scenario imports no torch); each has a builder in fedlth.evaluation.robustness.
ATTACK_NAMES: tuple[str, ...] = ("fgsm", "pgd", "pgd-l2", "cw", "square", "autoattack")
# The pruners shared-ticket's server may use (fedlth.federation.shared_ticket.server_prune) and those a
# personal-ticket client prunes its ticket with: subsets of the pruner registry.
SERVER_PRUNERS = builtin_subset("pruner", "magnitude-global", "magnitude-layer", "random")
TICKET_PRUNERS = builtin_subset("pruner", "magnitude-global", "magnitude-layer")


def _attack_names(text: str) -> bool:
    names = [a.strip() for a in text.split(",")]
    return all(a in ATTACK_NAMES for a in names)


@dataclass(frozen=True)
class PruneRateOptions:
    """The share of the remaining weights one prune step removes (central IMP, LotteryFL, Sub-FedAvg)."""

    GROUP = "lottery tickets"

    prune_rate: float = opt(0.2, 'Fraction of the remaining weights pruned per level.', lo=0.0, lo_open=True, hi=1.0, hi_open=True, group='lottery tickets')


@dataclass(frozen=True)
class CentralTicketOptions(PruneRateOptions):
    """`fedlth ticket`: iterative magnitude pruning with rewinding, controls and early-bird."""

    GROUP = "lottery tickets"

    epochs: int = opt(5, 'Training epochs per lottery-ticket level.', lo=1, group='model and training')
    lr_schedule: str = opt('cosine', "Learning-rate schedule over a level's steps.", choices=('constant', 'cosine'), group='model and training')
    imp_levels: int = opt(5, 'Iterative magnitude pruning levels after dense training.', lo=0, hi=30)
    pruner: str = opt('magnitude-global', 'Pruning rule.', choices=builtin_names("pruner"))
    rewind: str = opt('iteration', 'init: weights to θ0; iteration: to step k; lr: keep weights, replay the learning-rate schedule.', choices=('init', 'iteration', 'lr'))
    rewind_iteration: int = opt(100, 'Step k to rewind to (rewind = iteration).', lo=0)
    one_shot: bool = opt(False, "Prune each level's density in one shot from the dense net instead of iteratively.")
    skip_first_layer: bool = opt(False, 'Never prune the first conv/linear layer.')
    skip_last_layer: bool = opt(False, 'Never prune the last conv/linear layer.')
    controls: bool = opt(True, 'Train the re-init and random-mask controls at every level.')
    early_bird_epsilon: float = opt(0.1, 'Early-bird: masks of successive epochs closer than this (Hamming) mark the ticket.', lo=0.0, hi=1.0)
    early_bird_window: int = opt(3, 'Early-bird: how many successive distances must stay under epsilon.', lo=1)


@dataclass(frozen=True)
class PruneGateOptions(PruneRateOptions):
    """The pruning gate LotteryFL and Sub-FedAvg clients share: prune prune-rate once validation accuracy reaches acc-threshold."""

    GROUP = "federation"

    acc_threshold: float = opt(0.5, 'Pruning gate: validation accuracy a client needs before it prunes.', lo=0.0, hi=1.0)


@dataclass(frozen=True)
class ToleratedGateOptions(PruneGateOptions):
    """The gate, and a prune kept only if validation accuracy drops by at most prune-tolerance."""

    GROUP = "federation"

    prune_tolerance: float = opt(0.02, 'A prune is kept only if validation accuracy drops by at most this.', lo=0.0, hi=1.0)


@dataclass(frozen=True)
class LotteryFLOptions(ToleratedGateOptions):
    """lotteryfl: the gate and its two published choices as keys."""

    GROUP = "federation"

    lotteryfl_prune_from: str = opt('trained', "lotteryfl: cut the mask from the client's trained weights, or from the received global ones (published).", choices=('trained', 'received'))
    lotteryfl_rewind: bool = opt(False, 'lotteryfl: reset kept weights to θ0 after a prune (published: true).')


@dataclass(frozen=True)
class SubFedAvgOptions(ToleratedGateOptions):
    """subfedavg, subfedavg-hybrid: the gate and the mask-distance test."""

    GROUP = "federation"

    mask_epsilon: float = opt(0.0001, 'Sub-FedAvg: prune only while successive masks differ (Hamming) by more than this.', lo=0.0, hi=1.0)


@dataclass(frozen=True)
class LocalOptions:
    """local: each client's training budget alone."""

    GROUP = "personal models and tickets"

    local_total_epochs: int = opt(0, "local: epochs each client trains alone, with one optimizer (0: the federation's budget, rounds × clients-per-round / num-clients × local-epochs).", lo=0)


@dataclass(frozen=True)
class TicketControlOptions:
    """The winning-ticket controls (personal-ticket, shared-ticket)."""

    GROUP = "personal models and tickets"

    ticket_control: str = opt('none', "The winning-ticket controls. personal-ticket: random-mask (same per-layer counts at random positions) or reinit (the ticket's mask on a fresh random init), each retrained like the ticket. shared-ticket: reinit (at prune-end the kept weights restart from a fresh init); its random-mask control is server-pruner = random.", choices=('none', 'random-mask', 'reinit'))


@dataclass(frozen=True)
class SharedTicketOptions(TicketControlOptions):
    """shared-ticket: the server's pruning schedule for the one shared mask."""

    GROUP = "personal models and tickets"

    prune_start: int = opt(30, 'shared-ticket: the shared mask stays dense through this round.', lo=0)
    prune_end: int = opt(50, 'shared-ticket: the shared mask reaches target-density after this round (cubic schedule in between).', lo=1)
    server_pruner: str = opt('magnitude-global', 'shared-ticket: how the server prunes the aggregated model (random: the random-mask control).', choices=SERVER_PRUNERS)


@dataclass(frozen=True)
class PersonalTicketOptions(TicketControlOptions):
    """personal-ticket: sparse uploads and each client's own ticket."""

    GROUP = "personal models and tickets"

    upload_density: float = opt(0.3, "personal-ticket: share of each prunable layer's weights a client uploads (those that changed most in its round).", lo=0.0, lo_open=True, hi=1.0)
    sparse_fill: str = opt('keepers', 'personal-ticket: each weight is averaged over the clients that sent it (keepers), or over every client of the round with the current global value for those that did not (global: top-k sparsification).', choices=('keepers', 'global'))
    ticket_pruner: str = opt('magnitude-global', 'personal-ticket: how a client prunes its fine-tuned model to target-density: one magnitude threshold over all layers, or the same share of every layer.', choices=TICKET_PRUNERS)
    ticket_warmup_epochs: int = opt(5, 'personal-ticket: epochs of fine-tuning (validation-best) before a client prunes its ticket.', lo=0)


@dataclass(frozen=True)
class FedRepOptions:
    """fedrep: the head's own epochs."""

    GROUP = "personal models and tickets"

    fedrep_head_epochs: int = opt(10, 'fedrep: epochs a client trains its head (body frozen) each round before local-epochs on the body (head frozen); the paper uses 10.', lo=0)


@dataclass(frozen=True)
class DittoOptions:
    """ditto: the personal model's proximal term and epochs."""

    GROUP = "personal models and tickets"

    ditto_lambda: float = opt(0.1, "ditto: λ of the personal model's proximal term λ/2‖v − w‖² toward the received global model (the paper picks λ per client on validation from {0.05, 0.1, 0.2} or {0.1, 1, 2}).", lo=0.0)
    ditto_personal_epochs: int = opt(0, 'ditto: epochs of the personal model per round (0: local-epochs).', lo=0)


@dataclass(frozen=True)
class DispFLOptions:
    """dispfl: each client's sparse mask, and its drop and regrowth."""

    GROUP = "personal models and tickets"

    dispfl_density: float = opt(0.5, "dispfl (DisPFL, run through the server; the paper is peer-to-peer): share of the prunable weights each client's own mask keeps, constant through prune and regrow (the paper's 0.5).", lo=0.0, lo_open=True, hi=1.0)
    dispfl_distribution: str = opt('erk', "dispfl: how dispfl-density spreads over layers: Erdős–Rényi-kernel (the reference code's default: a layer's share ∝ the sum of its dimensions over its size, so small layers are denser, those past 1 dense) or the same share in every layer.", choices=('erk', 'uniform'))
    dispfl_anneal: float = opt(0.5, "dispfl: share of each layer's kept weights replaced after round 1; it decays by a cosine to 0 at the last round (the paper's 0.5).", lo=0.0, hi=1.0)
    dispfl_regrow_init: str = opt('mean', "dispfl: a regrown weight is 0 in the client's model and reply; its first training starts from the server's mean over the clients that kept it (mean: what the paper's and reference code's aggregation gives) or from 0 (zero: as in RigL).", choices=('mean', 'zero'))
    dispfl_regrow: str = opt('gradient', "dispfl: where dropped weights regrow: the largest |gradient| on one batch (the paper) or at random (the reference's published scripts).", choices=('gradient', 'random'))


@dataclass(frozen=True)
class FedPMOptions:
    """fedpm: mask scores on frozen random weights and the server's Beta posterior."""

    GROUP = "fedpm"

    fedpm_lr: float = opt(0.1, "fedpm: Adam learning rate of the mask scores (the reference code's Adam lr 0.1; weights are never trained).", lo=0.0, lo_open=True)
    fedpm_init: str = opt('signed-constant', "fedpm: the frozen random weights: ±e·sqrt(1/fan_in) with seeded signs on every conv/linear weight and bias (the code's ME_init), or the model zoo's own init.", choices=('signed-constant', 'model'))
    fedpm_epsilon: float = opt(0.01, "fedpm: the server counts an uploaded 1 as 1 − ε and a 0 as ε (the code's ε), so no probability reaches 0 or 1.", lo=0.0, hi=0.5, hi_open=True)
    fedpm_estimate: str = opt('mode', "fedpm: probabilities sent down: the Beta posterior's mode (α − 1)/(α + β − 2), as the code, or its mean α/(α + β).", choices=('mode', 'mean'))
    fedpm_reset_every: int = opt(1, "fedpm: reset α = β = 1 before every k-th round's aggregation (1: every round, as the code; 0: never, the posterior keeps every round's masks).", lo=0)
    fedpm_eval_mask: str = opt('sample', 'fedpm: the model scored: the frozen weights ⊙ a mask sampled from the final probabilities (as the code tests), or p > 0.5.', choices=('sample', 'threshold'))
    fedpm_codec: str = opt('none', "fedpm: the uploaded mask's packed bits as they are (1 bit per parameter), or through lzma (raw LZMA2, preset 9e) or zlib (raw deflate, level 9).", choices=('none', 'lzma', 'zlib'))


@dataclass(frozen=True)
class TrimmedMeanOptions:
    """trimmed-mean: how much each end loses."""

    GROUP = "reliability at the server"

    trim_fraction: float = opt(0.1, 'trimmed-mean: share of the keepers cut from each end, per weight.', lo=0.0, hi=0.5, hi_open=True)


@dataclass(frozen=True)
class QFFLOptions:
    """qffl: the fairness exponent and the step's Lipschitz constant."""

    GROUP = "reliability at the server"

    qffl_q: float = opt(1.0, 'qffl: the fairness exponent q (0: the masked mean; larger: more weight on high-loss clients).', lo=0.0, hi=100.0)
    qffl_lipschitz: float = opt(0.0, "qffl: the Lipschitz constant L of the step (0: 1 / lr, the paper's and Flower's estimate, which assumes an update of about one SGD step; many local steps make ‖Δ‖² large and the step small).", lo=0.0)


@dataclass(frozen=True)
class RobustnessOptions:
    """The robustness evaluator: attacks, ε sweep, steps and samples."""

    GROUP = "evaluators and robust tickets"

    attack: str = opt('pgd', 'robustness: the torchattacks attack, or several comma-separated (pgd,autoattack: each at every attack-eps).', check=_attack_names, allowed="one or more of " + ", ".join(ATTACK_NAMES) + ", comma-separated")
    attack_eps: str = opt('0.1', "robustness: comma-separated ε sweep in the model's input units.")
    attack_steps: int = opt(10, 'robustness: attack iterations.', lo=1)
    attack_samples: int = opt(200, 'robustness: test samples attacked per client (the first n).', lo=1)


@dataclass(frozen=True)
class FairnessOptions:
    """The fairness evaluator: which sensitive features."""

    GROUP = "evaluators and robust tickets"

    sensitive: str = opt('', 'fairness: comma-separated sensitive features (empty: all the dataset declares).')


@dataclass(frozen=True)
class DirichletOptions:
    """dirichlet, sample-dirichlet: the concentration of the label mix."""

    GROUP = "data"

    alpha: float = opt(0.5, "Dirichlet concentration (partition = dirichlet; sample-dirichlet: of each client's label mix).", lo=0.0, lo_open=True)


@dataclass(frozen=True)
class PathologicalOptions:
    """pathological: labels per client."""

    GROUP = "data"

    classes_per_client: int = opt(2, 'Labels per client (partition = pathological).', lo=1)


@dataclass(frozen=True)
class ShardOptions:
    """shard: shards per client."""

    GROUP = "data"

    shards_per_client: int = opt(2, 'Shards per client (partition = shard).', lo=1)


@dataclass(frozen=True)
class FilePartitionOptions:
    """file: the JSON file that says which examples each client holds."""

    GROUP = "data"

    partition_file: str = opt('', 'partition = file: JSON {"clients": [{"train": [...], "val": [...], "test": [...]}, ...]}, client k = partition id k; train/val index the train pool, test the test pool. A relative path is read from the scenario file\'s folder.')


@dataclass(frozen=True)
class SampleOptions:
    """sample: each client draws its examples when first used."""

    GROUP = "data"

    client_examples: int = opt(100, "partition = sample, sample-dirichlet: examples each client draws for training and validation (split by val-fraction); its test split draws in the test pool's proportion to the train pool.", lo=2)


@dataclass(frozen=True)
class SampleDirichletOptions(SampleOptions, DirichletOptions):
    """sample-dirichlet: drawn clients whose label mix is Dirichlet."""
