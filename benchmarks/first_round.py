"""Benchmark: time to first round. From the start of `fedlth run scenarios/quickstart.toml
--set rounds=1` to the first line of its metrics.jsonl, and where those seconds go.

    python benchmarks/first_round.py --tree before=/tmp/old-tree --tree after=. [--repeats 3]

(`git archive OLD_COMMIT | tar -x -C /tmp/old-tree` makes an old tree; each tree's packages
come first on PYTHONPATH in every process it measures, Ray workers included.)

Parts, each in fresh processes so nothing is warm that a user's first command would not have:
  imports     `python -X importtime -c "import X"` for what the command, the driver and every
              Ray worker load; the third-party packages that cost most.
  data        mnist1d with an empty cache (generated) and a filled one (read back), and the
              quickstart partitions (client_data for one and for all 20 clients).
  ray         ray.init on a fresh local cluster, then the first actor's first reply.
  run         the whole command, polled from outside: metrics.jsonl created (every node has
              answered the identification query), its first line, the process's exit; with a
              cold and a warm data cache.
  phases      the same command in-process with timers around its steps (scenario check, data
              check, Ray start, actor pool, first replies, round 1), from process start.

Trees take turns run by run, so load from other work on the machine hits them alike. Results
merge into benchmarks/results/first_round.json by label, and benchmarks/results/first_round.md
is rewritten from all labels.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("FEDLTH_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))
SCENARIO = Path("scenarios") / "quickstart.toml"  # relative to the tree measured
PY = sys.executable
POLL_S = 0.02
RUN_LIMIT_S = 600.0
IMPORT_REPEATS = 5  # fresh processes per import / data measurement; the min is reported

# What the command imports in order: the CLI, the data check, the simulation driver, and what
# each Ray worker process imports when it handles its first message.
IMPORTS = {
    "fedlth.cli": "import fedlth.cli",
    "data check (fedlth.data.client_data)": "import fedlth.client_data",
    "driver (server.simulate)": "import server.simulate",
    "Ray worker (clients.client_app)": "import clients.client_app",
}
PACKAGES = (
    "torch", "flwr", "ray", "datasets", "flwr_datasets", "pyarrow", "pandas", "sklearn", "scipy", "matplotlib",
    "mnist1d", "torchattacks", "numpy", "rich", "click", "grpc", "cryptography", "fedlth", "clients", "server",
)


def _env(tree: Path, cache: Path | None = None) -> dict[str, str]:
    """The environment of a measured process: `tree`'s packages first, its own data cache."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(filter(None, (str(tree), os.environ.get("PYTHONPATH")))))
    if cache is not None:
        env["FEDLTH_CACHE"] = str(cache)
    env.setdefault("FLWR_HOME", tempfile.mkdtemp(prefix="flwr-home-"))
    return env


