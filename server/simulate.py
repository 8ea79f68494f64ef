"""Simulation of a scenario on one machine or a Ray cluster: our ServerApp and ClientApp, in-process or on Flower's Ray engine.

Compute knobs (scenario keys): `client-cpus` and `client-gpus` are the Ray resources each
simulated client reserves, so a machine runs cores / client-cpus clients at once (and
1 / client-gpus per GPU); `device` says where a client trains; `ray-address` joins a running
Ray cluster instead of starting a local one. Flower's RayBackend calls ray.init(**init_args)
only when Ray is not initialized yet, and ray.shutdown() when the run ends (for a cluster
that was joined, this disconnects the driver and leaves the cluster up).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedlth.config.core_options import core
from fedlth.reporting.interrupt import RunInterrupted
from fedlth.reporting.progress import Progress
from server.server_app import RoundHook, make_server_app


def _local_cpus() -> int:
    """CPUs a local Ray cluster gets by default: those this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def client_gpus(sc: dict[str, Any], cuda: bool | None = None) -> float:
    """The GPU share Ray reserves per client: `client-gpus` where clients may use a GPU, else 0.

    A local run uses a GPU only if this machine has one (`cuda`, default: ask torch) and
    `device` is not cpu; a joined cluster's GPUs can't be seen from here, so its clients get
    `client-gpus` whenever `device` is not cpu (Flower refuses to start when no node has it).
    `device = cuda` with no GPU share is refused: Ray hides the GPUs from a client that
    reserves none (CUDA_VISIBLE_DEVICES=""), so every client would fail; `device = auto` with
    no share trains on the CPUs, and a warning says so.
    """
    c = core(sc).compute
    if c.device == "cpu":
        return 0.0
    if not c.ray_address:
        if cuda is None:
            from fedlth.learning.devices import cuda_available

            cuda = cuda_available()
        if not cuda:
            if c.device == "cuda":
                from fedlth.learning.devices import resolve_device

                resolve_device("cuda")  # raises, saying why there is no GPU
            return 0.0
    if c.client_gpus <= 0:
        if c.device == "cuda":
            raise ValueError(
                "device = cuda in a simulation needs client-gpus > 0 (e.g. 0.25: four clients share a GPU): "
                "Ray hides the GPUs from clients that reserve none; or set device = auto or cpu"
            )
        if not c.ray_address:
            logging.getLogger("fedlth").warning(
                "fedlth: a GPU is present but client-gpus = 0, so clients train on CPUs; set client-gpus (e.g. 0.25) to use it"
            )
    return float(c.client_gpus)


def backend_config(sc: dict[str, Any], cuda: bool | None = None) -> dict[str, Any]:
    """Flower's Ray backend settings from the scenario's compute keys.

    client_resources: `client-cpus` CPUs and client_gpus(sc) GPUs per client, so as many
    clients run at once as fit. init_args go to ray.init: with `ray-address` it joins that
    cluster (`auto`, `host:port`, or `ray://host:10001` for Ray Client) instead of starting one.
    """
    c = core(sc).compute
    cpus = float(c.client_cpus)
    if not c.ray_address and cpus > _local_cpus():
        raise ValueError(
            f"client-cpus = {cpus:g} but this machine has {_local_cpus()} CPUs, so no client could run; "
            f"allowed: 0 < client-cpus <= {_local_cpus()} (or join a bigger cluster with ray-address)"
        )
    init_args: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.ERROR}
    if c.ray_address:
        init_args["address"] = c.ray_address
    return {"client_resources": {"num_cpus": cpus, "num_gpus": client_gpus(sc, cuda)}, "init_args": init_args}


def check_compute(sc: dict[str, Any]) -> None:
    """Refuse, with a ValueError saying why, compute settings that cannot work here: Ray's
    (backend_config) on backend = ray; in-process, a cluster address it would ignore and a
    device this machine lacks."""
    c = core(sc).compute
    if c.backend == "ray":
        backend_config(sc)
        return
    if c.ray_address:
        raise ValueError(f"ray-address = {c.ray_address!r} joins a Ray cluster, which only backend = ray uses; add backend = ray")
    if c.device == "cuda":
        from fedlth.learning.devices import resolve_device

        resolve_device("cuda")  # raises, saying why there is no GPU


class _DropMessages(logging.Filter):
    """Drops log records whose message contains any of the given texts."""

    def __init__(self, *texts: str) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(t in record.getMessage() for t in self.texts)


@contextmanager
def _third_party_notices_hidden(hide: bool) -> Iterator[None]:
    """Hide, for the block, two notices fedlth users can't act on: Flower's deprecation of
    run_simulation (fedlth calls it; `flwr run` is the other way in) and Ray's FutureWarning
    about GPU visibility (fedlth relies on today's behaviour: clients that reserve no GPU see none)."""
    if not hide:
        yield
        return
    flwr_logger = logging.getLogger("flwr")
    notice = _DropMessages("The `run_simulation` function is deprecated")
    flwr_logger.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            yield
    finally:
        flwr_logger.removeFilter(notice)


def simulate(
    sc: dict[str, Any], out: Path, on_round: RoundHook | None = None, verbose: bool = False, resume: bool = False,
    stop: threading.Event | None = None, prov: dict[str, Any] | None = None, progress: Progress | None = None,
) -> None:
    """Run the scenario on `num-clients` simulated SuperNodes; outputs land in `out`
    (resume: continue the killed run in `out` from its last checkpoint). Once `stop` is set
    the server stops at its next grid call and this raises RunInterrupted (the run folder
    keeps the checkpoint of the last finished round). `prov`: the provenance record for the
    run's outputs (fedlth.reporting.provenance; built by the server when None). `progress`: where the run
    says what it does (fedlth.reporting.progress; silent when None).

    backend = inprocess (the default): the same ServerApp loop and ClientApp, driven in this
    process through Flower's Grid interface (server.local_grid), one client after another,
    with no Ray start; backend = ray: Flower's simulation engine (clients in parallel, Ray clusters).
    """
    from fedlth.reporting.terminal import flower_console

    flower_console()  # Flower colours its log lines even in a pipe; loaded here, not by the CLI
    num_clients = core(sc).data.num_clients
    if core(sc).compute.backend == "inprocess":
        from clients.client_app import app as client_app
        from server.exchange import StoppableGrid
        from server.local_grid import LocalGrid
        from server.server_app import run_federation

        grid = LocalGrid(client_app, num_clients, known_partitions=True)  # no identification messages
        run_federation(StoppableGrid(grid, stop) if stop is not None else grid, sc, out, on_round, resume=resume,
                       client_state_dir=out / "client-state", prov=prov, progress=progress or Progress())
        return
    config = backend_config(sc)  # bad compute settings fail here, before Ray starts
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    progress = progress or Progress()
    progress.task(f"starting Ray and Flower's simulation engine for {num_clients:,} clients")
    with _third_party_notices_hidden(not verbose):
        run_simulation(
            server_app=make_server_app(sc, out, on_round, resume=resume, stop=stop, prov=prov, progress=progress),
            client_app=client_app,
            num_supernodes=num_clients,
            backend_config=config,
            verbose_logging=verbose,
        )
    finished = (out / "summary.json").is_file()
    if stop is not None and stop.is_set() and not finished:
        raise RunInterrupted(f"interrupted by the user; {out} keeps the last finished round's checkpoint")
    if not finished:
        raise RuntimeError(f"the simulation ended without writing {out / 'summary.json'}; see the log above")
