"""Benchmark: how many clients train at once (`client-cpus`) and with how many threads each
(`torch-threads`), on the same scenario.

    python benchmarks/cores.py [--rounds 4] [--repeats 2]

Runs `fedlth run scenarios/quickstart.toml --set rounds=R` for each setting, on quickstart as it
is and with heavier rounds (10 clients a round, 6 local epochs); the settings take turns run by run so that load from other work on the machine hits them alike. Reports the
seconds of the train-only rounds after the first (the first round also pays each Ray worker's
imports and data loading), of the last round (train + evaluation of every client), and of the
whole command. With a C-core machine, client-cpus = c runs floor(C / c) clients at once.

Writes benchmarks/results/cores.json and cores.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, results_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = results_dir()
SCENARIO = ROOT / "scenarios" / "quickstart.toml"
RUN_LIMIT_S = 1800

# (client-cpus, torch-threads): the default first.
SETTINGS = ((1.0, 1), (2.0, 1), (2.0, 2), (1.0, 2))
# quickstart as it is (tiny rounds: overheads dominate), and with more work per round.
WORKLOADS = {"quickstart": [], "quickstart, heavier rounds": ["clients-per-round=10", "local-epochs=6"]}


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return float("nan")


def run_once(cpus: float, threads: int, rounds: int, cache: Path, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="fedlth-cores-")) / "run"
    sets = [f"rounds={rounds}", "eval-every=0", f"client-cpus={cpus:g}", f"torch-threads={threads}", *extra]
    cmd = [shutil.which("fedlth") or "fedlth", "run", str(SCENARIO), "--out", str(out), "--quiet", *sum((["--set", s] for s in sets), [])]
    env = dict(os.environ, FEDLTH_CACHE=str(cache))
    env.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="flwr-home-"))
    load = _load()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        rounds_s = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((out / "summary.json").read_text())
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return {
        "round_seconds": rounds_s, "steady_round_s": statistics.median(rounds_s[1:-1]) if len(rounds_s) > 2 else float("nan"),
        "last_round_s": rounds_s[-1], "first_round_s": rounds_s[0], "command_s": wall, "load_1min": load,
        "cpu_s": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime,
        "accuracy": summary["personalized_accuracy"]["mean"],
    }


def measure(workload: str, extra: list[str], rounds: int, repeats: int) -> dict:
    """Every setting on one workload, the settings taking turns; rows of medians."""
    cache = Path(tempfile.mkdtemp(prefix="fedlth-cores-cache-"))
    try:
        # Data generated and partitioned before any clock starts.
        subprocess.run(
            [sys.executable, "-c", "from fedlth.data.client_data import client_data; from fedlth.config.scenario import load_scenario; "
             f"client_data(load_scenario({str(SCENARIO)!r}, {extra!r}), 0)"],
            cwd=ROOT, env=dict(os.environ, FEDLTH_CACHE=str(cache)), check=True, timeout=600,
        )
        runs: dict[str, list[dict]] = {f"{c:g},{t}": [] for c, t in SETTINGS}
        load_start = _load()
        for _ in range(repeats):
            for cpus, threads in SETTINGS:
                r = run_once(cpus, threads, rounds, cache, extra)
                runs[f"{cpus:g},{threads}"].append(r)
                print(f"{workload}: client-cpus={cpus:g} torch-threads={threads}: {json.dumps(r)}", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cores = len(os.sched_getaffinity(0))
    rows = []
    for (cpus, threads), key in zip(SETTINGS, runs, strict=True):
        rs = runs[key]
        med = {k: statistics.median(r[k] for r in rs) for k in ("steady_round_s", "last_round_s", "first_round_s", "command_s", "cpu_s", "load_1min")}
        rows.append({"client_cpus": cpus, "torch_threads": threads, "clients_at_once": int(cores // cpus), **med,
                     "min_steady_round_s": min(r["steady_round_s"] for r in rs), "accuracy": [r["accuracy"] for r in rs], "runs": rs})
    return {"extra": extra, "load_start": load_start, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="Rounds per run (>= 3: the middle ones are timed).")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    results = {name: measure(name, extra, a.rounds, a.repeats) for name, extra in WORKLOADS.items()}
    md = [
        "# Cores: clients at once (`client-cpus`) and threads per client (`torch-threads`)",
        "",
        f"Command: `python benchmarks/cores.py --rounds {a.rounds} --repeats {a.repeats}`  ",
        f"Machine: {machine()}; {cores} cores, shared with other work while this ran (see the load column: the 1-min "
        "load average when each run started; 2.0 would be this machine's cores fully busy).",
        "",
        f"Scenario: scenarios/quickstart.toml (20 clients, cnn1d on MNIST-1D), {a.rounds} rounds, evaluation in the last "
        "round only. Seconds, median of the repeats (min in brackets). Steady round: the train-only rounds after the "
        "first (the first also pays each Ray worker's imports and data loading).",
        "",
    ]
    for name, res in results.items():
        rows, base = res["rows"], res["rows"][0]
        per_round = next((e.split("=")[1] for e in res["extra"] if e.startswith("clients-per-round=")), "5")
        epochs = next((e.split("=")[1] for e in res["extra"] if e.startswith("local-epochs=")), "2")
        waves = int(per_round)
        md += [
            f"## {name}: {per_round} clients a round, {epochs} local epochs" + (f" (`{' '.join('--set ' + e for e in res['extra'])}`)" if res["extra"] else ""),
            "",
            "| client-cpus | torch-threads | clients at once | steady round s | speed-up vs default | last round (train + eval of 20) s | "
            "first round s | whole command s | CPU s | load | accuracy |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            md.append(
                f"| {r['client_cpus']:g} | {r['torch_threads']} | {r['clients_at_once']} | {r['steady_round_s']:.2f} ({r['min_steady_round_s']:.2f}) | "
                f"{base['steady_round_s'] / r['steady_round_s']:.2f}× | {r['last_round_s']:.2f} | {r['first_round_s']:.2f} | "
                f"{r['command_s']:.1f} | {r['cpu_s']:.1f} | {r['load_1min']:.1f} | {', '.join(f'{x:.4f}' for x in r['accuracy'])} |"
            )
        md += [
            "",
            f"{waves} clients on 2 workers take {-(-waves // 2)} waves instead of {waves}: two at once can gain at most "
            f"{waves / -(-waves // 2):.2f}× on a round.",
            "",
        ]
    md += [
        "CPU s: user + system seconds of the processes the command reaped (the driver and Ray's daemons; Ray's worker",
        "processes may be missing). Accuracy differs between torch-threads 1 and 2: a different number of threads sums",
        "in a different order, so runs are reproducible for a given torch-threads, not across values of it.",
        "",
    ]
    OUT.mkdir(exist_ok=True)
    (OUT / "cores.json").write_text(json.dumps({"machine": machine(), "cores": cores, "rounds": a.rounds, "workloads": results}, indent=1) + "\n")
    (OUT / "cores.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
