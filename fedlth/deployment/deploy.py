"""Deployment helpers: trial certificates, SuperNode keys, Flower connections, a Fleet gateway,
command lines.

Flower 1.42's SuperLink serves its Fleet (/v1/fleet/), Control (/v1/control/) and Runtime
(/v1/runtime/) APIs on one HTTPS address (`--host`, `--port`, default 127.0.0.1:8000) with
`--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`, and the open-source Control API has no
authentication: whoever reaches that address can register node keys and start runs. So the
SuperLink listens on loopback only, and devices reach a gateway (nginx) that passes the Fleet
API alone. SuperNodes verify TLS with `--root-certificates` and authenticate with an EC private
key in OpenSSH format (`--auth-supernode-private-key`) whose public key the operator registered
with `flwr supernode register KEY.pub CONNECTION` on a SuperLink started with
`--enable-supernode-auth`. `--database PATH` keeps registered nodes and runs across restarts.
Everything here only writes files and strings; it starts nothing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shlex
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedlth.reporting.io import write_bytes_atomic

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")  # the SuperLink's own SuperExec dials these
DEFAULT_PORT = 9092  # device-facing: the gateway, Fleet API only
DEFAULT_CONTROL_PORT = 9093  # the SuperLink itself, on loopback: the operator's (flwr) address
LOOPBACK = "127.0.0.1"
FLEET_PATH = "/v1/fleet/"  # the only path prefix a device needs (flwr/superlink/routers/fleet/router.py)


class DeployError(ValueError):
    """A deployment input can't be used (existing files, bad host, bad address)."""


