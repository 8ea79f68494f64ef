"""Benchmark: wall time of `fedlth run` for FedAvg on W1, per backend, against a plain PyTorch
loop doing the same local training with no Flower, in one process run.

    python benchmarks/engine_overhead.py [--rounds 100] [--backends inprocess,ray]

Writes benchmarks/results/engine_overhead.md and .json.
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

ROOT = Path(__file__).resolve().parent.parent
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


def fedlth_run(scenario: Path, overrides: list[str], backend: str) -> tuple[float, dict]:
    """The whole `fedlth run` process (this checkout's code): wall seconds and its summary."""
    import json
    import os

    out = ROOT / "runs" / f"bench-engine-{backend}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-c", "from fedlth.cli import main; main()", "run", str(scenario), "--out", str(out), "--quiet",
        *sum((["--set", o] for o in [*overrides, f"backend={backend}"]), []),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - t0, json.loads((out / "summary.json").read_text())


def main() -> None:
    import json
    import os

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--backends", default="inprocess,ray", help="comma-separated: inprocess, ray")
    a = ap.parse_args()
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    from fedlth.client_data import client_data
    from fedlth.scenario import load_scenario

    scenario = ROOT / "scenarios/w1-pathological-mnist1d.toml"
    overrides = ["algorithm=fedavg", f"rounds={a.rounds}", "eval-every=0"]
    sc = load_scenario(scenario, overrides)
    client_data(sc, 0)  # data generated and cached before either clock starts
    load_start = os.getloadavg()
    plain_s, plain_acc = plain_loop(sc)
    runs = {b: fedlth_run(scenario, overrides, b) for b in backends}
    command = f"python benchmarks/engine_overhead.py --rounds {a.rounds} --backends {','.join(backends)}"
    md = [
        "# Engine overhead: `fedlth run` against a plain loop (FedAvg on W1)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Load average (1, 5, 15 min) at start {' '.join(f'{x:.2f}' for x in load_start)}, at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}: the machine was shared with other jobs; the runs follow one another.",
        "",
        "| runner | wall s | time inside the ServerApp s | × plain loop | mean client accuracy |",
        "|---|---|---|---|---|",
        f"| plain loop (fedlth math, no Flower, 1 thread) | {plain_s:.1f} | | 1.00 | {100 * plain_acc:.1f} % |",
        *(
            f"| `fedlth run`, backend = {b} (whole command incl. start-up) | {t:.1f} | {s['wall_seconds']:.1f} | "
            f"{t / plain_s:.2f} | {100 * s['personalized_accuracy']['mean']:.1f} % |"
            for b, (t, s) in runs.items()
        ),
        "",
        *(f"Ratio, backend = {b}: **{t / plain_s:.2f}×** (target ≤ 1.1×: {'met' if t / plain_s <= 1.1 else 'MISSED'})." for b, (t, _) in runs.items()),
        "",
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "engine_overhead.md").write_text("\n".join(md))
    (OUT / "engine_overhead.json").write_text(json.dumps({
        "command": command, "machine": machine(), "load_average_start": load_start, "plain_loop_s": plain_s,
        "plain_loop_accuracy": plain_acc,
        "backends": {b: {"wall_s": t, "server_app_s": s["wall_seconds"], "ratio": t / plain_s,
                         "accuracy": s["personalized_accuracy"]["mean"]} for b, (t, s) in runs.items()},
    }, indent=1) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
