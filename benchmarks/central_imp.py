"""Benchmark: central IMP on MNIST-1D with the 1-D CNN over seeds; ticket vs both controls.

    python benchmarks/central_imp.py [--seeds 0,1,2] [--levels 8] [--epochs 8] [--jobs 2]

Writes benchmarks/results/central_imp.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, mean_std, pm, results_dir, table  # noqa: E402

OUT = results_dir()


def one_seed(args: tuple[int, int, int, int]) -> dict:
    seed, levels, epochs, rewind_k = args
    from fedlth.config.scenario import resolve
    from fedlth.tickets.ticket_run import TicketRun

    sc = resolve({
        "name": "central-imp-bench", "dataset": "mnist1d", "model": "cnn1d", "seed": seed, "epochs": epochs,
        "batch-size": 32, "lr": 0.05, "lr-schedule": "cosine", "momentum": 0.9, "imp-levels": levels,
        "prune-rate": 0.2, "pruner": "magnitude-global", "rewind": "iteration", "rewind-iteration": rewind_k,
        "controls": True, "torch-threads": 1,
    })
    return TicketRun(sc).run()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rewind-iteration", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--render-only", action="store_true", help="Rebuild the tables from central_imp.json.")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.render_only:
        runs = json.loads((OUT / "central_imp.json").read_text())["runs"]
    else:
        with ProcessPoolExecutor(a.jobs) as pool:
            runs = list(pool.map(one_seed, [(s, a.levels, a.epochs, a.rewind_iteration) for s in seeds]))

    dense = [r["dense_accuracy"] for r in runs]
    rows = [["1.000", pm(dense), "", "", f"{mean_std([r['dense_seconds'] for r in runs])[0]:.1f}"]]
    claim = None
    for i in range(a.levels):
        lv = [r["levels"][i] for r in runs]
        t, ri, rm = ([x[k] for x in lv] for k in ("ticket_accuracy", "reinit_accuracy", "random_mask_accuracy"))
        d = lv[0]["density"]
        rows.append([f"{d:.3f}", pm(t), pm(ri), pm(rm), f"{mean_std([x['seconds_with_controls'] for x in lv])[0]:.1f}"])
        if claim is None and d <= 0.21:
            mt, st = mean_std(t)
            claim = {"density": d, "ticket_minus_dense_points": 100 * (mt - mean_std(dense)[0])}
            claim["within_1_point_of_dense"] = claim["ticket_minus_dense_points"] >= -1.0
            # each control separately: the gap must exceed twice the larger of the two seed stds
            for name, xs in (("reinit", ri), ("random_mask", rm)):
                mc, sc_ = mean_std(xs)
                claim[f"ticket_minus_{name}_points"] = 100 * (mt - mc)
                claim[f"{name}_two_std_points"] = 200 * max(st, sc_)
                claim[f"above_{name}_by_2_std"] = mt - mc > 2 * max(st, sc_)
    cmd = f"python benchmarks/central_imp.py --seeds {a.seeds} --levels {a.levels} --epochs {a.epochs} --rewind-iteration {a.rewind_iteration} --jobs {a.jobs}"
    per_level = mean_std([x["seconds"] for r in runs for x in r["levels"]])[0]
    md = [
        "# Central IMP on MNIST-1D (1-D CNN, 19,104 prunable weights)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}",
        "",
        f"Global magnitude pruning, 20 % of the remaining weights per level, rewinding to step {a.rewind_iteration}; "
        f"{a.epochs} epochs per level, SGD lr 0.05 momentum 0.9, cosine schedule, batch 32. Test accuracy (%), "
        f"mean ± std over seeds {a.seeds}. Re-init: same mask, fresh random init. Random mask: same per-layer "
        "density at random positions, same start weights. Validation is carved from the training pool; "
        "the final model of each level is scored (no selection on test).",
        "",
        table(["density", "ticket", "re-init", "random mask", "seconds per level (3 trainings)"], rows),
        "",
        f"Seconds per IMP level for the ticket alone: {per_level:.1f} s (two seeds ran at once on the 2 cores, one torch thread each).",
        "",
    ]
    if claim is not None:
        yes = {True: "yes", False: "NO"}
        md += [
            f"**Claim at density {claim['density']:.3f}:** ticket − dense = {claim['ticket_minus_dense_points']:+.2f} points "
            f"(within 1 point: {yes[claim['within_1_point_of_dense']]}); ticket − re-init = "
            f"{claim['ticket_minus_reinit_points']:+.2f} points vs 2 × seed std = {claim['reinit_two_std_points']:.2f} "
            f"({yes[claim['above_reinit_by_2_std']]}); ticket − random mask = {claim['ticket_minus_random_mask_points']:+.2f} "
            f"points vs 2 × seed std = {claim['random_mask_two_std_points']:.2f} ({yes[claim['above_random_mask_by_2_std']]}). "
            "The seed std is the larger of the ticket's and the control's.",
            "",
        ]
    OUT.mkdir(exist_ok=True)
    (OUT / "central_imp.md").write_text("\n".join(md))
    (OUT / "central_imp.json").write_text(json.dumps({"command": cmd, "claim": claim, "runs": runs}, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
