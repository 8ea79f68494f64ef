"""Deployment against a hostile network: the recipe's SuperLink listens on loopback only and
devices reach an nginx gateway that passes Flower's Fleet API alone, so a party holding only
ca.crt is refused every Control API call; `--database` keeps registered nodes across a SuperLink
restart and their SuperNodes reconnect by themselves. Real processes on free loopback ports."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_deploy import (
    ROOT,
    _free_ports,
    _kill_group,
    _ours,
    _wait,
    flwr_cli,
    scripts_first,
    supernode_launcher,
)

from fedlth.cli import main
from fedlth.deployment.deploy import (
    Certs,
    DeployError,
    command_lines,
    gateway_command,
    make_certs,
    make_node_keys,
    node_config,
    superlink_command,
    write_connection,
    write_gateway,
)

STEP = 60.0  # seconds any one step may take before the test fails

needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx (apt-get install nginx-light)")


class Deployment:
    """A TLS SuperLink with node auth and --database on loopback, its gateway, SuperNodes, flwr."""

    def __init__(self, root: Path, marker: str) -> None:
        self.root, self.logs, self.home = root, root / "logs", root / "flwr-home"
        self.logs.mkdir()
        self.home.mkdir()
        self.certs: Certs = make_certs(root / "certs")
        self.link_port, self.gateway_port, *self.runtime_ports = _free_ports(4)
        self.database = root / "superlink.db"
        self.env = {
            **os.environ, marker: "1", "FLWR_HOME": str(self.home), "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "PATH": scripts_first(),
        }
        self.procs: dict[str, subprocess.Popen] = {}
        (root / "supernode.py").write_text(supernode_launcher(10, 5))  # the least the recipe's SuperLink accepts
        write_connection("operator", f"127.0.0.1:{self.link_port}", root_certificates=self.certs.ca_cert, home=self.home)
        write_connection("device", f"127.0.0.1:{self.gateway_port}", root_certificates=self.certs.ca_cert, home=self.home)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        """A process in its own session, output appended to logs/<name>.log."""
        with (self.logs / f"{name}.log").open("a") as log_file:
            self.procs[name] = subprocess.Popen(cmd, cwd=self.root, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
        return self.procs[name]

    def log(self, name: str) -> str:
        """What a process has written so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_port(self, port: int) -> None:
        """Until something accepts connections on 127.0.0.1:port."""
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        _wait(f"127.0.0.1:{port} to listen", listening, self.procs, STEP)

    def superlink(self) -> None:
        """The recipe's SuperLink (fedlth.deployment.deploy.superlink_command), on loopback."""
        self.start("superlink", superlink_command(port=self.link_port, certs=self.certs, auth=True, database=self.database))
        self.wait_port(self.link_port)

    def gateway(self) -> None:
        """The recipe's nginx gateway on the device-facing port."""
        conf = write_gateway(self.root / "gateway", listen=f"127.0.0.1:{self.gateway_port}", superlink_port=self.link_port,
                             certs=self.certs)
        self.start("gateway", gateway_command(conf))
        self.wait_port(self.gateway_port)

    def supernode(self, key: Path, i: int = 0) -> None:
        """A device: dials the gateway with ca.crt and its own key."""
        self.start(f"node-{i}", [
            sys.executable, str(self.root / "supernode.py"), "--superlink", f"127.0.0.1:{self.gateway_port}",
            "--root-certificates", str(self.certs.ca_cert), "--auth-supernode-private-key", str(key),
            "--port", str(self.runtime_ports[i]), "--max-wait-time", str(STEP),
            "--node-config", node_config(i, self.root / "state" / f"node-{i}"),
        ])

    def flwr(self, *args: str) -> tuple[int, str]:
        """Exit code and output of a flwr CLI call with this deployment's FLWR_HOME."""
        return flwr_cli(*args, home=self.home)

    def nodes(self) -> dict[str, str]:
        """Node id -> status, as the operator's `flwr supernode list` tells."""
        out = self.flwr("supernode", "list", "operator", "--format", "json")
        assert out[0] == 0, out[1]
        listing = json.loads(out[1][out[1].index("{"):])
        return {str(n["node-id"]): n["status"] for n in listing["nodes"]}

    def wait_activated(self) -> None:
        """Until the gateway has passed a node's activation through (read from its access log, so
        the `flwr supernode list` that checks the node is online runs once, not once a poll)."""
        access = self.root / "gateway" / "access.log"
        _wait("a node to be activated", lambda: access.exists() and '"POST /v1/fleet/activate-node HTTP/1.1" 200' in access.read_text(),
              self.procs, STEP)

    def stop(self, name: str) -> None:
        """Kill a process group hard (a crash, not a clean stop)."""
        _kill_group(self.procs.pop(name))


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A Deployment whose processes (and their children) are all gone afterwards."""
    marker = f"FEDLTH_SEC_{uuid.uuid4().hex}"
    dep = Deployment(tmp_path, marker)
    try:
        yield dep
    finally:
        for proc in dep.procs.values():
            _kill_group(proc)
        deadline = time.monotonic() + 15
        while (left := _ours(marker)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
    assert not _ours(marker), "processes left behind"


def test_the_recipe_keeps_the_superlink_on_loopback_with_a_database_and_the_gateway_passes_only_the_fleet_api(tmp_path):
    certs = make_certs(tmp_path / "certs")
    keys = make_node_keys(tmp_path / "certs", ["node-0"])
    for path, mode in [(certs.ca_cert, 0o644), (certs.server_cert, 0o644), (keys[0].public, 0o644),
                       (certs.ca_key, 0o600), (certs.server_key, 0o600), (keys[0].private, 0o600)]:
        assert path.stat().st_mode & 0o777 == mode, path
    link = superlink_command(certs=certs, database="s.db")
    assert link[link.index("--host") + 1] == "127.0.0.1" and link[link.index("--database") + 1] == "s.db"
    lines = command_lines(address="10.0.0.5:9092", nodes=1, state_root="/s", certs=certs, keys=keys)
    text = "\n".join(lines)
    assert "flower-superlink --host 127.0.0.1 --port 9093" in text and "--database superlink.db" in text
    assert "fedlth deploy gateway gateway --listen 0.0.0.0:9092 --superlink-port 9093" in text
    assert "nginx -p gateway/ -e error.log -c nginx.conf" in text
    assert "--address 127.0.0.1:9093" in text and "--superlink 10.0.0.5:9092" in text
    with pytest.raises(DeployError, match="different ports"):
        command_lines(address="10.0.0.5:9093", nodes=1, state_root="/s", certs=certs, keys=keys)
    conf = write_gateway(tmp_path / "gw", listen="0.0.0.0:9092", superlink_port=9093, certs=certs).read_text()
    assert re.findall(r"location (\S+)", conf) == ["/v1/fleet/", "/"] and "location / { return 403; }" in conf
    assert "proxy_pass https://127.0.0.1:9093/v1/fleet/;" in conf and "proxy_ssl_verify on;" in conf
    plain = write_gateway(tmp_path / "plain", listen="127.0.0.1:9092", superlink_port=9093, certs=None).read_text()
    assert "proxy_pass http://127.0.0.1:9093/v1/fleet/;" in plain and "ssl" not in plain
    with pytest.raises(DeployError, match="already exist"):
        write_gateway(tmp_path / "gw", listen="0.0.0.0:9092", certs=certs)
    with pytest.raises(DeployError, match="may not hold"):
        write_gateway(tmp_path / "a b", listen="0.0.0.0:9092", certs=None)
    runner = CliRunner()
    made = runner.invoke(main, ["deploy", "gateway", str(tmp_path / "cli"), "--certs", str(tmp_path / "certs")])
    assert made.exit_code == 0 and "nginx -p" in made.output, made.output
    assert (tmp_path / "cli" / "nginx.conf").read_text().count("ssl_certificate ") == 1
    neither = runner.invoke(main, ["deploy", "gateway", str(tmp_path / "cli2")])
    assert neither.exit_code == 2 and "--insecure" in neither.output
    if shutil.which("nginx"):
        check = subprocess.run(["nginx", "-t", *gateway_command(tmp_path / "gw" / "nginx.conf")[1:]],
                               capture_output=True, text=True, timeout=STEP)
        assert check.returncode == 0, check.stderr


def _post(port: int, ca: Path, path: str) -> int:
    """HTTP status of a raw POST (path sent as is) to the gateway, over TLS verified with ca."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=STEP, context=ssl.create_default_context(cafile=str(ca)))
    try:
        conn.request("POST", path, body=b"", headers={"Content-Type": "application/protobuf"})
        return conn.getresponse().status
    finally:
        conn.close()


