"""The Flower ServerApp: the round loop around TicketStrategy, and the run's outputs."""

from __future__ import annotations

import contextlib
import io
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from fedlth.config.component_options import TicketControlOptions
from fedlth.config.core_options import core
from fedlth.config.options import options
from fedlth.config.scenario import load_scenario, resolve, to_toml
from fedlth.data.client_data import dataset_info
from fedlth.data.partition_file import RECORD_NAME, check_unchanged, partition_file_record
from fedlth.evaluation.reference import scenario_reference
from fedlth.federation.algorithms import get_algorithm, initial_weights, model_names
from fedlth.federation.fedpm import upload_summary as mask_upload_summary
from fedlth.reporting.interrupt import RunInterrupted
from fedlth.reporting.io import (
    default_run_dir,
    sync_disks,
    wait_for_writes,
    write_bytes_atomic,
    write_bytes_later,
    write_json_atomic,
    write_text_atomic,
)
from fedlth.reporting.labels import (
    TRAINING_MASK_DENSITY,
    accuracy_headline,
    round_info,
    trained_clients,
    trained_split,
)
from fedlth.reporting.plots import plot_federated
from fedlth.reporting.progress import CountingGrid, Progress
from fedlth.reporting.provenance import provenance
from fedlth.reporting.report import (
    FIGURES,
    evaluation_summary,
    report_csvs,
    report_markdown,
    round_bytes,
    summarize,
)
from fedlth.tickets.saved import save_tickets
from server.exchange import StoppableGrid, stream_replies
from server.strategy import TicketStrategy, rng_state_compact, rng_state_tuple

RoundHook = Callable[[dict[str, Any]], None]
NODE_WAIT_SECONDS = 300.0
NEW_NODE_SECONDS = 60.0  # how long a node that joined mid-run gets to say who it is


def is_eval_round(sc: dict[str, Any], rnd: int) -> bool:
    """Every `eval-every` rounds, and always after the last one."""
    fed = core(sc).federation
    k = fed.eval_every
    return rnd == fed.rounds or (k > 0 and rnd % k == 0)


def wait_for_nodes(grid: Grid, n: int, limit: float = NODE_WAIT_SECONDS, strict: bool = True) -> bool:
    """Block until n nodes are online; after `limit` seconds fail (strict) or return False."""
    deadline = time.monotonic() + limit
    while len(list(grid.get_node_ids())) < n:
        if time.monotonic() > deadline:
            if not strict:
                return False
            raise RuntimeError(f"only {len(list(grid.get_node_ids()))} of {n} nodes connected after {limit:.0f} s")
        time.sleep(0.2)
    return True


CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "fedlth-server-checkpoint-v1"
PROVENANCE = "provenance.json"  # the record of the command that started the run


class ResumeError(ValueError):
    """A run folder can't be resumed; the message says why."""


class RunFailed(RuntimeError):
    """A run that finished without a result (see run_status); raised by the deployed ServerApp
    so that Flower records the run as failed."""


def save_checkpoint(
    out: Path, strategy: TicketStrategy, rounds: list[dict[str, Any]], run_key: str, deployed: bool = False,
    wall_segments: list[float] | None = None, later: bool = False, round_lines: list[str] | None = None,
) -> None:
    """Everything needed to continue after the last finished round, written atomically;
    `deployed`: the run's clients are SuperNodes (flwr run), not simulated by fedlth run;
    `wall_segments`: seconds of each process that ran the run so far, this one up to now;
    `later`: by this process's writer thread, in order after the clients' ticket files queued
    before it (fedlth.reporting.io.write_bytes_later), while the next round runs; `round_lines`: json.dumps
    of each of `rounds`, made once per round (metrics.jsonl's lines), not once per checkpoint."""
    rounds_text = json.dumps(rounds) if round_lines is None else "[" + ", ".join(round_lines) + "]"
    buf = io.BytesIO()
    torch.save(
        {"format": CHECKPOINT_FORMAT, "round": len(rounds), "run_key": run_key, "strategy": strategy.state_dict(),
         "python_rng": rng_state_compact(random.getstate()), "torch_rng": torch.get_rng_state(), "rounds": rounds_text,
         "deployed": deployed, "wall_segments": [float(x) for x in wall_segments or []]},
        buf,
    )
    (write_bytes_later if later else write_bytes_atomic)(out / CHECKPOINT, buf.getvalue())


