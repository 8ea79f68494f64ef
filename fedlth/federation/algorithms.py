"""Client-side rules of the federated algorithms, as pure functions of (received, state, data)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, TypeVar

import torch
from torch import nn

from fedlth.config.component_options import (
    DispFLOptions,
    DittoOptions,
    FedPMOptions,
    FedRepOptions,
    LocalOptions,
    LotteryFLOptions,
    PersonalTicketOptions,
    PruneGateOptions,
    SubFedAvgOptions,
)
from fedlth.config.core_options import Core, core
from fedlth.config.options import options
from fedlth.data.client_data import ClientData
from fedlth.evaluation.evaluators import EvalData, Evaluator, build_evaluators, run_evaluators
from fedlth.evaluation.robustness import pgd_adversarial_examples
from fedlth.federation import dispfl, fedpm
from fedlth.learning.devices import resolve_device
from fedlth.learning.finetune import finetune_select, parse_lrs
from fedlth.learning.models import bn_pairs, build_model
from fedlth.learning.training import TrainConfig, evaluate, train_
from fedlth.tickets.masks import (
    Mask,
    Weights,
    apply_mask,
    density,
    hamming_distance,
    ones_mask,
    prunable_names,
)
from fedlth.tickets.pruning import get_pruner, random_mask_like


@dataclass(frozen=True)
class ClientState:
    """What a client keeps between rounds: its ticket and its own model."""

    mask: Mask | None = None  # None: no ticket yet (dense)
    personal: Weights | None = None  # the model after its last local training
    candidate: Mask | None = None  # Sub-FedAvg: the mask the last round's weights would give
    rounds: int = 0  # rounds this client has trained
    # wire-download = delta: the last training download as decoded (zeros off base_mask), the mask
    # it came with ({}: dense) and its version (the server round it was sent in, minus one)
    base: Weights | None = None
    base_mask: Mask | None = None
    base_version: int = -1


@dataclass(frozen=True)
class Reply:
    """What a client sends back after training, and the state it keeps."""

    weights: Weights | None  # None: nothing is uploaded (local training)
    mask: Mask | None
    state: ClientState
    metrics: dict[str, float] = field(default_factory=dict)


Opts = TypeVar("Opts")


@dataclass(frozen=True)
class Ctx:
    """Everything a client round needs besides the weights: scenario, data, θ0, seed."""

    sc: dict[str, Any]
    data: ClientData
    partition_id: int
    server_round: int

    @property
    def generator(self) -> torch.Generator:
        # Seeded by (seed, round, client): the same batches whatever order clients run in.
        return torch.Generator().manual_seed(self.sc["seed"] * 1_000_003 + self.server_round * 10_007 + self.partition_id)

    @property
    def core(self) -> Core:
        """The scenario's core keys, typed (fedlth.config.core_options)."""
        return core(self.sc)

    def opts(self, cls: type[Opts]) -> Opts:
        """The scenario's options `cls` (fedlth.config.options): a component reads its own keys typed."""
        return options(self.sc, cls)


@lru_cache(maxsize=8)
def _init(model: str, shape: tuple[int, ...], classes: int, seed: int) -> tuple[Weights, tuple[str, ...], tuple[tuple[str, str], ...]]:
    # torch's layers draw their init from the global RNG: seed it inside a fork, so θ0 is what
    # `seed` gives and the caller's global RNG is left as it was (cache hit or miss alike)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, shape, classes)
    theta0 = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return theta0, tuple(prunable_names(net)), tuple(bn_pairs(net).items())


def initial_weights(sc: dict[str, Any], shape: tuple[int, ...], classes: int) -> Weights:
    """θ0: the same initial model on the server and every client (seeded)."""
    theta0, _, _ = _init(sc["model"], tuple(shape), classes, sc["seed"])
    return {k: v.clone() for k, v in theta0.items()}


