"""Adversarial robustness in each model's own input space: torchattacks evaluation and PGD-AT examples."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedlth.config.component_options import ATTACK_NAMES
from fedlth.reporting.progress import current as current_progress

if TYPE_CHECKING:  # imported where an attack is built: it costs ~1 s at every ClientApp start
    import torchattacks

ATTACKS: tuple[str, ...] = ATTACK_NAMES  # declared torch-free (fedlth.config.component_options); each built in _build

NOTE_AUTOATTACK = (
    "torchattacks' AutoAttack is weaker than the official one (fra31/auto-attack): its APGD-CE, "
    "APGD-T and FAB-T run 10 iterations instead of 100, so its robust accuracy is an upper "
    "bound, not the AutoAttack number papers report."
)
NOTE_CW = (
    "CW is torchattacks' L2 Carlini-Wagner with c=1, kappa=0, lr=0.01 and `steps` Adam steps "
    "(torchattacks' default is 50): eps is not used, so its robust accuracy is reported for "
    "CW's own budget, not for eps."
)
# torchattacks' AutoAttack standard (APGD-T, FAB-T) sorts logits down to the 4th largest.
AUTOATTACK_MIN_CLASSES = 4
AUTOATTACK_FALLBACK = "apgd-ce+square"
NOTE_FALLBACK = (
    "fewer than 4 classes: torchattacks' AutoAttack crashes (its targeted DLR loss needs the "
    "4th-largest logit), so only its APGD-CE and Square parts ran."
)
# Square's query budget, as in torchattacks' AutoAttack.
SQUARE_QUERIES = 5000
# CW starts from atanh(2u - 1), which is infinite at u in {0, 1} (common on tabular data).
_CW_MARGIN = 1e-6


def _unit_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    # APGD, Square and PGDL2 assume (N, C, H, W): flat inputs become one row of pixels.
    if len(input_shape) == 3:
        return tuple(input_shape)
    return (1, 1, math.prod(input_shape))


class UnitBoxAdapter(nn.Module):
    """What torchattacks attacks: inputs u in [0, 1] of shape (N, C, H, W), mapped to the model's space.

    torchattacks clips every adversarial input to [0, 1]; the affine map x = lo + u * (hi - lo)
    makes that clip the model's own valid range, so mnist1d's raw features (not in [0, 1])
    are attacked where they live. Flat inputs are shaped (N, 1, 1, D).
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, ...], input_range: tuple[float, float]
    ) -> None:
        super().__init__()
        lo, hi = float(input_range[0]), float(input_range[1])
        if not hi > lo:
            raise ValueError(f"input_range must have hi > lo; got {input_range}")
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.unit_shape = _unit_shape(self.input_shape)
        self.lo, self.hi = lo, hi

    @property
    def scale(self) -> float:
        return self.hi - self.lo

    def to_unit(self, x: Tensor) -> Tensor:
        """Model-space x to the unit box (N, *unit_shape); values outside [lo, hi] are clipped."""
        u = (x.reshape(len(x), *self.unit_shape) - self.lo) / self.scale
        return u.clamp(0.0, 1.0)

    def from_unit(self, u: Tensor) -> Tensor:
        """Unit-box u to model space, shaped (N, *input_shape)."""
        return (self.lo + u * self.scale).reshape(len(u), *self.input_shape)

    def eps_to_unit(self, eps: float) -> float:
        """An L-inf or L2 radius in model units as a radius in unit-box units."""
        return float(eps) / self.scale

    def forward(self, u: Tensor) -> Tensor:
        return self.model(self.from_unit(u))


