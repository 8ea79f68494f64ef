"""`ray-address`: a run joins a Ray cluster that is already running instead of starting its own.

The tests start one Ray head on loopback (`ray start --head`) in its own short temporary
folder, run scenarios/scale-100k.toml at test size (40 clients, 2 a round, 1 round) against it
once in a subprocess, then check its outputs and ask the head's GCS which jobs and actors it has
seen: the run's driver must be one of its jobs and the clients its actors. The head is stopped
by killing exactly the processes of that folder (and their children), never with `ray stop`,
which would kill every Ray process on the machine, other runs' included. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
START_S, RUN_S, QUERY_S, STOP_S = 90, 180, 60, 5

pytestmark = [
    pytest.mark.xdist_group("ray"),  # under pytest-xdist, on the one worker that runs Ray tests one at a time
    pytest.mark.skipif(shutil.which("ray") is None, reason="needs the ray command line (pip install ray)"),
    pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the head's processes through /proc (Linux)"),
]

# Runs in a fresh interpreter: the test process never holds a Ray connection, so the in-process
# simulations of other tests can't find Ray initialized against this (then stopped) cluster.
QUERY = """
import json, logging, sys
import ray
import ray._private.state as state
ray.init(address=sys.argv[1], logging_level=logging.ERROR, log_to_driver=False)
try:
    jobs = [{"id": j["JobID"], "driver_pid": j["DriverPid"]} for j in state.jobs()]
    actors = [{"class": a["ActorClassName"], "job": a["JobID"]} for a in state.actors().values()]
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
finally:
    ray.shutdown()
print("STATE " + json.dumps({"jobs": jobs, "actors": actors, "nodes": nodes}))
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ')'.
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def head_processes(folder: Path) -> set[int]:
    """The processes whose command line names `folder` (gcs_server, raylet, monitors...) and
    all their descendants (agents and workers, renamed `ray::...`)."""
    me, mine = os.getpid(), set()
    while me > 1:  # never this process or its parents (a command line may name the folder too)
        mine.add(me)
        me = _parent(me)
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) not in mine]
    found = {p for p in pids if str(folder) in _cmdline(p)}
    while True:
        more = {p for p in pids if p not in found and _parent(p) in found}
        if not more:
            return found
        found |= more


def stop_head(folder: Path) -> None:
    """SIGTERM the head's processes, then SIGKILL whatever is left STOP_S seconds later."""
    pids = head_processes(folder)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_S
        while time.monotonic() < deadline:
            pids = {p for p in pids if Path(f"/proc/{p}").exists() and _parent(p) != -1 and not _zombie(p)}
            if not pids:
                return
            time.sleep(0.2)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _start_head() -> tuple[Path, str, subprocess.CompletedProcess]:
    """`ray start --head` in a new short folder on new free ports: (folder, address, result)."""
    # Short folder: Ray's unix sockets live under it, and socket paths are limited to ~107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    gcs, client, agent, agent_grpc, metrics, env_agent = _free_ports(6)
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    cmd = [
        "ray", "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
        "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={folder}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={env_agent}",
    ]
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=START_S)
    except subprocess.TimeoutExpired as exc:
        res = subprocess.CompletedProcess(cmd, -1, str(exc.stdout or ""), f"timed out after {START_S} s")
    return folder, f"127.0.0.1:{gcs}", res


@pytest.fixture(scope="module")
def ray_head():
    """A 2-CPU Ray head on 127.0.0.1 with its own temp folder and ports, started once for this
    file's runs (each is its own job on it, told apart by its driver's pid); stopped afterwards.
    A head that fails to start is cleared away and started once more: `ray start` gives the
    raylet a fixed 30 s to register, which a loaded machine (the suite's other worker, other
    jobs) can exceed; what the tests check is the run on the cluster, not Ray's start-up."""
    folders = []
    try:
        for attempt in (1, 2):
            folder, address, res = _start_head()
            folders.append(folder)
            if res.returncode == 0:
                break
            stop_head(folder)
            assert attempt == 1, f"ray start failed twice:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        yield address
    finally:
        for folder in folders:
            stop_head(folder)
            shutil.rmtree(folder, ignore_errors=True)


def _cluster_state(address: str) -> dict:
    res = subprocess.run([sys.executable, "-c", QUERY, address], cwd=ROOT, capture_output=True, text=True, timeout=QUERY_S)
    line = [x for x in res.stdout.splitlines() if x.startswith("STATE ")]
    assert res.returncode == 0 and line, f"could not query the cluster:\n{res.stderr[-3000:]}"
    return json.loads(line[0][len("STATE "):])


@pytest.fixture(scope="module")
def cluster_run(ray_head, tmp_path_factory) -> dict:
    """scenarios/scale-100k.toml run once on the head, at a size a test affords (Flower's Ray
    engine registers every node up front, and its nodes are asked for their partition ids: see
    the README's sizing notes); the same keys, partition and sampled evaluation as the 100,000
    run. Both tests below read this one run (a driver and its actors cost a Ray start's worth)."""
    out = tmp_path_factory.mktemp("cluster") / "run"
    sets = ["backend=ray", f"ray-address={ray_head}", "num-clients=40", "clients-per-round=2", "rounds=1",
            "client-examples=6", "batch-size=4", "eval-clients=3"]
    cmd = [sys.executable, "-c", "from fedlth.cli import main; main()", "run", str(ROOT / "scenarios" / "scale-100k.toml"),
           "--out", str(out), "--quiet", *(x for s in sets for x in ("--set", s))]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=RUN_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return {"returncode": proc.returncode, "pid": proc.pid, "log": log, "out": out}


def test_run_joins_a_running_ray_cluster(ray_head, cluster_run):
    assert cluster_run["returncode"] == 0, cluster_run["log"][-4000:]
    # It really ran there: the run's process was a driver (job) of that cluster, and the
    # simulated clients were actors of that job on it.
    state = _cluster_state(ray_head)
    assert len(state["nodes"]) == 1
    run_jobs = {j["id"] for j in state["jobs"] if j["driver_pid"] == cluster_run["pid"]}
    assert len(run_jobs) == 1, state["jobs"]
    client_actors = [a for a in state["actors"] if a["class"] == "ClientAppActor" and a["job"] in run_jobs]
    assert len(client_actors) == 2, state["actors"]  # 2 CPUs, 1 CPU per client


def test_the_100k_scenario_runs_on_a_ray_cluster(cluster_run):
    assert cluster_run["returncode"] == 0, cluster_run["log"][-4000:]
    out = cluster_run["out"]
    summary = json.loads((out / "summary.json").read_text())
    acc = summary["personalized_accuracy"]
    assert summary["rounds"] == 1 and summary["num_clients"] == 40
    assert acc["evaluated_clients"] == 3 and acc["scored_clients"] == 3
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds[0]["train"]) == 2 and rounds[0]["rejected"] == []