def load_checkpoint(out: Path) -> dict[str, Any]:
    """The checkpoint of a killed run; ResumeError when there is none or it is unreadable."""
    path = out / CHECKPOINT
    wait_for_writes(path)  # one this process still has queued
    if not path.is_file():
        raise ResumeError(f"{str(out)!r} has no {CHECKPOINT}: it is not a fedlth run folder, or no round finished")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a fedlth server checkpoint")
    except Exception as exc:  # torch raises many types for a damaged file
        raise ResumeError(f"{str(path)!r} is unreadable: {exc}") from None
    blob["rounds"] = json.loads(blob["rounds"])
    return blob


def resume_command(out: Path) -> str:
    """The command that continues the deployed run in `out` (CONNECTION: the operator's)."""
    return f"flwr run . CONNECTION --run-config \"resume-from='{out.resolve()}'\" --stream"


def check_resume_mode(ckpt: dict[str, Any], out: Path, deployed: bool) -> None:
    """A simulation is continued by fedlth run --resume, a deployed run by flwr run with
    resume-from: its clients are SuperNodes, which a simulation does not have (and the reverse)."""
    if bool(ckpt.get("deployed")) == deployed:
        return
    if ckpt.get("deployed"):
        raise ResumeError(
            f"{str(out)!r} holds a deployed run (flwr run): its clients are SuperNodes that keep their tickets in "
            f"their state-dir, which a local simulation does not have; continue it on the SuperLink with the same "
            f"nodes: {resume_command(out)}"
        )
    raise ResumeError(f"{str(out)!r} holds a fedlth run simulation; continue it with: fedlth run --resume {out}")


def run_status(rounds: list[dict[str, Any]]) -> tuple[str, str | None]:
    """("ok", None), or ("failed", why) for a run with no result: no training reply accepted in
    any round (every one rejected or missing), or no client scored in the last evaluation."""
    if not any(r["train"] for r in rounds):
        rejected = sum(1 for r in rounds for x in r.get("rejected", []) if x.get("kind", "train") == "train")
        return "failed", f"no training reply was accepted in {len(rounds)} rounds ({rejected} rejected, the rest missing)"
    evals = [r for r in rounds if r.get("evaluate") is not None]
    if evals and not any(m["accuracy"] == m["accuracy"] for m in evals[-1]["evaluate"].values()):  # NaN: no score
        return "failed", f"no client sent a valid score in the last evaluation (round {evals[-1]['round']})"
    return "ok", None


def round_line(entry: dict[str, Any], sc: dict[str, Any]) -> str:
    """One round's log line for `flwr run --stream`: updates taken, refused and missing, bytes,
    mean training loss, and the evaluation when there was one."""
    train = entry["train"]
    rejected = [r for r in entry.get("rejected", []) if r.get("kind", "train") == "train"]
    line = (f"fedlth: round {entry['round']}/{core(sc).federation.rounds}: {len(train)} updates accepted, {len(rejected)} rejected, "
            f"{len(entry.get('dropped', []))} missing; upload {entry['bytes']['upload'] / 1e6:.3f} MB")
    losses = [x for m in train.values() if (x := m.get("train-loss", m.get("loss"))) is not None and x == x]
    if losses:
        line += f"; mean train loss {sum(losses) / len(losses):.4f}"
    dens = [m["density"] for m in train.values() if "density" in m]
    if dens:
        line += f"; {TRAINING_MASK_DENSITY} {sum(dens) / len(dens):.3f} (mean over the round's clients)"
    if entry.get("evaluate") is not None:
        accs = [m["accuracy"] for m in entry["evaluate"].values() if m["accuracy"] == m["accuracy"]]
        missing = len(entry.get("eval_missing", []))
        line += (f"; personalized accuracy {sum(accs) / len(accs):.4f} over {len(accs)} clients" if accs
                 else "; no client scored") + (f" ({missing} missing)" if missing else "")
    return line + f"; {entry['seconds']:.1f} s"


def _jsonable(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as it reads back from metrics.jsonl (client ids become strings), so a
    resumed run and an uninterrupted one summarize the very same data."""
    return json.loads(json.dumps(entry))


PENDING = "evaluation_pending"  # metrics.jsonl: a round trained, its evaluation still running


def _write_pending(metrics_path: Path, entry: dict[str, Any], seconds: float) -> int:
    """Append the trained round's line with `evaluation_pending: true` (its `seconds`: training
    only) and return where it starts; the evaluated line replaces it. A finished run's file holds
    no such line; a killed run's last line may (a resume rewrites the file from the checkpoint)."""
    with metrics_path.open("a") as fh:
        at = fh.tell()
        fh.write(json.dumps(_jsonable({**entry, "seconds": seconds, PENDING: True})) + "\n")
    return at


