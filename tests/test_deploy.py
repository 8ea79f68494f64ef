"""Deployment on Flower's own engine: trial certificates and node keys, connections, device
data files, a ClientApp that runs without the simulation extras, and a real federation of
separate processes (TLS SuperLink with SuperNode authentication, two SuperNodes, flwr run)
in which a SuperNode is killed and restarted and keeps its ticket."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fedlth.cli import main
from fedlth.config.scenario import resolve
from fedlth.data.local_data import LocalDataError, local_client_data, save_local_data
from fedlth.deployment.deploy import (
    DeployError,
    make_certs,
    make_node_keys,
    node_config,
    write_connection,
)

ROOT = Path(__file__).parent.parent

# --- certificates, keys, connections, commands ------------------------------------------


def test_trial_certificates_chain_to_their_ca_and_name_the_hosts(tmp_path):
    from cryptography import x509

    certs = make_certs(tmp_path, ["superlink.example", "10.0.0.5"], days=2)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink.example"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1", "10.0.0.5"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (certs.server_key.stat().st_mode & 0o777) == 0o600 and (certs.ca_key.stat().st_mode & 0o777) == 0o600
    with pytest.raises(DeployError, match="already exist"):
        make_certs(tmp_path)
    make_certs(tmp_path, force=True)
    with pytest.raises(DeployError, match="not a host name"):
        make_certs(tmp_path / "x", ["bad host"])


def test_node_keys_are_what_flower_loads(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    keys = make_node_keys(tmp_path, ["node-0", "node-1"])
    for k in keys:
        # what flower-supernode --auth-supernode-private-key and flwr supernode register accept
        assert isinstance(load_ssh_private_key(k.private.read_bytes(), None), ec.EllipticCurvePrivateKey)
        assert try_load_public_key(k.public)
        assert (k.private.stat().st_mode & 0o777) == 0o600
    assert keys[0].public.read_bytes() != keys[1].public.read_bytes()
    with pytest.raises(DeployError, match="already exist"):
        make_node_keys(tmp_path, ["node-1"])


def test_connections_are_what_flwr_reads_and_other_entries_stay(tmp_path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    ca = make_certs(tmp_path / "certs").ca_cert
    write_connection("edge", "10.0.0.5:9092", root_certificates=ca)
    write_connection("lab", "127.0.0.1:9092", insecure=True, default=True)
    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["superlink"]["local"] == {"address": ":local:"} and config["superlink"]["default"] == "lab"
    edge = read_superlink_connection("edge")
    assert edge.address == "10.0.0.5:9092" and edge.root_certificates == str(ca.resolve()) and not edge.insecure
    assert read_superlink_connection().insecure
    with pytest.raises(DeployError, match="exactly one"):
        write_connection("x", "127.0.0.1:1", root_certificates=ca, insecure=True)
    with pytest.raises(DeployError, match="HOST:PORT"):
        write_connection("x", "localhost", insecure=True)


def test_deploy_commands_are_tls_and_auth_by_default_and_plain_text_only_when_asked(tmp_path):
    runner = CliRunner()
    made = runner.invoke(main, ["deploy", "certs", str(tmp_path / "c"), "--nodes", "2", "--host", "10.0.0.5"])
    assert made.exit_code == 0, made.output
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "ca.crt", "ca.key", "node-0.key", "node-0.pub", "node-1.key", "node-1.pub", "server.key", "server.pem"]
    out = runner.invoke(main, ["deploy", "commands", "--certs", str(tmp_path / "c"), "--nodes", "2", "--address", "10.0.0.5:9092"])
    assert out.exit_code == 0, out.output
    text = out.output
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth", "--root-certificates",
                 "--auth-supernode-private-key", "flwr supernode register", "partition-id=1"):
        assert flag in text, flag
    assert "--insecure" not in text
    plain = runner.invoke(main, ["deploy", "commands", "--insecure", "--nodes", "1", "--data-dir", "/data"])
    assert plain.exit_code == 0 and "--insecure" in plain.output and "--enable-supernode-auth" not in plain.output
    assert 'data-file="/data/client-0.npz"' in plain.output
    neither = runner.invoke(main, ["deploy", "commands", "--nodes", "1"])
    assert neither.exit_code == 2 and "--insecure" in neither.output
    again = runner.invoke(main, ["deploy", "certs", str(tmp_path / "c")])
    assert again.exit_code == 2 and "--force" in again.output


# --- a device's own data -----------------------------------------------------------------


def test_data_file_gives_the_client_its_tensors(tmp_path, caplog):
    sc = resolve({"val-fraction": 0.25, "num-clients": 3, "clients-per-round": 3})
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((40, 1, 8, 8), dtype=np.float32), y_train=rng.integers(0, 3, 40),
             x_test=rng.random((10, 1, 8, 8)), y_test=rng.integers(0, 3, 10), num_classes=np.int64(10))
    data = local_client_data(path, sc, 1)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (30, 10, 10)
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10 and data.x_test.dtype == torch.float32
    assert local_client_data(path, sc, 1) is data  # cached while the file is unchanged

    np.savez(path, x_train=np.zeros((6, 4), np.float32), y_train=np.arange(6) % 2)
    with caplog.at_level(logging.WARNING, logger="fedlth"):
        data = local_client_data(path, sc, 0)
    assert "scored on its validation split" in caplog.text and torch.equal(data.y_test, data.y_val)
    assert data.num_classes == 2

    np.savez(path, x_train=np.zeros((6, 4), np.float32), x_test=np.zeros((2, 4), np.float32))
    with pytest.raises(LocalDataError, match=r"lacks array\(s\) \['y_train', 'y_test'\]"):
        local_client_data(path, sc, 0)
    with pytest.raises(LocalDataError, match="does not exist"):
        local_client_data(tmp_path / "nope.npz", sc, 0)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(LocalDataError, match="not a readable .npz"):
        local_client_data(tmp_path / "bad.npz", sc, 0)


def test_exported_partitions_round_trip_exactly(tmp_path):
    from fedlth.data.client_data import client_data

    sc = resolve({"dataset": "digits", "model": "mlp", "num-clients": 3, "clients-per-round": 3})
    original = client_data(sc, 2)
    again = local_client_data(save_local_data(tmp_path / "c.npz", original), sc, 2)
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(original, name), getattr(again, name)), name
    assert (again.input_shape, again.num_classes, again.input_range) == (original.input_shape, original.num_classes, original.input_range)


# --- the ClientApp on a device: base install only ----------------------------------------

SIM_ONLY = ("ray", "datasets", "flwr_datasets", "matplotlib", "sklego", "pandas")

DEVICE_SCRIPT = textwrap.dedent('''
    import importlib.abc, json, sys, time

    BLOCKED = set(sys.argv[3].split(","))

    class Hide(importlib.abc.MetaPathFinder):
        """Every finder, blind to the blocked packages: they look uninstalled (import raises
        ModuleNotFoundError, importlib.util.find_spec answers None), as on a bare device."""

        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED or not hasattr(self.inner, "find_spec"):
                return None
            return self.inner.find_spec(name, path, target)

        def invalidate_caches(self):
            getattr(self.inner, "invalidate_caches", lambda: None)()

    assert not BLOCKED & set(sys.modules)
    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
    for name in BLOCKED:
        try:
            __import__(name)
            raise SystemExit(f"{name} still imports")
        except ImportError:
            pass
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.app.metadata import Metadata
    from flwr.supercore.task_identity import TaskIdentity

    import clients.client_app as client
    from fedlth.federation.algorithms import initial_weights
    from fedlth.federation.records import config_to_record, encode_record
    from fedlth.config.scenario import resolve

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 5, 9, 1
    sc = resolve(json.loads(sys.argv[2]))

    def message(kind, content, mid):
        md = Metadata(run_id=5, message_id=mid, src_node_id=0, dst_node_id=9, reply_to_message_id="",
                      group_id="1", created_at=time.time(), ttl=600.0, message_type=kind)
        return Message(content, metadata=md)

    def content(rnd):
        w = initial_weights(sc, (1, 8, 8), 10)
        return RecordDict({"arrays": encode_record(w, None, with_shapes=False),
                           "config": ConfigRecord({"server-round": rnd, "send-ticket": 1}),
                           "scenario": config_to_record(sc)})

    ctx = Context(run_id=5, node_id=9, node_config={"partition-id": 4, "data-file": sys.argv[1]},
                  state=RecordDict(), run_config={})
    q = client.app(message(MessageType.QUERY, RecordDict({"config": ConfigRecord({})}), "q"), ctx)
    t = client.app(message(MessageType.TRAIN, content(1), "t"), ctx)
    e = client.app(message(MessageType.EVALUATE, content(1), "e"), ctx)
    assert not (q.has_error() or t.has_error() or e.has_error())
    trial = Context(run_id=5, node_id=9, node_config={"partition-id": 4}, state=RecordDict(), run_config={})
    try:
        client.app(message(MessageType.TRAIN, content(1), "p"), trial)
        partition_error = None
    except Exception as exc:
        partition_error = str(exc)
    print(json.dumps({
        "partition_error": partition_error,
        "partition-id": q.content["metrics"]["partition-id"],
        "train": dict(t.content["metrics"]), "evaluate": dict(e.content["metrics"]),
        "ticket": "ticket" in e.content.array_records,
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
    }))
''')


def test_client_app_imports_and_runs_without_the_simulation_extras(tmp_path):
    from fedlth.data.client_data import client_data

    spec = {"dataset": "digits", "model": "mlp", "num-clients": 5, "clients-per-round": 5,
            "algorithm": "lotteryfl", "prune-rate": 0.5, "acc-threshold": 0.0, "prune-tolerance": 1.0}
    data = save_local_data(tmp_path / "client-4.npz", client_data(resolve(spec), 4))
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), str(data), json.dumps(spec), ",".join(SIM_ONLY)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["partition-id"] == 4 and out["ticket"]
    assert out["train"]["density"] == 0.5 and out["train"]["num-examples"] > 0
    assert 0.0 <= out["evaluate"]["accuracy"] <= 1.0 and out["evaluate"]["density"] == 0.5
    # a partition-id trial node needs the sim extra (flwr-datasets splits the dataset) and says so
    assert "pip install 'fedlth[sim]'" in out["partition_error"] and "data-file=" in out["partition_error"]


# --- a real federation: TLS SuperLink, node authentication, two SuperNodes, flwr run ---

NODES = 2  # node 0 is killed and restarted, node 1 trains on meanwhile
E2E_SCENARIO = f"""
dataset = "digits"
model = "mlp"
partition = "pathological"
classes-per-client = 4
num-clients = {NODES}
clients-per-round = {NODES}
rounds = 3
node-wait = 120.0  # round 3 waits for the restarted node 0
local-epochs = 1
algorithm = "lotteryfl"
prune-rate = 0.5
target-density = 0.1
acc-threshold = 0.0
prune-tolerance = 1.0
eval-every = 0
"""
WAIT = float(os.environ.get("FEDLTH_E2E_WAIT", "180"))  # seconds any one step may take before the test fails

# flower-superlink keeps a SuperNode ONLINE for 2 x its heartbeat interval after the last
# heartbeat and refuses to activate the same (authenticated) node again before that. A
# SuperNode declares Flower's fixed 30 s and the SuperLink accepts no less than 10 s. These
# launchers run the real flower-supernode and flower-superlink with one constant each changed:
# here the node declares 5 s (and sends one every (5 - 2) x 0.8 s), the link accepts it, so a
# killed node is offline within ~10 s rather than ~60 s, and the test waits that long twice
# (round 2 for the dead node, its restart for the lapse). tests/test_deploy_security.py runs
# the recipe's unchanged SuperLink with nodes that declare its minimum, 10 s. Task heartbeats
# keep Flower's defaults.
def supernode_launcher(interval: int, call_timeout: int) -> str:
    """A flower-supernode that declares `interval` s and sends every (interval - call_timeout) x 0.8 s."""
    return f"""
