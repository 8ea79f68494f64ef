"""One benchmark report: run every benchmark script (quick or full) and gather their tables
into BENCHMARKS.md, each with the command that made it, the machine and the date.

    python benchmarks/report.py --mode quick      # minutes; results in benchmarks/results/quick/
    python benchmarks/report.py --mode full       # hours; results in benchmarks/results/
    python benchmarks/report.py --render-only     # rebuild BENCHMARKS.md from the full results
    python benchmarks/report.py --mode quick --only aggregation,export_ticket

Each script writes <name>.md and <name>.json into the folder named by FEDLTH_BENCH_RESULTS
(default benchmarks/results); this script sets it per mode and never mixes the two.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine  # noqa: E402

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its full and quick arguments and the result files it writes."""

    script: str
    title: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    results: tuple[str, ...]  # result stems, in the order they appear in the report


BENCHES: dict[str, Bench] = {
    "central_imp": Bench("central_imp.py", "Central lottery ticket: IMP with rewinding and its controls",
                         (), ("--seeds", "0", "--levels", "3", "--epochs", "2"), ("central_imp",)),
    "federated_w1": Bench("federated.py", "Algorithms on W1 (pathological non-IID MNIST-1D), with communication",
                          ("--workload", "w1"), ("--workload", "w1", "--seeds", "0", "--set", "rounds=5"),
                          ("federated_w1", "federated_w1-2026-11-26")),
    "federated_w3": Bench("federated.py", "Algorithms on W3 (Dirichlet non-IID MNIST-1D)",
                          ("--workload", "w3"), ("--workload", "w3", "--seeds", "0", "--set", "rounds=5"),
                          ("federated_w3", "federated_w3-2026-11-26")),
    "methods": Bench("methods.py", "Methods the field compares against: FedPer, FedRep, Ditto, DisPFL, FedPM",
                     (), (), ("methods_w1", "methods_w3")),
    "lotteryfl_ablation": Bench("lotteryfl_ablation.py", "LotteryFL: published rules against sound ones",
                                (), ("--rounds", "10"), ("lotteryfl_ablation",)),
    "engine_overhead": Bench("engine_overhead.py", "Engine overhead: `fedlth run` against a plain PyTorch loop",
                             (), ("--rounds", "10"), ("engine_overhead",)),
    "engine_breakdown": Bench("engine_breakdown.py", "Engine breakdown: `fedlth run` beside the plain loop, part by part",
                              (), ("--pairs", "2", "--rounds", "3"), ("engine_breakdown",)),
    "round_time": Bench("round_time.py", "Seconds per round against clients per round, per backend",
                        (), ("--clients", "1,10", "--rounds", "2"), ("round_time",)),
    "robust_fair": Bench("robust_fair.py", "Robust and fair tickets", (), ("--seeds", "0"),
                         ("robust_fair_robust", "robust_fair_fair")),
    "robust_tickets": Bench("robust_tickets.py", "Sparse robust tickets: PGD-AT tickets at 0.2 and 0.1",
                            ("--set", "rounds=10", "--set", "ticket-warmup-epochs=2", "--set", "finetune-epochs=4",
                             "--subfedavg-seeds", "0"),
                            ("--seeds", "0", "--set", "rounds=2", "--set", "ticket-warmup-epochs=1", "--set", "finetune-epochs=1"),
                            ("robust_tickets",)),
    "qffl_w3": Bench("qffl.py", "q-FFL against the masked mean on W3", ("--workload", "w3", "--algorithms", "fedavg", "--set", "rounds=20"),
                     ("--workload", "w3", "--seeds", "0", "--set", "rounds=5"), ("qffl_w3", "qffl_w3-lipschitz2.5", "qffl_w3-60rounds-lipschitz2.5")),
    "qffl_adult": Bench("qffl.py", "q-FFL against the masked mean on Adult", ("--workload", "adult", "--set", "rounds=20"),
                        ("--workload", "adult", "--seeds", "0", "--set", "rounds=5"), ("qffl_adult", "qffl_adult-lipschitz0.5")),
    "study": Bench("study.py", "The cross-topic study: tickets and controls against density (robustness, fairness)",
                   ("--run",), (), ("study",)),  # quick: renders only (the study takes ~1 h)
    "export_ticket": Bench("export_ticket.py", "Ticket export: file size and CPU latency", (),
                           ("--models", "cnn1d,lenet5", "--reps", "10"), ("export_ticket",)),
    "aggregation": Bench("aggregation.py", "Streaming and robust aggregation", (), ("--repeats", "2"), ("aggregation",)),
    "wire": Bench("wire.py", "Wire: bfloat16, codecs and deltas for the recommended algorithm",
                  ("--workload", "w1", "--set", "rounds=40", "--set", "finetune-epochs=5", "--set", "ticket-warmup-epochs=2"),
                  ("--workload", "w1", "--seeds", "0", "--set", "rounds=3", "--set", "finetune-epochs=1"), ("wire",)),
    "scale": Bench("scale.py", "Scale: 1,000 to 100,000 clients", (), ("--rounds", "3"), ("scale",)),
    "cores": Bench("cores.py", "Cores: concurrent clients and torch threads", (), (), ("cores",)),
    "first_round": Bench("first_round.py", "Time to first round", (), ("--repeats", "1"), ("first_round",)),
    "first_metrics": Bench("first_metrics.py", "Time to first metrics, per backend, against `import torch, flwr`",
                           (), ("--repeats", "1"), ("first_metrics", "first_metrics_cpu")),
    "suite_time": Bench("suite_time.py", "Test suite wall time against the serial baseline",
                        ("--serial",), (), ("suite_time",)),
}


