"""The `fedlth` command line: every bad input is one clear message and exit code 2."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click

from fedlth import __version__
from fedlth.interrupt import EXIT_INTERRUPTED, RunInterrupted, check_stop, stop_on_sigint
from fedlth.io import OutputError, check_out_dir, default_out_dir
from fedlth.provenance import provenance
from fedlth.scenario import ScenarioError, load_scenario

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


@main.command()
@click.argument("pattern", default="")
def keys(pattern: str) -> None:
    """List the scenario keys (all, or those matching PATTERN: a glob or part of a name or group)
    with type, default, allowed values and help, grouped by concern. The full list is valid TOML."""
    from fedlth.scenario import describe_keys, matching_keys, suggest_key

    found = matching_keys(pattern)
    if not found:
        fail(f"no scenario key matches {pattern!r}; {suggest_key(pattern)}")
    click.echo(describe_keys(found), nl=False)


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override scenario keys: key=value, or several space-separated pairs (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (new or empty).")
@click.option("--quiet", is_flag=True, help="No progress display.")
def ticket(scenario: Path, overrides: tuple[str, ...], out: Path | None, quiet: bool) -> None:
    """Central lottery-ticket run: IMP with rewinding and both controls."""
    from fedlth.data import DatasetUnavailableError

    prov = provenance(program="fedlth")

    try:
        sc = load_scenario(scenario, overrides)
        out = out or default_out_dir("ticket", sc["name"])
        check_out_dir(out)
        from fedlth.ticket_run import TicketRun, write_outputs

        with _progress(quiet) as say:
            runner = TicketRun(sc, say)
            summary = runner.run()
    except (ScenarioError, OutputError, DatasetUnavailableError) as exc:
        fail(str(exc))
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
@click.option("--quiet", is_flag=True, help="No progress display.")
@click.option("--verbose", is_flag=True, help="Show Flower's and Ray's own logs.")
def run(
    scenario: Path | None, overrides: tuple[str, ...], run_config: tuple[str, ...], out: Path | None,
    resume_dir: Path | None, quiet: bool, verbose: bool,
) -> None:
    """Federated run: simulate the scenario's clients in-process on Flower's engine."""
    prov = provenance(program="fedlth")
    overrides = (*overrides, *run_config)
    try:
        if resume_dir is not None:
            if scenario is not None or overrides or out is not None:
                raise ScenarioError(
                    "--resume takes the scenario and output folder of the run it continues; drop SCENARIO, --set, --run-config and --out"
                )
            (sc, done), out = _resumable(resume_dir), resume_dir
            if not quiet:
                click.echo(f"resuming {out} after round {done} of {sc['rounds']}", err=True)
        else:
            if scenario is None:
                raise ScenarioError("give a SCENARIO file, or --resume RUN_DIR")
            sc = load_scenario(scenario, overrides)
            out = out or default_out_dir("run", sc["name"])
            check_out_dir(out)
        _check_data(sc)
    except (ScenarioError, OutputError) as exc:
        fail(str(exc))
    from server.simulate import simulate

    try:
        with stop_on_sigint() as stop, _round_progress(sc, quiet) as on_round:
            simulate(sc, out, on_round, verbose=verbose, resume=resume_dir is not None, stop=stop, prov=prov)
    except RunInterrupted:
        _exit_interrupted(out)
    _print_run_summary(out, quiet)


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


def _runner(prov: dict, stop: threading.Event) -> Callable[[dict, Path], None]:
    """One simulated run per call for compare and study; none starts after a Ctrl-C."""
    from server.simulate import simulate

    def run_one(sc: dict, out: Path) -> None:
        check_stop(stop)
        simulate(sc, out, prov=prov, stop=stop)

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
    from fedlth.partition_file import check_unchanged
    from server.server_app import ResumeError, load_checkpoint

    try:
        done = load_checkpoint(run_dir)["round"]
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
@click.option("--quiet", is_flag=True, help="No progress display.")
def compare(scenario: Path, algorithms: str, seeds: int, overrides: tuple[str, ...], out: Path | None, quiet: bool) -> None:
    """Run several algorithms on the same partitions over seeds; write a table and an overlay plot."""
    from fedlth.compare import parse_variant
    from fedlth.scenario import ALGORITHM_NAMES, resolve

    prov = provenance(program="fedlth")

    try:
        sc = load_scenario(scenario, overrides)
        algs = [a.strip() for a in algorithms.split(",") if a.strip()]
        bad = [a for a in algs if parse_variant(a)[0] not in ALGORITHM_NAMES]
        if bad or not algs:
            raise ScenarioError(f"--algorithms: unknown {bad or 'empty list'}; allowed: {', '.join(ALGORITHM_NAMES)} (each may take NAME:key=value variants)")
        for a in algs:  # a variant's own keys are checked before any run starts
            resolve(sc | {"algorithm": parse_variant(a)[0]}, parse_variant(a)[1], source=a)
        out = out or default_out_dir("compare", sc["name"])
        check_out_dir(out)
        _check_data(sc)
    except (ScenarioError, OutputError) as exc:
        fail(str(exc))
    from fedlth.compare import compare as run_compare

    def say(alg: str, seed: int) -> None:
        if not quiet:
            click.echo(f"== {alg}, seed {seed}", err=True)

    try:
        with stop_on_sigint() as stop:
            res = run_compare(sc, algs, list(range(seeds)), out, _runner(prov, stop), on_run=say, prov=prov)
    except RunInterrupted:
        _exit_interrupted_batch(out)
    click.echo(res["table"])
    click.echo(f"wrote {out}/comparison.md, comparison.json, comparison.png")


@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--densities", default="1.0,0.5,0.2,0.1,0.05", show_default=True, help="Target densities (1.0 = dense).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override scenario keys: key=value, or several space-separated pairs (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (new or empty).")
@click.option("--quiet", is_flag=True, help="No progress display.")
def study(scenario: Path, densities: str, overrides: tuple[str, ...], out: Path | None, quiet: bool) -> None:
    """Train tickets at each density; table and plots of accuracy, robustness and fairness."""
    from fedlth.study import parse_densities

    prov = provenance(program="fedlth")

    try:
        sc = load_scenario(scenario, overrides)
        try:
            targets = parse_densities(densities)
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None
        out = out or default_out_dir("study", sc["name"])
        check_out_dir(out)
        _check_data(sc)
    except (ScenarioError, OutputError) as exc:
        fail(str(exc))
    from fedlth.study import study as run_study

    def say(d: float) -> None:
        if not quiet:
            click.echo(f"== target density {d:g}", err=True)

    try:
        with stop_on_sigint() as stop:
            run_study(sc, targets, out, _runner(prov, stop), on_run=say, prov=prov)
    except RunInterrupted:
        _exit_interrupted_batch(out)
    click.echo((out / "study.md").read_text())
    click.echo(f"wrote {out}/study.md, study.json, study.png")


@main.command("evaluate")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--evaluators", default=None, help="Comma-separated evaluators (default: the run's own).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override evaluator keys (attack, attack-eps, ...).")
def evaluate_cmd(run_dir: Path, evaluators: str | None, overrides: tuple[str, ...]) -> None:
    """Re-evaluate the saved tickets of a finished run, without training."""
    from fedlth.io import write_json_atomic
    from fedlth.reevaluate import RunDirError, load_run_scenario, reevaluate

    prov = provenance(program="fedlth")
    extra = (*overrides, *((f"evaluators={evaluators}",) if evaluators is not None else ()))
    try:
        sc = load_run_scenario(run_dir, extra)
        _check_data(sc)
        result = reevaluate(run_dir, sc) | {"provenance": prov}
    except (RunDirError, ScenarioError) as exc:
        fail(str(exc))
    from datetime import datetime

    out = run_dir / f"evaluation-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.json"
    write_json_atomic(out, result)
    acc = result["summary"]["across_clients"]
    click.echo(f"{len(result['per_client'])} tickets: mean accuracy {acc['mean']:.4f}, worst-10% {acc['worst10']:.4f} -> {out}")
    for key, value in (result["summary"].get("evaluators_mean") or {}).items():
        click.echo(f"  {key}: {value:.4f}")


@main.command("export")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--client", required=True, help="Client (partition) id whose ticket to export.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="File to write (refused if it exists).")
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
@click.option("--shrink/--no-shrink", default=None, help="Cut pruned channels out of the model [default: when the file gets smaller].")
def export_cmd(run_dir: Path, client: str, out: Path, force: bool, shrink: bool | None) -> None:
    """Write one client's ticket as a compact file; fedlth.load_ticket(FILE) runs it on CPU."""
    from fedlth.export import ExportError, export_run_ticket

    try:
        head = export_run_ticket(run_dir, client, out, force=force, shrink=shrink)
    except ExportError as exc:
        fail(str(exc))
    params = head["params"]
    layers = sum(1 for p in head["shrunk"].values() if "kept" in p)
    click.echo(
        f"client {head['client']}: {head['file_bytes']:,} bytes (dense tensors {head['dense_bytes']:,}), "
        f"density {head['density']:.3f}, {params['exported']:,} of {params['dense']:,} parameters"
        f"{f', {layers} layer(s) cut to their kept channels' if layers else ''} -> {out}"
    )
    for note in head["notes"]:
        click.echo(f"  note: {note}")


