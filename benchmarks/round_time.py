"""Benchmark: seconds per round against clients sampled per round, per backend (FedAvg on W1).

    python benchmarks/round_time.py [--clients 1,10,50] [--backends inprocess,ray] [--rounds 4]

Each (clients-per-round, backend) pair is one whole `fedlth run` of W1 (50 clients, 2 local
epochs, no evaluation until the end); per-round time is the median of the ServerApp's own
clock over rounds 2.. (round 1 also starts Ray's workers and imports). Ray runs with
client-cpus = 1, so as many clients train at once as the machine has cores. The pairs take
turns. Writes benchmarks/results/round_time.md and .json.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, results_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = "scenarios/w1-pathological-mnist1d.toml"


def run_once(clients: int, backend: str, rounds: int, timeout: float) -> dict[str, float | str]:
    out = Path(tempfile.mkdtemp(prefix="fedlth-round-time-")) / "run"
    sets = ["algorithm=fedavg", "eval-every=0", f"rounds={rounds}", f"clients-per-round={clients}", f"backend={backend}", "client-cpus=1"]
    cmd = [sys.executable, "-c", "from fedlth.cli import main; main()", "run", SCENARIO, "--out", str(out), "--quiet",
           *sum((["--set", s] for s in sets), [])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # the whole session: on Ray, its daemons too (a raylet that crashed leaves the driver waiting)
            os.killpg(proc.pid, 9)
            proc.communicate()
            return {"failed": f"no end within {timeout:.0f} s", "wall_s": time.perf_counter() - t0, "load_1min": os.getloadavg()[0]}
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, stderr=err)
        wall = time.perf_counter() - t0
        secs = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {"round_s": statistics.median(secs[1:] or secs), "round1_s": secs[0], "wall_s": wall, "load_1min": os.getloadavg()[0]}
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{exc.stderr[-3000:]}") from None
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def _cell(r: dict | None, key: str, fmt: str) -> str:
    if r is None:
        return "not run"
    return r["failed"] if "failed" in r else format(r[key], fmt)


def write(res: dict[str, dict[str, dict]], clients: list[int], backends: list[str], command: str, load_start: tuple[float, ...]) -> None:
    """The table of every pair measured so far."""
    header = ["clients per round", *(f"{b}: s / round" for b in backends), *(f"{b}: whole run s" for b in backends)]
    both = "inprocess" in backends and "ray" in backends
    if both:
        header.append("ray ÷ inprocess (per round)")
    rows = []
    for k in clients:
        got = {b: res.get(b, {}).get(str(k)) for b in backends}
        row = [str(k), *(_cell(got[b], "round_s", ".2f") for b in backends), *(_cell(got[b], "wall_s", ".1f") for b in backends)]
        if both:
            ok = all(got[b] is not None and "failed" not in got[b] for b in ("inprocess", "ray"))
            row.append(f"{got['ray']['round_s'] / got['inprocess']['round_s']:.2f}" if ok else "")
        rows.append(row)
    md = [
        "# Seconds per round against clients per round (FedAvg on W1, 2 local epochs)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Load average (1, 5, 15 min) at start {' '.join(f'{x:.2f}' for x in load_start)}, now "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}: the machine was shared with other jobs "
        "(each run's 1-min load is in the .json).",
        "",
        "Per round: median of the ServerApp's clock over rounds 2..; whole run: the process, start-up and final "
        "evaluation of all 50 clients included. Ray: client-cpus = 1 (as many clients at once as cores).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "round_time.json").write_text(json.dumps({"command": command, "machine": machine(), "load_average_start": load_start, "results": res}, indent=1) + "\n")
    (out / "round_time.md").write_text("\n".join(md))
    print("\n".join(md), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,10,50")
    ap.add_argument("--backends", default="inprocess,ray")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds a run may take before it counts as failed")
    ap.add_argument("--from-log", type=Path, default=None, help="keep the pairs an earlier run printed (its stdout); measure the rest")
    a = ap.parse_args()
    clients = [int(c) for c in a.clients.split(",")]
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    load_start = os.getloadavg()
    res: dict[str, dict[str, dict]] = {b: {} for b in backends}
    command = f"python benchmarks/round_time.py --clients {a.clients} --backends {','.join(backends)} --rounds {a.rounds} --timeout {a.timeout:g}"
    if a.from_log is not None:
        for line in a.from_log.read_text().splitlines():
            head, _, payload = line.partition(" {")
            parts = head.split()
            if payload and len(parts) == 2 and parts[0].isdigit() and parts[1] in res:
                res[parts[1]][parts[0]] = json.loads("{" + payload)
        command += f" --from-log {a.from_log.name} (pairs kept from the earlier run of the same command)"
    for k in clients:
        for b in backends:
            if str(k) in res[b]:
                continue
            res[b][str(k)] = run_once(k, b, a.rounds, a.timeout)
            print(k, b, json.dumps(res[b][str(k)]), flush=True)
            write(res, clients, backends, command, load_start)
    write(res, clients, backends, command, load_start)


if __name__ == "__main__":
    main()
