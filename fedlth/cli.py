"""The `fedlth` command line: every bad input is one clear message and exit code 2."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click

from fedlth import __version__
from fedlth.config.core_options import core
from fedlth.config.scenario import ScenarioError, load_scenario
from fedlth.reporting.interrupt import EXIT_INTERRUPTED, RunInterrupted, check_stop, stop_on_sigint
from fedlth.reporting.io import OutputError, check_out_dir, default_out_dir, default_run_dir
from fedlth.reporting.progress import Progress, batch_runs, imp_models
from fedlth.reporting.provenance import provenance

EXIT_BAD_INPUT = 2


def fail(message: str) -> None:
    """Print one error line to stderr and exit 2."""
    click.echo(f"fedlth: error: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


class _Commands(click.Group):
    """fedlth's command group: a Ctrl-C that no command handles exits 130, as shells expect
    (click's default prints "Aborted!" and exits 1)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("\nfedlth: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="fedlth")
def main() -> None:
    """Federated and robust lottery tickets on Flower."""
    from fedlth.reporting.terminal import flower_console

    if "flwr" in sys.modules:  # Flower colours its log lines even in a pipe (server.simulate does it too)
        flower_console()


@main.command()
@click.argument("pattern", default="")
@click.option("--format", "fmt", type=click.Choice(["scenario", "toml", "markdown"]), default="scenario", show_default=True,
              help="scenario: commented TOML, itself a valid scenario; toml: pyproject's [tool.flwr.app.config] block; "
                   "markdown: the README's key tables.")
def keys(pattern: str, fmt: str) -> None:
    """List the scenario keys (all, or those matching PATTERN: a glob or part of a name or group)
    with type, default, allowed values and help, grouped by concern. The full list is valid TOML."""
    from fedlth.config.scenario import describe_keys, matching_keys, suggest_key

    found = matching_keys(pattern)
    if not found:
        fail(f"no scenario key matches {pattern!r}; {suggest_key(pattern)}")
    if fmt == "scenario":
        click.echo(describe_keys(found), nl=False)
        return
    from fedlth.config.key_docs import config_toml, markdown_tables

    click.echo((config_toml if fmt == "toml" else markdown_tables)(found), nl=False)


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override scenario keys: key=value, or several space-separated pairs (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (new or empty).")
@click.option("--seeds", default=1, type=click.IntRange(1, 100), show_default=True,
              help="Seeds: 1 runs the scenario's seed; N > 1 runs seeds 0..N-1 (one folder each) and adds mean ± sample std and a 95 % interval over them.")
@click.option("--quiet", is_flag=True, help="No progress display: only warnings that matter and the result.")
def ticket(scenario: Path, overrides: tuple[str, ...], out: Path | None, seeds: int, quiet: bool) -> None:
    """Central lottery-ticket run: IMP with rewinding and both controls."""
    from fedlth.data.datasets import DatasetUnavailableError

    prov = provenance(program="fedlth")

    try:
        sc = load_scenario(scenario, overrides)
        from fedlth.config.key_readers import CENTRAL

        _check_keys(sc, overrides, {CENTRAL}, quiet)
        out = out or default_run_dir(sc, "ticket")
        check_out_dir(out)
        from fedlth.tickets.ticket_run import TicketRun, run_ticket_seeds, write_outputs

        progress = Progress.for_terminal(quiet)
        with progress.active():
            from fedlth.config.component_options import CentralTicketOptions
            from fedlth.config.options import options

            o = options(sc, CentralTicketOptions)
            progress.task(f"loading {core(sc).data.dataset}")
            say = imp_models(progress, o.imp_levels, o.controls, repeats=seeds)
            if seeds > 1:
                summaries = run_ticket_seeds(sc, list(range(seeds)), out, say, prov)
            else:
                runner = TicketRun(sc, say)
                summary = runner.run()
            progress.update(advance=1, info="done")  # the last model finished
    except (ScenarioError, OutputError, DatasetUnavailableError) as exc:
        fail(str(exc))
    if seeds > 1:
        click.echo((out / "report.md").read_text())
        click.echo(f"wrote {out}/report.md, levels.csv, summary.json, accuracy_vs_density.png and seed-0..{seeds - 1}/ "
                   f"({sum(s['wall_seconds'] for s in summaries):.1f} s)")
        return
    write_outputs(out, sc, summary | {"provenance": prov})
    _print_ticket_table(summary, out, quiet)


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path), required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override scenario keys: key=value, or several space-separated pairs (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (new or empty).")
@click.option("--run-config", "run_config", multiple=True, metavar='"KEY=VALUE ..."',
              help="Flower's form of --set: space-separated pairs, strings TOML-quoted or not.")
@click.option("--resume", "resume_dir", type=click.Path(path_type=Path), default=None, metavar="RUN_DIR",
              help="Continue a killed run from its last checkpoint (no SCENARIO, --set, --run-config or --out).")
@click.option("--seeds", default=1, type=click.IntRange(1, 100), show_default=True,
              help="1: the scenario's seed; N > 1: seeds 0..N-1, one run folder each (seed-S), and seeds.md/.csv/.json/.png with mean ± sample std and a 95 % interval over them.")
@click.option("--quiet", is_flag=True, help="No progress display: only warnings that matter and the result.")
@click.option("--verbose", is_flag=True, help="Show Flower's and Ray's own logs.")
def run(
    scenario: Path | None, overrides: tuple[str, ...], run_config: tuple[str, ...], out: Path | None,
    resume_dir: Path | None, seeds: int, quiet: bool, verbose: bool,
) -> None:
    """Federated run: simulate the scenario's clients in-process on Flower's engine."""
    prov = provenance(program="fedlth")
    overrides = (*overrides, *run_config)
    try:
        if resume_dir is not None:
            if seeds > 1:
                raise ScenarioError("--resume continues one run; resume each seed's folder (RUN_DIR/seed-S) on its own")
            if scenario is not None or overrides or out is not None:
                raise ScenarioError(
                    "--resume takes the scenario and output folder of the run it continues; drop SCENARIO, --set, --run-config and --out"
                )
            (sc, done), out = _resumable(resume_dir), resume_dir
            if not quiet:
                click.echo(f"resuming {out} after round {done} of {core(sc).federation.rounds}", err=True)
        else:
            if scenario is None:
                raise ScenarioError("give a SCENARIO file, or --resume RUN_DIR")
            sc = load_scenario(scenario, overrides)
            if core(sc).federation.resume_from:
                raise ScenarioError("resume-from is for flwr run (a deployed run); fedlth run continues a run with --resume RUN_DIR")
            _check_keys(sc, overrides, {core(sc).federation.algorithm}, quiet)
            out = out or default_run_dir(sc)
            check_out_dir(out)
        progress = Progress.for_terminal(quiet)
        with progress.active():
            _check_data(sc)
    except (ScenarioError, OutputError) as exc:
        fail(str(exc))
    if seeds > 1:
        _run_seeds(sc, seeds, out, prov, progress)
        return
    from server.simulate import simulate

    try:
        with stop_on_sigint() as stop, progress.active():
            simulate(sc, out, verbose=verbose, resume=resume_dir is not None, stop=stop, prov=prov, progress=progress)
    except RunInterrupted:
        _exit_interrupted(out)
    _print_run_summary(out, quiet)


def _run_seeds(sc: dict, seeds: int, out: Path, prov: dict, progress: Progress) -> None:
    """`fedlth run --seeds N`: the scenario once per seed into out/seed-S, then seeds.md/.csv/.json/.png."""
    from fedlth.reporting.compare import compare as run_compare

    next_run = batch_runs(progress, seeds)

    def say(_alg: str, seed: int) -> None:
        next_run(f"seed {seed}")

    try:
        with stop_on_sigint() as stop, progress.active():
            res = run_compare(sc, [core(sc).federation.algorithm], list(range(seeds)), out, _runner(prov, stop, progress), on_run=say, prov=prov, stem="seeds")
    except RunInterrupted:
        _exit_interrupted_batch(out)
    click.echo(res["table"])
    click.echo(f"wrote {out}/seeds.md, seeds.csv, seeds.json, seeds.png and seed-0..{seeds - 1}/")


def _exit_interrupted(out: Path) -> None:
    """Say how far the run got and how to continue it; exit 130."""
    import shlex

    from server.server_app import CHECKPOINT, ResumeError, load_checkpoint

    try:
        done = f"after round {load_checkpoint(out)['round']}"
    except ResumeError:
        done = "before its first round finished"
    click.echo(f"fedlth: interrupted {done}; outputs so far are in {out}", err=True)
    if (out / CHECKPOINT).is_file():
        click.echo(f"continue with:\n  fedlth run --resume {shlex.quote(str(out))}", err=True)
    sys.exit(EXIT_INTERRUPTED)


def _runner(prov: dict, stop: threading.Event, progress: Progress | None = None) -> Callable[[dict, Path], None]:
    """One simulated run per call for compare and study; none starts after a Ctrl-C."""
    from server.simulate import simulate

    def run_one(sc: dict, out: Path) -> None:
        check_stop(stop)
        simulate(sc, out, prov=prov, stop=stop, progress=progress)

    return run_one


def _exit_interrupted_batch(out: Path) -> None:
    """compare and study stop (exit 130) keeping the runs that finished; they have no --resume."""
    click.echo(f"fedlth: interrupted; the runs that finished are in {out} (no table: it needs every run)", err=True)
    sys.exit(EXIT_INTERRUPTED)


def _resumable(run_dir: Path) -> tuple[dict, int]:
    """The scenario of a killed run that can be resumed and its rounds done; ScenarioError says why not."""
    if not run_dir.is_dir():
        raise ScenarioError(f"--resume: no run folder {str(run_dir)!r}")
    if (run_dir / "summary.json").is_file():
        raise ScenarioError(f"--resume: the run in {str(run_dir)!r} already finished (it has summary.json)")
    if not (run_dir / "checkpoint.pt").is_file():
        raise ScenarioError(f"--resume: {str(run_dir)!r} has no checkpoint.pt: no round of a fedlth run finished there")
    from fedlth.data.partition_file import check_unchanged
    from server.server_app import ResumeError, check_resume_mode, load_checkpoint

    try:
        ckpt = load_checkpoint(run_dir)
        check_resume_mode(ckpt, run_dir, deployed=False)  # a deployed run's clients are SuperNodes
        done = ckpt["round"]
    except ResumeError as exc:
        raise ScenarioError(f"--resume: {exc}") from None
    sc = load_scenario(run_dir / "scenario.toml")
    check_unchanged(sc, run_dir)
    return sc, done


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--algorithms", default="local,fedavg-ft,subfedavg,shared-ticket", show_default=True, help="Comma-separated algorithm names; NAME:key=value:... runs a variant (e.g. shared-ticket:server-pruner=random).")
@click.option("--seeds", default=1, type=click.IntRange(1, 100), show_default=True, help="Seeds 0..N-1 (the scenario's seed is replaced).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override scenario keys: key=value, or several space-separated pairs (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (new or empty).")
@click.option("--quiet", is_flag=True, help="No progress display: only warnings that matter and the result.")
def compare(scenario: Path, algorithms: str, seeds: int, overrides: tuple[str, ...], out: Path | None, quiet: bool) -> None:
    """Run several algorithms on the same partitions over seeds; write a table and an overlay plot."""
    from fedlth.config.scenario import ALGORITHM_NAMES, resolve
    from fedlth.reporting.compare import parse_variant

    prov = provenance(program="fedlth")

    try:
        sc = load_scenario(scenario, overrides)
        algs = [a.strip() for a in algorithms.split(",") if a.strip()]
        bad = [a for a in algs if parse_variant(a)[0] not in ALGORITHM_NAMES]
        if bad or not algs:
            raise ScenarioError(f"--algorithms: unknown {bad or 'empty list'}; allowed: {', '.join(ALGORITHM_NAMES)} (each may take NAME:key=value variants)")
        for a in algs:  # a variant's own keys are checked before any run starts
            name, variant_sets = parse_variant(a)
            variant = resolve(sc | {"algorithm": name}, variant_sets, source=a)
            from fedlth.config.key_readers import check_run_keys

            try:  # against the variant: NAME:aggregation=qffl,qffl-q=2 selects the reader of its own key
                check_run_keys(variant, variant_sets, {name})
            except ValueError as exc:
                raise ScenarioError(f"{a}: {exc}") from None
        _check_keys(sc, overrides, {parse_variant(a)[0] for a in algs}, quiet)
        out = out or default_out_dir("compare", core(sc).general.name)
        check_out_dir(out)
        progress = Progress.for_terminal(quiet)
        with progress.active():
            _check_data(sc)
    except (ScenarioError, OutputError) as exc:
        fail(str(exc))
    from fedlth.reporting.compare import compare as run_compare

    next_run = batch_runs(progress, len(algs) * seeds)

    def say(alg: str, seed: int) -> None:
        next_run(f"{alg}, seed {seed}")

    try:
        with stop_on_sigint() as stop, progress.active():
            res = run_compare(sc, algs, list(range(seeds)), out, _runner(prov, stop, progress), on_run=say, prov=prov)
    except RunInterrupted:
        _exit_interrupted_batch(out)
    click.echo(res["table"])
    click.echo(f"wrote {out}/comparison.md, comparison.csv, comparison.json, comparison.png")


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--densities", default="1.0,0.5,0.2,0.1,0.05", show_default=True, help="Target densities (1.0 = dense).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override scenario keys: key=value, or several space-separated pairs (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (new or empty).")
@click.option("--seeds", default=1, type=click.IntRange(1, 100), show_default=True,
              help="Seeds: 1 runs the scenario's seed; N > 1 runs seeds 0..N-1 (one folder each) and adds mean ± sample std and a 95 % interval over them.")
@click.option("--controls", is_flag=True,
              help="personal-ticket only: add the winning-ticket controls (random-mask: the ticket's per-layer counts at random positions; reinit: the ticket's mask on a fresh init) at every density.")
@click.option("--quiet", is_flag=True, help="No progress display: only warnings that matter and the result.")
def study(scenario: Path, densities: str, overrides: tuple[str, ...], out: Path | None, seeds: int, controls: bool, quiet: bool) -> None:
    """Train tickets at each density; table and plots of accuracy, robustness and fairness.

    personal-ticket trains one federation per seed (its global model does not depend on the
    target density) and cuts every client's ticket, and with --controls both controls, from
    that run's final global model at each density. Other algorithms run one federation per
    density and seed."""
    from fedlth.reporting.study import parse_densities

    prov = provenance(program="fedlth")

    try:
        sc = load_scenario(scenario, overrides)
        algorithm = core(sc).federation.algorithm
        _check_keys(sc, overrides, {algorithm}, quiet)
        try:
            targets = parse_densities(densities)
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        if controls and algorithm != "personal-ticket":
            raise ScenarioError(
                f"--controls needs algorithm = personal-ticket (its tickets are cut from a finished federation); "
                f"the scenario has {algorithm!r} (shared-ticket's controls: compare with ticket-control=reinit or server-pruner=random)"
            )
        out = out or default_out_dir("study", core(sc).general.name)
        check_out_dir(out)
        progress = Progress.for_terminal(quiet)
        with progress.active():
            _check_data(sc)
    except (ScenarioError, OutputError) as exc:
        fail(str(exc))
    if algorithm == "personal-ticket":
        _study_arms(sc, targets, out, seeds, controls, prov, progress)
        return
    from fedlth.reporting.study import study as run_study

    next_run = batch_runs(progress, len(targets) * seeds)

    def say(d: float, seed: int) -> None:
        next_run(f"target density {d:g}" + (f", seed {seed}" if seeds > 1 else ""))

    try:
        with stop_on_sigint() as stop, progress.active():
            run_study(sc, targets, out, _runner(prov, stop, progress), on_run=say, prov=prov,
                      seeds=list(range(seeds)) if seeds > 1 else None)
    except RunInterrupted:
        _exit_interrupted_batch(out)
    click.echo((out / "study.md").read_text())
    click.echo(f"wrote {out}/study.md, study.csv, study.json, study.png")


def _study_arms(sc: dict, targets: list[float], out: Path, seeds: int, controls: bool, prov: dict, progress: Progress) -> None:
    """personal-ticket's study: one federation per seed, then every density x arm re-made from it."""
    from fedlth.reporting.study import study_arms

    arms = ("ticket", "random-mask", "reinit") if controls else ("ticket",)
    steps = batch_runs(progress, seeds * (1 + len(targets) * len(arms)))

    def say_run(seed: int) -> None:
        steps(f"federation, seed {seed}")

    def say_personal(seed: int, d: float, arm: str) -> None:
        steps(f"{arm} tickets at density {d:g}, seed {seed}")

    try:
        with stop_on_sigint() as stop, progress.active():
            study_arms(sc, targets, out, _runner(prov, stop, progress), arms=arms,
                       seeds=list(range(seeds)) if seeds > 1 else None, on_run=say_run,
                       on_personalize=lambda *a: (check_stop(stop), say_personal(*a)), prov=prov)
    except RunInterrupted:
        _exit_interrupted_batch(out)
    click.echo((out / "study.md").read_text())
    click.echo(f"wrote {out}/study.md, study.csv, study.json, study.png")


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--evaluators", default=None, help="Comma-separated evaluators (default: the run's own).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override evaluator keys (attack, attack-eps, ...).")
@click.option("--quiet", is_flag=True, help="No progress display: only warnings that matter and the result.")
def evaluate_cmd(run_dir: Path, evaluators: str | None, overrides: tuple[str, ...], quiet: bool) -> None:
    """Re-evaluate the saved tickets of a finished run, without training."""
    from fedlth.evaluation.reevaluate import RunDirError, load_run_scenario, reevaluate
    from fedlth.reporting.io import write_json_atomic
    from fedlth.reporting.labels import trained_note

    prov = provenance(program="fedlth")
    extra = (*overrides, *((f"evaluators={evaluators}",) if evaluators is not None else ()))
    try:
        sc = load_run_scenario(run_dir, extra)
        progress = Progress.for_terminal(quiet)
        with progress.active():
            _check_data(sc)
            result = reevaluate(run_dir, sc, progress) | {"provenance": prov}
    except (RunDirError, ScenarioError) as exc:
        fail(str(exc))
    from datetime import datetime

    out = run_dir / f"evaluation-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.json"
    write_json_atomic(out, result)
    acc = result["summary"]["across_clients"]
    from fedlth.reporting.tables import format_cell, human_name

    click.echo(f"{len(result['per_client'])} tickets: accuracy {100 * acc['mean']:.1f} % (mean over the clients' own test splits), "
               f"worst-10% {100 * acc['worst10']:.1f} %{trained_note(run_dir / 'metrics.jsonl', result['per_client'])} -> {out}")
    for key, value in (result["summary"].get("evaluators_mean") or {}).items():  # means over the scored clients
        click.echo(f"  {human_name(key)}: {format_cell(key, value)}")


@main.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--client", required=True, help="Client (partition) id whose ticket to export.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="File to write (refused if it exists).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
@click.option("--shrink/--no-shrink", default=None, help="Cut pruned channels out of the model [default: when the file gets smaller].")
def export_cmd(run_dir: Path, client: str, out: Path, force: bool, shrink: bool | None) -> None:
    """Write one client's ticket as a compact file; fedlth.load_ticket(FILE) runs it on CPU."""
    from fedlth.tickets.export import ExportError, export_line, export_run_ticket

    try:
        head = export_run_ticket(run_dir, client, out, force=force, shrink=shrink)
    except ExportError as exc:
        fail(str(exc))
    click.echo(export_line(head, out))
    for note in head["notes"]:
        click.echo(f"  note: {note}")


def _check_keys(sc: dict, overrides: tuple[str, ...], present: set[str], quiet: bool) -> None:
    """A --set key that this run does not read is an error; a scenario-file key it ignores, a note."""
    from fedlth.config.key_readers import check_run_keys

    try:
        notes = check_run_keys(sc, overrides, present)
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    if not quiet:
        for note in notes:
            click.echo(f"fedlth: {note}", err=True)


def _check_data(sc: dict) -> None:
    """Check the settings up front, cheapest first, so bad ones fail before any work: what the
    dataset declares (model on its input shape, evaluators' needs, compute), in well under a
    second and writing nothing; then the data and partitions themselves (saying so on the
    command's progress line)."""
    from fedlth.data import partition_file
    from fedlth.data.client_data import check_data_settings
    from fedlth.data.datasets import META
    from fedlth.reporting.progress import current

    c = core(sc)
    if c.data.partition == partition_file.METHOD:  # its checks need no data: their error comes alone
        from fedlth.config.component_options import FilePartitionOptions
        from fedlth.config.options import options

        partition_file.read_partition_file(options(sc, FilePartitionOptions).partition_file, c.data.num_clients)
    meta = META[c.data.dataset]
    from fedlth.learning.models import build_model

    try:  # the model must fit the data's input shape: built once here, not in every client
        build_model(c.training.model, meta.input_shape, meta.num_classes)
    except ValueError as exc:
        raise ScenarioError(f"key 'model' is {c.training.model!r} on {c.data.dataset}: {exc}") from None
    if c.outputs.evaluators:
        from fedlth.evaluation.evaluators import DataInfo, build_evaluators

        try:
            build_evaluators(c.outputs.evaluators, sc, DataInfo(meta.num_classes, meta.sensitive))
        except ValueError as exc:
            raise ScenarioError(f"evaluators: {exc}") from None
    from server.simulate import check_compute

    try:
        check_compute(sc)  # compute keys (backend, client-cpus, device, client-gpus) that can't work here
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    from fedlth.data.sampled_partition import SAMPLED

    current().task(f"loading {c.data.dataset}" + ("" if c.data.partition in SAMPLED else f" and building {c.data.num_clients:,} partitions"))
    check_data_settings(sc)


def _print_run_summary(out: Path, quiet: bool) -> None:
    import json

    from fedlth.reporting.labels import accuracy_headline

    s = json.loads((out / "summary.json").read_text())
    if s.get("status") == "failed":  # a run with no result (server.server_app.run_status)
        click.echo(f"fedlth: FAILED: {s['failure']}; outputs in {out}", err=True)
        sys.exit(1)
    click.echo(f"{accuracy_headline(s)} -> {out}")
    ref = s.get("reference")
    if ref:

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.2f} %"

        click.echo(
            f"  pooled test: tickets {pct(s.get('personalized_accuracy_pooled'))}, global model {pct(s['global_accuracy'])}, "
            f"majority class {pct(ref['majority_rate'])}, logistic regression {pct(ref['logistic_regression'])}; "
            f"per-client majority class {pct(ref['local_majority'])} (personalized)"
        )


def _print_ticket_table(summary: dict, out: Path, quiet: bool) -> None:
    """A table of the levels on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"IMP on {summary['dataset']} / {summary['model']} (seed {summary['seed']})")
    for col in ("level", "density", "ticket acc. (%)", "re-init (%)", "random mask (%)", "seconds"):
        table.add_column(col, justify="right")
    table.add_row("0", "1.000", f"{100 * summary['dense_accuracy']:.1f}", "", "", f"{summary['dense_seconds']:.1f}")

    def fmt(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.1f}"

    for lv in summary["levels"]:
        table.add_row(
            str(lv["level"]), f"{lv['density']:.3f}", fmt(lv["ticket_accuracy"]), fmt(lv["reinit_accuracy"]),
            fmt(lv["random_mask_accuracy"]), f"{lv['seconds_with_controls']:.1f}",
        )
    console = Console()
    console.print(table)
    # plain echo: rich would wrap the paths at 80 columns in a pipe
    click.echo(f"wrote {out}/summary.json, report.md, levels.csv and accuracy_vs_density.png ({summary['wall_seconds']:.1f} s)")


from fedlth.deployment.deploy_cli import deploy  # noqa: E402  (`fedlth deploy`, kept last)

main.add_command(deploy)