def _check_data(sc: dict) -> None:
    """Load the data and build the partitions up front, so bad settings fail before any work."""
    from fedlth.client_data import check_data_settings

    check_data_settings(sc)
    from server.simulate import check_compute

    try:
        check_compute(sc)  # compute keys (backend, client-cpus, device, client-gpus) that can't work here
    except ValueError as exc:
        raise ScenarioError(str(exc)) from None
    if sc["evaluators"]:
        from fedlth.client_data import dataset_info, sensitive_features
        from fedlth.evaluators import DataInfo, build_evaluators

        try:
            build_evaluators(sc["evaluators"], sc, DataInfo(dataset_info(sc)[1], sensitive_features(sc)))
        except ValueError as exc:
            raise ScenarioError(f"evaluators: {exc}") from None


class _round_progress:
    """A rich progress bar over rounds, with the latest personalized accuracy."""

    def __init__(self, sc: dict, quiet: bool) -> None:
        self.sc, self.quiet, self.bar = sc, quiet, None

    def __enter__(self):
        if self.quiet:
            return lambda _entry: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.bar.__enter__()
        task = self.bar.add_task(f"{self.sc['algorithm']} rounds", total=self.sc["rounds"], info="")

        def on_round(entry: dict) -> None:
            info = ""
            if entry.get("evaluate"):
                accs = [m["accuracy"] for m in entry["evaluate"].values()]
                info = f"personalized acc {sum(accs) / len(accs):.4f}"
            dens = [m.get("density", 1.0) for m in entry["train"].values()]
            if dens:
                info += f"  density {sum(dens) / len(dens):.3f}"
            self.bar.update(task, completed=entry["round"], info=info)  # a resumed run starts mid-way

        return on_round

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _print_run_summary(out: Path, quiet: bool) -> None:
    import json

    s = json.loads((out / "summary.json").read_text())
    acc = s["personalized_accuracy"]
    click.echo(
        f"{s['algorithm']}: personalized accuracy {acc['mean']:.4f} ± {acc['std']:.4f} "
        f"(worst-10% {acc['worst10']:.4f}), density {s['density']['mean']:.3f}, "
        f"upload {s['bytes']['upload'] / 1e6:.2f} MB ({s['upload_ratio_vs_dense_fedavg'] or 0:.2f}x dense FedAvg), "
        f"{s['wall_seconds']:.1f} s -> {out}"
    )
    ref = s.get("reference")
    if ref:

        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.2f} %"

        click.echo(
            f"  pooled test: tickets {pct(s.get('personalized_accuracy_pooled'))}, global model {pct(s['global_accuracy'])}, "
            f"majority class {pct(ref['majority_rate'])}, logistic regression {pct(ref['logistic_regression'])}; "
            f"per-client majority class {pct(ref['local_majority'])} (personalized)"
        )