def _python(tree: Path, code: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> tuple[float, float, str, str]:
    """Run `python -c code` in `tree`; (wall seconds, CPU seconds, stdout, stderr)."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    res = subprocess.run([PY, *args, "-c", code], cwd=tree, env=env or _env(tree), capture_output=True, text=True, timeout=RUN_LIMIT_S)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed:\n{res.stderr[-3000:]}")
    return wall, _children_cpu() - cpu0, res.stdout, res.stderr


# ------------------------------------------------------------------------------------ imports


def importtime(tree: Path, stmt: str) -> dict:
    """Wall time of a fresh `python -c stmt` and the costliest third-party packages in it."""
    runs = [_python(tree, stmt)[:2] for _ in range(IMPORT_REPEATS)]
    err = _python(tree, stmt, args=("-X", "importtime"))[3]
    first: dict[str, int] = {}
    for line in err.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            name, cum = m.group(4), int(m.group(2))
            root = name.split(".")[0]
            if name == root and root in PACKAGES:
                first[root] = max(first.get(root, 0), cum)  # the line where the package is first imported
    top = sorted(first.items(), key=lambda kv: -kv[1])[:8]
    return {
        "wall_s": statistics.median(w for w, _ in runs), "min_s": min(w for w, _ in runs), "cpu_s": min(c for _, c in runs),
        "packages_s": {k: round(v / 1e6, 3) for k, v in top},
    }


# ------------------------------------------------------------------------------------ data

DATA_CODE = """
import json, sys, time
clock = lambda: (time.perf_counter(), time.process_time())
t0 = clock()
from fedlth.data.client_data import client_data
from fedlth.data.datasets import load_dataset
from fedlth.config.scenario import load_scenario
t1 = clock()
load_dataset("mnist1d")
t2 = clock()
sc = load_scenario(sys.argv[1] if len(sys.argv) > 1 else "scenarios/quickstart.toml", ["rounds=1"])
client_data(sc, 0)
t3 = clock()
for pid in range(sc["num-clients"]):
    client_data(sc, pid)
t4 = clock()
steps = {"imports": (t0, t1), "mnist1d": (t1, t2), "client0": (t2, t3), "all_clients_again": (t3, t4)}
out = {f"{k}_s": b[0] - a[0] for k, (a, b) in steps.items()} | {f"{k}_cpu_s": b[1] - a[1] for k, (a, b) in steps.items()}
print(json.dumps(out))
"""


def data_times(tree: Path) -> dict:
    """mnist1d generated (empty cache) and read back (filled cache), and the partitions."""
    cache = Path(tempfile.mkdtemp(prefix="fedlth-bench-cache-"))
    try:
        cold = json.loads(_python(tree, DATA_CODE, _env(tree, cache))[2])
        warm = [json.loads(_python(tree, DATA_CODE, _env(tree, cache))[2]) for _ in range(IMPORT_REPEATS)]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"cold": cold, "warm": {k: min(w[k] for w in warm) for k in warm[0]}}


# ------------------------------------------------------------------------------------ ray

RAY_CODE = """
import json, logging, time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
t2 = time.perf_counter()

@ray.remote(num_cpus=1)
class A:
    def ping(self):
        return 1

a = A.remote()
ray.get(a.ping.remote())
t3 = time.perf_counter()
ray.shutdown()
t4 = time.perf_counter()
print(json.dumps({"import_ray_s": t1 - t0, "ray_init_s": t2 - t1, "first_actor_reply_s": t3 - t2, "shutdown_s": t4 - t3}))
"""


def ray_times(tree: Path) -> dict:
    runs = [json.loads(_python(tree, RAY_CODE)[2]) for _ in range(3)]
    return {k: min(r[k] for r in runs) for k in runs[0]}


# ------------------------------------------------------------------------------------ run


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_once(tree: Path, cache: Path, extra: tuple[str, ...] = ()) -> dict:
    """`fedlth run quickstart --set rounds=1`, polled: seconds from start to each milestone."""
    out = Path(tempfile.mkdtemp(prefix="fedlth-first-round-")) / "run"
    cmd = [
        shutil.which("fedlth") or "fedlth", "run", str(SCENARIO), "--out", str(out), "--quiet", "--set", "rounds=1",
        *sum((["--set", e] for e in extra), []),
    ]
    metrics = out / "metrics.jsonl"
    marks: dict[str, float] = {"load_1min": float(load_average().split()[0])}
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=_env(tree, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while proc.poll() is None and time.perf_counter() - t0 < RUN_LIMIT_S:
            now = time.perf_counter() - t0
            if "metrics_created_s" not in marks and metrics.exists():
                marks["metrics_created_s"] = now
            if "first_line_s" not in marks and metrics.exists() and metrics.read_text().endswith("\n"):
                marks["first_line_s"] = now
            time.sleep(POLL_S)
        if proc.poll() is None:
            proc.kill()
            raise RuntimeError(f"fedlth run did not end within {RUN_LIMIT_S:.0f} s")
        marks["exit_s"] = time.perf_counter() - t0
        # CPU seconds of the processes reaped under the command (the driver, Ray's daemons; Ray's
        # workers may be missing): less sensitive than wall time to other work on the machine.
        marks["cpu_s"] = _children_cpu() - cpu0
        log = proc.stdout.read() if proc.stdout else ""
        if proc.returncode != 0:
            raise RuntimeError(f"fedlth run failed ({proc.returncode}):\n{log[-3000:]}")
        entry = json.loads(metrics.read_text().splitlines()[0])
        marks["round1_seconds"] = entry["seconds"]  # the round itself, measured by the ServerApp
        marks["wall_seconds"] = json.loads((out / "summary.json").read_text())["wall_seconds"]
        marks.setdefault("first_line_s", marks["exit_s"])
        marks.setdefault("metrics_created_s", marks["first_line_s"])
        marks["accuracy"] = json.loads((out / "summary.json").read_text())["personalized_accuracy"]["mean"]
        return marks
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(out.parent, ignore_errors=True)


def run_times(trees: dict[str, Path], repeats: int) -> dict[str, dict]:
    """Cold once, then warm `repeats` times, the trees taking turns (so load drifts hit all alike)."""
    caches = {label: Path(tempfile.mkdtemp(prefix="fedlth-bench-cache-")) for label in trees}
    runs: dict[str, dict] = {label: {"warm_runs": []} for label in trees}
    try:
        for label, tree in trees.items():
            runs[label]["cold"] = run_once(tree, caches[label])  # empty cache: mnist1d is generated
            print(label, "cold", json.dumps(runs[label]["cold"]), flush=True)
        for _ in range(repeats):
            for label, tree in trees.items():
                runs[label]["warm_runs"].append(run_once(tree, caches[label]))
                print(label, "warm", json.dumps(runs[label]["warm_runs"][-1]), flush=True)
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)
    for r in runs.values():
        warm = r["warm_runs"]
        r["warm"] = {k: statistics.median(w[k] for w in warm) for k in warm[0]}
        r["warm_min"] = {k: min(w[k] for w in warm) for k in warm[0]}
    return runs


# ------------------------------------------------------------------------------------ phases

PHASES_CODE = """
import json, os, sys, time
T0 = float(os.environ["FIRST_ROUND_T0"])
marks = {}
def mark(name):
    # wall seconds since the process started, and this (driver) process's CPU seconds
    marks.setdefault(name, [round(time.time() - T0, 3), round(time.process_time(), 3)])
mark("interpreter_up")
import fedlth.cli as cli
mark("fedlth.cli_imported")

def timed(owner, attr, start, end, after=None):
    fn = getattr(owner, attr, None)
    if fn is None:
        return
    def wrapper(*a, **k):
        mark(start)
        try:
            return fn(*a, **k)
        finally:
            mark(end)
            if after is not None:
                after()
    setattr(owner, attr, wrapper)

def patch_driver():
    # Imported where the command imports them anyway (right after the data check), then timed.
    import server.simulate
    mark("driver_imported (server.simulate)")
    import ray
    timed(ray, "init", "ray_init_start", "ray_init_end")
    from flwr.server.superlink.fleet.vce.backend import raybackend
    timed(raybackend.RayBackend, "build", "actor_pool_start", "actor_pool_end")
    import server.server_app as server_app
    timed(server_app, "run_federation", "server_app_start", "server_app_end")
    from server.strategy import TicketStrategy
    timed(TicketStrategy, "identify", "identify_start (actors take their first message)", "identify_end")
    timed(TicketStrategy, "aggregate_train", "round1_train_replies_in", "round1_aggregated")
    timed(TicketStrategy, "aggregate_evaluate", "round1_eval_replies_in", "round1_eval_aggregated")

timed(cli, "load_scenario", "scenario_check_start", "scenario_check_end")
timed(cli, "_check_data", "data_check_start", "data_check_end", after=patch_driver)
try:
    cli.main(sys.argv[1:], standalone_mode=False)
finally:
    mark("done")
    print("PHASES " + json.dumps(marks))
"""


def phases(tree: Path, cache: Path) -> dict:
    """The instrumented command's marks, in seconds since its process started."""
    out = Path(tempfile.mkdtemp(prefix="fedlth-first-round-")) / "run"
    env = _env(tree, cache)
    try:
        env["FIRST_ROUND_T0"] = repr(time.time())
        res = subprocess.run(
            [PY, "-c", PHASES_CODE, "run", str(SCENARIO), "--out", str(out), "--quiet", "--set", "rounds=1"],
            cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_LIMIT_S,
        )
        line = [x for x in res.stdout.splitlines() if x.startswith("PHASES ")]
        if res.returncode != 0 or not line:
            raise RuntimeError(f"instrumented run failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
        return json.loads(line[0][len("PHASES "):])
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


# ------------------------------------------------------------------------------------ report


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _table(results: dict, part: str, head: str, rows: list[tuple[str, object]]) -> list[str]:
    """A markdown table with one column per label that has `part`; rows: (name, label-result -> cell)."""
    labels = [x for x in results if part in results[x]]
    if not labels:
        return []
    md = [f"| {head} | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, get in rows:
        cells = []
        for x in labels:
            try:
                v = get(results[x])
            except (KeyError, TypeError):
                v = ""
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        md.append(f"| {name} | " + " | ".join(cells) + " |")
    return md + [""]


NOTES = """## Reading

- `before` is commit c2ff9b6 (`git archive`); `after` is the same tree with only this change's files
  (fedlth/data/datasets.py, fedlth/data/client_data.py, fedlth/learning/training.py, fedlth/learning/devices.py, server/simulate.py);
  `head`, where measured, is commit 13fe43a: `after` plus everything else since c2ff9b6, among it the
  lazy torchattacks import in fedlth/evaluation/robustness.py.
- The cuts: the mnist1d cache file is named by the package's version, so a warm load no longer imports
  mnist1d (which imports scipy and matplotlib); partitions are cached on disk, so neither the driver's data
  check nor any Ray worker imports flwr-datasets and Hugging Face datasets or partitions again; digits and
  arrests are cached as arrays (not used by quickstart). Same accuracy before and after (summary.json).
- What is left before round 1: Ray's start and each Ray worker's first import of the ClientApp, and the
  driver's imports (torch, flwr; and in `before`/`after` torchattacks, ~1.1 s per process, which
  fedlth/evaluation/robustness.py imports lazily since then).
- This 2-core machine was shared with other jobs while this ran (load column): the wall times of whole
  commands moved by 2x from run to run; the steps, the mins and the CPU seconds are the steadier numbers.
"""


def render(results: dict) -> str:
    md = [
        "# Time to first round: `fedlth run scenarios/quickstart.toml --set rounds=1`",
        "",
        "Command: `python benchmarks/first_round.py --tree LABEL=DIR ...`. Seconds; warm: median (min) of the repeats.",
        "Round 1 of quickstart trains 5 clients for 2 epochs and, being the last round, evaluates all 20.",
        "",
    ]
    for label, r in results.items():
        md.append(f"- **{label}** ({r.get('tree', '')}): {r['machine']}; load average (1, 5, 15 min) at start {r['load_start']}, at end {r['load_end']}")
    md += ["", "## Whole command (polled from outside)", ""]
    def warm(r: dict, key: str) -> str:
        med, low = r["run"]["warm"], r["run"].get("warm_min", r["run"]["warm"])
        f = (lambda w: w["first_line_s"] - w["round1_seconds"]) if key == "startup" else (lambda w: w[key])
        return f"{f(med):.2f} ({f(low):.2f})"

    md += _table(results, "run", "", [
        ("first metrics line, warm data cache", lambda r: warm(r, "first_line_s")),
        ("  of which round 1 itself (ServerApp's own clock)", lambda r: warm(r, "round1_seconds")),
        ("  = start-up before round 1 (warm)", lambda r: warm(r, "startup")),
        ("metrics.jsonl created (all nodes identified), warm", lambda r: warm(r, "metrics_created_s")),
        ("process exit, warm", lambda r: warm(r, "exit_s")),
        ("CPU s the command's reaped processes used (driver, Ray daemons; Ray workers may be missing), warm", lambda r: warm(r, "cpu_s")),
        ("1-min load average when the warm runs started", lambda r: warm(r, "load_1min")),
        ("first metrics line, cold data cache", lambda r: r["run"]["cold"]["first_line_s"]),
        ("  = start-up before round 1 (cold)", lambda r: r["run"]["cold"]["first_line_s"] - r["run"]["cold"]["round1_seconds"]),
        ("process exit, cold", lambda r: r["run"]["cold"]["exit_s"]),
        ("CPU seconds, cold", lambda r: r["run"]["cold"].get("cpu_s", "")),
    ])
    keys: list[str] = []
    for r in results.values():
        keys += [k for k in r.get("phases", {}) if k not in keys]

    def at(r: dict, k: str) -> float:
        v = r.get("phases", {}).get(k, 1e9)
        return v[0] if isinstance(v, list) else v

    keys.sort(key=lambda k: min(at(r, k) for r in results.values()))

    def mark(r: dict, k: str) -> str:
        v = r["phases"][k]
        return f"{v[0]:.2f} / {v[1]:.2f}" if isinstance(v, list) else f"{v:.2f}"

    md += ["## Steps inside the command (warm cache; seconds since process start, wall / driver-process CPU)", ""]
    md += _table(results, "phases", "mark", [(k, lambda r, k=k: mark(r, k)) for k in keys])

    def imp(r: dict, name: str) -> str:
        i = r["imports"][name]
        cpu = f" / {i['cpu_s']:.2f}" if "cpu_s" in i else ""
        return f"{i['min_s']:.2f}{cpu} (" + ", ".join(f"{p} {s:.2f}" for p, s in list(i["packages_s"].items())[:5]) + ")"

    md += [
        f"## Imports (fresh interpreter; min over {IMPORT_REPEATS} of wall / CPU s; costliest packages from one -X importtime run)",
        "",
    ]
    md += _table(results, "imports", "import", [(f"`{n}`", lambda r, n=n: imp(r, n)) for n in IMPORTS])

    def step(r: dict, part: str, k: str) -> str:
        d = r["data"][part]
        return f"{d[k + '_s']:.3f}" + (f" / {d[k + '_cpu_s']:.3f}" if k + "_cpu_s" in d else "")

    md += [f"## Data (fresh process; wall / CPU s of each step; warm: min over {IMPORT_REPEATS})", ""]
    md += _table(results, "data", "", [
        (f"{part}: {k}", lambda r, part=part, k=k: step(r, part, k))
        for part in ("cold", "warm") for k in ("imports", "mnist1d", "client0", "all_clients_again")
    ])
    md += ["## Ray (fresh process, local 2-CPU cluster; min of 3)", ""]
    md += _table(results, "ray", "", [(k, lambda r, k=k: r["ray"][k]) for k in ("import_ray_s", "ray_init_s", "first_actor_reply_s", "shutdown_s")])
    if {"before", "after"} <= set(results):
        md.append(NOTES)
    return "\n".join(md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tree", action="append", default=[], metavar="LABEL=DIR",
        help="A source tree to measure under a label (repeatable; they take turns). Default: current=<this repo>.",
    )
    ap.add_argument("--repeats", type=int, default=3, help="Warm whole-command runs per tree (median and min reported).")
    ap.add_argument("--only", default="", help="Comma-separated parts to run (imports,data,ray,run,phases); others kept.")
    a = ap.parse_args()
    trees = dict(t.split("=", 1) for t in a.tree) if a.tree else {"current": str(ROOT)}
    trees = {label: Path(d).resolve() for label, d in trees.items()}
    sys.path.insert(0, str(Path(__file__).parent))
    from common import machine

    path = RESULTS / "first_round.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    want = {p for p in a.only.split(",") if p} or {"imports", "data", "ray", "run", "phases"}
    res = {label: dict(results.get(label, {})) for label in trees}
    for label, tree in trees.items():
        res[label].update(machine=machine(), load_start=load_average(), tree=str(tree))
    for label, tree in trees.items():
        if "imports" in want:
            res[label]["imports"] = {name: importtime(tree, stmt) for name, stmt in IMPORTS.items()}
            print(label, "imports", json.dumps(res[label]["imports"]), flush=True)
        if "data" in want:
            res[label]["data"] = data_times(tree)
            print(label, "data", json.dumps(res[label]["data"]), flush=True)
        if "ray" in want:
            res[label]["ray"] = ray_times(tree)
            print(label, "ray", json.dumps(res[label]["ray"]), flush=True)
    if "run" in want:
        for label, r in run_times(trees, a.repeats).items():
            res[label]["run"] = r
    if "phases" in want:
        caches = {label: Path(tempfile.mkdtemp(prefix="fedlth-bench-cache-")) for label in trees}
        try:
            for label, tree in trees.items():
                phases(tree, caches[label])  # fills the cache
            for label, tree in trees.items():
                res[label]["phases"] = phases(tree, caches[label])
                print(label, "phases", json.dumps(res[label]["phases"]), flush=True)
        finally:
            for cache in caches.values():
                shutil.rmtree(cache, ignore_errors=True)
    for label in trees:
        res[label]["load_end"] = load_average()
    results.update(res)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "first_round.md").write_text(render(results))
    print(render(results))


if __name__ == "__main__":
    main()
