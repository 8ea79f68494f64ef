"""Validation-selected fine-tuning: the personal model every algorithm can share, like for like."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from fedlth.learning.training import TrainConfig, evaluate, train_
from fedlth.tickets.masks import Mask, Weights

Perturb = Callable[[nn.Module, Tensor, Tensor], Tensor]  # train_'s batch transform


@dataclass(frozen=True)
class Selection:
    """Which fine-tuning the validation split chose: learning rate, epochs, its accuracy."""

    lr: float
    epochs: int  # 0: the start model itself won
    val_accuracy: float
    epochs_run: int  # epochs trained in all, over every learning rate tried


def _snapshot(net: nn.Module) -> Weights:
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


def finetune_select(
    build: Callable[[Weights], nn.Module],
    start: Weights,
    mask: Mask,
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    cfg: TrainConfig,
    *,
    epochs: int,
    lrs: Sequence[float],
    generator: torch.Generator,
    select: str = "val-best",
    make_perturb: Callable[[], Perturb | None] | None = None,
) -> tuple[Weights, Selection]:
    """Fine-tune `start` up to `epochs` epochs per learning rate (one optimizer each, momentum
    kept across epochs) and return the checkpoint with the best validation accuracy.

    Only `val` decides: the test split is never read here. Ties go to the earlier candidate
    (the start model, then fewer epochs, then the first learning rate), so a selection that
    cannot tell two models apart keeps the cheaper one. `select = "last"` returns the last
    epoch of the first learning rate (the weak baseline, kept for ablations). Pruned entries
    stay exactly zero (train_ masks gradients and re-masks after every step).
    `make_perturb()` gives train_'s batch transform (adversarial training), made afresh for
    every learning rate so each replays the same adversarial noise as it replays the batches.
    """
    if select not in ("val-best", "last"):
        raise ValueError(f"unknown fine-tuning selection {select!r}; valid: val-best, last")
    if not lrs:
        raise ValueError("finetune_select needs at least one learning rate")
    start_acc = evaluate(build(start), *val)[1]
    best, best_sel = start, Selection(lrs[0], 0, start_acc, 0)
    if epochs == 0:
        return best, best_sel
    run = 0
    # every learning rate replays the same batch order: candidates differ only by their lr
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    for lr in lrs if select == "val-best" else lrs[:1]:
        net = build(start)
        scores: list[tuple[float, Weights]] = []

        def keep(epoch: int, model: nn.Module, scores: list[tuple[float, Weights]] = scores) -> None:
            if select == "val-best":
                scores.append((evaluate(model, *val)[1], _snapshot(model)))

        perturb = make_perturb() if make_perturb is not None else None
        train_(net, *train, mask, replace(cfg, lr=lr), epochs=epochs, generator=torch.Generator().manual_seed(seed), on_epoch=keep,
               perturb=perturb)
        run += epochs
        if select == "last":
            return _snapshot(net), Selection(lr, epochs, evaluate(net, *val)[1], run)
        for i, (acc, weights) in enumerate(scores):
            if acc > best_sel.val_accuracy:
                best, best_sel = weights, Selection(lr, i + 1, acc, 0)
    return best, replace(best_sel, epochs_run=run)


def parse_lrs(text: str, default: float) -> tuple[float, ...]:
    """The comma-separated learning rates of key `finetune-lrs` (empty: the training lr)."""
    if not text.strip():
        return (default,)
    return tuple(float(x) for x in text.split(",") if x.strip())
