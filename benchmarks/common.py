"""Shared helpers for benchmark scripts: machine description, mean ± std, markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
from datetime import UTC, datetime


def machine() -> str:
    """One line naming the machine and the versions that matter."""
    import flwr
    import torch

    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores{mem}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, flwr {flwr.__version__}; "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    )


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pm(xs: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± std' of values, scaled (percent by default)."""
    m, s = mean_std(xs)
    return f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
