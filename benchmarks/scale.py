"""Benchmark: `scenarios/scale-100k.toml` (100 clients a round) at 1,000, 10,000 and 100,000
clients: peak memory of the whole process tree, time before round 1, median training-round
time, evaluation seconds, and disk per client.

    python benchmarks/scale.py [--clients 1000,10000,100000] [--rounds 6] [--repeats 2]

Sizes run in turn, the whole sequence `--repeats` times (so a burst of load from other jobs
hits every size alike); each size's figures pool its repeats (medians; peak: the maximum).

Writes benchmarks/results/scale.md and .json (runs land in runs/bench-scale-<n>/).
Targets (issue 17): peak RSS of the process tree <= 4 GB at every size; the median training
round within 20 % of the 1,000-client figure; time before round 1 and evaluation not growing
with the federation (the run evaluates eval-clients of them); disk per client stated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import PeakTreeRSS, machine, results_dir, table  # noqa: E402

ROOT = Path(__file__).parent.parent
OUT = results_dir()
SCENARIO = "scenarios/scale-100k.toml"
GB = 1e9


def _disk(folder: Path) -> tuple[int, int]:
    """(bytes, files) of the ticket files under `folder`."""
    files = list(folder.glob("ticket-*.pt")) if folder.is_dir() else []
    return sum(f.stat().st_size for f in files), len(files)


def run_one(n: int, rounds: int) -> dict:
    """`fedlth run` as a subprocess, its process tree sampled for memory."""
    out = ROOT / "runs" / f"bench-scale-{n}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", "from fedlth.cli import main; main()", "run", SCENARIO, "--out", str(out), "--quiet",
           "--set", f"num-clients={n}", "--set", f"rounds={rounds}"]
    load = os.getloadavg()[0]
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    with PeakTreeRSS(proc.pid) as mem:
        rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"fedlth run with {n} clients failed (exit {rc})")
    rounds_log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["seconds"] for r in rounds_log if r["evaluate"] is None]
    summary = json.loads((out / "summary.json").read_text())
    acc, timing = summary["personalized_accuracy"], summary["timing"]
    disk, files = _disk(out / "client-state")
    return {
        "clients": n, "load_at_start": load, "peak_rss_bytes": mem.peak, "wall_seconds": wall,
        "before_round_1_seconds": timing["first_round_started_unix"] - started,
        "before_round_1_in_server_seconds": timing["seconds_before_first_round"],
        "train_round_seconds": train, "median_round_seconds": statistics.median(train) if train else None,
        "evaluation_seconds": timing["evaluation_seconds"],
        "evaluated_clients": acc["evaluated_clients"], "trained_evaluated": acc["trained_clients"],
        "never_trained_evaluated": acc["never_trained_clients"],
        "personalized_accuracy": acc["mean"], "accuracy_trained": acc["mean_trained"],
        "clients_trained": len({pid for r in rounds_log for pid in r["train"]}),
        "ticket_bytes": disk, "ticket_files": files, "bytes_per_ticket_file": disk / files if files else None,
    }


def pooled(runs: list[dict]) -> dict:
    """One size's repeats as one row: training rounds pooled (median), the other times' medians,
    the highest peak; disk and accuracy from the first repeat (the runs are identical but for time)."""
    first = runs[0]
    train = [s for r in runs for s in r["train_round_seconds"]]
    return first | {
        "repeats": len(runs), "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
        "load_at_start": statistics.median(r["load_at_start"] for r in runs),
        "median_round_seconds": statistics.median(train) if train else None, "train_round_seconds": train,
        "before_round_1_seconds": statistics.median(r["before_round_1_seconds"] for r in runs),
        "before_round_1_in_server_seconds": statistics.median(r["before_round_1_in_server_seconds"] for r in runs),
        "final_evaluation_seconds": statistics.median(sum(r["evaluation_seconds"].values()) for r in runs),
        "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1000,10000,100000")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args()
    cmd = "python benchmarks/scale.py " + " ".join(sys.argv[1:])
    sizes = [int(n) for n in a.clients.split(",")]
    runs = [run_one(n, a.rounds) | {"repeat": k} for k in range(a.repeats) for n in sizes]
    rows = [pooled([r for r in runs if r["clients"] == n]) for n in sizes]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps({"command": cmd, "scenario": SCENARIO, "machine": machine(), "rows": rows,
                                                "runs": runs}, indent=2))
    lines = [
        f"# Scale: 100 clients per round out of 1,000 to 100,000 (`{SCENARIO}`)", "",
        f"Command: `{cmd.strip()}`  ", f"Machine: {machine()}; 2 cores shared with other helpers' jobs while this ran "
        "(load column: the 1-minute load average when each run started).", "",
        "In-process simulation, `partition = sample` (each client's 100 examples drawn with replacement from "
        "MNIST-1D's pools when it is first used), `eval-clients = 200` (the final evaluation scores a seeded sample "
        f"of 200 clients), {a.rounds} rounds, the last one evaluating; each size run {a.repeats}× (sizes in turn), "
        "its training rounds pooled for the median, other times the median of its repeats.", "",
        table(["clients", "load", "peak RSS, process tree", "before round 1 (process start)", "median training round",
               "final evaluation (200 clients)", "whole command", "disk per trained client", "accuracy: all evaluated / trained"],
              [[f"{r['clients']:,}", f"{r['load_at_start']:.1f}", f"{r['peak_rss_bytes'] / GB:.2f} GB",
                f"{r['before_round_1_seconds']:.1f} s (server {r['before_round_1_in_server_seconds']:.2f} s)",
                f"{r['median_round_seconds']:.2f} s" if r["median_round_seconds"] else "-",
                f"{r['final_evaluation_seconds']:.1f} s", f"{r['wall_seconds']:.0f} s",
                f"{r['bytes_per_ticket_file'] / 1e3:.1f} kB × {r['ticket_files']:,}" if r["ticket_files"] else "-",
                f"{_pct(r['personalized_accuracy'])} ({r['evaluated_clients']}) / {_pct(r['accuracy_trained'])} "
                f"({r['trained_evaluated']})"] for r in rows]),
        "",
    ]
    base = min(rows, key=lambda r: r["clients"])
    ok_mem = all(r["peak_rss_bytes"] <= 4 * GB for r in rows)
    lines.append(f"Peak memory: at most {max(r['peak_rss_bytes'] for r in rows) / GB:.2f} GB "
                 f"(target <= 4 GB at every size: {'met' if ok_mem else 'MISSED'}).")
    for r in rows:
        if r is base or not (r["median_round_seconds"] and base["median_round_seconds"]):
            continue
        ratio = r["median_round_seconds"] / base["median_round_seconds"]
        start = r["before_round_1_seconds"] / base["before_round_1_seconds"]
        ev = r["final_evaluation_seconds"] / max(1e-9, base["final_evaluation_seconds"])
        lines.append(f"{r['clients']:,} vs {base['clients']:,} clients: median training round {ratio:.2f}× "
                     f"(target within 20 %: {'met' if abs(ratio - 1) <= 0.2 else 'MISSED'}); time before round 1 "
                     f"{start:.2f}×; final evaluation {ev:.2f}× (for {r['clients'] // base['clients']}× the clients).")
    lines += [
        "",
        "Disk: one ticket file per client that ever trained (`RUN/client-state/ticket-<id>.pt`: its mask, personal "
        "weights, the ticket from before its last round); a client never sampled has no file, so disk grows with the "
        "clients trained (rounds × clients-per-round at most), not with the federation. Accuracy: a by-product of a "
        f"{a.rounds}-round run, not a quality number; '(n)' is how many clients each mean is over.",
    ]
    (OUT / "scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
