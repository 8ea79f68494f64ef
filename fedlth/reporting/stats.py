"""Statistics over seeds: mean, sample standard deviation (ddof 1) and a 95 % Student-t interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

DDOF = 1  # sample std: the seeds are a sample of the runs one could have made
CONFIDENCE = 0.95
SPREAD_NOTE = "mean ± sample std over seeds (ddof 1), on accuracies [95 % Student-t interval of the mean over seeds]"


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t critical value (4.303 for df 2 at 95 %); scipy comes with scikit-learn."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 values (df >= 1); got df {df}")
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def seed_stats(values: Sequence[float | None], confidence: float = CONFIDENCE) -> dict[str, Any]:
    """n, mean, sample std (ddof 1) and the t interval of the mean over the values that exist.

    One value has no spread: std and the interval are None (not 0, which would claim certainty).
    """
    xs = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(xs)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ddof": DDOF, "ci95": None, "values": xs}
    if not xs:
        return out
    mean = math.fsum(xs) / n
    out["mean"] = mean
    if n > DDOF:
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - DDOF))
        half = t_quantile(n - 1, confidence) * std / math.sqrt(n)
        out["std"], out["ci95"] = std, [mean - half, mean + half]
    return out


def format_stats(
    st: dict[str, Any], scale: float = 1.0, digits: int = 1, ci: bool = True, bounds: tuple[float, float] | None = None
) -> str:
    """'91.2 ± 1.3 [88.0, 94.4]' (mean ± std [95 % CI]), scaled (100 for %); 'n/a' without values.

    `bounds` clips the printed interval to what the quantity can take (accuracy: 0 to 1): a t
    interval is symmetric and can cross them with few seeds.
    """
    if st["mean"] is None:
        return "n/a"
    text = f"{scale * st['mean']:.{digits}f}"
    if st["std"] is None:
        return text
    text += f" ± {scale * st['std']:.{digits}f}"
    if ci and st["ci95"] is not None:
        lo, hi = st["ci95"]
        if bounds is not None:
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        text += f" [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return text