def _train_round(grid: Grid, sc: dict[str, Any], strategy: TicketStrategy, rnd: int, progress: Progress) -> dict[str, Any]:
    """One training round: send, fold replies as they arrive, aggregate; the run-log entry."""
    messages = list(strategy.configure_train(rnd, ArrayRecord(), ConfigRecord(), grid))
    progress.step(f"round {rnd}: clients trained", total=len(messages))
    for node, reply in stream_replies(grid, messages, core(sc).reliability.round_timeout):
        strategy.fold(reply, node)
    result = strategy.finish_round()
    return {
        "round": rnd, "train": result.train, "rejected": result.rejected,
        "rejected_updates": len(result.rejected), "dropped": result.dropped, "aggregated": result.aggregated,
        "bytes": round_bytes(result.train, strategy.dense_bytes, result.rejected, strategy.num_params), "evaluate": None,
    }


def _evaluate_round(
    grid: Grid, sc: dict[str, Any], strategy: TicketStrategy, rnd: int, entry: dict[str, Any], progress: Progress,
) -> None:
    messages = list(strategy.configure_evaluate(rnd, ArrayRecord(), ConfigRecord(), grid))
    progress.step(f"round {rnd}: clients evaluated", total=len(messages))
    entry["eval_asked"] = len(messages)  # every client, or eval-clients of them (a seeded sample)
    # each reply is filed under the node the instruction went to, never the partition it names
    strategy.aggregate_evaluate(rnd, list(stream_replies(grid, messages, core(sc).reliability.round_timeout)))
    result = strategy.evaluation_result()
    entry["evaluate"] = result.scores
    entry["eval_missing"] = result.missing
    entry["rejected"] = result.rejected  # the round's refusals, evaluation replies included
    entry["rejected_updates"] = len(result.rejected)
    entry["bytes"]["rejected"] = sum(r["bytes"] for r in result.rejected)
    entry["eval_download_bytes"] = sum(m["download_bytes"] for m in result.scores.values())
    entry["evaluation_summary"] = evaluation_summary(entry["evaluate"])


def wall_time(segments: list[float], resume: bool, known: bool = True) -> dict[str, Any]:
    """summary.json's account of wall_seconds: one segment per process that ran the run."""
    out: dict[str, Any] = {"wall_seconds_segments": segments}
    if resume:
        out["wall_seconds_note"] = (
            "sum of the run's segments, each counted up to its last checkpoint (the part of a round a kill cut short is not counted)"
            if known else "this segment only: the checkpoint (an older fedlth) did not record the earlier ones"
        )
    return out


def run_provenance(out: Path, resume: bool, prov: dict[str, Any] | None = None) -> dict[str, Any]:
    """This process's provenance (`prov`, else built now); a resumed run also carries the
    record of the run it continues, from the folder's provenance.json."""
    prov = dict(prov or provenance())
    first = out / PROVENANCE
    if resume and first.is_file():
        prov["resumed_from"] = json.loads(first.read_text())
    return prov


