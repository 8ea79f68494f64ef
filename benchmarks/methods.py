"""Benchmark table: the field's comparison methods beside fedlth's algorithms, on one workload.

    python benchmarks/methods.py [--workload w1|w3|all]   # renders from the federated.py result files

It runs nothing itself: it gathers the rows that `benchmarks/federated.py` wrote for the main
algorithms (federated_<w>.json) and for the comparison methods (the runs with `--tag
personalized`, `--tag ditto-lambda1` and `--tag sparse`, whose commands the table lists), into
methods_<w>.md/.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import results_dir, table  # noqa: E402

RESULTS = results_dir()
SOURCES = ("", "-personalized", "-ditto-lambda1", "-sparse")  # federated_<w><suffix>.json, in this order
HEADER = [
    "method", "personalized acc. (%)", "worst-10 % (%)", "final density", "upload / dense FedAvg",
    "download / dense FedAvg", "local epochs / client", "wall s", "source",
]


def _ratio(row: dict, key: str) -> str:
    """A byte ratio from the raw per-seed values (download ratios were not rendered before)."""
    raw = row["raw"].get(key)
    return f"{statistics.fmean(raw):.2f}" if raw else "n/a"


def gather(workload: str, folder: Path = RESULTS) -> tuple[list[list[str]], list[str]]:
    """The rows of every source file present, and the commands that made them."""
    rows, commands = [], []
    for i, suffix in enumerate(SOURCES):
        path = folder / f"federated_{workload}{suffix}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        commands.append(f"[{i + 1}] `{data['command']}`")
        for r in data["rows"]:
            rows.append([
                r["algorithm"], r["personalized"], r["worst10"], r["density"], _ratio(r, "upload_ratio"),
                _ratio(r, "download_ratio"), r["epochs"], r["wall_s"], f"[{i + 1}]",
            ])
    return rows, commands


def render(workload: str) -> str:
    """methods_<workload>.md (and .json) from the result files present."""
    rows, commands = gather(workload)
    md = [
        f"# Methods compared on {workload.upper()}",
        "",
        f"Rendered by `python benchmarks/methods.py --workload {workload}` from the runs of:",
        "",
        *[f"- {c}" for c in commands],
        "",
        "Mean ± sample std (ddof 1) over seeds 0, 1, 2; worst-10 %: mean of the lowest 10 % of clients. "
        "Bytes: serialized Flower ArrayRecords of every training round against dense float32 FedAvg. "
        "Wall time: the machine was shared with other jobs (compare epochs, not seconds).",
        "",
        table(HEADER, rows) if rows else f"_No federated_{workload}*.json yet: run benchmarks/federated.py first._",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"methods_{workload}.md").write_text("\n".join(md))
    (RESULTS / f"methods_{workload}.json").write_text(json.dumps({"commands": commands, "header": HEADER, "rows": rows}, indent=1))
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=("w1", "w3", "all"), default="all")
    a = ap.parse_args()
    for w in ("w1", "w3") if a.workload == "all" else (a.workload,):
        print(render(w))


if __name__ == "__main__":
    main()