class _progress:
    """A rich status line that shows the latest message; silent when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.status = None

    def __enter__(self):
        if self.quiet:
            return lambda _msg: None
        from rich.console import Console

        console = Console(stderr=True)
        self.status = console.status("starting")
        self.status.__enter__()

        def say(msg: str) -> None:
            console.log(msg)
            self.status.update(msg)

        return say

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(*exc)


def _print_ticket_table(summary: dict, out: Path, quiet: bool) -> None:
    """A table of the levels on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"IMP on {summary['dataset']} / {summary['model']} (seed {summary['seed']})")
    for col in ("level", "density", "ticket", "re-init", "random mask", "seconds"):
        table.add_column(col, justify="right")
    table.add_row("0", "1.000", f"{summary['dense_accuracy']:.4f}", "", "", f"{summary['dense_seconds']:.1f}")

    def fmt(x: float | None) -> str:
        return "" if x is None else f"{x:.4f}"

    for lv in summary["levels"]:
        table.add_row(
            str(lv["level"]), f"{lv['density']:.3f}", fmt(lv["ticket_accuracy"]), fmt(lv["reinit_accuracy"]),
            fmt(lv["random_mask_accuracy"]), f"{lv['seconds_with_controls']:.1f}",
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {out}/summary.json and {out}/accuracy_vs_density.png ({summary['wall_seconds']:.1f} s)")


from fedlth.deploy_cli import deploy  # noqa: E402  (`fedlth deploy`, kept last)

main.add_command(deploy)
