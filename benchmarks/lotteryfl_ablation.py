"""Benchmark: why published LotteryFL fails on W1, one deviation at a time.

    python benchmarks/lotteryfl_ablation.py [--seeds 0] [--rounds 100]

Each variant runs W1 (scenarios/w1-pathological-mnist1d.toml) with the same hyper-parameters;
only LotteryFL's three contested choices change. Also reports how alike the clients' final
masks are (mean pairwise Jaccard similarity of the masks the server holds).
Writes benchmarks/results/lotteryfl_ablation.md and .json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, pm, results_dir, table  # noqa: E402

ROOT = Path(__file__).parent.parent
OUT = results_dir()

VARIANTS = {
    "published (lotteryfl-faithful)": ["algorithm=lotteryfl-faithful"],
    "published, no rewind to θ0": ["algorithm=lotteryfl", "lotteryfl-prune-from=received", "lotteryfl-rewind=false", "prune-tolerance=1.0"],
    "mask from own trained weights, no rewind": ["algorithm=lotteryfl", "lotteryfl-prune-from=trained", "lotteryfl-rewind=false", "prune-tolerance=1.0"],
    "sound lotteryfl (+ prune kept only if validation holds)": ["algorithm=lotteryfl"],
}


def jaccard_overlap(masks: dict[int, dict[str, torch.Tensor]]) -> float:
    """Mean pairwise Jaccard similarity (kept ∩ kept / kept ∪ kept) of the clients' masks."""
    flat = {pid: torch.cat([m.flatten() for m in mk.values()]) for pid, mk in masks.items()}
    sims = []
    for a, b in itertools.combinations(sorted(flat), 2):
        inter = int((flat[a] & flat[b]).sum())
        union = int((flat[a] | flat[b]).sum())
        sims.append(inter / union if union else 1.0)
    return statistics.fmean(sims) if sims else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rounds", type=int, default=100)
    a = ap.parse_args()
    from fedlth.config.scenario import load_scenario
    from server.simulate import simulate

    seeds = [int(s) for s in a.seeds.split(",")]
    rows, raw = [], {}
    for label, overrides in VARIANTS.items():
        accs, worst, dens, overlap = [], [], [], []
        for seed in seeds:
            sc = load_scenario(ROOT / "scenarios/w1-pathological-mnist1d.toml", [*overrides, f"seed={seed}", f"rounds={a.rounds}"])
            out = ROOT / "runs" / "bench-lotteryfl-ablation" / f"{len(raw)}-seed-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"== {label}, seed {seed}", flush=True)
            simulate(sc, out)
            s = json.loads((out / "summary.json").read_text())
            accs.append(s["personalized_accuracy"]["mean"])
            worst.append(s["personalized_accuracy"]["worst10"])
            dens.append(s["density"]["mean"])
            state = torch.load(out / "server_state.pt", weights_only=True)
            overlap.append(jaccard_overlap(state["masks"]))
        raw[label] = {"personalized": accs, "worst10": worst, "density": dens, "mask_jaccard": overlap}
        rows.append([label, pm(accs), pm(worst), f"{statistics.fmean(dens):.3f}", f"{statistics.fmean(overlap):.3f}"])
    cmd = f"python benchmarks/lotteryfl_ablation.py --seeds {a.seeds} --rounds {a.rounds}"
    md = [
        "# LotteryFL on W1: which published rule breaks it",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}",
        "",
        "W1 hyper-parameters for every variant (prune-rate 0.6, target density 0.2, accuracy gate 0.6 on the "
        "validation split); only LotteryFL's contested choices change. Mask overlap: mean pairwise Jaccard "
        "similarity of the final client masks (1.0 = every client holds the same ticket).",
        "",
        table(["variant", "personalized acc. (%)", "worst-10 % (%)", "final density", "mask overlap"], rows),
        "",
    ]
    OUT.mkdir(exist_ok=True)
    (OUT / "lotteryfl_ablation.md").write_text("\n".join(md))
    (OUT / "lotteryfl_ablation.json").write_text(json.dumps({"command": cmd, "raw": raw}, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
