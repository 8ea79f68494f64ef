"""Benchmark: time to first metrics of the 1-round quickstart, per backend, against `import torch, flwr`.

    python benchmarks/first_metrics.py [--repeats 3] [--backends inprocess,ray]

In one run, after one warm-up of each (data cache filled, files in the page cache), `repeats`
times in turn: a fresh `python -c "import torch, flwr"`, then for each backend the whole
process `fedlth run scenarios/quickstart.toml --set rounds=1 --set backend=B`, polled from
outside for the first complete line of its metrics.jsonl (round 1 trained: the line the
ServerApp writes before the round's evaluation), for the evaluated line that replaces it, and
for its exit. Medians are reported, with round 1's own seconds (the ServerApp's clock) to
split compute from start-up. Writes benchmarks/results/first_metrics.md and .json.
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
SCENARIO = "scenarios/quickstart.toml"
POLL_S = 0.01
LIMIT_S = 900.0
GOAL_S, GOAL_RATIO = 4.0, 2.5
PENDING = '"evaluation_pending": true'  # metrics.jsonl: a round trained, its evaluation running


def _env() -> dict[str, str]:
    """This checkout's packages first (Ray workers inherit it)."""
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def import_once() -> dict[str, float]:
    """A fresh interpreter importing torch and flwr: wall and CPU seconds."""
    cpu0, t0 = _cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, flwr"], check=True, env=_env(), cwd=ROOT)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": _cpu() - cpu0}


def run_once(backend: str) -> dict[str, float]:
    """The whole `fedlth run` process, polled: seconds to its first metrics line and to its exit."""
    out = Path(tempfile.mkdtemp(prefix="fedlth-first-metrics-")) / "run"
    cmd = [
        sys.executable, "-c", "from fedlth.cli import main; main()", "run", SCENARIO, "--set", "rounds=1",
        "--set", f"backend={backend}", "--out", str(out), "--quiet",
    ]
    metrics, marks = out / "metrics.jsonl", {"load_1min": os.getloadavg()[0]}
    cpu0, t0 = _cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while proc.poll() is None and time.perf_counter() - t0 < LIMIT_S:
            if "evaluated_s" not in marks and metrics.exists():
                text, now = metrics.read_text(), time.perf_counter() - t0
                if text.endswith("\n"):  # a complete line: round 1 trained (evaluation pending), or evaluated
                    if "first_metrics_s" not in marks:
                        marks["first_metrics_s"] = now
                        marks["train1_s"] = json.loads(text.splitlines()[0])["seconds"]  # the ServerApp's clock
                    if PENDING not in text:
                        marks["evaluated_s"] = now
            time.sleep(POLL_S)
        if proc.poll() is None:
            raise RuntimeError(f"fedlth run did not end within {LIMIT_S:.0f} s")
        marks["exit_s"] = time.perf_counter() - t0
        marks["cpu_s"] = _cpu() - cpu0  # the driver and what it reaped (Ray workers may be missing)
        log = proc.stdout.read() if proc.stdout else ""
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log[-3000:]}")
        marks.setdefault("first_metrics_s", marks["exit_s"])  # written between two polls at the very end
        marks.setdefault("evaluated_s", marks["exit_s"])
        marks["round1_s"] = json.loads(metrics.read_text().splitlines()[0])["seconds"]
        marks.setdefault("train1_s", marks["round1_s"])
        summary = json.loads((out / "summary.json").read_text())
        marks["accuracy"] = summary["personalized_accuracy"]["mean"]
        return marks
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(out.parent, ignore_errors=True)


# The in-process command with CPU-time marks (this process's own CPU: in-process, that is all of it).
CPU_SPLIT = """
import json, sys, time
marks = {"interpreter_s": time.process_time()}
import server.server_app as sa
train, plot = sa._train_round, sa.plot_federated
def timed_train(*a, **k):
    marks.setdefault("round1_start_s", time.process_time())
    return train(*a, **k)
def timed_plot(*a, **k):
    marks["outputs_written_s"] = time.process_time()
    plot(*a, **k)
sa._train_round, sa.plot_federated = timed_train, timed_plot
from fedlth.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
marks["end_s"] = time.process_time()
print("CPU " + json.dumps(marks))
"""