def run_federation(
    grid: Grid, sc: dict[str, Any], out: Path, on_round: RoundHook | None = None, resume: bool = False,
    client_state_dir: Path | None = None, prov: dict[str, Any] | None = None, deployed: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run every round of the scenario on `grid` (or the rounds a killed run had left);
    metrics.jsonl and a checkpoint are written after every round, the rest at the end.

    `client_state_dir`: where clients on this machine (simulation) keep their tickets, so
    that they are on disk rather than in RAM and a resumed run finds them. `prov`: the
    provenance record (fedlth.reporting.provenance) for the outputs; built here when not given.
    `deployed`: the clients are SuperNodes (flwr run); the checkpoint says so, so that only
    flwr run with resume-from continues it. summary.json's `status` is "ok" or "failed"
    (with `failure`: why; see run_status).
    `progress`: where the run says what it does (phases, rounds, replies of each round).
    """
    t_start = time.perf_counter()
    prov = run_provenance(out, resume, prov)
    c = core(sc)
    seed, n_clients, timeout = c.general.seed, c.data.num_clients, c.reliability.round_timeout
    random.seed(seed)  # anything in Flower that samples with the global `random`
    torch.manual_seed(seed)
    alg = get_algorithm(c.federation.algorithm)
    shape, classes = dataset_info(sc)
    split_file = partition_file_record(sc)  # which exact split the run used (file partitions)
    # the re-init control's fresh init: the same model under another seed
    reinit = options(sc, TicketControlOptions).ticket_control == "reinit"
    fresh = initial_weights(sc | {"seed": seed + 1}, shape, classes) if reinit else None
    strategy = TicketStrategy(sc, initial_weights(sc, shape, classes), model_names(sc, shape, classes), fresh)
    rounds: list[dict[str, Any]] = []
    run_key = uuid.uuid4().hex
    earlier: list[float] | None = []  # wall seconds of the processes that ran this run before (None: unknown)
    if resume:
        ckpt = load_checkpoint(out)
        run_key = ckpt["run_key"]
        earlier = ckpt.get("wall_segments")  # checkpoints of older fedlth versions lack it
        strategy.load_state_dict(ckpt["strategy"])
        random.setstate(rng_state_tuple(ckpt["python_rng"]))
        torch.set_rng_state(ckpt["torch_rng"])
        rounds = ckpt["rounds"]
        log(INFO, "fedlth: resuming %s after round %d of %d", out, len(rounds), c.federation.rounds)
    strategy.run_config["run-key"] = run_key
    if client_state_dir is not None:
        strategy.run_config["state-dir"] = str(client_state_dir.resolve())
        # clients in this process write their files in the background, others on this machine
        # without an fsync each: the writes are waited for, or the disk synced, before each checkpoint
        if c.compute.backend == "inprocess" or not c.compute.ray_address:
            strategy.run_config["state-sync"] = "process" if c.compute.backend == "inprocess" else "disk"
    progress = progress or Progress()
    grid = CountingGrid(grid, progress)  # every reply moves the progress line on
    progress.task(f"waiting for {n_clients:,} clients to connect")
    wait_for_nodes(grid, n_clients)
    progress.task("starting the federation")
    if not strategy.adopt_known_partitions(grid):  # in-process simulation: the grid knows, nobody is asked
        progress.step(f"asking {n_clients:,} clients for their partition ids", total=n_clients)
        strategy.identify(grid, timeout=timeout)
    if len(strategy.node_of) < n_clients:
        raise RuntimeError(f"{len(strategy.node_of)} of {n_clients} nodes identified themselves")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "scenario.toml", to_toml(sc))
    if split_file is not None and not resume:  # a resume checks the file still has this content
        write_json_atomic(out / RECORD_NAME, split_file)
    if not resume:
        write_json_atomic(out / PROVENANCE, prov)
    metrics_path = out / "metrics.jsonl"
    # rewritten from the checkpoint: a line for a round the crash cut short is dropped
    lines = [json.dumps(r) for r in rounds]  # each round's line, encoded once: metrics.jsonl and the checkpoints
    write_text_atomic(metrics_path, "".join(line + "\n" for line in lines))
    progress.task(f"{c.federation.algorithm} rounds", total=c.federation.rounds, done=len(rounds))
    # this process's timings: start-up (from entering run_federation; the wall clock at its first
    # round, for a caller that timed the whole process) and each evaluation's seconds
    timing: dict[str, Any] = {"seconds_before_first_round": time.perf_counter() - t_start,
                              "first_round_started_unix": time.time(), "evaluation_seconds": {}}
    node_wait = c.reliability.node_wait
    try:
        for rnd in range(len(rounds) + 1, c.federation.rounds + 1):
            t0 = time.perf_counter()
            if node_wait > 0 and not wait_for_nodes(grid, n_clients, node_wait, strict=False):
                log(WARNING, "round %d: %d of %d nodes online after %.0f s; going on", rnd,
                    len(list(grid.get_node_ids())), n_clients, node_wait)
            strategy.identify(grid, timeout=min(timeout, NEW_NODE_SECONDS))  # nodes that (re)joined
            entry = _train_round(grid, sc, strategy, rnd, progress)
            line_at = None
            if is_eval_round(sc, rnd):
                # the training numbers now, not after an evaluation that may take far longer
                line_at = _write_pending(metrics_path, entry, time.perf_counter() - t0)
                progress.update(info=f"round {rnd} trained: {round_info(entry)}; evaluating")
                t_eval = time.perf_counter()
                _evaluate_round(grid, sc, strategy, rnd, entry, progress)
                timing["evaluation_seconds"][str(rnd)] = time.perf_counter() - t_eval
            entry["seconds"] = time.perf_counter() - t0
            entry = _jsonable(entry)
            rounds.append(entry)
            lines.append(json.dumps(entry))
            with metrics_path.open("r+" if line_at is not None else "a") as fh:
                if line_at is not None:  # the evaluated line replaces the pending one
                    fh.seek(line_at)
                    fh.truncate()
                fh.write(lines[-1] + "\n")
            # the clients' tickets of this round are on the disk before the checkpoint that counts on
            # them: in this process, the writer thread writes them first; elsewhere on this machine, a sync
            in_process = strategy.run_config.get("state-sync") == "process"
            if strategy.run_config.get("state-sync") == "disk":
                sync_disks()
            save_checkpoint(out, strategy, rounds, run_key, deployed, [*(earlier or []), time.perf_counter() - t_start], later=in_process,
                            round_lines=lines)
            progress.update(done=rnd, info=round_info(entry))
            if on_round is not None:
                on_round(entry)
    finally:
        # however the rounds end (the last one, an error, a kill): the checkpoint and the tickets
        # this process still holds go to the disk before anything reads or follows them
        wait_for_writes()
    progress.task("writing the summary, report, tickets and plots")
    segments = [*(earlier or []), time.perf_counter() - t_start]
    summary = summarize(
        sc, rounds, has_global=alg.has_global, wall_seconds=sum(segments), reference=scenario_reference(sc),
    )
    summary.update(wall_time(segments, resume, known=earlier is not None))
    summary["timing"] = timing
    summary["personalized_accuracy"].update(
        trained_split(summary["personalized_accuracy"]["per_client"], trained_clients(rounds))
    )
    summary["bytes"]["final_ticket_upload"] = sum(strategy.ticket_bytes.values())
    if alg.mask_posterior:  # fedpm: bits per masked parameter of the uploads (wire, raw, coded, entropy)
        summary["mask_upload_bits_per_parameter"] = mask_upload_summary(rounds)
    if split_file is not None:
        summary["partition_file"] = split_file
    summary["provenance"] = prov
    summary["status"], failure = run_status(rounds)
    if failure is not None:
        summary["failure"] = failure
    write_json_atomic(out / "summary.json", summary)
    title = f"{c.federation.algorithm} on {c.data.dataset} (seed {seed})"
    figures = (plot_federated(rounds, title, out) if c.outputs.plots
               else dict.fromkeys(FIGURES, "skipped: plots = false"))
    report = report_markdown(sc, summary, figures)
    if failure is not None:
        title, _, rest = report.partition("\n")
        report = f"{title}\n\n**FAILED: {failure}**\n{rest}"
    write_text_atomic(out / "report.md", report)
    for name, text in report_csvs(summary).items():
        write_text_atomic(out / name, text)
    # fedpm: the global weights are the frozen network; its learned probabilities go alongside
    extra = {"probabilities": strategy.probs} if alg.mask_posterior else {}
    torch.save({"global": strategy.global_weights, "masks": strategy.masks, **extra}, out / "server_state.pt")
    if strategy.tickets:
        save_tickets(out / "tickets", strategy.tickets)
    return summary


def deployed_plan(run_config: dict[str, Any]) -> tuple[dict[str, Any], Path, bool]:
    """What a ServerApp started by `flwr run` does: (scenario, output folder, resume?).

    A new run writes to `out-dir` (relative paths: under the SuperLink's working directory,
    where Flower starts the ServerApp), which must be new or empty, else a fresh
    runs/run-<name>-<time>. `resume-from = DIR` continues the deployed run killed in DIR from
    its checkpoint, with DIR's scenario (its nodes send what they kept in their state-dir);
    run-config keys set to anything but their default must agree with that scenario.
    """
    sc = resolve(run_config, source="run config")
    fed = core(sc).federation
    if not fed.resume_from:
        folder = Path(fed.out_dir or default_run_dir(sc)).expanduser().resolve()
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            what = ("a finished run (summary.json)" if (folder / "summary.json").is_file()
                    else f"a killed run; continue it with: {resume_command(folder)}" if (folder / CHECKPOINT).is_file()
                    else "files")
            raise ResumeError(f"out-dir {str(folder)!r} already holds {what}; a new run needs a new or empty out-dir "
                              "(or none: a fresh runs/run-<name>-<time> under the SuperLink's working directory)")
        return sc, folder, False
    folder = Path(fed.resume_from).expanduser().resolve()
    if fed.out_dir and Path(fed.out_dir).expanduser().resolve() != folder:
        raise ResumeError(f"resume-from writes into the run's own folder ({folder}); drop out-dir = {fed.out_dir!r}")
    if not folder.is_dir():
        raise ResumeError(f"resume-from: no run folder {str(folder)!r} (relative paths start at the SuperLink's working directory)")
    if (folder / "summary.json").is_file():
        raise ResumeError(f"resume-from: the run in {str(folder)!r} already finished (it has summary.json)")
    check_resume_mode(load_checkpoint(folder), folder, deployed=True)
    saved = load_scenario(folder / "scenario.toml")
    defaults = resolve({})
    differ = [f"{k} = {sc[k]!r} (the run has {saved[k]!r})" for k in sorted(sc)
              if k not in ("resume-from", "out-dir") and sc[k] != defaults[k] and sc[k] != saved[k]]
    if differ:
        raise ResumeError(f"resume-from continues the run with its own scenario ({folder / 'scenario.toml'}); "
                          f"drop the run-config keys that differ from it: {'; '.join(differ)}")
    check_unchanged(saved, folder)
    return saved, folder, True


def _deployed_main(grid: Grid, context: Context) -> None:
    """`flwr run`: a log line per round; a run that fails (an exception, or no result: see
    run_status) logs a final "fedlth: FAILED: ..." line and raises, so Flower records the run
    as failed (flwr ls); flwr run itself exits 0 whatever the run did, which fedlth can't change."""
    folder: Path | None = None
    try:
        sc, folder, resume = deployed_plan(dict(context.run_config))
        c = core(sc)
        log(INFO, "fedlth: %s %s on %d nodes; outputs in %s", "resuming" if resume else "starting", c.federation.algorithm,
            c.data.num_clients, folder)
        summary = run_federation(grid, sc, folder, lambda e: log(INFO, "%s", round_line(e, sc)), resume=resume, deployed=True)
    except Exception as exc:
        where = ""
        if folder is not None and (folder / CHECKPOINT).is_file() and not (folder / "summary.json").is_file():
            with contextlib.suppress(ResumeError):  # the exception, not a damaged checkpoint, is the news
                where = f"; {load_checkpoint(folder)['round']} rounds are checkpointed in {folder}: {resume_command(folder)}"
        log(ERROR, "fedlth: FAILED: %s%s", exc, where)
        raise
    if summary["status"] != "ok":
        log(ERROR, "fedlth: FAILED: %s (outputs in %s)", summary["failure"], folder)
        raise RunFailed(summary["failure"])
    acc = summary["personalized_accuracy"]["mean"]
    log(INFO, "fedlth: finished; personalized accuracy %.4f; outputs in %s", acc, folder)


def make_server_app(
    sc: dict[str, Any] | None = None, out: Path | None = None, on_round: RoundHook | None = None, resume: bool = False,
    stop: threading.Event | None = None, prov: dict[str, Any] | None = None, progress: Progress | None = None,
) -> ServerApp:
    """A ServerApp for a given scenario (fedlth run), or one that reads Flower's run config (flwr run);
    once `stop` is set, its next use of the grid raises RunInterrupted (Ctrl-C). Without a
    `progress`, the run logs its phases and a line per round (what `flwr run --stream` shows)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        if stop is not None:
            grid = StoppableGrid(grid, stop)
        if sc is None:
            _deployed_main(grid, context)
            return
        folder = out or Path(default_run_dir(sc))
        # in-process simulation shares this machine's disk with its clients
        try:
            summary = run_federation(grid, sc, folder, on_round, resume=resume, client_state_dir=folder / "client-state", prov=prov,
                                     progress=progress or Progress.for_log(lambda line: log(INFO, "fedlth: %s", line)))
        except RunInterrupted:
            return  # a normal return: Flower then stops at once (simulate() raises it again)
        log(INFO, "fedlth: wrote %s (status %s); %s", folder, summary["status"], accuracy_headline(summary).replace("\n ", ";"))

    return server_app


app = make_server_app()
