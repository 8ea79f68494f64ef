"""Masked training and evaluation: pruned weights stay exactly 0 through every step."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fedlth.learning.devices import module_device
from fedlth.tickets.masks import Mask, Weights, apply_mask_


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimizer, learning-rate schedule and batch size."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    optimizer: str = "sgd"
    lr_schedule: str = "constant"  # or "cosine" over the schedule's total steps


@dataclass(frozen=True)
class TrainResult:
    """What a training call did: steps taken, mean loss of the last epoch."""

    steps: int
    loss: float


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled mini-batches by index; cheaper than a DataLoader for in-memory tensors.

    The order comes from `generator` (a CPU generator), so the batches are the same on every device.
    """
    order = torch.randperm(len(x), generator=generator).to(x.device)
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate at a step of a schedule `total_steps` long."""
    if cfg.lr_schedule == "constant" or total_steps <= 0:
        return cfg.lr
    if cfg.lr_schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    raise ValueError(f"unknown lr schedule {cfg.lr_schedule!r}; valid: constant, cosine")


class SGD:
    """torch.optim.SGD (dampening 0, no Nesterov) on its single-tensor path, the one CPU tensors
    take, step for step and bit for bit (tests/test_training.py compares them). torch.optim's
    first use imports torch._dynamo, about as much CPU as `import torch` itself, in every
    process that trains, and its per-step bookkeeping outweighs these small nets' arithmetic.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.param_groups = [{"lr": lr, "momentum": momentum, "weight_decay": weight_decay}]
        self._momentum: list[Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        lr, momentum, decay = float(group["lr"]), group["momentum"], group["weight_decay"]
        for i, p in enumerate(self.params):
            if p.grad is None:  # frozen, or no gradient reached it: torch.optim skips it too
                continue
            grad = p.grad if decay == 0 else p.grad.add(p, alpha=decay)
            if momentum != 0:
                buf = self._momentum[i]
                if buf is None:
                    buf = self._momentum[i] = grad.detach().clone()
                else:
                    buf.mul_(momentum).add_(grad, alpha=1)
                grad = buf
            p.add_(grad, alpha=-lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> SGD | torch.optim.Optimizer:
    """A fresh optimizer for the model's parameters."""
    if cfg.optimizer == "sgd":
        return SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: sgd, adam")


def _proximal(model: nn.Module, prox: tuple[float, Weights] | None, dev: torch.device) -> Callable[[], Tensor | float]:
    """The proximal term λ/2 Σ‖p − w‖² as a function of the model's current parameters (0 when off)."""
    if prox is None or prox[0] == 0:
        return lambda: 0.0
    lam, anchor = prox
    pairs = [(p, anchor[name].detach().to(dev, p.dtype)) for name, p in model.named_parameters() if name in anchor]
    return lambda: 0.5 * lam * sum((p - w).pow(2).sum() for p, w in pairs)


def train_(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    mask: Mask,
    cfg: TrainConfig,
    *,
    epochs: int,
    generator: torch.Generator,
    start_step: int = 0,
    total_steps: int | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    perturb: Callable[[nn.Module, Tensor, Tensor], Tensor] | None = None,
    device: torch.device | str | None = None,
    prox: tuple[float, Weights] | None = None,
) -> TrainResult:
    """Train in place for `epochs`, keeping masked-out weights at exactly 0.

    The schedule runs from `start_step` of `total_steps` (default: this call's steps), so a
    rewind to iteration k resumes the schedule where it was. `on_step(step, model)` runs
    after each step (e.g. to save θ_k), `on_epoch(epoch, model)` after each epoch.
    `perturb(model, x, y)` replaces each batch's inputs before the step (adversarial training).
    `prox = (λ, w)` adds λ/2 Σ‖p − w[name]‖² over the parameters `w` names (Ditto's pull toward
    the global model); its gradient is masked like the loss's, so pruned weights stay 0. The
    reported loss is the data loss alone.

    Runs where the model is: `device` given, the model moves there first (and stays); the data
    and the mask follow the model (a no-op on the CPU, so CPU results are exactly as before).
    """
    if device is not None:
        model.to(device)
    dev = module_device(model)
    x, y = x.to(dev), y.to(dev)
    mask = {k: m.to(dev) for k, m in mask.items()}
    penalty = _proximal(model, prox, dev)
    on_cpu = dev.type == "cpu"
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    total = total_steps if total_steps is not None else start_step + epochs * steps_per_epoch
    opt = make_optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss()
    apply_mask_(model, mask)
    # each mask as a multiplier next to its parameter, made once per call rather than every step
    params = dict(model.named_parameters())
    masked = [(params[name], m.to(params[name].dtype)) for name, m in mask.items()]
    step, last_loss = start_step, float("nan")
    model.train()
    for epoch in range(epochs):
        total_loss, seen = 0.0, 0
        # Off the CPU the loss is summed on the device: .item() every step would wait for the GPU.
        device_loss = None if on_cpu else torch.zeros((), dtype=torch.float64, device=dev)
        for xb, yb in batches(x, y, cfg.batch_size, generator):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            if perturb is not None:
                xb = perturb(model, xb, yb)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            (loss + penalty()).backward()
            with torch.no_grad():
                for p, m in masked:  # what mask_grads_ does
                    if p.grad is not None:
                        p.grad.mul_(m)
                opt.step()
                # Momentum and weight decay move zeros even with masked gradients: re-mask (apply_mask_).
                for p, m in masked:
                    p.mul_(m)
            step += 1
            if device_loss is None:
                total_loss += loss.item() * len(xb)
            else:
                device_loss += loss.detach().double() * len(xb)
            seen += len(xb)
            if on_step is not None:
                on_step(step, model)
        if device_loss is not None:
            total_loss = float(device_loss)
        last_loss = total_loss / max(seen, 1)
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    return TrainResult(steps=step - start_step, loss=last_loss)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2048, device: torch.device | str | None = None
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy (a fraction) of the model on (x, y).

    Runs where the model is (`device` given: the model moves there first); batches follow it.
    """
    if device is not None:
        model.to(device)
    if len(x) == 0:
        return float("nan"), float("nan")
    dev = module_device(model)
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size].to(dev), y[start : start + batch_size].to(dev)
        out = model(xb)
        loss_sum += float(nn.functional.cross_entropy(out, yb, reduction="sum"))
        correct += int((out.argmax(dim=1) == yb).sum())
    model.train(was_training)
    return loss_sum / len(x), correct / len(x)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 2048, device: torch.device | str | None = None) -> Tensor:
    """Predicted labels in eval mode, on the CPU wherever the model runs (`device`: move it first)."""
    if device is not None:
        model.to(device)
    dev = module_device(model)
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[s : s + batch_size].to(dev)).argmax(dim=1).cpu() for s in range(0, len(x), batch_size)])
    model.train(was_training)
    return out