@needs_nginx
@pytest.mark.xdist_group("deploy")  # under pytest-xdist, one deployment at a time on one worker
def test_a_party_holding_only_the_ca_certificate_is_refused_every_control_call(deployment: Deployment):
    dep = deployment
    node, intruder = make_node_keys(dep.root / "keys", ["node-0", "intruder"])
    dep.superlink()
    dep.gateway()
    # everything a ca.crt holder could try through the device-facing address, at once
    tries = {
        "ls": ("ls", "device"),
        "supernode list": ("supernode", "list", "device"),
        "supernode register": ("supernode", "register", str(intruder.public), "device"),
        "run": ("run", str(ROOT), "device"),
    }
    for what, args in tries.items():
        code, out = dep.flwr(*args)
        assert code != 0 and "403" in out, f"flwr {what} through the gateway: exit {code}\n{out[-2000:]}"
    # nginx logs a request just after answering it: wait for the last one's line
    access = dep.root / "gateway" / "access.log"
    refused = [f'"POST /v1/control/{call} HTTP/1.1" 403' for call in ("list-runs", "list-nodes", "register-node", "start-run")]
    _wait("the gateway's log of the four refusals", lambda: all(line in access.read_text() for line in refused), dep.procs, STEP)
    # the Runtime API (what a ServerApp uses), health, and paths that normalise onto the Control API
    for path in ("/v1/runtime/acquire-task", "/v1/runtime/get-nodes", "/health", "/v1/fleet/../control/list-nodes",
                 "/v1/fleet/%2e%2e/control/list-nodes", "//v1/control/list-nodes", "/v1/fleet/..%2fcontrol/list-nodes"):
        assert _post(dep.gateway_port, dep.certs.ca_cert, path) in (400, 403), path
    # nothing reached the SuperLink's Control API: no node was registered, no run started
    assert "/v1/control/" not in dep.log("superlink")
    assert dep.nodes() == {}
    # a device holding ca.crt and a key nobody registered is refused by the Fleet API as well
    dep.supernode(intruder.private, 1)
    intruder_proc = dep.procs.pop("node-1")
    _wait("the unregistered node to give up", lambda: intruder_proc.poll() is not None, dep.procs, STEP)
    assert "Failed to activate SuperNode" in dep.log("node-1") and dep.nodes() == {}, dep.log("node-1")[-2000:]
    assert '"POST /v1/fleet/activate-node HTTP/1.1" 412' in (dep.root / "gateway" / "access.log").read_text()
    # the operator, on loopback, registers the real node, which joins through the gateway
    code, out = dep.flwr("supernode", "register", str(node.public), "operator")
    assert code == 0, out
    node_id = re.search(r"SuperNode (\d+) registered", out).group(1)
    dep.supernode(node.private)
    dep.wait_activated()
    _wait("the node to be online", lambda: dep.nodes().get(node_id) == "online", dep.procs, STEP)


