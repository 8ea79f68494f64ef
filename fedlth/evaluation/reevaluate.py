"""Re-evaluate the saved tickets of a finished run, without training."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedlth.config.core_options import core
from fedlth.config.scenario import ScenarioError, load_scenario
from fedlth.data.client_data import client_data
from fedlth.federation.algorithms import Ctx, score_model
from fedlth.learning.models import build_model
from fedlth.reporting.progress import Progress
from fedlth.reporting.report import evaluation_summary
from fedlth.tickets.masks import Weights, density
from fedlth.tickets.saved import TicketFileError, load_ticket_file, ticket_path


class RunDirError(ValueError):
    """A run folder can't be re-evaluated; the message says why."""


def load_run_scenario(run_dir: Path, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """The resolved scenario a run was made with, plus overrides (evaluator keys, say)."""
    if not run_dir.is_dir():
        raise RunDirError(f"run folder {str(run_dir)!r} does not exist")
    if not (run_dir / "scenario.toml").is_file():
        raise RunDirError(f"{str(run_dir)!r} has no scenario.toml: not a fedlth run folder")
    if not (run_dir / "tickets").is_dir():
        raise RunDirError(f"{str(run_dir)!r} has no tickets/ (the run had save-tickets = false, or did not finish)")
    try:
        return load_scenario(run_dir / "scenario.toml", overrides)
    except ScenarioError as exc:
        raise RunDirError(str(exc)) from None


def reevaluate(run_dir: Path, sc: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """Every client's saved ticket on its own test split, with the scenario's evaluators."""
    per_client: dict[int, dict[str, float]] = {}
    progress = progress or Progress()
    c = core(sc)
    evaluators = c.outputs.evaluators
    progress.task("tickets evaluated" + (f" (+ {evaluators})" if evaluators else ""), total=c.data.num_clients)
    for pid in range(c.data.num_clients):
        try:
            weights, mask = load_ticket_file(ticket_path(run_dir / "tickets", pid))
        except TicketFileError as exc:
            raise RunDirError(str(exc)) from None
        ctx = Ctx(sc, client_data(sc, pid), pid, 0)
        net = build_model(c.training.model, ctx.data.input_shape, ctx.data.num_classes)
        net.load_state_dict(weights)
        metrics = score_model(ctx, net)  # as the live evaluation scores it
        per_client[pid] = metrics | {"density": density(mask) if mask else 1.0, "partition-id": float(pid)}
        progress.update(advance=1)
    return {"evaluators": evaluators, "per_client": per_client, "summary": evaluation_summary(per_client)}


def repersonalize(
    run_dir: Path, sc: dict[str, Any], on_model: Callable[[int, Weights], None] | None = None
) -> dict[int, dict[str, float]]:
    """Every client's personal model made again from the run's final global model, exactly as
    the clients received it (through the wire), under `sc` (the run's scenario with, say,
    another `ticket-control` or `target-density`): the winning-ticket controls on the very same
    federation. `on_model(client, weights)` sees each personal model before it is scored."""
    import torch

    from fedlth.federation.algorithms import ClientState, evaluate_client, get_algorithm
    from fedlth.federation.records import decode_record, encode_record

    c = core(sc)
    alg = get_algorithm(c.federation.algorithm)
    if not (alg.has_global or alg.server_mask) or alg.name == "ditto":  # ditto's v lives in client state
        raise RunDirError(f"{c.federation.algorithm} keeps personal models only on its clients; nothing to re-personalize")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["strategy"]
    shared = state.get("shared_mask") if alg.server_mask else None
    glob = state["global"]
    received, mask = decode_record(
        encode_record(glob, shared, with_shapes=False, wire_dtype=c.wire.wire_dtype),
        {k: tuple(v.shape) for k, v in glob.items()}, {k: v.dtype for k, v in glob.items()},
    )
    out: dict[int, dict[str, float]] = {}
    for pid in range(c.data.num_clients):
        ctx = Ctx(sc, client_data(sc, pid), pid, c.federation.rounds)  # the last round's generator
        state = ClientState(mask=mask or None)
        personal = alg.personal(received, state, ctx)
        if on_model is not None:
            on_model(pid, personal[0])
        out[pid] = evaluate_client(alg, received, state, ctx, personal)
    return out
