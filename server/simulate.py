"""In-process simulation of a scenario: Flower's simulation engine with our ServerApp and ClientApp."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from server.server_app import RoundHook, make_server_app


def backend_config(sc: dict[str, Any]) -> dict[str, Any]:
    """Ray resources: one CPU per client, so as many clients run at once as there are cores."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"log_to_driver": False, "include_dashboard": False, "logging_level": logging.ERROR},
    }


def simulate(sc: dict[str, Any], out: Path, on_round: RoundHook | None = None, verbose: bool = False) -> None:
    """Run the scenario on `num-clients` simulated SuperNodes; outputs land in `out`."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.simulation import run_simulation

    from clients.client_app import app as client_app

    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=make_server_app(sc, out, on_round),
        client_app=client_app,
        num_supernodes=sc["num-clients"],
        backend_config=backend_config(sc),
        verbose_logging=verbose,
    )
    if not (out / "summary.json").is_file():
        raise RuntimeError(f"the simulation ended without writing {out / 'summary.json'}; see the log above")
