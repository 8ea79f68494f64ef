"""Benchmark: where `fedlth run`'s time goes beside the plain loop's (FedAvg on W1): many short
pairs of processes, each timing from inside the work both do (training, model builds, the final
evaluation) and, by difference, the rest: the engine.

    python benchmarks/engine_breakdown.py [--pairs 16] [--rounds 20]

Each pair runs the plain loop of benchmarks/engine_overhead.py and `fedlth run` (backend =
inprocess, the same work: no figures, no ticket files) one after the other, the order flipping
from pair to pair. Inside each process the functions that do the shared work are wrapped in
wall-clock timers before anything runs; the clock starts once the process has imported torch
and, for `fedlth run`, Flower and its apps (start-up is engine_overhead.py's and
first_metrics.py's business). Per pair: the ratio of
each part, and the engine's extra milliseconds per message. Many short pairs give a median
that the machine's slow spells (minutes long, up to ±15 % here) move less than a few long runs.

Writes benchmarks/results/engine_breakdown.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, results_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = results_dir()
# the plain loop's work, which `fedlth run` does too: (module, function, label)
WORK = (
    ("fedlth.learning.training", "train_", "training"),
    ("fedlth.federation.algorithms", "_model", "model builds"),
    ("fedlth.federation.algorithms", "_snapshot", "weight snapshots"),
    ("fedlth.federation.algorithms", "evaluate_client", "evaluation"),
)


def _timed(totals: dict[str, list[float]], label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = totals[label]
            entry[0] += time.perf_counter() - t
            entry[1] += 1

    return wrapper


def child(kind: str, rounds: int, result: Path) -> None:
    """One process of a pair: wrap the shared work's functions, run, write the times to `result`."""
    import importlib

    totals: dict[str, list[float]] = {label: [0.0, 0] for _, _, label in WORK}
    for mod, name, label in WORK:
        m = importlib.import_module(mod)
        setattr(m, name, _timed(totals, label, getattr(m, name)))
    algorithms = importlib.import_module("fedlth.federation.algorithms")
    algorithms.train_ = importlib.import_module("fedlth.learning.training").train_  # its own binding
    if kind == "fedlth":  # its imports (Flower, the apps) are start-up, not engine: before the clock
        for mod in ("fedlth.cli", "server.simulate", "server.server_app", "server.local_grid", "clients.client_app"):
            importlib.import_module(mod)
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "plain":
        from engine_overhead import _scenario, plain_loop

        plain_loop(_scenario(rounds)[2])
    else:
        from fedlth.cli import main

        out = Path(tempfile.mkdtemp(prefix="fedlth-breakdown-"))
        shutil.rmtree(out)
        sys.argv = ["fedlth", "run", str(ROOT / "scenarios/w1-pathological-mnist1d.toml"), "--out", str(out), "--quiet",
                    *sum((["--set", o] for o in ("algorithm=fedavg", f"rounds={rounds}", "eval-every=0",
                                                  "backend=inprocess", "plots=false", "save-tickets=false")), [])]
        try:
            main()
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
        finally:
            shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    result.write_text(json.dumps({"wall_s": wall, "cpu_s": cpu, "parts": {k: {"s": v[0], "calls": v[1]} for k, v in totals.items()}}))


def _run(kind: str, rounds: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        subprocess.run([sys.executable, __file__, "--child", kind, "--rounds", str(rounds), "--result", str(result)],
                       check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        return json.loads(result.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--child", choices=("plain", "fedlth"), help="(internal) run one side of a pair here")
    ap.add_argument("--result", type=Path, help="(internal) where the child writes its times")
    a = ap.parse_args()
    if a.pairs < 1 or a.rounds < 1:
        ap.error("--pairs and --rounds must be at least 1")
    if a.child:
        child(a.child, a.rounds, a.result)
        return
    from engine_overhead import _scenario

    from fedlth.data.client_data import client_data

    client_data(_scenario(a.rounds)[2], 0)  # data generated and cached before any clock starts
    load_start = os.getloadavg()
    pairs: list[dict[str, dict[str, Any]]] = []
    for i in range(a.pairs):
        order = ("plain", "fedlth") if i % 2 == 0 else ("fedlth", "plain")
        pairs.append({kind: _run(kind, a.rounds) for kind in order})
        print(i + 1, json.dumps({k: round(v["wall_s"], 3) for k, v in pairs[-1].items()}), flush=True)
    labels = [label for _, _, label in WORK]
    messages = pairs[0]["fedlth"]["parts"]["training"]["calls"]

    def work(side: dict[str, Any]) -> float:
        return sum(side["parts"][k]["s"] for k in labels)

    rows = []
    for p in pairs:
        plain, fed = p["plain"], p["fedlth"]
        rows.append({
            "whole": fed["wall_s"] / plain["wall_s"],
            "work": work(fed) / work(plain),
            **{k: fed["parts"][k]["s"] / plain["parts"][k]["s"] for k in labels},
            "engine_ms_per_message": 1e3 * ((fed["wall_s"] - work(fed)) - (plain["wall_s"] - work(plain))) / messages,
            "engine_share": ((fed["wall_s"] - work(fed)) - (plain["wall_s"] - work(plain))) / plain["wall_s"],
        })
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    above = {k: sum(r[k] > 1 for r in rows) for k in ("work", *labels)}
    plain_med = statistics.median(p["plain"]["wall_s"] for p in pairs)
    command = f"python benchmarks/engine_breakdown.py --pairs {a.pairs} --rounds {a.rounds}"
    md = [
        "# Engine breakdown: `fedlth run` beside the plain loop, part by part (FedAvg on W1)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Load average (1, 5, 15 min) at start {' '.join(f'{x:.2f}' for x in load_start)}, at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.",
        "",
        f"{a.pairs} pairs of processes, {a.rounds} rounds each ({messages} training messages), one after the other, the "
        "order flipping from pair to pair. Times from inside each process, from after its imports (torch; for `fedlth run` "
        "also Flower and its apps) to the end "
        f"(the plain loop's median {plain_med:.1f} s). *Work*: what both do (training, model builds, weight snapshots, the "
        "final evaluation), each function timed; *engine*: the rest, `fedlth run`'s minus the plain loop's.",
        "",
        "| part | median × plain (over pairs) | pairs where `fedlth run` was slower |",
        "|---|---|---|",
        f"| whole (after the imports) | **{med['whole']:.3f}** | |",
        f"| the shared work | {med['work']:.3f} | {above['work']} of {a.pairs} |",
        *(f"| {k} | {med[k]:.3f} | {above[k]} of {a.pairs} |" for k in labels),
        "",
        f"Engine: **{med['engine_ms_per_message']:.2f} ms a training message** more than the plain loop's own bookkeeping "
        f"(median over pairs; {100 * med['engine_share']:.1f} % of the plain loop's time).",
        "",
        "Each pair (× plain): whole " + ", ".join(f"{r['whole']:.3f}" for r in rows) + "; training "
        + ", ".join(f"{r['training']:.3f}" for r in rows) + ".",
        "",
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "engine_breakdown.md").write_text("\n".join(md))
    (OUT / "engine_breakdown.json").write_text(json.dumps({
        "command": command, "machine": machine(), "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "medians": med, "pairs": pairs, "ratios": rows,
    }, indent=1) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