@dataclass(frozen=True)
class Certs:
    """A trial CA and the SuperLink's certificate signed by it (PEM files)."""

    ca_cert: Path  # give to SuperNodes (--root-certificates) and flwr (root-certificates)
    ca_key: Path  # keep it, or delete it once the server certificate exists
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair (OpenSSH ECDSA P-384)."""

    private: Path  # stays on the device: --auth-supernode-private-key
    public: Path  # registered on the SuperLink: flwr supernode register


def _write_private(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data, mode=0o600)  # private from its first byte on disk


def _write_public(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data)
    os.chmod(path, 0o644)


def _refuse_existing(paths: Iterable[Path], force: bool) -> None:
    there = [str(p) for p in paths if p.exists()]
    if there and not force:
        raise DeployError(f"{', '.join(there)} already exist; pass --force to overwrite")


def _san(host: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c.isspace() for c in host) or "/" in host or ":" in host:
            raise DeployError(f"{host!r} is not a host name or IP address") from None
        return x509.DNSName(host)


def make_certs(folder: Path, hosts: Sequence[str] = (), *, days: int = 30, force: bool = False) -> Certs:
    """A throw-away CA (ca.crt, ca.key) and a server certificate (server.pem, server.key).

    The server certificate names localhost, 127.0.0.1 and ::1 plus `hosts` (the names or
    addresses SuperNodes and `flwr` use to reach the SuperLink). ECDSA P-384, valid `days`.
    For production, bring certificates from your own CA and pass their paths instead.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if days < 1:
        raise DeployError(f"days must be >= 1, got {days}")
    folder = Path(folder)
    certs = Certs(folder / "ca.crt", folder / "ca.key", folder / "server.pem", folder / "server.key")
    _refuse_existing((certs.ca_cert, certs.ca_key, certs.server_cert, certs.server_key), force)
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    sans = [_san(h) for h in names]

    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlth trial CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[len(DEFAULT_HOSTS)] if hosts else "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    folder.mkdir(parents=True, exist_ok=True)
    _write_public(certs.ca_cert, ca.public_bytes(pem))
    _write_private(certs.ca_key, ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    _write_public(certs.server_cert, server.public_bytes(pem))
    _write_private(certs.server_key, key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    return certs


def make_node_keys(folder: Path, names: Sequence[str], *, force: bool = False) -> list[NodeKey]:
    """One OpenSSH ECDSA P-384 key pair per SuperNode: <name>.key (private) and <name>.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    keys = [NodeKey(folder / f"{n}.key", folder / f"{n}.pub") for n in names]
    if len(set(names)) != len(names):
        raise DeployError(f"node names must be unique, got {list(names)}")
    _refuse_existing([p for k in keys for p in (k.private, k.public)], force)
    folder.mkdir(parents=True, exist_ok=True)
    for name, k in zip(names, keys, strict=True):
        private = ec.generate_private_key(ec.SECP384R1())
        _write_private(k.private, private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write_public(k.public, public + f" fedlth-{name}\n".encode())
    return keys


def check_address(address: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT) split, or DeployError."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeployError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def flwr_home() -> Path:
    """Flower's configuration folder: $FLWR_HOME, else ~/.flwr."""
    return Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")


def write_connection(
    name: str, address: str, *, root_certificates: Path | None = None, insecure: bool = False,
    default: bool = False, home: Path | None = None,
) -> Path:
    """Add (or replace) `[superlink.<name>]` in $FLWR_HOME/config.toml; keep everything else.

    TLS: `root-certificates` = the CA that signed the SuperLink's certificate (absolute path).
    `insecure = true` only when asked: plain text, for a trial on a trusted network.
    """
    import tomli_w

    check_address(address)
    if insecure == (root_certificates is not None):
        raise DeployError("give exactly one of root_certificates (TLS) or insecure=True (plain text)")
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise DeployError(f"connection name {name!r} may hold only letters, digits, '-' and '_'")
    path = (home or flwr_home()) / "config.toml"
    config = tomllib.loads(path.read_text()) if path.is_file() else {}
    links = config.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        ca = Path(root_certificates).expanduser().resolve()
        if not ca.is_file():
            raise DeployError(f"root certificates {str(ca)!r} do not exist")
        entry["root-certificates"] = str(ca)
    links[name] = entry
    if default or "default" not in links:
        links["default"] = name
    write_bytes_atomic(path, tomli_w.dumps(config).encode())
    return path


GATEWAY_CONF = """\
# fedlth Fleet gateway (nginx): devices reach Flower's Fleet API ({fleet}) and nothing else.
# The SuperLink listens on loopback ({upstream}); its Control and Runtime APIs stay there.
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    client_max_body_size 0;
    server_tokens off;
    server {{
        listen {listen}{ssl};
{tls}        location {fleet} {{
            proxy_pass {scheme}://{upstream}{fleet};
{upstream_tls}            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
        location / {{ return 403; }}
    }}
}}
"""


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _conf_path(path: Path) -> str:
    text = str(Path(path).expanduser().resolve())
    if any(c.isspace() or c in ";{}\"'$\\" for c in text):
        raise DeployError(f"{text!r}: a path in the gateway's configuration may not hold spaces, ; {{ }} $ quotes or backslashes")
    return text


def gateway_config(folder: Path, *, listen: str, superlink_port: int, certs: Certs | None) -> str:
    """nginx configuration that serves only the Fleet API on `listen`, proxied to the loopback SuperLink."""
    host, port = check_address(listen)
    tls = upstream_tls = ""
    if certs is not None:
        tls = (f"        ssl_certificate {_conf_path(certs.server_cert)};\n"
               f"        ssl_certificate_key {_conf_path(certs.server_key)};\n        ssl_protocols TLSv1.2 TLSv1.3;\n")
        upstream_tls = (f"            proxy_ssl_trusted_certificate {_conf_path(certs.ca_cert)};\n"
                        "            proxy_ssl_verify on;\n            proxy_ssl_name localhost;\n"
                        "            proxy_ssl_server_name on;\n")
    return GATEWAY_CONF.format(
        folder=_conf_path(folder), listen=_host_port(host, port), ssl=" ssl" if certs is not None else "", tls=tls,
        scheme="https" if certs is not None else "http", upstream=_host_port(LOOPBACK, superlink_port),
        upstream_tls=upstream_tls, fleet=FLEET_PATH,
    )


def write_gateway(
    folder: Path, *, listen: str, superlink_port: int = DEFAULT_CONTROL_PORT, certs: Certs | None, force: bool = False,
) -> Path:
    """Write <folder>/nginx.conf (see gateway_config); return its path."""
    conf = Path(folder) / "nginx.conf"
    _refuse_existing([conf], force)
    _write_public(conf, gateway_config(folder, listen=listen, superlink_port=superlink_port, certs=certs).encode())
    return conf


def gateway_command(conf: Path) -> list[str]:
    """nginx in the foreground with the gateway's own folder as prefix (no system files touched)."""
    conf = Path(conf)
    return ["nginx", "-p", f"{conf.parent}/", "-e", "error.log", "-c", conf.name]  # -e, -c: relative to -p


def _cmd(args: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in args)


def node_config(partition_id: int, state_dir: str | Path, data_file: str | Path | None = None) -> str:
    """The --node-config string of one SuperNode (Flower's `key=value` pairs, strings quoted)."""
    pairs = [f"partition-id={int(partition_id)}", f'state-dir="{state_dir}"']
    if data_file is not None:
        pairs.append(f'data-file="{data_file}"')
    return " ".join(pairs)


def superlink_command(
    *, host: str = LOOPBACK, port: int = DEFAULT_CONTROL_PORT, certs: Certs | None = None, auth: bool = True,
    database: str | Path | None = None,
) -> list[str]:
    """flower-superlink with TLS (certs) and SuperNode authentication, or plain text (certs=None).

    `host` stays loopback: every API, the unauthenticated Control API included, listens there;
    devices reach the Fleet API through the gateway. `database` keeps nodes across restarts.
    """
    cmd = ["flower-superlink", "--host", host, "--port", str(port)]
    if certs is None:
        if auth:
            raise DeployError("Flower refuses --enable-supernode-auth without TLS; use certificates or auth=False")
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert),
                "--ssl-keyfile", str(certs.server_key)]
    if auth:
        cmd.append("--enable-supernode-auth")
    if database is not None:
        cmd += ["--database", str(database)]
    cmd.append("--disable-runtime-dependency-installation")
    return cmd