@contextmanager
def _isolated(model: nn.Module, seed: int) -> Iterator[None]:
    """Run an attack in eval mode with a fixed seed, leaving no trace on the model or the RNGs.

    APGD, FAB and Square reseed torch's global RNG, and CW, FAB and AutoAttack backpropagate
    into the weights; frozen weights keep grads off them, and every state is put back.
    """
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    py_state = random.getstate()
    np_state = np.random.get_state()
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        model.eval()  # BatchNorm on running stats, dropout off
        for p in params:
            p.requires_grad_(False)
        torch.manual_seed(seed)
        yield
    finally:
        for p, flag, grad in zip(params, flags, grads, strict=True):
            p.requires_grad_(flag)
            p.grad = grad
        for m, training in modes:
            m.training = training
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(py_state)
        np.random.set_state(np_state)


def _autoattack(
    adapter: nn.Module, eps_u: float, num_classes: int, seed: int
) -> torchattacks.Attack:
    import torchattacks

    if num_classes >= AUTOATTACK_MIN_CLASSES:
        return torchattacks.AutoAttack(
            adapter, norm="Linf", eps=eps_u, version="standard", n_classes=num_classes, seed=seed
        )
    # The same APGD-CE and Square torchattacks' AutoAttack would run, minus APGD-T and FAB-T.
    return torchattacks.MultiAttack(
        [
            torchattacks.APGD(adapter, norm="Linf", eps=eps_u, seed=seed, loss="ce", n_restarts=1),
            torchattacks.Square(
                adapter, norm="Linf", eps=eps_u, seed=seed, n_queries=SQUARE_QUERIES, n_restarts=1
            ),
        ]
    )


def _build(
    name: str,
    adapter: UnitBoxAdapter,
    eps_u: float,
    alpha_u: float,
    steps: int,
    num_classes: int,
    seed: int,
) -> torchattacks.Attack:
    import torchattacks

    builders: dict[str, Callable[[], torchattacks.Attack]] = {
        "fgsm": lambda: torchattacks.FGSM(adapter, eps=eps_u),
        "pgd": lambda: torchattacks.PGD(adapter, eps=eps_u, alpha=alpha_u, steps=steps),
        "pgd-l2": lambda: torchattacks.PGDL2(adapter, eps=eps_u, alpha=alpha_u, steps=steps),
        "cw": lambda: torchattacks.CW(adapter, c=1, kappa=0, steps=steps, lr=0.01),
        "square": lambda: torchattacks.Square(
            adapter, norm="Linf", eps=eps_u, n_queries=SQUARE_QUERIES, n_restarts=1, seed=seed
        ),
        "autoattack": lambda: _autoattack(adapter, eps_u, num_classes, seed),
    }
    return builders[name]()


def _check(name: str, eps: float, steps: int, num_classes: int) -> None:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid names: {list(ATTACKS)}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative; got {eps}")
    if steps < 1:
        raise ValueError(f"steps must be positive; got {steps}")
    if num_classes < 2:
        raise ValueError(f"attacks need at least 2 classes; got {num_classes}")


def attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    name: str,
    eps: float,
    input_range: tuple[float, float],
    input_shape: tuple[int, ...],
    num_classes: int,
    steps: int = 10,
    alpha: float | None = None,
    seed: int = 0,
) -> Tensor:
    """Adversarial x in model space (same shape as x), within [lo, hi] of input_range.

    eps (and alpha, default 2.5 * eps / steps) are in model units: an L-inf radius for fgsm,
    pgd, square and autoattack, an L2 radius for pgd-l2; cw ignores eps (see NOTE_CW), and
    autoattack ignores steps and alpha (see NOTE_AUTOATTACK). The model runs in eval mode; its
    mode, weights, grads and the torch, random and numpy global RNG states are left as found.
    """
    _check(name, eps, steps, num_classes)
    device = next(model.parameters()).device
    adapter = UnitBoxAdapter(model, input_shape, input_range)
    eps_u = adapter.eps_to_unit(eps)
    alpha_u = adapter.eps_to_unit(2.5 * eps / steps if alpha is None else alpha)
    u = adapter.to_unit(x.detach().to(device=device, dtype=torch.float32))
    if name == "cw":
        u = u.clamp(_CW_MARGIN, 1.0 - _CW_MARGIN)
    labels = y.detach().to(device=device, dtype=torch.long)
    with _isolated(model, seed):
        atk = _build(name, adapter, eps_u, alpha_u, steps, num_classes, seed)
        u_adv = atk(u, labels)
    return adapter.from_unit(u_adv.detach()).reshape(x.shape).to(x.device)


