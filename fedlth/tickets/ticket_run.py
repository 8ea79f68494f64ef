"""The central lottery-ticket run: IMP on one machine with both winning-ticket controls."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedlth.config.component_options import CentralTicketOptions
from fedlth.config.core_options import core
from fedlth.config.options import options
from fedlth.config.scenario import ScenarioError, to_toml
from fedlth.data.client_data import ClientData, split_tensors
from fedlth.data.datasets import ArrayData, load_dataset
from fedlth.data.partition import central_split
from fedlth.learning.models import bn_pairs, build_model
from fedlth.learning.training import TrainConfig, evaluate, train_
from fedlth.reporting.io import write_json_atomic, write_text_atomic
from fedlth.reporting.provenance import provenance_markdown
from fedlth.reporting.stats import SPREAD_NOTE, seed_stats
from fedlth.reporting.tables import Table, csv_note
from fedlth.tickets.lottery import (
    early_bird_epoch,
    mask_distances,
    next_mask,
    one_shot_mask,
    random_mask_control,
    rewind,
)
from fedlth.tickets.masks import (
    Mask,
    Weights,
    apply_mask,
    density,
    layer_densities,
    ones_mask,
    prunable_names,
)

Progress = Callable[[str], None]


def central_tensors(data: ArrayData, seed: int, val_fraction: float) -> ClientData:
    """The central split as tensors: validation carved from the training pool, test untouched."""
    return split_tensors(data, central_split(data, seed=seed, val_fraction=val_fraction))


def snapshot(model: nn.Module) -> Weights:
    """A detached copy of the model's state (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_config(sc: dict[str, Any]) -> TrainConfig:
    """The training part of a scenario."""
    t = core(sc).training
    return TrainConfig(
        lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, batch_size=t.batch_size,
        optimizer=t.optimizer, lr_schedule=options(sc, CentralTicketOptions).lr_schedule,
    )


def check_ticket_scenario(sc: dict[str, Any], steps_total: int) -> None:
    """Cross-key checks that need the data's size."""
    o = options(sc, CentralTicketOptions)
    if o.rewind == "iteration" and o.rewind_iteration >= steps_total:
        raise ScenarioError(
            f"key 'rewind-iteration' is {o.rewind_iteration}; allowed: 0 <= k < {steps_total} "
            f"(the steps of one level: epochs x batches per epoch)"
        )


