"""Benchmark: wall time of `fedlth run` for FedAvg on W1, per backend, against a plain PyTorch
loop doing the same local training with no Flower, in one process run.

    python benchmarks/engine_overhead.py [--rounds 100] [--backends inprocess,ray] [--repeats 1] [--side-by-side [--null-pairs N]]

The plain loop runs in a fresh interpreter too (this script with --plain-only), so both sides
pay Python's start and their imports; its loop is also timed alone, from inside.

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
# what the plain loop does not do either: draw figures, keep every client's ticket file
SAME_WORK = ("plots=false", "save-tickets=false")


def plain_loop(sc: dict) -> tuple[float, float, float]:
    """FedAvg on W1 with fedlth's math and no Flower; returns (seconds, CPU seconds, mean client accuracy)."""
    import torch

    from fedlth.data.client_data import client_data, dataset_info
    from fedlth.federation.aggregate import Update, masked_mean
    from fedlth.federation.algorithms import (
        ClientState,
        Ctx,
        evaluate_client,
        get_algorithm,
        initial_weights,
    )

    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
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
    return time.perf_counter() - t0, time.process_time() - c0, sum(accs) / len(accs)


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def fedlth_run(scenario: Path, overrides: list[str], backend: str, extra: tuple[str, ...] = SAME_WORK) -> tuple[float, float, dict]:
    """The whole `fedlth run` process (this checkout's code): wall seconds, CPU seconds (the
    process and those it reaped: Ray's workers may be missing) and its summary."""
    import json
    import os

    out = ROOT / "runs" / f"bench-engine-{backend}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable, "-c", "from fedlth.cli import main; main()", "run", str(scenario), "--out", str(out), "--quiet",
        *sum((["--set", o] for o in [*overrides, f"backend={backend}", *extra]), []),
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return time.perf_counter() - t0, _children_cpu() - c0, json.loads((out / "summary.json").read_text())


def plain_process(rounds: int) -> dict[str, float]:
    """The plain loop in a fresh interpreter, like `fedlth run`: the whole process's wall and CPU
    seconds (imports included) and, from inside it, the loop's own."""
    import json
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    t0, c0 = time.perf_counter(), _children_cpu()
    done = subprocess.run([sys.executable, __file__, "--plain-only", "--rounds", str(rounds)], check=True, cwd=ROOT,
                          env=env, capture_output=True, text=True)
    inner = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _children_cpu() - c0, **inner}


def _pinned(core: int | None):
    """A preexec_fn that keeps the child on one core (None, or no affinity call here: anywhere)."""
    import os

    if core is None or not hasattr(os, "sched_setaffinity"):
        return None
    return lambda: os.sched_setaffinity(0, {core})


def side_by_side(scenario: Path, overrides: list[str], rounds: int, cores: tuple[int, int] | None = None,
                 null: bool = False) -> dict[str, float]:
    """The plain process and `fedlth run` (in-process) started together: both meet the same load
    from other jobs, so their CPU seconds compare where one after the other they may not; on 2
    cores each has one. `cores`: (the plain process's, the other's), each pinned there (a
    virtual machine's cores can differ in speed: main() swaps them from pair to pair). `null`:
    the other is a second plain process, so the ratio shows the measurement's own noise. Wall
    and CPU seconds of each (os.wait4: each child's own rusage)."""
    import json
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    out = ROOT / "runs" / "bench-engine-side-by-side"
    shutil.rmtree(out, ignore_errors=True)
    plain = [sys.executable, __file__, "--plain-only", "--rounds", str(rounds)]
    cmds = {
        "plain": plain,
        "fedlth": plain if null else [
            sys.executable, "-c", "from fedlth.cli import main; main()", "run", str(scenario), "--out", str(out), "--quiet",
            *sum((["--set", o] for o in [*overrides, "backend=inprocess", *SAME_WORK]), [])],
    }
    t0 = time.perf_counter()
    procs = {k: subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                                 preexec_fn=_pinned(None if cores is None else cores[i]))
             for i, (k, c) in enumerate(cmds.items())}
    names = {p.pid: k for k, p in procs.items()}
    res: dict[str, float] = {}
    while names:  # whichever ends first (both write little to their pipes: no deadlock)
        pid, status, usage = os.wait4(-1, 0)
        k = names.pop(pid, None)
        if k is None:
            continue
        procs[k].returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"{k} failed (exit {code})")
        res[f"{k}_wall_s"], res[f"{k}_cpu_s"] = time.perf_counter() - t0, usage.ru_utime + usage.ru_stime
    res["plain_loop_s"] = json.loads(procs["plain"].stdout.read().strip().splitlines()[-1])["loop_s"]
    if cores is not None:
        res["plain_core"] = cores[0]
    return res


def _scenario(rounds: int) -> tuple[Path, list[str], dict]:
    from fedlth.config.scenario import load_scenario

    scenario = ROOT / "scenarios/w1-pathological-mnist1d.toml"
    overrides = ["algorithm=fedavg", f"rounds={rounds}", "eval-every=0"]
    return scenario, overrides, load_scenario(scenario, overrides)


