"""Paste-ready tables: human column names, sensible precision, and the same rows as CSV."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlth.reporting.io import write_text_atomic
from fedlth.reporting.stats import format_stats

ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "pgd-l2": "PGD-L2", "cw": "CW", "square": "Square", "autoattack": "AutoAttack"}
FAIRNESS_NAMES = {
    "demographic_parity_difference": "demographic parity diff.",
    "equalized_odds_difference": "equalized odds diff.",
    "equal_opportunity_difference": "equal opportunity diff.",
    "accuracy_difference": "accuracy gap between groups",
    "selection_rate": "positive rate (%)",
}
NAMES = {
    "algorithm": "algorithm",
    "predictor": "predictor",
    "arm": "arm",
    "pooled_accuracy": "pooled acc. (%)",
    "positive_rate": "positive rate (%)",
    "target_density": "target density",
    "density": "personal ticket density (mean over clients)",
    "accuracy": "personalized acc. (%)",
    "personalized": "personalized acc. (%)",
    "accuracy_std_over_clients": "std over clients (pp)",
    "worst10": "worst-10 % clients (%)",
    "global": "global acc. (%)",
    "upload_mb": "upload MB",
    "download_mb": "download MB",
    "upload_ratio": "upload / dense FedAvg",
    "epochs": "local epochs / client",
    "wall_s": "wall s",
    "robustness.clean_accuracy": "clean acc. (%)",
    "robustness.samples": "attack samples / client",
    "dense_accuracy": "dense acc. (%)",
    "ticket_accuracy": "ticket acc. (%)",
    "reinit_accuracy": "re-init control acc. (%)",
    "random_mask_accuracy": "random-mask control acc. (%)",
    "level": "IMP level",
}
_ROBUST = re.compile(r"^robustness\.(?P<attack>[\w-]+)\.eps=(?P<eps>[^.]+(?:\.\d+)?)\.(?P<what>robust_accuracy|attack_success_rate)$")


def human_name(key: str) -> str:
    """A column name a reader understands: 'robustness.pgd.eps=0.05.attack_success_rate' ->
    'PGD ε=0.05 attack success (%)', 'sex.equalized_odds_difference' -> 'sex: equalized odds diff.'."""
    if key in NAMES:
        return NAMES[key]
    m = _ROBUST.match(key)
    if m:
        what = "robust acc. (%)" if m["what"] == "robust_accuracy" else "attack success (%)"
        return f"{ATTACK_NAMES.get(m['attack'], m['attack'])} ε={m['eps']} {what}"
    feat, _, metric = key.rpartition(".")
    if feat and metric in FAIRNESS_NAMES:
        return f"{feat}: {FAIRNESS_NAMES[metric]}"
    return key.replace("_", " ")


def unit(key: str) -> str:
    """How a column's fractions print: 'pct' (×100, 1 decimal), 'pp' (points, 1 decimal),
    'gap' (3 decimals: a difference of rates), 'density' (3 decimals), 'num' (2), 'int', 'text'."""
    if key in ("algorithm", "variant", "predictor", "group", "arm"):
        return "text"
    if key == "accuracy_std_over_clients":
        return "pp"
    if key.endswith(("accuracy", "worst10", "attack_success_rate", "selection_rate")) or key in ("personalized", "global", "tpr", "fpr", "positive_rate"):
        return "pct"
    if key.endswith("_difference"):
        return "gap"
    if key.endswith("density"):
        return "density"
    if key in ("level", "robustness.samples", "n", "count"):
        return "int"
    if key in ("wall_s", "epochs"):
        return "one"
    return "num"


def format_cell(key: str, value: Any) -> str:
    """One value in the precision its column reads best in; None is 'n/a'; a seed_stats dict is
    'mean ± std [95 % CI]' in that precision."""
    kind = unit(key)
    if isinstance(value, Mapping):  # statistics over seeds
        scale, digits = {"pct": (100.0, 1), "pp": (100.0, 1), "gap": (1.0, 3), "density": (1.0, 3), "one": (1.0, 1)}.get(kind, (1.0, 2))
        # the interval where it matters (accuracies); costs, times and densities read best as mean ± std
        return format_stats(value, scale, digits, ci=kind == "pct", bounds=(0.0, 1.0) if kind == "pct" else None)
    if value is None:
        return "n/a"
    if kind == "text" or isinstance(value, str):
        return str(value)
    if kind == "int":
        return f"{value:.0f}"
    return {
        "pct": f"{100 * value:.1f}", "pp": f"{100 * value:.1f}", "gap": f"{value:.3f}", "density": f"{value:.3f}",
        "one": f"{value:.1f}",
    }.get(kind, f"{value:.2f}")


@dataclass(frozen=True)
class Table:
    """Rows of raw values under named columns; renders as markdown (human) and CSV (machine)."""

    columns: Sequence[str]
    rows: Sequence[Mapping[str, Any]]
    headers: Mapping[str, str] = field(default_factory=dict)  # where human_name's word is wrong here

    def markdown(self) -> str:
        """A markdown table: human headers, each cell in its column's precision."""
        names = [self.headers.get(c) or human_name(c) for c in self.columns]
        lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(self.columns)]
        # a cell a row has no business in (a baseline's density) is blank; a value that is undefined is 'n/a'
        lines += ["| " + " | ".join(format_cell(c, r[c]) if c in r else "" for c in self.columns) + " |" for r in self.rows]
        return "\n".join(lines)

    def csv_columns(self) -> list[str]:
        """Raw keys; a column of seed statistics becomes KEY_mean, KEY_std, KEY_ci95_low, KEY_ci95_high, KEY_n."""
        cols: list[str] = []
        for c in self.columns:
            if any(isinstance(r.get(c), Mapping) for r in self.rows):
                cols += [f"{c}_mean", f"{c}_std", f"{c}_ci95_low", f"{c}_ci95_high", f"{c}_n"]
            else:
                cols.append(c)
        return cols

    def csv(self) -> str:
        """The same rows at machine precision (fractions, not %), empty where a value is missing."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.csv_columns())
        for r in self.rows:
            cells: list[Any] = []
            for c in self.columns:
                v = r.get(c)
                if any(isinstance(x.get(c), Mapping) for x in self.rows):
                    st = v if isinstance(v, Mapping) else {}
                    ci = st.get("ci95") or [None, None]
                    cells += [st.get("mean"), st.get("std"), ci[0], ci[1], st.get("n")]
                else:
                    cells.append(v)
            writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in cells])
        return buf.getvalue()

    def write_csv(self, path: Path) -> None:
        """The CSV beside its markdown table."""
        write_text_atomic(path, self.csv())


def csv_note(name: str) -> str:
    """The line under a markdown table that points to its CSV."""
    return f"Same rows at full precision (fractions, raw keys): `{name}`."