class TicketRun:
    """State of one IMP run: data, model factory, rewind point, schedule."""

    def __init__(self, sc: dict[str, Any], progress: Progress | None = None) -> None:
        self.sc = sc
        self.opts = options(sc, CentralTicketOptions)  # the central run's own keys, typed
        self.core = core(sc)  # the core keys, typed
        self.say = progress or (lambda _msg: None)
        self.seed = self.core.general.seed
        if self.core.general.torch_threads > 0:
            torch.set_num_threads(self.core.general.torch_threads)
        d = self.core.data
        self.data = load_dataset(d.dataset, seed=self.seed, path=d.data_path or None)
        self.split = central_tensors(self.data, self.seed, d.val_fraction)
        self.cfg = train_config(sc)
        self.steps_per_epoch = math.ceil(len(self.split.x_train) / self.cfg.batch_size)
        self.total_steps = self.opts.epochs * self.steps_per_epoch
        check_ticket_scenario(sc, self.total_steps)
        self.rewind_step = {"init": 0, "iteration": self.opts.rewind_iteration, "lr": 0}[self.opts.rewind]

    def fresh_model(self, init_seed: int) -> nn.Module:
        """A new model whose initialization depends only on `init_seed`."""
        with torch.random.fork_rng(devices=[]):  # torch's layers init from the global RNG; leave it as it was
            torch.manual_seed(init_seed)
            return build_model(self.core.training.model, self.data.input_shape, self.data.num_classes)

    def train(self, model: nn.Module, start: Weights, mask: Mask, level: int, start_step: int, **hooks: Any) -> dict[str, float]:
        """Load `start`, train to the end of the schedule, return val/test accuracy."""
        model.load_state_dict(start)
        # Every model of a level sees the same batch order, so the controls differ only in mask or init.
        gen = torch.Generator().manual_seed(self.seed * 1_000 + level)
        epochs_left = self.opts.epochs - start_step // self.steps_per_epoch
        # A rewind into the middle of an epoch trains the rest of that epoch as a full one;
        # the schedule (and so the learning rate) still resumes at the exact step.
        res = train_(
            model, self.split.x_train, self.split.y_train, mask, self.cfg, epochs=epochs_left, generator=gen,
            start_step=start_step, total_steps=max(self.total_steps, start_step + epochs_left * self.steps_per_epoch),
            **hooks,
        )
        _, val_acc = evaluate(model, self.split.x_val, self.split.y_val)
        _, test_acc = evaluate(model, self.split.x_test, self.split.y_test)
        return {"val_accuracy": val_acc, "test_accuracy": test_acc, "train_loss": res.loss}

    def run(self) -> dict[str, Any]:
        """Dense training, then `imp-levels` prune → rewind → retrain levels with controls."""
        o, t_start = self.opts, time.perf_counter()
        model = self.fresh_model(self.seed)
        names = prunable_names(model, skip_first=o.skip_first_layer, skip_last=o.skip_last_layer)
        bn_of = bn_pairs(model)
        theta0 = snapshot(model)
        dense_mask = mask = ones_mask(theta0, names)
        rewind_point: dict[str, Weights] = {}
        eb_masks: list[Mask] = []

        def save_theta_k(step: int, m: nn.Module) -> None:
            if step == self.rewind_step:
                rewind_point["w"] = snapshot(m)

        def early_bird(_epoch: int, m: nn.Module) -> None:
            # The mask one IMP step would cut now; when it stops moving, the ticket is drawn.
            eb_masks.append(next_mask(snapshot(m), dense_mask, pruner=o.pruner, amount=o.prune_rate, bn_of=bn_of))

        self.say("level 0: dense training")
        t0 = time.perf_counter()
        dense = self.train(model, theta0, mask, 0, 0, on_step=save_theta_k, on_epoch=early_bird)
        dense_seconds = time.perf_counter() - t0
        theta_k = theta0 if self.rewind_step == 0 else rewind_point["w"]
        dense_trained = snapshot(model)
        trained = dense_trained
        levels: list[dict[str, Any]] = []
        for level in range(1, o.imp_levels + 1):
            t0 = time.perf_counter()
            if o.one_shot:
                mask = one_shot_mask(
                    dense_trained, names, pruner=o.pruner, prune_rate=o.prune_rate, level=level,
                    generator=torch.Generator().manual_seed(self.seed + level), bn_of=bn_of,
                )
            else:
                mask = next_mask(
                    trained, mask, pruner=o.pruner, amount=o.prune_rate,
                    generator=torch.Generator().manual_seed(self.seed + level), bn_of=bn_of,
                )
            if o.rewind == "lr":
                # Learning-rate rewinding (Renda et al. 2020): keep the weights, replay the schedule.
                base = dense_trained if o.one_shot else trained
                start, start_step = apply_mask(base, mask), 0
            else:
                start, start_step = rewind(theta_k, mask), self.rewind_step
            d = density(mask)
            self.say(f"level {level}: density {d:.3f}, ticket")
            ticket = self.train(model, start, mask, level, start_step)
            trained = snapshot(model)
            ticket_seconds = time.perf_counter() - t0
            entry: dict[str, Any] = {
                "level": level, "density": d, "ticket_accuracy": ticket["test_accuracy"],
                "ticket_val_accuracy": ticket["val_accuracy"], "reinit_accuracy": None, "random_mask_accuracy": None,
                "layer_densities": layer_densities(mask), "seconds": ticket_seconds,
            }
            if o.controls:
                self.say(f"level {level}: density {d:.3f}, re-init control")
                # Same mask, a fresh random initialization (Frankle & Carbin's re-init control).
                fresh = snapshot(self.fresh_model(self.seed + 7_919 * level))
                reinit = self.train(self.fresh_model(0), rewind(fresh, mask), mask, level, start_step)
                self.say(f"level {level}: density {d:.3f}, random-mask control")
                # Same per-layer density at random positions, from the ticket's own start weights.
                rmask = random_mask_control(mask, self.seed * 31 + level)
                rstart = apply_mask(start, rmask)
                rand = self.train(self.fresh_model(0), rstart, rmask, level, start_step)
                entry.update(
                    reinit_accuracy=reinit["test_accuracy"], reinit_val_accuracy=reinit["val_accuracy"],
                    random_mask_accuracy=rand["test_accuracy"], random_mask_val_accuracy=rand["val_accuracy"],
                )
            entry["seconds_with_controls"] = time.perf_counter() - t0
            levels.append(entry)

        eb_epoch = early_bird_epoch(eb_masks, o.early_bird_epsilon, o.early_bird_window) if eb_masks else None
        return {
            "dataset": self.core.data.dataset, "model": self.core.training.model, "seed": self.seed, "pruner": o.pruner,
            "rewind": o.rewind, "one_shot": o.one_shot,
            "dense_accuracy": dense["test_accuracy"], "dense_val_accuracy": dense["val_accuracy"],
            "dense_seconds": dense_seconds, "levels": levels,
            "early_bird": {
                "epoch": eb_epoch, "epsilon": o.early_bird_epsilon, "window": o.early_bird_window,
                "distances": mask_distances(eb_masks),
            },
            "split_sizes": {"train": len(self.split.x_train), "val": len(self.split.x_val), "test": len(self.split.x_test)},
            "wall_seconds": time.perf_counter() - t_start,
        }