def weight_specs(sc: dict[str, Any], shape: tuple[int, ...], classes: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of each of θ0's tensors, without copying θ0."""
    theta0, _, _ = _init(sc["model"], tuple(shape), classes, sc["seed"])
    return {k: (tuple(v.shape), v.dtype) for k, v in theta0.items()}


def model_names(sc: dict[str, Any], shape: tuple[int, ...], classes: int) -> list[str]:
    """Names of the prunable weights of the scenario's model."""
    return list(_init(sc["model"], tuple(shape), classes, sc["seed"])[1])


def train_config(sc: dict[str, Any]) -> TrainConfig:
    """Local training settings (constant learning rate: a fresh optimizer every round)."""
    return TrainConfig(
        lr=sc["lr"], momentum=sc["momentum"], weight_decay=sc["weight-decay"], batch_size=sc["batch-size"],
        optimizer=sc["optimizer"], lr_schedule="constant",
    )


def _model(ctx: Ctx, weights: Weights) -> nn.Module:
    net = build_model(ctx.sc["model"], ctx.data.input_shape, ctx.data.num_classes)
    net.load_state_dict(weights)
    return net.to(resolve_device(ctx.sc["device"]))


def _snapshot(net: nn.Module) -> Weights:
    # weights leave on the CPU: masks, pruners and the wire live there
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def _pgd_at(ctx: Ctx) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """The batch transform of PGD adversarial training (Madry et al.), or None.

    Its random starts come from a generator of its own, seeded by (seed, round, client) on a
    stream apart from the batch order's: each call gives a transform that replays the same
    noise, whichever clients trained before and whatever torch's global RNG holds.
    """
    out = ctx.core.outputs
    if not out.adv_train:
        return None
    eps, steps = out.adv_eps, out.adv_steps
    gen = _seeded(ctx, 4)

    def perturb(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return pgd_adversarial_examples(
            net, x, y, eps=eps, steps=steps, alpha=2.5 * eps / steps, input_range=ctx.data.input_range, generator=gen
        )

    return perturb


def local_train(
    ctx: Ctx, start: Weights, mask: Mask | None, epochs: int | None = None, *,
    frozen: frozenset[str] = frozenset(), prox: tuple[float, Weights] | None = None,
) -> tuple[Weights, float]:
    """Train a copy of `start` on the client's train split; pruned weights stay 0.

    `frozen` parameters get no gradient (so no step, momentum or weight decay); `prox` is
    train_'s proximal term.
    """
    net = _model(ctx, start)
    for name, p in net.named_parameters():
        p.requires_grad_(name not in frozen)
    res = train_(
        net, ctx.data.x_train, ctx.data.y_train, mask or {}, train_config(ctx.sc),
        epochs=ctx.core.federation.local_epochs if epochs is None else epochs, generator=ctx.generator, perturb=_pgd_at(ctx),
        prox=prox,
    )
    return _snapshot(net), res.loss


def received_loss(ctx: Ctx, received: Weights) -> float:
    """q-FFL's F_k: the loss of the model the client received on its train split, before it trains
    (eval mode: BatchNorm on running stats)."""
    return evaluate(_model(ctx, received), ctx.data.x_train, ctx.data.y_train)[0]


def val_accuracy(ctx: Ctx, weights: Weights) -> float:
    """Accuracy on the client's validation split: the only split gates may read."""
    return evaluate(_model(ctx, weights), ctx.data.x_val, ctx.data.y_val)[1]


def _ones(ctx: Ctx) -> Mask:
    theta0, names, _ = _init(ctx.sc["model"], ctx.data.input_shape, ctx.data.num_classes, ctx.sc["seed"])
    return ones_mask(theta0, list(names))


def _step_amount(mask: Mask, rate: float, target: float) -> float:
    """Prune `rate` of what is kept, but never below the target density."""
    d = density(mask)
    return max(0.0, min(rate, 1.0 - target / d)) if d > 0 else 0.0


def _metrics(ctx: Ctx, loss: float, mask: Mask | None, **extra: float) -> dict[str, float]:
    extra.setdefault("epochs", float(ctx.core.federation.local_epochs))
    return {
        "num-examples": float(len(ctx.data.x_train)), "train-loss": loss,
        "density": density(mask) if mask else 1.0, "partition-id": float(ctx.partition_id), **extra,
    }


# --- dense baselines -------------------------------------------------------------------


def fedavg_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """FedAvg: train the global model, send it all back."""
    assert received is not None, "fedavg needs the global model"
    trained, loss = local_train(ctx, received, None)
    return Reply(trained, None, replace(state, rounds=state.rounds + 1), _metrics(ctx, loss, None))


def federation_epochs(sc: dict[str, Any]) -> int:
    """Local epochs an average client trains in the federation: rounds × share sampled × E."""
    fed = core(sc).federation
    return max(1, round(fed.rounds * fed.clients_per_round / core(sc).data.num_clients * fed.local_epochs))


def local_only_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """Local-only, as the literature trains it: at its first round a client trains its own
    model from θ0 for `local-total-epochs` (0: the federation's budget) with one optimizer
    (momentum kept across all epochs) per learning rate of `finetune-lrs`, keeping the
    validation-best epoch and lr (the same selection every algorithm's fine-tuning gets); it
    never shares its model.
    Later rounds leave the model as it is.
    """
    if state.personal is not None:
        return Reply(None, None, replace(state, rounds=state.rounds + 1), _metrics(ctx, float("nan"), None, epochs=0.0))
    total = ctx.opts(LocalOptions).local_total_epochs or federation_epochs(ctx.sc)
    start = initial_weights(ctx.sc, ctx.data.input_shape, ctx.data.num_classes)
    trained, sel = _finetune(ctx, start, None, epochs=total)  # the same lr choice as every fine-tuning
    metrics = _metrics(ctx, float("nan"), None, epochs=float(total), **{"selected-epochs": float(sel.epochs)})
    return Reply(None, None, replace(state, personal=trained, rounds=state.rounds + 1), metrics)


Personal = tuple[Weights, dict[str, float]]


def _finetune(ctx: Ctx, start: Weights, mask: Mask | None, *, epochs: int | None = None, lrs: tuple[float, ...] | None = None):
    """The shared validation-selected fine-tuning (fedlth.learning.finetune) on this client's data."""
    sc, tune = ctx.sc, ctx.core.personal
    return finetune_select(
        lambda w: _model(ctx, w), start, mask or {}, (ctx.data.x_train, ctx.data.y_train), (ctx.data.x_val, ctx.data.y_val),
        train_config(sc), epochs=tune.finetune_epochs if epochs is None else epochs,
        lrs=parse_lrs(tune.finetune_lrs, ctx.core.training.lr) if lrs is None else lrs, generator=ctx.generator,
        select=tune.finetune_select, make_perturb=(lambda: _pgd_at(ctx)) if ctx.core.outputs.adv_train else None,  # PGD-AT in fine-tuning too
    )


def personal_finetune(ctx: Ctx, start: Weights, mask: Mask | None) -> Personal:
    """`start` fine-tuned on the client's data, the epoch and lr chosen on validation."""
    weights, sel = _finetune(ctx, start, mask)
    return weights, {"finetune-epochs-chosen": float(sel.epochs), "finetune-lr": sel.lr, "finetune-epochs-run": float(sel.epochs_run)}


def global_model(received: Weights | None, state: ClientState, ctx: Ctx) -> Personal:
    """Evaluate the received global model as is."""
    assert received is not None
    return received, {}


def finetuned_global(received: Weights | None, state: ClientState, ctx: Ctx) -> Personal:
    """FedAvg + fine-tuning: the global model fine-tuned locally, epochs and lr chosen on validation."""
    assert received is not None
    return personal_finetune(ctx, received, None)


def own_model(received: Weights | None, state: ClientState, ctx: Ctx) -> Personal:
    """The client's own model: its last trained ticket, else the global subnet it holds.

    With `ticket-eval = finetune` (and a global model received), the final global subnet
    fine-tuned on local data instead (validation-selected): the ticket counterpart of FedAvg-FT.
    """
    if ctx.core.personal.ticket_eval == "finetune" and received is not None:
        return personal_finetune(ctx, apply_mask(received, state.mask) if state.mask else received, state.mask)
    if state.personal is not None:
        return state.personal, {}
    if received is None:
        return initial_weights(ctx.sc, ctx.data.input_shape, ctx.data.num_classes), {}
    return (apply_mask(received, state.mask) if state.mask else received), {}


# --- LotteryFL ---------------------------------------------------------------------------


def _lotteryfl(
    received: Weights | None, state: ClientState, ctx: Ctx, *, prune_from: str, rewind_init: bool, tolerance: float
) -> Reply:
    """LotteryFL's round with its three contested choices made explicit.

    prune_from="received": gate on the received subnet's validation accuracy and cut the mask
    from the received (shared global) weights before training, as published; "trained": train
    first, then gate and cut from the client's own trained weights. rewind_init: reset the kept
    weights to θ0 after a prune (published). tolerance: keep a prune only if validation accuracy
    drops by at most this (1.0 = never refuse, as published).
    """
    assert received is not None
    sc, gate, mask = ctx.sc, ctx.opts(PruneGateOptions), state.mask or _ones(ctx)
    target = ctx.core.federation.target_density
    theta0 = initial_weights(sc, ctx.data.input_shape, ctx.data.num_classes) if rewind_init else None
    start = apply_mask(received, mask)

    def prune(weights: Weights, acc: float) -> tuple[Mask, Weights, float]:
        if acc < gate.acc_threshold or density(mask) <= target:
            return mask, weights, 0.0
        cand = get_pruner("magnitude-layer")(weights, mask, _step_amount(mask, gate.prune_rate, target))
        cand_w = apply_mask(weights, cand)
        if tolerance < 1.0 and val_accuracy(ctx, cand_w) < acc - tolerance:
            return mask, weights, 0.0
        if theta0 is not None:
            cand_w = {k: (theta0[k] * cand[k] if k in cand else v) for k, v in cand_w.items()}
        return cand, cand_w, 1.0

    if prune_from == "received":
        acc = val_accuracy(ctx, start)
        mask, start, pruned = prune(start, acc)
        trained, loss = local_train(ctx, start, mask)
    else:
        trained, loss = local_train(ctx, start, mask)
        acc = val_accuracy(ctx, trained)
        mask, trained, pruned = prune(trained, acc)
    st = replace(state, mask=mask, personal=trained, rounds=state.rounds + 1)
    return Reply(trained, mask, st, _metrics(ctx, loss, mask, pruned=pruned, **{"gate-accuracy": acc}))


def lotteryfl_faithful_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """LotteryFL as published (gate on validation instead of test): gate on the received
    subnet, prune `prune-rate` of each layer by magnitude of the received weights, reset the
    kept weights to θ0, then train E epochs.
    """
    return _lotteryfl(received, state, ctx, prune_from="received", rewind_init=True, tolerance=1.0)


def lotteryfl_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """LotteryFL made sound (README, "Deviations"); each deviation is a scenario key, so the
    ablation is one `--set` away: `lotteryfl-prune-from`, `lotteryfl-rewind`, `prune-tolerance`.
    """
    o = ctx.opts(LotteryFLOptions)
    return _lotteryfl(
        received, state, ctx, prune_from=o.lotteryfl_prune_from, rewind_init=o.lotteryfl_rewind, tolerance=o.prune_tolerance,
    )


# --- Sub-FedAvg ---------------------------------------------------------------------------


def _hybrid_prune(weights: Weights, mask: Mask, amount: float, bn_of: dict[str, str]) -> Mask:
    """Channels of conv layers by BatchNorm scale (L1 where no BN), magnitude elsewhere."""
    conv = {k: m for k, m in mask.items() if m.dim() > 2}
    fc = {k: m for k, m in mask.items() if m.dim() <= 2}
    out: Mask = {}
    if conv:
        out |= get_pruner("structured-bn")(weights, conv, amount, bn_of=bn_of)
    if fc:
        out |= get_pruner("magnitude-layer")(weights, fc, amount)
    return {k: out[k] for k in mask}


def _subfedavg(received: Weights | None, state: ClientState, ctx: Ctx, hybrid: bool) -> Reply:
    """Sub-FedAvg: train the subnet, derive a smaller mask from the trained weights, keep it
    only while masks still change between rounds (Hamming > ε), the target is not reached
    and validation accuracy holds.
    """
    assert received is not None
    sc, o, mask = ctx.sc, ctx.opts(SubFedAvgOptions), state.mask or _ones(ctx)
    trained, loss = local_train(ctx, apply_mask(received, mask), mask)
    acc = val_accuracy(ctx, trained)
    pruned, dist, candidate = 0.0, 0.0, state.candidate
    target = ctx.core.federation.target_density
    if density(mask) > target:
        amount = _step_amount(mask, o.prune_rate, target)
        if hybrid:
            _, _, pairs = _init(sc["model"], ctx.data.input_shape, ctx.data.num_classes, sc["seed"])
            cand = _hybrid_prune(trained, mask, amount, dict(pairs))
        else:
            cand = get_pruner("magnitude-layer")(trained, mask, amount)
        dist = 1.0 if state.candidate is None or state.candidate.keys() != cand.keys() else hamming_distance(cand, state.candidate)
        candidate = cand
        if dist > o.mask_epsilon and acc >= o.acc_threshold:
            cand_w = apply_mask(trained, cand)
            if val_accuracy(ctx, cand_w) >= acc - o.prune_tolerance:
                mask, trained, pruned = cand, cand_w, 1.0
    st = replace(state, mask=mask, personal=trained, candidate=candidate, rounds=state.rounds + 1)
    return Reply(trained, mask, st, _metrics(ctx, loss, mask, pruned=pruned, **{"gate-accuracy": acc, "mask-distance": dist}))


def subfedavg_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """Sub-FedAvg (unstructured)."""
    return _subfedavg(received, state, ctx, hybrid=False)


def subfedavg_hybrid_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """Sub-FedAvg (hybrid): channel pruning on conv layers, magnitude on fully connected ones."""
    return _subfedavg(received, state, ctx, hybrid=True)


# --- shared ticket -------------------------------------------------------------------------


def shared_ticket_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """shared-ticket: train the subnet the server sent, inside the shared mask it came with.

    The server owns the mask (fedlth.federation.shared_ticket: dense warm-up, then gradual magnitude
    pruning of the aggregated model to `target-density`); the client never widens it.
    """
    assert received is not None, "shared-ticket needs the global model"
    mask = state.mask
    trained, loss = local_train(ctx, apply_mask(received, mask) if mask else received, mask)
    return Reply(trained, mask, replace(state, rounds=state.rounds + 1), _metrics(ctx, loss, mask))


def shared_ticket_personal(received: Weights | None, state: ClientState, ctx: Ctx) -> Personal:
    """The client's ticket: the final shared subnet fine-tuned on its own data inside the
    shared mask, epochs and learning rate chosen on its validation split."""
    assert received is not None
    return personal_finetune(ctx, apply_mask(received, state.mask) if state.mask else received, state.mask)


# --- personal ticket ------------------------------------------------------------------------


def sparse_upload_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """personal-ticket's round: train the dense global model, then upload only the
    `upload-density` share of each prunable layer's weights that changed most (with the mask
    of where they are); the server's masked mean updates exactly those positions, so the
    global model stays dense while the uplink is sparse. Biases and norms go dense.
    """
    assert received is not None, "personal-ticket needs the global model"
    trained, loss = local_train(ctx, received, None)
    ones = _ones(ctx)
    delta = {k: trained[k] - received[k] for k in ones}
    keep = get_pruner("magnitude-layer")(delta, ones, 1.0 - ctx.opts(PersonalTicketOptions).upload_density)
    metrics = _metrics(ctx, loss, None, **{"upload-density": density(keep)})
    return Reply(apply_mask(trained, keep), keep, replace(state, rounds=state.rounds + 1), metrics)


def personal_ticket(received: Weights | None, state: ClientState, ctx: Ctx) -> Personal:
    """The client's ticket: the global model fine-tuned on local data, pruned to
    `target-density` by `ticket-pruner` (magnitude over all layers, or per layer), then retrained inside that mask; epochs and learning
    rate chosen on validation at both stages. `ticket-control` swaps in the winning-ticket
    controls: a random mask with the same per-layer counts, or the mask on a fresh init."""
    assert received is not None
    sc, o = ctx.sc, ctx.opts(PersonalTicketOptions)
    warm, _ = _finetune(ctx, received, None, epochs=o.ticket_warmup_epochs, lrs=(ctx.core.training.lr,))
    mask = get_pruner(o.ticket_pruner)(warm, _ones(ctx), 1.0 - ctx.core.federation.target_density)
    if o.ticket_control == "random-mask":  # same count per layer, positions at random
        mask = random_mask_like(mask, ctx.generator)
    if o.ticket_control == "reinit":  # same mask, weights from a fresh random init
        warm = initial_weights(sc | {"seed": sc["seed"] + 1}, ctx.data.input_shape, ctx.data.num_classes)
    weights, info = personal_finetune(ctx, apply_mask(warm, mask), mask)
    return weights, info | {"finetune-epochs-run": info["finetune-epochs-run"] + o.ticket_warmup_epochs, "density": density(mask)}


# --- personalized baselines: FedPer, FedRep, Ditto ---------------------------------------------


def head_names(weights: Weights, prunable: list[str]) -> list[str]:
    """The head: every tensor of the module that holds the last prunable (conv/linear) weight."""
    module = prunable[-1].rpartition(".")[0]
    return [k for k in weights if k.rpartition(".")[0] == module]


def head_off(weights: Weights, prunable: list[str]) -> Mask:
    """A mask that keeps nothing of the head and says nothing of the body: a body-only upload."""
    return {k: torch.zeros_like(weights[k], dtype=torch.bool) for k in head_names(weights, prunable)}


def _head_mask(ctx: Ctx) -> Mask:
    theta0, names, _ = _init(ctx.sc["model"], ctx.data.input_shape, ctx.data.num_classes, ctx.sc["seed"])
    return head_off(theta0, list(names))


def _with_own_head(received: Weights, state: ClientState, ctx: Ctx) -> Weights:
    """The received body with this client's head: its last trained one, θ0's before it trained."""
    own = state.personal if state.personal is not None else initial_weights(ctx.sc, ctx.data.input_shape, ctx.data.num_classes)
    head = _head_mask(ctx)
    return {k: (own[k] if k in head else v).clone() for k, v in received.items()}


def _body_reply(ctx: Ctx, state: ClientState, trained: Weights, loss: float, **extra: float) -> Reply:
    """Upload the body only (the head zeroed and masked off: only its mask bits travel); keep the whole model."""
    head = _head_mask(ctx)
    st = replace(state, personal=trained, rounds=state.rounds + 1)
    return Reply(apply_mask(trained, head), head, st, _metrics(ctx, loss, None, **extra))


def fedper_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """FedPer (Arivazhagan et al. 2019): the received body with the client's own head, all
    trained for `local-epochs`; the body goes up, the head never leaves the client."""
    assert received is not None, "fedper needs the global body"
    trained, loss = local_train(ctx, _with_own_head(received, state, ctx), None)
    return _body_reply(ctx, state, trained, loss)


def fedrep_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """FedRep (Collins et al. 2021): the client's head trained `fedrep-head-epochs` with the
    received body frozen, then the body `local-epochs` with the head frozen; the body goes up."""
    assert received is not None, "fedrep needs the global body"
    start = _with_own_head(received, state, ctx)
    head = frozenset(_head_mask(ctx))
    body = frozenset(k for k in start if k not in head)
    head_epochs = ctx.opts(FedRepOptions).fedrep_head_epochs
    tuned, head_loss = local_train(ctx, start, None, head_epochs, frozen=body)
    trained, loss = local_train(ctx, tuned, None, frozen=head)
    return _body_reply(ctx, state, trained, loss, **{"head-loss": head_loss, "epochs": float(head_epochs + ctx.core.federation.local_epochs)})


def own_head_model(received: Weights | None, state: ClientState, ctx: Ctx) -> Personal:
    """FedPer / FedRep's personal model: the received (final) body with the client's own head."""
    assert received is not None
    return _with_own_head(received, state, ctx), {}


def ditto_epochs(sc: dict[str, Any]) -> int:
    """Epochs of Ditto's personal model per round (0 in the scenario: local-epochs)."""
    return options(sc, DittoOptions).ditto_personal_epochs or core(sc).federation.local_epochs


def ditto_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """Ditto (Li et al. 2021): train the global model as FedAvg does and send it; then train the
    personal model v (kept, never sent; the first global model the client receives before
    its first round) for `ditto-personal-epochs` on the loss + λ/2‖v − w‖², w the received
    global model, λ = `ditto-lambda`."""
    assert received is not None, "ditto needs the global model"
    trained, loss = local_train(ctx, received, None)
    v0 = state.personal if state.personal is not None else received
    v, v_loss = local_train(ctx, v0, None, ditto_epochs(ctx.sc), prox=(ctx.opts(DittoOptions).ditto_lambda, received))
    metrics = _metrics(ctx, loss, None, **{"personal-loss": v_loss, "epochs": float(ctx.core.federation.local_epochs + ditto_epochs(ctx.sc))})
    return Reply(trained, None, replace(state, personal=v, rounds=state.rounds + 1), metrics)


def ditto_personal(received: Weights | None, state: ClientState, ctx: Ctx) -> Personal:
    """Ditto's personal model v; a client never sampled has none and holds the global model."""
    if state.personal is not None:
        return state.personal, {}
    assert received is not None
    return received, {}


# --- DisPFL -------------------------------------------------------------------------------------


def dispfl_mask(sc: dict[str, Any], theta0: Weights, prunable: list[str], client: int) -> Mask:
    """DisPFL: the client's initial mask, drawn from (seed, client); the server draws the same."""
    shapes = {k: tuple(theta0[k].shape) for k in prunable}
    gen, o = dispfl.mask_generator(sc["seed"], client), options(sc, DispFLOptions)
    return dispfl.initial_mask(shapes, o.dispfl_density, o.dispfl_distribution, gen)


def dispfl_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """DisPFL (Dai et al. 2022), centralized: train the received mean inside the client's own
    mask, then drop the drop_fraction() smallest-magnitude kept weights of each layer and
    regrow as many where |gradient| (or, `dispfl-regrow = random`, chance) is largest; the
    regrown weights are 0. The reply carries the new mask: the server averages the weights it
    sent (the overlap) and sends the new mask's subnet next round, so regrown weights start
    their first training from the keepers' mean, as the reference's aggregation gives them
    (`dispfl-regrow-init = zero`: from 0, as in RigL)."""
    assert received is not None, "dispfl needs the global model"
    sc, o = ctx.sc, ctx.opts(DispFLOptions)
    theta0, names, _ = _init(sc["model"], ctx.data.input_shape, ctx.data.num_classes, sc["seed"])
    mask = state.mask or dispfl_mask(sc, theta0, list(names), ctx.partition_id)
    start = apply_mask(received, mask)
    if o.dispfl_regrow_init == "zero" and state.personal is not None:
        # the entries it regrew last round are the kept ones its model holds at 0: they start at 0
        # again instead of at the keepers' mean the server sent
        start = {k: torch.where(mask[k] & (state.personal[k] == 0), 0.0, v) if k in mask else v for k, v in start.items()}
    trained, loss = local_train(ctx, start, mask)
    fraction = dispfl.drop_fraction(ctx.server_round - 1, ctx.core.federation.rounds, o.dispfl_anneal)
    gen = ctx.generator
    if o.dispfl_regrow == "gradient":  # one shuffled batch, as the reference screens
        idx = torch.randperm(len(ctx.data.x_train), generator=gen)[: ctx.core.training.batch_size]
        scores = dispfl.gradient_scores(_model(ctx, trained), ctx.data.x_train[idx], ctx.data.y_train[idx], list(names))
    else:
        scores = dispfl.random_scores(mask, gen)
    new = dispfl.prune_and_regrow(trained, mask, scores, dispfl.replace_counts(mask, fraction))
    kept = apply_mask(trained, new)
    metrics = _metrics(ctx, loss, new, **{"drop-fraction": fraction, "mask-distance": hamming_distance(new, mask)})
    return Reply(kept, new, replace(state, mask=new, personal=kept, rounds=state.rounds + 1), metrics)
# --- FedPM ------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _fedpm_net(model: str, shape: tuple[int, ...], classes: int, seed: int, init: str) -> tuple[Weights, tuple[str, ...]]:
    theta0, prunable, _ = _init(model, shape, classes, seed)
    frozen, names = fedpm.network(theta0, prunable, init, seed)
    return frozen, tuple(names)


def fedpm_network(sc: dict[str, Any], shape: tuple[int, ...], classes: int) -> tuple[Weights, list[str]]:
    """FedPM's frozen random network (seeded: the server and every client hold the same) and
    the names of the tensors that get mask scores."""
    frozen, names = _fedpm_net(sc["model"], tuple(shape), classes, sc["seed"], options(sc, FedPMOptions).fedpm_init)
    return {k: v.clone() for k, v in frozen.items()}, list(names)


def _fedpm_probs(ctx: Ctx, received: Weights | None) -> tuple[Weights, list[str], Weights]:
    assert received is not None, "fedpm needs the server's probabilities"
    frozen, names = fedpm_network(ctx.sc, ctx.data.input_shape, ctx.data.num_classes)
    missing = [k for k in names if k not in received]
    if missing:
        raise ValueError(f"fedpm: the server sent no probabilities for {missing}")
    return frozen, names, {k: received[k].float() for k in names}


def _seeded(ctx: Ctx, stream: int, device: torch.device | None = None) -> torch.Generator:
    # another stream of this client's round seed than the batch order's (2**40 apart: no clash)
    gen = torch.Generator(device=device) if device is not None else torch.Generator()
    return gen.manual_seed(ctx.generator.initial_seed() + stream * 2**40)


def fedpm_train(received: Weights | None, state: ClientState, ctx: Ctx) -> Reply:
    """FedPM (Isik et al., ICLR 2023): the weights stay frozen at their seeded random values;
    the client's scores start at logit of the received probabilities, train `local-epochs` with
    Adam (`fedpm-lr`) through a fresh Bernoulli(σ(s)) mask every forward pass, and it uploads
    one mask sampled from its trained σ(s): bits only, no values. It keeps nothing."""
    o = ctx.opts(FedPMOptions)
    frozen, names, probs = _fedpm_probs(ctx, received)
    net = _model(ctx, frozen)
    dev = next(iter(net.parameters())).device
    scores, loss = fedpm.train_scores(
        net, frozen, fedpm.scores_from_probabilities(probs), ctx.data.x_train, ctx.data.y_train,
        epochs=ctx.core.federation.local_epochs, batch_size=ctx.core.training.batch_size, lr=o.fedpm_lr, generator=ctx.generator,
        sampler=_seeded(ctx, 1, dev),
    )
    mask = fedpm.sample_masks({k: torch.sigmoid(s) for k, s in scores.items()}, _seeded(ctx, 2))
    metrics = _metrics(ctx, loss, mask, **fedpm.upload_bits(mask, names, o.fedpm_codec, probs))
    return Reply(None, mask, replace(state, rounds=state.rounds + 1), metrics)


def fedpm_model(received: Weights | None, state: ClientState, ctx: Ctx) -> Personal:
    """FedPM's model: the frozen network ⊙ one mask of the received (final) probabilities,
    sampled as the reference code tests it, or thresholded at 0.5 (`fedpm-eval-mask`). The
    sample is seeded by (seed, round) alone: every client scores the same global model."""
    sc = ctx.sc
    frozen, _, probs = _fedpm_probs(ctx, received)
    if ctx.opts(FedPMOptions).fedpm_eval_mask == "threshold":
        mask = fedpm.threshold_masks(probs)
    else:
        mask = fedpm.sample_masks(probs, torch.Generator().manual_seed(sc["seed"] * 1_000_003 + ctx.server_round * 10_007 + 3 * 2**40))
    return fedpm.masked_weights(frozen, mask), {"density": density(mask)}


# --- registry -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Algorithm:
    """A federated algorithm: the client's round, the model it is judged by, server flags."""

    name: str
    train: Callable[[Weights | None, ClientState, Ctx], Reply]
    personal: Callable[[Weights | None, ClientState, Ctx], Weights]
    masked: bool  # the server keeps each client's mask and sends it only its subnet
    uploads: bool  # False: clients never send weights (nothing to aggregate)
    has_global: bool  # the aggregated global model is itself a model worth scoring
    help: str
    server_mask: bool = False  # the server prunes one shared mask (fedlth.federation.shared_ticket) and sends it
    sparse_upload: bool = False  # uploads are a selection of a dense model (`sparse-fill` says how they fold)
    local_head: bool = False  # the head (head_names) stays on the clients: never sent down, never aggregated
    # the mask a client starts from, (scenario, θ0, prunable names, client) -> mask, known to the server
    # without asking (the first download is already that subnet); None: dense until the client prunes
    initial_mask: Callable[[dict[str, Any], Weights, list[str], int], Mask] | None = None
    # a reply may move its mask (prune and regrow) but keep no more per layer than its initial mask;
    # only its overlap with the mask the client was sent is averaged (new entries carry no trained value)
    mask_regrows: bool = False
    mask_posterior: bool = False  # FedPM: uploads are sampled masks alone; the server keeps a Beta posterior per entry and sends probabilities


ALGORITHMS: dict[str, Algorithm] = {
    "fedavg": Algorithm("fedavg", fedavg_train, global_model, False, True, True, "Dense FedAvg."),
    "local": Algorithm("local", local_only_train, own_model, False, False, False, "Each client alone, no federation."),
    "fedavg-ft": Algorithm("fedavg-ft", fedavg_train, finetuned_global, False, True, True, "FedAvg, then local fine-tuning (up to finetune-epochs, validation-selected) before evaluation."),
    "lotteryfl": Algorithm("lotteryfl", lotteryfl_train, own_model, True, True, False, "LotteryFL with sound rules (prune own trained weights, no rewind, validated prunes); with its defaults this is Sub-FedAvg's rule without the mask-distance test."),
    "lotteryfl-faithful": Algorithm("lotteryfl-faithful", lotteryfl_faithful_train, own_model, True, True, False, "LotteryFL as published (gate on the received subnet, rewind kept weights to θ0)."),
    "subfedavg": Algorithm("subfedavg", subfedavg_train, own_model, True, True, False, "Sub-FedAvg, unstructured."),
    "subfedavg-hybrid": Algorithm("subfedavg-hybrid", subfedavg_hybrid_train, own_model, True, True, False, "Sub-FedAvg, hybrid: conv channels by BN scale + FC magnitude."),
    "shared-ticket": Algorithm(
        "shared-ticket", shared_ticket_train, shared_ticket_personal, False, True, False,
        "Dense warm-up, then the server prunes the global model gradually to one shared sparse ticket; sparse rounds; each client fine-tunes it (validation-selected).",
        server_mask=True,
    ),
    "personal-ticket": Algorithm(
        "personal-ticket", sparse_upload_train, personal_ticket, False, True, True,
        "Dense global model trained from sparse uploads (each client sends the upload-density share of weights that changed most); each client's ticket: fine-tune, prune to target-density, retrain (validation-selected).",
        sparse_upload=True,
    ),
    "fedper": Algorithm(
        "fedper", fedper_train, own_head_model, False, True, False,
        "FedPer: body (all but the last linear layer) averaged, each client's head kept on the client; body and head trained together.",
        local_head=True,
    ),
    "fedrep": Algorithm(
        "fedrep", fedrep_train, own_head_model, False, True, False,
        "FedRep: the client's head trained fedrep-head-epochs (body frozen), then the body local-epochs (head frozen); only the body averaged.",
        local_head=True,
    ),
    "ditto": Algorithm(
        "ditto", ditto_train, ditto_personal, False, True, True,
        "Ditto: FedAvg global model; each client keeps a personal model trained with λ/2‖v − w‖² toward the received global (ditto-lambda).",
    ),
    "dispfl": Algorithm(
        "dispfl", dispfl_train, own_model, True, True, False,
        "DisPFL, run through the server (the paper is peer-to-peer; the server's masked mean stands for the neighbours' average): each client's own random sparse mask (dispfl-density, "
        "dispfl-distribution), the masked mean over keepers, after local training a cosine-annealed drop of the smallest "
        "weights and regrowth by gradient (dispfl-anneal, dispfl-regrow); density constant.",
        initial_mask=dispfl_mask, mask_regrows=True,
    ),
    "fedpm": Algorithm(
        "fedpm", fedpm_train, fedpm_model, False, True, True,
        "FedPM: frozen random weights; clients train Bernoulli mask scores and upload one sampled mask (bits only); the server's Beta posterior per weight gives the probabilities it sends.",
        mask_posterior=True,
    ),
}


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered under `name` (fedlth.config.registry: built-in or plug-in)."""
    from fedlth.config import registry

    return registry.load("algorithm", name)


EVALUATOR_KEYS = ("evaluators", "seed")  # core keys every evaluator sees, besides its own options'


@lru_cache(maxsize=8)
def _evaluators(options: tuple[tuple[str, Any], ...]) -> tuple[Evaluator, ...]:
    opts = dict(options)
    return tuple(build_evaluators(opts["evaluators"], opts))


def scenario_evaluators(sc: dict[str, Any]) -> tuple[Evaluator, ...]:
    """The scenario's evaluators, built once per process, each given the keys its options declare."""
    from fedlth.config.registry import option_keys

    names = [n.strip() for n in core(sc).outputs.evaluators.split(",") if n.strip()]
    keys = dict.fromkeys([*EVALUATOR_KEYS, *(k for n in names for k in option_keys("evaluator", n))])
    return _evaluators(tuple((k, sc[k]) for k in keys if k in sc))


def evaluate_client(
    alg: Algorithm, received: Weights | None, state: ClientState, ctx: Ctx, personal: Personal | None = None
) -> dict[str, float]:
    """Score the client's personal model (`personal`, else alg.personal's) on its own test
    split (validation too, for selection), then run the scenario's evaluators on it.
    """
    weights, info = personal if personal is not None else alg.personal(received, state, ctx)
    net = _model(ctx, weights)
    out = score_model(ctx, net)
    out |= {
        "val-accuracy": evaluate(net, ctx.data.x_val, ctx.data.y_val)[1],
        "density": density(state.mask) if state.mask else 1.0, "partition-id": float(ctx.partition_id), **info,
    }
    if alg.has_global and received is not None:
        # FedPM: the model just scored is the global one (what it received are probabilities)
        out["global-accuracy"] = out["accuracy"] if alg.mask_posterior else evaluate(_model(ctx, received), ctx.data.x_test, ctx.data.y_test)[1]
    return out


def score_model(ctx: Ctx, net: nn.Module) -> dict[str, float]:
    """A model on the client's test split (examples, accuracy, loss) and the scenario's
    evaluators on it: what a live evaluation and `fedlth evaluate` both report."""
    d = ctx.data
    loss, acc = evaluate(net, d.x_test, d.y_test)
    out = {"num-examples": float(len(d.y_test)), "accuracy": acc, "loss": loss}
    evaluators = scenario_evaluators(ctx.sc)
    if evaluators:
        out |= run_evaluators(evaluators, net, EvalData(d.x_test, d.y_test, d.input_shape, d.num_classes, d.input_range, d.sensitive_test))
    return out