def supernode_command(
    superlink: str, partition_id: int, state_dir: str | Path, *, root_certificates: Path | None = None,
    private_key: Path | None = None, data_file: str | Path | None = None, runtime_port: int = 9094,
    max_wait_time: float | None = None,
) -> list[str]:
    """flower-supernode for one device; TLS when root_certificates is given, else --insecure."""
    check_address(superlink)
    cmd = ["flower-supernode", "--superlink", superlink]
    cmd += ["--root-certificates", str(root_certificates)] if root_certificates is not None else ["--insecure"]
    if private_key is not None:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    cmd += ["--port", str(runtime_port), "--node-config", node_config(partition_id, state_dir, data_file)]
    if max_wait_time is not None:
        cmd += ["--max-wait-time", str(max_wait_time)]
    return cmd


def _listen_for(address: str) -> str:
    host, port = check_address(address)
    return f"{LOOPBACK}:{port}" if host in DEFAULT_HOSTS else f"0.0.0.0:{port}"


def command_lines(
    *, address: str, nodes: int, state_root: str, certs: Certs | None, keys: Sequence[NodeKey] = (),
    data_files: Sequence[str] | None = None, connection: str = "fedlth", scenario: str = "scenarios/quickstart.toml",
    control_port: int = DEFAULT_CONTROL_PORT, database: str = "superlink.db", gateway_dir: str = "gateway",
) -> list[str]:
    """The commands of a whole deployment, in order, as text a person can paste.

    `address` is where devices reach the gateway (Fleet API only); the SuperLink itself listens
    on 127.0.0.1:`control_port`, which only the operator (on the server, or through an SSH
    tunnel) uses for flwr.
    """
    _, port = check_address(address)
    if port == control_port:
        raise DeployError(f"the gateway ({address}) and the SuperLink (127.0.0.1:{control_port}) need different ports")
    auth = bool(keys)
    step = iter(range(1, 10))
    link = _cmd(superlink_command(port=control_port, certs=certs, auth=auth, database=database))
    lines = [f"# {next(step)}. the SuperLink (server machine): loopback only, state kept in {database}", link]
    gateway = ["fedlth", "deploy", "gateway", gateway_dir, "--listen", _listen_for(address), "--superlink-port", str(control_port)]
    gateway += ["--certs", str(certs.ca_cert.parent)] if certs is not None else ["--insecure"]
    lines += [f"# {next(step)}. the gateway devices reach: Flower's Fleet API only (nginx; Control/Runtime APIs refused)",
              _cmd(gateway), _cmd(gateway_command(Path(gateway_dir) / "nginx.conf"))]
    conn = ["fedlth", "deploy", "connection", connection, "--address", f"{LOOPBACK}:{control_port}", "--default"]
    conn += ["--root-certificates", str(certs.ca_cert)] if certs is not None else ["--insecure"]
    lines += [f"# {next(step)}. the operator's flwr connection (server machine, or ssh -L {control_port}:127.0.0.1:{control_port})",
              _cmd(conn)]
    if auth:
        lines.append(f"# {next(step)}. register every SuperNode's public key (once: the database keeps them)")
        lines += [_cmd(["flwr", "supernode", "register", str(k.public), connection]) for k in keys]
    lines.append(f"# {next(step)}. one SuperNode per device (its partition id, data file and state folder)")
    for i in range(nodes):
        lines.append(_cmd(supernode_command(
            address, i, f"{state_root.rstrip('/')}/node-{i}", root_certificates=certs.ca_cert if certs else None,
            private_key=keys[i].private if auth else None, data_file=data_files[i] if data_files else None,
            runtime_port=9094 + i,  # the node's local Runtime API: distinct, so a trial fits one machine
        )))
    lines += [f"# {next(step)}. the run, from the project folder (scenario num-clients = number of SuperNodes)",
              _cmd(["flwr", "run", ".", connection, "--run-config", scenario, "--stream"])]
    return lines
