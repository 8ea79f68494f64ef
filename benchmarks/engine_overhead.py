"""Benchmark: wall time of `fedlth run` (Flower's simulation engine) for FedAvg on W1 against a
plain PyTorch loop doing the same local training with no Flower, in one process run.

    python benchmarks/engine_overhead.py [--rounds 100]

Writes benchmarks/results/engine_overhead.md.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, results_dir  # noqa: E402

ROOT = Path(__file__).parent.parent
OUT = results_dir()


def plain_loop(sc: dict) -> tuple[float, float]:
    """FedAvg on W1 with fedlth's math and no Flower; returns (seconds, mean client accuracy)."""
    import torch

    from fedlth.aggregate import Update, masked_mean
    from fedlth.algorithms import ClientState, Ctx, evaluate_client, get_algorithm, initial_weights
    from fedlth.client_data import client_data, dataset_info

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    shape, classes = dataset_info(sc)
    alg = get_algorithm("fedavg")
    glob = initial_weights(sc, shape, classes)
    rng = random.Random(sc["seed"])
    data = {pid: client_data(sc, pid) for pid in range(sc["num-clients"])}
    for rnd in range(1, sc["rounds"] + 1):
        pids = sorted(rng.sample(range(sc["num-clients"]), sc["clients-per-round"]))
        updates = []
        for pid in pids:
            reply = alg.train(glob, ClientState(), Ctx(sc, data[pid], pid, rnd))
            updates.append(Update(reply.weights, {}, int(reply.metrics["num-examples"])))
        glob = masked_mean(glob, updates)
    accs = [evaluate_client(alg, glob, ClientState(), Ctx(sc, data[p], p, 0))["accuracy"] for p in data]
    return time.perf_counter() - t0, sum(accs) / len(accs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    a = ap.parse_args()
    from fedlth.client_data import client_data
    from fedlth.scenario import load_scenario

    scenario = ROOT / "scenarios/w1-pathological-mnist1d.toml"
    overrides = ["algorithm=fedavg", f"rounds={a.rounds}", "eval-every=0"]
    sc = load_scenario(scenario, overrides)
    client_data(sc, 0)  # data generated and cached before either clock starts
    plain_s, plain_acc = plain_loop(sc)
    out = ROOT / "runs" / "bench-engine"
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["fedlth", "run", str(scenario), "--out", str(out), "--quiet", *sum((["--set", o] for o in overrides), [])]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    fedlth_s = time.perf_counter() - t0
    import json

    summary = json.loads((out / "summary.json").read_text())
    ratio = fedlth_s / plain_s
    md = [
        "# Engine overhead: `fedlth run` against a plain loop (FedAvg on W1)",
        "",
        f"Command: `python benchmarks/engine_overhead.py --rounds {a.rounds}`  ",
        f"Machine: {machine()}",
        "",
        "| runner | wall s | mean client accuracy |",
        "|---|---|---|",
        f"| plain loop (fedlth math, no Flower, 1 thread) | {plain_s:.1f} | {100 * plain_acc:.1f} % |",
        f"| `fedlth run` (Flower simulation engine, Ray, whole command incl. start-up) | {fedlth_s:.1f} | {100 * summary['personalized_accuracy']['mean']:.1f} % |",
        f"| time inside the ServerApp (summary wall_seconds) | {summary['wall_seconds']:.1f} | |",
        "",
        f"Ratio: **{ratio:.2f}×** (target ≤ 1.5×: {'met' if ratio <= 1.5 else 'MISSED'}).",
        "",
    ]
    OUT.mkdir(exist_ok=True)
    (OUT / "engine_overhead.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