import sys
import flwr.supercore.heartbeat as beat
import flwr.supernode.fleet_http_connection as fleet
fleet.HEARTBEAT_DEFAULT_INTERVAL = {interval}  # declared to the SuperLink
beat.HEARTBEAT_DEFAULT_INTERVAL, beat.HEARTBEAT_CALL_TIMEOUT = {interval}, {call_timeout}  # the sender
from flwr.supernode.cli import flower_supernode
sys.argv[0] = "flower-supernode"
sys.exit(flower_supernode())
"""


SUPERNODE = supernode_launcher(5, 2)
SUPERLINK = """
import sys
import flwr.superlink.servicer.fleet.fleet_handlers as fleet
fleet.HEARTBEAT_MIN_INTERVAL = 5  # accept the nodes' 5 s
from flwr.superlink.cli import flower_superlink
sys.argv[0] = "flower-superlink"
sys.exit(flower_superlink())
"""


def flwr_cli(*args: str, home: Path) -> tuple[int, str]:
    """Exit code and output of `flwr ARGS` with FLWR_HOME=home, run in this process by the typer
    app that the `flwr` console script runs: the same code and the same requests, without a
    Python start that imports Flower (~1.5 s of CPU a call). flwr writes `--format json` output
    to sys.__stdout__ (past any capture) and points its log handler back there: both are
    redirected for the call and restored after it. Bounded as the command is: flwr's Control
    API client (httpx) gives up on a request after 30 s and does not retry."""
    import io

    from flwr.cli.app import app
    from flwr.supercore.logger import console_handler
    from typer.testing import CliRunner

    out = io.StringIO()
    saved = sys.__stdout__, sys.__stderr__, console_handler.stream
    sys.__stdout__ = sys.__stderr__ = out
    try:
        result = CliRunner().invoke(app, list(args), env={"FLWR_HOME": str(home)}, catch_exceptions=False)
    finally:
        sys.__stdout__, sys.__stderr__, console_handler.stream = saved
    return result.exit_code, result.output + out.getvalue()


def scripts_first() -> str:
    """PATH with this interpreter's console scripts first: Flower's processes start the others
    by name (flwr-clientapp for every message, flower-superexec), and a version manager's shim
    in front of them (pyenv's runs bash and pyenv before Python) costs time on each start."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait(what: str, ready: Callable[[], object], procs: dict[str, subprocess.Popen], limit: float = WAIT):
    """Poll `ready` until it returns something truthy; fail if a process dies or time is up."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
        if dead:
            raise AssertionError(f"waiting for {what}: {dead} exited")
        time.sleep(0.02)
    raise AssertionError(f"waiting for {what}: gave up after {limit:.0f} s")


def _ours(marker: str) -> list[int]:
    """Live processes carrying this test's marker in their environment: every child, grandchild
    and detached SuperExec of the processes the test started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            alive = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            if alive and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@pytest.mark.xdist_group("deploy")  # under pytest-xdist, one deployment at a time on one worker
def test_tls_federation_of_processes_runs_lotteryfl_and_a_killed_supernode_keeps_its_ticket(tmp_path):
    from fedlth.data.client_data import client_data
    from fedlth.federation.state_store import mask_digest

    marker = f"FEDLTH_E2E_{uuid.uuid4().hex}"
    home, logs, out = tmp_path / "flwr-home", tmp_path / "logs", tmp_path / "run"
    home.mkdir()
    logs.mkdir()
    certs = make_certs(tmp_path / "certs")
    keys = make_node_keys(tmp_path / "certs", [f"node-{i}" for i in range(NODES)])
    (tmp_path / "supernode.py").write_text(SUPERNODE)
    (tmp_path / "superlink.py").write_text(SUPERLINK)
    sc_path = tmp_path / "e2e.toml"
    sc_path.write_text(E2E_SCENARIO + f'out-dir = "{out}"\n')
    sc = resolve(tomllib.loads(sc_path.read_text()))
    # every node reads its own data file, the device way (partition-id nodes take the simulation's
    # code path, which tests/test_simulation.py covers; each would also import Hugging Face
    # datasets, ~4 s of CPU per message)
    data = {i: save_local_data(tmp_path / "data" / f"client-{i}.npz", client_data(sc, i)) for i in range(NODES)}
    link_port, *runtime_ports = _free_ports(1 + NODES)
    address = f"127.0.0.1:{link_port}"
    env = {
        **os.environ, marker: "1", "FLWR_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PATH": scripts_first(), "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
    }
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, cmd: list[str], cwd: Path = tmp_path) -> subprocess.Popen:
        with (logs / f"{name}.log").open("a") as log_file:
            procs[name] = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, start_new_session=True)
        return procs[name]

    def supernode(i: int) -> subprocess.Popen:
        return start(f"node-{i}", [
            sys.executable, str(tmp_path / "supernode.py"), "--superlink", address, "--root-certificates", str(certs.ca_cert),
            "--auth-supernode-private-key", str(keys[i].private), "--port", str(runtime_ports[i]),
            "--max-wait-time", str(WAIT), "--node-config", node_config(i, tmp_path / "state" / f"node-{i}", data[i]),
        ])

    def log_of(name: str) -> str:
        path = logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    try:
        start("superlink", [
            sys.executable, str(tmp_path / "superlink.py"), "--host", "127.0.0.1", "--port", str(link_port), "--ssl-ca-certfile", str(certs.ca_cert),
            "--ssl-certfile", str(certs.server_cert), "--ssl-keyfile", str(certs.server_key), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
        ])

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", link_port)) == 0

        _wait("the SuperLink to listen", listening, procs)
        write_connection("e2e", address, root_certificates=certs.ca_cert, default=True, home=home)
        node_ids = []
        for k in keys:
            code, text = flwr_cli("supernode", "register", str(k.public), "e2e", home=home)
            assert code == 0, text
            node_ids.append(re.search(r"SuperNode (\d+) registered", text).group(1))
        for i in range(NODES):
            supernode(i)
        run = start("flwr-run", ["flwr", "run", ".", "e2e", "--run-config", str(sc_path), "--stream"], cwd=ROOT)

        # Node 0 answers the partition query, then trains round 1. Once its round-1 reply is
        # through ("Sent successfully" after "Sending: train"), it polls once more and idles
        # 3 s: kill it there with SIGKILL, between rounds.
        def round1_sent() -> bool:
            return re.search(r"Sending: train message[^\n]*\n(?:[^\n]*\n)*?[^\n]*Sent successfully", log_of("node-0")) is not None

        _wait("node 0 to send its round-1 reply", round1_sent, procs)
        _kill_group(procs.pop("node-0"))
        state_file = tmp_path / "state" / "node-0" / "ticket-0.pt"
        before = torch.load(state_file, weights_only=True)
        assert before["rounds"] == 1 and before["mask"] is not None
        (logs / "node-0.log").rename(logs / "node-0-killed.log")

        # Restart it on the same key and state folder, as a service manager would: the SuperLink
        # refuses the node until its last heartbeat has lapsed (7.6-10 s here; a start takes
        # seconds of imports before it asks), so start it after 6 s, then again every 2 s
        # until it stays up.
        deadline = time.monotonic() + 4 * WAIT
        restarts, next_start = 0, time.monotonic() + 6.0
        while run.poll() is None:
            assert time.monotonic() < deadline, "flwr run did not finish"
            node0 = procs.get("node-0")
            if (node0 is None or node0.poll() is not None) and time.monotonic() >= next_start:
                restarts += 1
                assert restarts <= 20, log_of("node-0")[-3000:]
                supernode(0)
                next_start = time.monotonic() + 2.0
            dead = {n: p.returncode for n, p in procs.items() if n not in ("node-0", "flwr-run") and p.poll() is not None}
            assert not dead, f"{dead} exited"
            time.sleep(0.1)
        assert run.returncode == 0, log_of("flwr-run")[-4000:]

        # the run's outputs
        summary = json.loads((out / "summary.json").read_text())
        assert summary["algorithm"] == "lotteryfl" and summary["rounds"] == 3 and summary["num_clients"] == NODES
        rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rounds] == [1, 2, 3]
        assert sorted(rounds[0]["train"]) == ["0", "1"], rounds[0]["train"]
        assert "1" in rounds[1]["train"]  # node 0 was down for round 2
        assert sorted(rounds[2]["train"]) == ["0", "1"], rounds[2]["train"]
        assert sorted(p.name for p in (out / "tickets").iterdir()) == [f"client-{i}.pt" for i in range(NODES)]
        assert 0.0 <= summary["personalized_accuracy"]["mean"] <= 1.0
        assert summary["density"]["mean"] < 0.5

        # The restarted node read its ticket from the state file: the same mask, its count of
        # rounds went on, and it kept pruning from 0.5 (a fresh start would be back at 0.5).
        restarted = log_of("node-0")
        assert f"restored the ticket of partition 0 from {state_file} (1 rounds trained, density 0.5000, mask {mask_digest(before['mask'])})" in restarted
        after = torch.load(state_file, weights_only=True)
        trained_again = after["rounds"] - before["rounds"]
        assert trained_again >= 1
        assert rounds[2]["train"]["0"]["density"] == pytest.approx(0.5 ** (1 + trained_again), abs=0.01)
        assert all(not (after["mask"][k] & ~before["mask"][k]).any() for k in before["mask"])  # nothing revived
        # node authentication: it came back under its registered node id
        assert log_of("superlink").count(f"Activated node_id={node_ids[0]}") >= 2
    finally:
        for proc in procs.values():
            _kill_group(proc)
        deadline = time.monotonic() + 15
        while (left := _ours(marker)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
    assert not _ours(marker), "processes left behind"
