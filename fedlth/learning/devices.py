"""Where clients compute: the scenario's `device` key as a torch.device."""

from __future__ import annotations

import os

import torch
from torch import nn

DEVICE_NAMES = ("auto", "cpu", "cuda")


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU in this process."""
    return torch.cuda.is_available()


def _no_cuda_reason() -> str:
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        # Ray hides the GPUs from a worker that reserved none.
        return "CUDA_VISIBLE_DEVICES is empty (in a simulation: give each client a GPU share with client-gpus > 0)"
    return "torch.cuda.is_available() is False (no GPU or no working driver)"


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when torch sees a GPU, else CPU; `cpu`; `cuda` or `cuda:N`: that GPU.

    Asking for CUDA where there is none is a ValueError that says why and what is allowed,
    never a silent fall-back to the CPU.
    """
    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not cuda_available():
            raise ValueError(f"device {name!r} asked for, but {_no_cuda_reason()}; allowed here: auto, cpu")
        index = int(name[5:]) if ":" in name else None
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s); "
                f"allowed: auto, cpu, cuda, cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; allowed: {', '.join(DEVICE_NAMES)} (or cuda:N)")


def module_device(model: nn.Module) -> torch.device:
    """The device of a model's parameters (buffers if it has none; CPU if it has neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