def _predict(model: nn.Module, x: Tensor) -> Tensor:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return model(x).argmax(dim=1)
    finally:
        for m, training in modes:
            m.training = training


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    name: str,
    eps: float,
    input_range: tuple[float, float],
    input_shape: tuple[int, ...],
    num_classes: int,
    steps: int = 10,
    batch_size: int = 512,
    seed: int = 0,
) -> dict[str, float | str]:
    """Clean and robust accuracy under one attack, plus the attack's success rate.

    A sample counts as robust when it is classified right both clean and attacked. The success
    rate is the fraction of clean-correct samples the attack flips (nan when none is correct).
    Notes ride along as strings: "note" for cw and autoattack, "fallback" when autoattack ran
    without its targeted parts.
    """
    _check(name, eps, steps, num_classes)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    device = next(model.parameters()).device
    clean_hits = robust_hits = 0
    batches = math.ceil(len(x) / batch_size)
    for start in range(0, len(x), batch_size):
        # attacks run for minutes (AutoAttack): the job's progress line says which one, where
        current_progress().detail(f"{name} attack, eps {eps:g}: batch {start // batch_size + 1}/{batches}")
        xb = x[start : start + batch_size].to(device=device, dtype=torch.float32)
        yb = y[start : start + batch_size].to(device=device, dtype=torch.long)
        x_adv = attack(
            model,
            xb,
            yb,
            name=name,
            eps=eps,
            input_range=input_range,
            input_shape=input_shape,
            num_classes=num_classes,
            steps=steps,
            seed=seed + start,
        )
        clean_ok = _predict(model, xb) == yb
        adv_ok = _predict(model, x_adv) == yb
        clean_hits += int(clean_ok.sum())
        robust_hits += int((clean_ok & adv_ok).sum())
    n = len(x)
    result: dict[str, float | str] = {
        "attack": name,
        "eps": float(eps),
        "n": float(n),
        "clean_accuracy": clean_hits / n if n else math.nan,
        "robust_accuracy": robust_hits / n if n else math.nan,
        "attack_success_rate": (clean_hits - robust_hits) / clean_hits if clean_hits else math.nan,
    }
    if name == "cw":
        result["note"] = NOTE_CW
    if name == "autoattack":
        result["note"] = NOTE_AUTOATTACK
        if num_classes < AUTOATTACK_MIN_CLASSES:
            result["fallback"] = AUTOATTACK_FALLBACK
            result["fallback_note"] = NOTE_FALLBACK
    return result


def pgd_adversarial_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    alpha: float,
    input_range: tuple[float, float],
    generator: torch.Generator,
) -> Tensor:
    """L-inf PGD examples for adversarial training (Madry et al.), in model units, detached.

    Plain torch, uniform random start drawn from `generator` (a CPU generator: the caller
    seeds it by seed, round and client, so a client's noise does not depend on which clients
    ran before it or on torch's global RNG), the model left in its current mode: in train mode
    BatchNorm sees, and its running stats take in, the adversarial batches, as in standard
    PGD-AT. Only the input gets gradients.
    """
    lo, hi = float(input_range[0]), float(input_range[1])
    if not hi > lo:
        raise ValueError(f"input_range must have hi > lo; got {input_range}")
    if eps < 0 or steps < 0 or alpha < 0:
        raise ValueError(f"eps, steps and alpha must be non-negative; got {eps}, {steps}, {alpha}")
    x0 = x.detach().clamp(lo, hi)
    start = torch.rand(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    x_adv = (x0 + (2.0 * start - 1.0) * eps).clamp(lo, hi)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x0 - eps), x0 + eps).clamp(lo, hi)
    return x_adv.detach()