def run_bench(name: str, bench: Bench, mode: str, folder: Path) -> float:
    """Run one benchmark script; returns its wall seconds. A failure stops the report."""
    args = bench.quick if mode == "quick" else bench.full
    cmd = [sys.executable, str(Path(__file__).parent / bench.script), *args]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "FEDLTH_BENCH_RESULTS": str(folder)}
    if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
        raise SystemExit(f"benchmark {name} failed; BENCHMARKS.md left as it was")
    return time.perf_counter() - t0


def render(folder: Path, mode: str, command: str) -> str:
    """BENCHMARKS.md: a header, then every result table found in `folder`."""
    parts = [
        "# Benchmarks", "",
        f"Generated by `{command}` ({mode} mode) on {machine()}.",
        "Each section below is the table its script wrote, with its own command, machine and date;",
        "a section whose result file is missing says so. Targets that were missed say MISSED.", "",
    ]
    if mode == "quick":
        parts += ["**Quick mode**: fewer seeds, rounds and repeats than the full benchmarks; the numbers",
                  "check that every script runs, they are not the project's reference results.", ""]
    parts.append("## Contents\n")
    parts += [f"- {b.title}" for b in BENCHES.values()]
    parts.append("")
    for bench in BENCHES.values():
        parts.append(f"## {bench.title}\n")
        for stem in bench.results:
            md = folder / f"{stem}.md"
            if md.is_file():
                text = md.read_text().strip()
                # demote the script's own title so the report keeps one level-1 heading
                parts.append("\n".join("##" + line if line.startswith("# ") else line for line in text.splitlines()))
            else:
                parts.append(f"_No result yet: run `python benchmarks/{bench.script} {' '.join(bench.full)}`._")
            parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("quick", "full"), default="quick")
    ap.add_argument("--only", default="", help=f"Comma-separated benchmarks to run (others' results are kept): {', '.join(BENCHES)}")
    ap.add_argument("--render-only", action="store_true", help="Run nothing; rebuild BENCHMARKS.md from the results of --mode.")
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    a = ap.parse_args()
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    folder = RESULTS / "quick" if a.mode == "quick" else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    if not a.render_only:
        for name in names:
            seconds = run_bench(name, BENCHES[name], a.mode, folder)
            print(f"[{name}] done in {seconds:.0f} s", flush=True)
    command = "python benchmarks/report.py " + " ".join(sys.argv[1:])
    a.out.write_text(render(folder, a.mode, command.strip()))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
