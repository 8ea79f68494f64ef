"""`fedlth deploy`: trial certificates and SuperNode keys, Flower connections, device data
files and the command lines of a deployment on Flower's own engine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fedlth.deployment.deploy import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_PORT,
    Certs,
    DeployError,
    NodeKey,
    command_lines,
    gateway_command,
    make_certs,
    make_node_keys,
    write_connection,
    write_gateway,
)

EXIT_BAD_INPUT = 2


def _fail(message: str) -> None:
    click.echo(f"fedlth: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@click.group()
def deploy() -> None:
    """Deploy on devices: flower-superlink, flower-supernode, flwr run (TLS and node auth)."""


@deploy.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--host", "hosts", multiple=True, metavar="NAME|IP",
              help="A name or address SuperNodes use to reach the SuperLink (repeatable); localhost, 127.0.0.1 and ::1 are always in.")
@click.option("--nodes", type=click.IntRange(0, 10_000), default=0, show_default=True,
              help="Also make this many SuperNode key pairs (node-<i>.key, node-<i>.pub).")
@click.option("--days", type=click.IntRange(1, 3650), default=30, show_default=True, help="Validity of the certificates.")
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def certs(out: Path, hosts: tuple[str, ...], nodes: int, days: int, force: bool) -> None:
    """A throw-away CA and SuperLink certificate for a trial (and SuperNode auth keys).

    For a real deployment use certificates from your own CA: flower-superlink takes
    --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile, SuperNodes --root-certificates.
    """
    try:
        made = make_certs(out, hosts, days=days, force=force)
        keys = make_node_keys(out, [f"node-{i}" for i in range(nodes)], force=force) if nodes else []
    except DeployError as exc:
        _fail(str(exc))
    click.echo(f"CA certificate   {made.ca_cert}   (SuperNodes: --root-certificates; flwr: root-certificates)")
    click.echo(f"CA key           {made.ca_key}   (keep private; not needed to run)")
    click.echo(f"server cert/key  {made.server_cert}  {made.server_key}   (flower-superlink only)")
    for k in keys:
        click.echo(f"SuperNode key    {k.private}  (device only)   public: {k.public}  (flwr supernode register)")


@deploy.command()
@click.argument("name")
@click.option("--address", required=True, metavar="HOST:PORT", help="The SuperLink's address.")
@click.option("--root-certificates", type=click.Path(path_type=Path), default=None, help="CA certificate that signed the SuperLink's (TLS).")
@click.option("--insecure", is_flag=True, help="Plain text, no TLS: a trial on a trusted network only.")
@click.option("--default", "make_default", is_flag=True, help="Make it the default connection.")
def connection(name: str, address: str, root_certificates: Path | None, insecure: bool, make_default: bool) -> None:
    """Add a SuperLink connection NAME to $FLWR_HOME/config.toml (for flwr run / flwr supernode)."""
    if root_certificates is None and not insecure:
        _fail("give --root-certificates CA.crt (TLS), or --insecure for a plain-text trial")
    try:
        path = write_connection(name, address, root_certificates=root_certificates, insecure=insecure, default=make_default)
    except DeployError as exc:
        _fail(str(exc))
    click.echo(f"wrote [superlink.{name}] to {path}")


def _certs_in(folder: Path) -> Certs:
    return Certs(folder / "ca.crt", folder / "ca.key", folder / "server.pem", folder / "server.key")


@deploy.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--listen", default=f"0.0.0.0:{DEFAULT_PORT}", show_default=True, metavar="HOST:PORT",
              help="Where devices connect (the Fleet API only).")
@click.option("--superlink-port", type=click.IntRange(1, 65535), default=DEFAULT_CONTROL_PORT, show_default=True,
              help="The port of the SuperLink on 127.0.0.1 (flower-superlink --host 127.0.0.1 --port ...).")
@click.option("--certs", "certs_dir", type=click.Path(path_type=Path), default=None,
              help="Folder with ca.crt, server.pem, server.key (TLS to devices and to the SuperLink).")
@click.option("--insecure", is_flag=True, help="Plain text on both sides: a trial on a trusted network only.")
@click.option("--force", is_flag=True, help="Overwrite an existing nginx.conf.")
def gateway(out: Path, listen: str, superlink_port: int, certs_dir: Path | None, insecure: bool, force: bool) -> None:
    """Write OUT/nginx.conf: devices reach the SuperLink's Fleet API and nothing else.

    Flower 1.42 serves its Control API (flwr run, flwr supernode register, ...) on the same
    address as the Fleet API, without authentication; the SuperLink therefore listens on
    127.0.0.1 and nginx passes only /v1/fleet/ from LISTEN to it (everything else: 403).
    """
    if insecure == (certs_dir is not None):
        _fail("give --certs DIR (TLS) or --insecure (plain text), not both or neither")
    try:
        conf = write_gateway(out, listen=listen, superlink_port=superlink_port,
                             certs=_certs_in(certs_dir) if certs_dir is not None else None, force=force)
    except DeployError as exc:
        _fail(str(exc))
    click.echo(f"wrote {conf}; start it with: {' '.join(gateway_command(conf))}")


@deploy.command()
@click.option("--address", default=f"127.0.0.1:{DEFAULT_PORT}", show_default=True, metavar="HOST:PORT",
              help="The gateway's address as devices see it (Fleet API only).")
@click.option("--superlink-port", type=click.IntRange(1, 65535), default=DEFAULT_CONTROL_PORT, show_default=True,
              help="The SuperLink's own port, on 127.0.0.1 (Control API: the operator's flwr only).")
@click.option("--database", default="superlink.db", show_default=True,
              help="flower-superlink --database: registered nodes and runs survive a restart.")
@click.option("--gateway-dir", default="gateway", show_default=True, help="Folder of the gateway's nginx.conf.")
@click.option("--nodes", type=click.IntRange(1, 10_000), required=True, help="Number of SuperNodes (= num-clients).")
@click.option("--certs", "certs_dir", type=click.Path(path_type=Path), default=None,
              help="Folder made by `fedlth deploy certs` (ca.crt, server.pem, server.key, node-<i>.key).")
@click.option("--insecure", is_flag=True, help="Plain text, no TLS and no node authentication.")
@click.option("--no-auth", is_flag=True, help="TLS without SuperNode authentication.")
@click.option("--state-root", default="~/.fedlth/state", show_default=True, help="Each node keeps its ticket in <state-root>/node-<i>.")
@click.option("--data-dir", default=None, help="Devices read <data-dir>/client-<i>.npz (else partition <i> of the scenario's dataset).")
@click.option("--connection", "conn", default="fedlth", show_default=True, help="Name of the flwr connection.")
@click.option("--scenario", default="scenarios/quickstart.toml", show_default=True, help="Run config for flwr run.")
def commands(address: str, superlink_port: int, database: str, gateway_dir: str, nodes: int, certs_dir: Path | None,
             insecure: bool, no_auth: bool, state_root: str, data_dir: str | None, conn: str, scenario: str) -> None:
    """Print the commands of a deployment, in order, ready to paste."""
    if insecure == (certs_dir is not None):
        _fail("give --certs DIR (TLS, the default way) or --insecure (plain text), not both or neither")
    made = None
    keys: list[NodeKey] = []
    if certs_dir is not None:
        made = _certs_in(certs_dir)
        if not no_auth:
            keys = [NodeKey(certs_dir / f"node-{i}.key", certs_dir / f"node-{i}.pub") for i in range(nodes)]
    files = [f"{data_dir.rstrip('/')}/client-{i}.npz" for i in range(nodes)] if data_dir else None
    try:
        lines = command_lines(address=address, nodes=nodes, state_root=state_root, certs=made, keys=keys,
                              data_files=files, connection=conn, scenario=scenario, control_port=superlink_port,
                              database=database, gateway_dir=gateway_dir)
    except DeployError as exc:
        _fail(str(exc))
    missing = [str(p) for p in ([made.ca_cert, made.server_cert, made.server_key] if made else []) + [k.private for k in keys] if not p.exists()]
    if missing:
        host = address.rpartition(":")[0].strip("[]")
        extra = "" if host in ("localhost", "127.0.0.1", "::1") else f" --host {host}"
        click.echo(f"# note: not there yet: {', '.join(missing)} (make them with: fedlth deploy certs {certs_dir} --nodes {nodes}{extra})")
    click.echo("\n".join(lines))


@deploy.command("export-data")
@click.argument("scenario", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario key (repeatable).")
def export_data(scenario: Path, out: Path, overrides: tuple[str, ...]) -> None:
    """Write every client's partition as OUT/client-<i>.npz, a device's `data-file` (needs the sim extra)."""
    from fedlth.config.core_options import core
    from fedlth.config.scenario import ScenarioError, load_scenario
    from fedlth.data.client_data import check_data_settings, client_data
    from fedlth.data.local_data import save_local_data
    from fedlth.reporting.io import OutputError, check_out_dir

    try:
        sc = load_scenario(scenario, overrides)
        check_out_dir(out)
        check_data_settings(sc)  # a bad partition file or data setting writes nothing
    except (ScenarioError, OutputError) as exc:
        _fail(str(exc))
    for i in range(core(sc).data.num_clients):
        path = save_local_data(out / f"client-{i}.npz", client_data(sc, i))
        click.echo(f"wrote {path}")
