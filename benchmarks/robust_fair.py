"""Benchmark: robust vs standard tickets on MNIST-1D, and the fairness-versus-density study on arrests.

    python benchmarks/robust_fair.py [--seeds 0,1,2] [--part robust|fair|both]

Robust part: Sub-FedAvg tickets at density 0.2 and dense models (target density 1.0), each
trained normally and with local PGD-AT, judged by clean and PGD-20 accuracy at two ε in
MNIST-1D's raw input units (features have std ≈ 1). Fair part: `fedlth study` on
scenarios/fair-tickets-arrests.toml at densities 1.0 / 0.5 / 0.2 / 0.1.
Writes benchmarks/results/robust_fair.md and .json (robust_fair_<part>.* for one part).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, pm, results_dir, table  # noqa: E402

ROOT = Path(__file__).parent.parent
OUT = results_dir()
EPS = (0.1, 0.3)


def robust_part(seeds: list[int]) -> tuple[list[str], dict]:
    from fedlth.config.scenario import load_scenario
    from server.simulate import simulate

    configs = {
        "ticket d=0.2, standard": ["target-density=0.2", "adv-train=false"],
        "ticket d=0.2, PGD-AT": ["target-density=0.2", "adv-train=true"],
        "dense, standard": ["target-density=1.0", "adv-train=false"],
        "dense, PGD-AT": ["target-density=1.0", "adv-train=true"],
    }
    common = ["attack=pgd", "attack-steps=20", f"attack-eps={','.join(map(str, EPS))}", "adv-eps=0.1", "attack-samples=100"]
    raw: dict[str, dict[str, list[float]]] = {}
    for label, extra in configs.items():
        for seed in seeds:
            sc = load_scenario(ROOT / "scenarios/robust-tickets-mnist1d.toml", [*common, *extra, f"seed={seed}"])
            out = ROOT / "runs" / "bench-robust" / f"{label.replace(' ', '_').replace(',', '').replace('=', '')}-seed-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"== {label}, seed {seed}", flush=True)
            simulate(sc, out)
            s = json.loads((out / "summary.json").read_text())
            ev = s["evaluation"]["evaluators_mean"]
            r = raw.setdefault(label, {})
            r.setdefault("density", []).append(s["density"]["mean"])
            r.setdefault("clean", []).append(ev["robustness.clean_accuracy"])
            for e in EPS:
                r.setdefault(f"pgd{e:g}", []).append(ev[f"robustness.pgd.eps={e:g}.robust_accuracy"])
    rows = [[label, f"{statistics.fmean(r['density']):.3f}", pm(r["clean"]), *(pm(r[f"pgd{e:g}"]) for e in EPS)] for label, r in raw.items()]
    md = [
        "## Robust tickets on MNIST-1D (scenarios/robust-tickets-mnist1d.toml)",
        "",
        "10 IID clients, 5 per round, 20 rounds, Sub-FedAvg; PGD-AT: L∞ ε = 0.1, 5 steps. Judged on each "
        f"client's first 100 test samples by PGD-20 (L∞) at ε ∈ {EPS} in raw input units; accuracy (%) is "
        f"the mean over clients, then mean ± std over seeds {seeds}.",
        "",
        table(["model", "density", "clean", *(f"PGD-20 ε={e:g}" for e in EPS)], rows),
        "",
    ]
    return md, raw


def fair_part(seeds: list[int]) -> tuple[list[str], dict]:
    from fedlth.config.scenario import load_scenario
    from fedlth.reporting.study import study
    from server.simulate import simulate

    per_seed = {}
    for seed in seeds:
        sc = load_scenario(ROOT / "scenarios/fair-tickets-arrests.toml", [f"seed={seed}", "evaluators=fairness"])
        out = ROOT / "runs" / "bench-fair" / f"seed-{seed}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"== fairness study, seed {seed}", flush=True)
        per_seed[seed] = study(sc, [1.0, 0.5, 0.2, 0.1], out, lambda s, d: simulate(s, d))
    rows = []
    for i, target in enumerate([1.0, 0.5, 0.2, 0.1]):
        cells = [per_seed[s][i] for s in seeds]

        def col(key: str, cells: list = cells) -> str:
            vals = [c[key] for c in cells if c.get(key) is not None]
            return pm(vals, scale=1.0, digits=3) if vals else "undefined"

        rows.append([f"{target:g}", f"{statistics.fmean(c['density'] for c in cells):.3f}", col("accuracy"), col("worst10"),
                     col("colour.demographic_parity_difference"), col("colour.equalized_odds_difference"),
                     col("sex.demographic_parity_difference"), col("sex.equalized_odds_difference")])
    md = [
        "## Fairness against density on arrests (scenarios/fair-tickets-arrests.toml)",
        "",
        "6 clients by year, Sub-FedAvg, tabular MLP. Group fairness is pooled over the federation from "
        f"per-group confusion counts (exact). Fractions, mean ± std over seeds {seeds}.",
        "",
        table(["target density", "density", "accuracy", "worst-10 %", "colour DPD", "colour EOD", "sex DPD", "sex EOD"], rows),
        "",
    ]
    return md, per_seed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--part", choices=("robust", "fair", "both"), default="both")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    cmd = f"python benchmarks/robust_fair.py --seeds {a.seeds} --part {a.part}"
    md = ["# Robustness and fairness of tickets", "", f"Command: `{cmd}`  ", f"Machine: {machine()}", ""]
    raw = {}
    if a.part in ("robust", "both"):
        part, raw["robust"] = robust_part(seeds)
        md += part
    if a.part in ("fair", "both"):
        part, raw["fair"] = fair_part(seeds)
        md += part
    OUT.mkdir(exist_ok=True)
    stem = "robust_fair" if a.part == "both" else f"robust_fair_{a.part}"
    (OUT / f"{stem}.md").write_text("\n".join(md))
    (OUT / f"{stem}.json").write_text(json.dumps({"command": cmd, "raw": raw}, indent=1, default=str))
    print("\n".join(md))


if __name__ == "__main__":
    main()