def ticket_table(summaries: Sequence[dict[str, Any]]) -> Table:
    """Dense net and each IMP level: density, ticket and control test accuracies; one seed's
    values, or their seed statistics over several seeds."""
    keys = ("density", "ticket_accuracy", "reinit_accuracy", "random_mask_accuracy")
    per_seed = [
        [{"level": 0, "density": 1.0, "ticket_accuracy": s["dense_accuracy"]}] + [{"level": lv["level"]} | {k: lv.get(k) for k in keys} for lv in s["levels"]]
        for s in summaries
    ]
    n_rows = min(len(rows) for rows in per_seed)
    headers = {"density": "density"}
    if len(summaries) == 1:
        return Table(["level", *keys], per_seed[0], headers)
    rows = [{"level": i} | {k: seed_stats([rows[i].get(k) for rows in per_seed]) for k in keys} for i in range(n_rows)]
    return Table(["level", *keys], rows, headers)


def _report(sc: dict[str, Any], summaries: Sequence[dict[str, Any]], prov: dict[str, Any] | None) -> tuple[str, Table]:
    """report.md of one or several seeds' IMP runs, and its table."""
    table = ticket_table(summaries)
    seeds = [s["seed"] for s in summaries]
    first, o = summaries[0], options(sc, CentralTicketOptions)
    spread = (f"Each cell over seeds {seeds}: {SPREAD_NOTE}; accuracy intervals clipped to [0, 100] %."
              if len(seeds) > 1 else f"Seed {seeds[0]}; `--seeds N` gives mean ± std and a 95 % interval over seeds.")
    md = [f"# Central lottery ticket: {first['model']} on {first['dataset']}", "",
          f"IMP, pruner {first['pruner']}, rewind {first['rewind']}{', one-shot' if first['one_shot'] else ''}, "
          f"{o.imp_levels} level(s), each pruning {o.prune_rate:g} of the remaining weights, "
          f"{o.epochs} epochs per level.", "",
          table.markdown(), "",
          spread + " Test accuracy on the held-out test split; level 0 is the dense net. Re-init: the same mask "
          "from a fresh initialization; random mask: the same per-layer density at random positions.",
          csv_note("levels.csv"), "", "![accuracy against density](accuracy_vs_density.png)", ""]
    md += provenance_markdown(prov) if prov else []
    return "\n".join(md) + "\n", table


def write_outputs(out: Path, sc: dict[str, Any], summary: dict[str, Any]) -> None:
    """scenario.toml, summary.json, report.md with levels.csv, and the accuracy-against-density plot."""
    from fedlth.reporting.plots import plot_ticket_levels

    write_text_atomic(out / "scenario.toml", to_toml(sc))
    write_json_atomic(out / "summary.json", summary)
    md, table = _report(sc, [summary], summary.get("provenance"))
    table.write_csv(out / "levels.csv")
    write_text_atomic(out / "report.md", md)
    plot_ticket_levels(summary, out / "accuracy_vs_density.png")


def run_ticket_seeds(
    sc: dict[str, Any], seeds: Sequence[int], out: Path, progress: Progress | None = None,
    prov: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """IMP once per seed into out/seed-S (the scenario's seed replaced), then the aggregate in
    `out`: report.md and levels.csv (mean ± sample std, 95 % t interval over seeds),
    summary.json (every seed's summary) and the banded accuracy_vs_density.png."""
    from fedlth.reporting.plots import plot_ticket_levels

    say = progress or (lambda _msg: None)
    summaries = []
    for seed in seeds:
        run_sc = sc | {"seed": seed}
        runner = TicketRun(run_sc, lambda msg, seed=seed: say(f"seed {seed}: {msg}"))
        summary = runner.run() | ({"provenance": prov} if prov else {})
        write_outputs(out / f"seed-{seed}", run_sc, summary)
        summaries.append(summary)
    write_text_atomic(out / "scenario.toml", to_toml(sc))
    md, table = _report(sc, summaries, prov)
    table.write_csv(out / "levels.csv")
    write_text_atomic(out / "report.md", md)
    write_json_atomic(out / "summary.json", {
        "seeds": list(seeds), "spread": SPREAD_NOTE, "levels": table.rows, "per_seed": summaries,
        "wall_seconds": sum(s["wall_seconds"] for s in summaries), "provenance": prov,
    })
    plot_ticket_levels(summaries, out / "accuracy_vs_density.png")
    return summaries


def run_ticket(sc: dict[str, Any], out: Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run IMP for a validated scenario and write its outputs to `out`."""
    runner = TicketRun(sc, progress)  # loads data and checks cross-key rules before anything is written
    summary = runner.run()
    write_outputs(out, sc, summary)
    return summary