def cpu_split() -> None:
    """Where the in-process command's CPU seconds go: to round 1's start, round 1 (and the run's
    outputs), the plots; against a fresh `import torch, flwr` measured next to it."""
    out = Path(tempfile.mkdtemp(prefix="fedlth-cpu-split-")) / "run"
    args = ["run", SCENARIO, "--set", "rounds=1", "--set", "backend=inprocess", "--out", str(out), "--quiet"]
    try:
        imp = import_once()
        done = subprocess.run([sys.executable, "-c", CPU_SPLIT, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, check=True)
        m = json.loads([x for x in done.stdout.splitlines() if x.startswith("CPU ")][0][4:])
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    command = "python benchmarks/first_metrics.py --cpu-split"
    rows = [
        ("start-up: interpreter, imports, scenario and data check, to round 1", m["round1_start_s"]),
        ("round 1 (5 clients train, 20 evaluate with fine-tuning) and the run's outputs", m["outputs_written_s"] - m["round1_start_s"]),
        ("plots", m["end_s"] - m["outputs_written_s"]),
        ("whole command", m["end_s"]),
    ]
    md = [
        "# CPU seconds of the in-process quickstart round (`--set rounds=1`)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Load average (1 min) at the end {os.getloadavg()[0]:.2f}: the machine was shared; CPU seconds move less with load than wall time.",
        "",
        "| part | CPU s | × `import torch, flwr` |",
        "|---|---|---|",
        f"| `python -c \"import torch, flwr\"` (fresh process, next to it) | {imp['cpu_s']:.2f} | 1.00 |",
        *(f"| {name} | {sec:.2f} | {sec / imp['cpu_s']:.2f} |" for name, sec in rows),
        "",
    ]
    res = results_dir()
    res.mkdir(parents=True, exist_ok=True)
    (res / "first_metrics_cpu.json").write_text(json.dumps({"command": command, "machine": machine(), "import": imp, "marks": m}, indent=1) + "\n")
    (res / "first_metrics_cpu.md").write_text("\n".join(md))
    print("\n".join(md))


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def render(imports: list[dict[str, float]], runs: dict[str, list[dict[str, float]]], command: str, repeats: int,
           load_start: tuple[float, ...], load_end: tuple[float, ...]) -> tuple[dict, str]:
    """The result record and its markdown table (medians over the repeats that finished)."""
    backends = [b for b in runs if runs[b]]
    done = min([len(imports), *(len(runs[b]) for b in backends)])
    imports, runs = imports[:done], {b: runs[b][:done] for b in backends}
    imp = _median(imports)
    med = {b: _median(r) for b, r in runs.items()}
    accs = {b: sorted({r["accuracy"] for r in rs}) for b, rs in runs.items()}
    result = {
        "command": command, "machine": machine(), "repeats_finished": done, "load_average_start": load_start, "load_average_end": load_end,
        "import_torch_flwr": {"median": imp, "runs": imports}, "backends": {b: {"median": med[b], "runs": runs[b]} for b in backends},
    }
    rows = [f"| `python -c \"import torch, flwr\"` | {imp['wall_s']:.2f} | | | {imp['cpu_s']:.2f} | 1.00 | | | |"]
    for b in backends:
        m = med[b]
        rows.append(
            f"| `fedlth run` quickstart rounds=1, backend = {b} | {m['first_metrics_s']:.2f} | {m['train1_s']:.2f} | "
            f"{m['first_metrics_s'] - m['train1_s']:.2f} | {m['cpu_s']:.2f} | {m['first_metrics_s'] / imp['wall_s']:.2f} | "
            f"{m['evaluated_s']:.2f} | {m['round1_s']:.2f} | {m['exit_s']:.2f} |"
        )
    md = [
        "# Time to first metrics: `fedlth run scenarios/quickstart.toml --set rounds=1`",
        "",
        f"Command: `{command}`  ",
        f"Machine: {result['machine']}  ",
        f"Load average (1, 5, 15 min) at start {' '.join(f'{x:.2f}' for x in load_start)}, at end "
        f"{' '.join(f'{x:.2f}' for x in load_end)}: the machine was shared with other jobs.",
        "",
        f"Whole process, median of {done} run(s) after a warm-up{f' (of {repeats} asked for)' if done < repeats else ''}, "
        "measured in turn in one run, polled from outside. First metrics: the first complete line of metrics.jsonl, "
        "round 1's training line (5 clients trained and aggregated: accepted updates, train loss, upload bytes, "
        "density), written before the round's evaluation (`evaluation_pending`). Training s: that line's `seconds` "
        "(the ServerApp's clock). Evaluated line: when the evaluated line (all 20 clients fine-tuned, pruned, "
        "retrained and scored) replaced it; round 1 s: its `seconds`. CPU: the command's reaped processes (Ray's "
        "workers may be missing).",
        "",
        "| what | first metrics s | of which round 1 training s | start-up s (first metrics − training) | CPU s | × import "
        "| evaluated line s | round 1 with evaluation s | exit s |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Goals: first metrics ≤ {GOAL_S:g} s and ≤ {GOAL_RATIO:g} × the import time measured in the same run.",
        "",
        *(
            f"- backend = {b}: {med[b]['first_metrics_s']:.2f} s "
            f"({'met' if med[b]['first_metrics_s'] <= GOAL_S else 'MISSED'}), "
            f"{med[b]['first_metrics_s'] / imp['wall_s']:.2f} × import ({'met' if med[b]['first_metrics_s'] <= GOAL_RATIO * imp['wall_s'] else 'MISSED'}); "
            f"personalized accuracy {', '.join(f'{x:.4f}' for x in accs[b])}"
            for b in backends
        ),
        "",
    ]
    return result, "\n".join(md)


def _write(result: dict, md: str) -> None:
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "first_metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "first_metrics.md").write_text(md)
    print(md)


def from_log(path: Path, command: str, repeats: int) -> None:
    """Render the table from the stdout of a run (its lines `import torch, flwr {...}` and `BACKEND {...}`)."""
    imports: list[dict[str, float]] = []
    runs: dict[str, list[dict[str, float]]] = {}
    notes = []
    for line in path.read_text().splitlines():
        if line.startswith("RuntimeError:"):
            notes.append(f"The run ended early: `{line}`.")
        if line.split(" {")[0].endswith(" warm-up"):
            w = json.loads("{" + line.partition(" {")[2])
            notes.append(f"Warm-up (not in the medians), backend = {line.split()[0]}: first metrics {w['first_metrics_s']:.2f} s, "
                         f"round 1 {w['round1_s']:.2f} s, exit {w['exit_s']:.2f} s, 1-min load {w['load_1min']:.1f}.")
        head, _, payload = line.partition(" {")
        if not payload or head not in ("import torch, flwr", "inprocess", "ray"):
            continue  # warm-ups, and anything else the run printed (a traceback)
        record = json.loads("{" + payload)
        if head == "import torch, flwr":
            imports.append(record)
        else:
            runs.setdefault(head, []).append(record)
    loads = [r["load_1min"] for rs in runs.values() for r in rs]
    result, md = render(imports, runs, command, repeats, (min(loads),), (max(loads),))
    notes.insert(0, f"Rendered from that run's stdout with `--from-log {path}`.")
    result["rendered_from_log"], result["notes"] = str(path), notes
    md += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    _write(result, md.replace("Load average (1, 5, 15 min) at start", "1-min load average over the runs: from").replace(", at end ", " to "))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="inprocess,ray")
    ap.add_argument("--from-log", type=Path, default=None, help="render the tables from the stdout of an earlier (unfinished) run")
    ap.add_argument("--cpu-split", action="store_true", help="only: where the in-process command's CPU seconds go")
    a = ap.parse_args()
    if a.cpu_split:
        cpu_split()
        return
    backends = [b.strip() for b in a.backends.split(",") if b.strip()]
    command = f"python benchmarks/first_metrics.py --repeats {a.repeats} --backends {','.join(backends)}"
    if a.from_log is not None:
        from_log(a.from_log, command, a.repeats)
        return
    load_start = os.getloadavg()
    import_once()  # warm-ups: the page cache, and the data cache the first run fills
    for b in backends:
        print(b, "warm-up", json.dumps(run_once(b)), flush=True)
    imports: list[dict[str, float]] = []
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in backends}
    for _ in range(a.repeats):  # in turn, so that load from other work hits every measure alike
        imports.append(import_once())
        print("import torch, flwr", json.dumps(imports[-1]), flush=True)
        for b in backends:
            runs[b].append(run_once(b))
            print(b, json.dumps(runs[b][-1]), flush=True)
    _write(*render(imports, runs, command, a.repeats, load_start, os.getloadavg()))


if __name__ == "__main__":
    main()
