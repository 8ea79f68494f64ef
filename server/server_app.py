"""The Flower ServerApp: the round loop around TicketStrategy, and the run's outputs."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from logging import WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedlth.algorithms import get_algorithm, initial_weights
from fedlth.client_data import dataset_info
from fedlth.io import default_out_dir, write_json_atomic, write_text_atomic
from fedlth.plots import plot_federated
from fedlth.records import encode_record, record_bytes
from fedlth.report import evaluation_summary, report_markdown, round_bytes, summarize
from fedlth.scenario import resolve, to_toml
from fedlth.tickets import save_tickets
from server.strategy import TicketStrategy

RoundHook = Callable[[dict[str, Any]], None]
NODE_WAIT_SECONDS = 300.0
REPLY_TIMEOUT_SECONDS = 3600.0


def is_eval_round(sc: dict[str, Any], rnd: int) -> bool:
    """Every `eval-every` rounds, and always after the last one."""
    k = sc["eval-every"]
    return rnd == sc["rounds"] or (k > 0 and rnd % k == 0)


def wait_for_nodes(grid: Grid, n: int, limit: float = NODE_WAIT_SECONDS) -> None:
    """Block until n nodes are connected, or fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    while len(list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(list(grid.get_node_ids()))} of {n} nodes connected after {limit:.0f} s")
        time.sleep(0.2)


def run_federation(grid: Grid, sc: dict[str, Any], out: Path, on_round: RoundHook | None = None) -> dict[str, Any]:
    """Run every round of the scenario on `grid`; write metrics.jsonl as it goes, then the rest."""
    t_start = time.perf_counter()
    random.seed(sc["seed"])  # anything in Flower that samples with the global `random`
    torch.manual_seed(sc["seed"])
    alg = get_algorithm(sc["algorithm"])
    shape, classes = dataset_info(sc)
    strategy = TicketStrategy(sc, initial_weights(sc, shape, classes))
    wait_for_nodes(grid, sc["num-clients"])
    strategy.identify(grid, timeout=REPLY_TIMEOUT_SECONDS)
    if len(strategy.node_of) < sc["num-clients"]:
        raise RuntimeError(f"{len(strategy.node_of)} of {sc['num-clients']} nodes identified themselves")
    dense_bytes = record_bytes(encode_record(strategy.global_weights, None))
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "scenario.toml", to_toml(sc))
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    rounds: list[dict[str, Any]] = []
    empty, cfg = ArrayRecord(), ConfigRecord()
    for rnd in range(1, sc["rounds"] + 1):
        t0 = time.perf_counter()
        replies = grid.send_and_receive(strategy.configure_train(rnd, empty, cfg, grid), timeout=REPLY_TIMEOUT_SECONDS)
        strategy.aggregate_train(rnd, replies)
        train = {pid: strategy.train_log[pid] for pid in sorted(strategy.train_log)}
        entry: dict[str, Any] = {
            "round": rnd, "train": train, "rejected": list(strategy.rejected), "bytes": round_bytes(train, dense_bytes),
            "evaluate": None,
        }
        if is_eval_round(sc, rnd):
            replies = grid.send_and_receive(strategy.configure_evaluate(rnd, empty, cfg, grid), timeout=REPLY_TIMEOUT_SECONDS)
            strategy.aggregate_evaluate(rnd, replies)
            entry["evaluate"] = {pid: strategy.eval_log[pid] for pid in sorted(strategy.eval_log)}
            entry["eval_download_bytes"] = sum(m["download_bytes"] for m in strategy.eval_log.values())
            entry["evaluation_summary"] = evaluation_summary(entry["evaluate"])
        entry["seconds"] = time.perf_counter() - t0
        rounds.append(entry)
        with metrics_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        if on_round is not None:
            on_round(entry)
    summary = summarize(sc, rounds, has_global=alg.has_global, wall_seconds=time.perf_counter() - t_start)
    summary["bytes"]["final_ticket_upload"] = sum(strategy.ticket_bytes.values())
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "report.md", report_markdown(sc, summary))
    torch.save({"global": strategy.global_weights, "masks": strategy.masks}, out / "server_state.pt")
    if strategy.tickets:
        save_tickets(out / "tickets", strategy.tickets)
    plot_federated(rounds, f"{sc['algorithm']} on {sc['dataset']} (seed {sc['seed']})", out)
    return summary


def make_server_app(sc: dict[str, Any] | None = None, out: Path | None = None, on_round: RoundHook | None = None) -> ServerApp:
    """A ServerApp for a given scenario (fedlth run), or one that reads Flower's run config (flwr run)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        scenario = sc if sc is not None else resolve(dict(context.run_config), source="run config")
        folder = out or Path(scenario["out-dir"] or default_out_dir("run", scenario["name"] or scenario["algorithm"]))
        summary = run_federation(grid, scenario, folder, on_round)
        log(WARNING, "fedlth: wrote %s (personalized accuracy %.4f)", folder, summary["personalized_accuracy"]["mean"])

    return server_app


app = make_server_app()