def main() -> None:
    import json
    import os
    import statistics

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--backends", default="inprocess,ray", help="comma-separated: inprocess, ray")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each runner, in turn; medians are reported")
    ap.add_argument("--with-outputs", action="store_true", help="also time each backend with the default outputs (figures, tickets)")
    ap.add_argument("--side-by-side", action="store_true",
                    help="also run the plain process and `fedlth run` (inprocess) together, --repeats times: same load for both")
    ap.add_argument("--null-pairs", type=int, default=0,
                    help="with --side-by-side: also this many pairs of two plain processes, the measurement's noise floor")
    ap.add_argument("--plain-only", action="store_true", help="(internal) run the plain loop here, print its numbers")
    a = ap.parse_args()
    scenario, overrides, sc = _scenario(a.rounds)
    if a.plain_only:
        loop_s, loop_cpu, acc = plain_loop(sc)
        print(json.dumps({"loop_s": loop_s, "loop_cpu_s": loop_cpu, "accuracy": acc}))
        return
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    runners = {b: (b, SAME_WORK) for b in backends}
    if a.with_outputs:
        runners.update({f"{b}, default outputs": (b, ()) for b in backends})
    from fedlth.data.client_data import client_data

    client_data(sc, 0)  # data generated and cached before any clock starts
    load_start = os.getloadavg()
    plains: list[dict[str, float]] = []
    runs: dict[str, list[tuple[float, float, dict]]] = {r: [] for r in runners}
    loads: dict[str, list[float]] = {r: [] for r in runners}  # the 1-min load as each run starts
    def plain_turn() -> None:
        plains.append(plain_process(a.rounds))
        print("plain", json.dumps(plains[-1]), flush=True)

    def fedlth_turns() -> None:
        for r, (b, extra) in runners.items():
            loads[r].append(os.getloadavg()[0])
            runs[r].append(fedlth_run(scenario, overrides, b, extra))
            print(r, json.dumps({"wall_s": runs[r][-1][0], "cpu_s": runs[r][-1][1]}), flush=True)

    for i in range(a.repeats):  # in turn, so that other jobs' load hits every runner alike;
        # the order flips from pair to pair (plain first, then last): a machine that speeds up or
        # slows down over minutes favours neither side
        for turn in ((plain_turn, fedlth_turns) if i % 2 == 0 else (fedlth_turns, plain_turn)):
            turn()
    # each pair pinned to the two cores, swapped from one pair to the next: a core that runs
    # slower than the other (this virtual machine's do, by up to ~7 %) favours neither side
    pin = len(os.sched_getaffinity(0)) >= 2 if hasattr(os, "sched_getaffinity") else False
    cpus = sorted(os.sched_getaffinity(0))[:2] if pin else []

    def cores(i: int) -> tuple[int, int] | None:
        return (cpus[i % 2], cpus[1 - i % 2]) if pin else None

    together, nulls = [], []
    for i in range(a.repeats if a.side_by_side else 0):
        together.append(side_by_side(scenario, overrides, a.rounds, cores(i)))
        print("side by side", json.dumps(together[-1]), flush=True)
    for i in range(a.null_pairs if a.side_by_side else 0):
        nulls.append(side_by_side(scenario, overrides, a.rounds, cores(i), null=True))
        print("null pair", json.dumps(nulls[-1]), flush=True)
    med = {k: statistics.median(p[k] for p in plains) for k in plains[0]}
    fed = {b: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs),
               statistics.median(r[2]["wall_seconds"] for r in rs), rs[0][2]["personalized_accuracy"]["mean"])
           for b, rs in runs.items()}
    command = (f"python benchmarks/engine_overhead.py --rounds {a.rounds} --backends {','.join(backends)} --repeats {a.repeats}"
               + (" --with-outputs" if a.with_outputs else "") + (" --side-by-side" if a.side_by_side else "") + (f" --null-pairs {a.null_pairs}" if a.null_pairs else ""))
    pw, pc, lw, lc = med["wall_s"], med["cpu_s"], med["loop_s"], med["loop_cpu_s"]

    def ratios(b: str, i: int, key: str) -> list[float]:
        return [r[i] / p[key] for r, p in zip(runs[b], plains, strict=True)]

    def pairs(b: str, i: int, key: str) -> str:
        return ", ".join(f"{x:.2f}" for x in ratios(b, i, key))

    def null_ratios(kind: str) -> str:
        return ", ".join(f"{t[f'fedlth_{kind}_s'] / t[f'plain_{kind}_s']:.2f}" for t in nulls)

    def verdict(x: float) -> str:
        return "met" if x <= 1.1 else "MISSED"

    md = [
        "# Engine overhead: `fedlth run` against a plain loop (FedAvg on W1)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Load average (1, 5, 15 min) at start {' '.join(f'{x:.2f}' for x in load_start)}, at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}: the machine was shared with other jobs; the runs take turns.",
        "",
        f"Median of {a.repeats} run(s) of each, in turn in one run. The plain loop (fedlth's math, no Flower, 1 thread) runs "
        "in a fresh interpreter like `fedlth run`: its whole process (Python, imports, data, the loop) and, timed "
        "inside it, the loop alone. CPU: the process and those it reaped (Ray's workers may be missing); it moves "
        "less with other jobs' load than wall time. `fedlth run` does the plain loop's work: "
        f"`{' '.join('--set ' + x for x in SAME_WORK)}` (no figures, no ticket files; metrics.jsonl, summary.json, "
        "report.md and checkpoints are written as always; FedAvg's clients keep nothing between rounds, so they write no "
        "ticket file)"
        + ("; `default outputs`: as a user runs it, figures and tickets included." if a.with_outputs else "."),
        "",
        "| runner | wall s | CPU s | time inside the ServerApp s | mean client accuracy |",
        "|---|---|---|---|---|",
        f"| plain loop, whole process | {pw:.1f} | {pc:.1f} | | {100 * med['accuracy']:.1f} % |",
        f"| plain loop, the loop alone (no interpreter start, no imports) | {lw:.1f} | {lc:.1f} | | |",
        *(f"| `fedlth run`, backend = {b}, whole command | {w:.1f} | {c:.1f} | {srv:.1f} | {100 * acc:.1f} % |"
          for b, (w, c, srv, acc) in fed.items()),
        "",
        "| `fedlth run`, backend | × plain process (wall) | × plain process (CPU) | × the loop alone (wall) | × the loop alone (CPU) |",
        "|---|---|---|---|---|",
        *(f"| {b} | **{w / pw:.2f}** | {c / pc:.2f} | {w / lw:.2f} | {c / lc:.2f} |" for b, (w, c, _, _) in fed.items()),
        "",
        *(f"Each pair, in turn (backend = {b}; the plain process first in pairs 1, 3, ..., last in 2, 4, ...): × plain "
          f"process, wall {pairs(b, 0, 'wall_s')} (median {statistics.median(ratios(b, 0, 'wall_s')):.2f}, "
          f"{verdict(statistics.median(ratios(b, 0, 'wall_s')))}); CPU {pairs(b, 1, 'cpu_s')} "
          f"(1-min load as each `fedlth run` started: {', '.join(f'{x:.1f}' for x in loads[b])})." for b in fed),
        "",
        *(f"Target ≤ 1.1×, backend = {b}: the whole command against the plain loop's whole process {w / pw:.2f}× "
          f"({verdict(w / pw)}); against the loop alone (start-up charged to fedlth only) {w / lw:.2f}× "
          f"({verdict(w / lw)})." for b, (w, _, _, _) in fed.items()),
        "",
        *([
            "Side by side (`--side-by-side`, after the runs above): the plain process and `fedlth run` (inprocess) started "
            "together, so that both meet the same load from other jobs (each has one of the 2 cores); CPU seconds of each process.",
            "",
            "| pair | plain wall s | plain CPU s | `fedlth run` wall s | `fedlth run` CPU s | × plain (CPU) | × plain (wall) |",
            "|---|---|---|---|---|---|---|",
            *(f"| {i + 1} | {t['plain_wall_s']:.1f} | {t['plain_cpu_s']:.1f} | {t['fedlth_wall_s']:.1f} | {t['fedlth_cpu_s']:.1f} | "
              f"{t['fedlth_cpu_s'] / t['plain_cpu_s']:.2f} | {t['fedlth_wall_s'] / t['plain_wall_s']:.2f} |" for i, t in enumerate(together)),
            "",
            f"Median × plain, side by side: CPU **{statistics.median(t['fedlth_cpu_s'] / t['plain_cpu_s'] for t in together):.2f}** "
            f"({verdict(statistics.median(t['fedlth_cpu_s'] / t['plain_cpu_s'] for t in together))} against ≤ 1.1×), wall "
            f"{statistics.median(t['fedlth_wall_s'] / t['plain_wall_s'] for t in together):.2f}"
            + (f"; each process pinned to one of cores {cpus[0]} and {cpus[1]}, swapped from pair to pair (the plain process "
               f"on core {cpus[0]} in pairs 1, 3, ...)." if pin else "."),
            "",
        ] if together else []),
        *([
            f"Null pairs (`--null-pairs {a.null_pairs}`): two plain processes side by side, pinned and swapped the same way; "
            "× is the second's over the first's, so its spread is what the measurement alone moves a ratio by: "
            f"CPU {null_ratios('cpu')}; wall {null_ratios('wall')}.",
            "",
        ] if nulls else []),
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "engine_overhead.md").write_text("\n".join(md))
    (OUT / "engine_overhead.json").write_text(json.dumps({
        "command": command, "machine": machine(), "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "plain": {"median": med, "runs": plains},
        "backends": {b: {"wall_s": w, "cpu_s": c, "server_app_s": srv, "accuracy": acc, "ratio_process": w / pw,
                         "ratio_loop": w / lw, "pair_ratios_wall": ratios(b, 0, "wall_s"), "runs": [{"wall_s": r[0], "cpu_s": r[1], "load_1min_at_start": x}
                                                         for r, x in zip(runs[b], loads[b], strict=True)]}
                     for b, (w, c, srv, acc) in fed.items()},
        "side_by_side": together, "null_pairs": nulls,
    }, indent=1) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