@needs_nginx
@pytest.mark.xdist_group("deploy")  # under pytest-xdist, one deployment at a time on one worker
def test_a_restarted_superlink_keeps_its_nodes_and_they_reconnect_by_themselves(deployment: Deployment):
    dep = deployment
    (node,) = make_node_keys(dep.root / "keys", ["node-0"])
    dep.superlink()
    dep.gateway()
    code, out = dep.flwr("supernode", "register", str(node.public), "operator")
    assert code == 0, out
    node_id = re.search(r"SuperNode (\d+) registered", out).group(1)
    dep.supernode(node.private)
    dep.wait_activated()
    _wait("the node to be online", lambda: dep.nodes().get(node_id) == "online", dep.procs, STEP)

    access = dep.root / "gateway" / "access.log"
    dep.stop("superlink")  # a crash: SIGKILL, no clean shutdown
    (dep.logs / "superlink.log").rename(dep.logs / "superlink-1.log")
    _wait("the node to notice", lambda: "Connection attempt failed" in dep.log("node-0"), dep.procs, STEP)
    dep.superlink()  # same --database, nothing registered again
    _wait("the node to reconnect", lambda: "Connection successful" in dep.log("node-0"), dep.procs, STEP)
    seen = len(access.read_text())
    assert dep.nodes() == {node_id: "online"}
    # it is served as the registered node again: its signed polls are answered after the restart
    _wait("an authenticated poll", lambda: '"POST /v1/fleet/pull-messages HTTP/1.1" 200' in access.read_text()[seen:],
          dep.procs, STEP)
    assert "register-node" not in dep.log("superlink") and dep.procs["node-0"].poll() is None
