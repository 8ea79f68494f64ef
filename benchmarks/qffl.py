"""Benchmark: q-FFL against the masked mean — spread of client accuracies, worst-10 % and mean.

    python benchmarks/qffl.py [--workload w3|adult] [--seeds 0,1,2] [--qs 1,5] [--algorithms fedavg,subfedavg] [--set key=value ...]

Each (algorithm, seed) runs the workload's scenario with `aggregation = mean` and with
`aggregation = qffl` at each q (q = 0 is the masked mean, tests/test_qffl.py). Per run: the
mean, the population variance (× 10⁴, q-FFL's convention), the worst-10 % and worst client of
the personalized test accuracies (each client's model on its own test split; fedavg's model
is the global one), then mean ± std over seeds. Writes benchmarks/results/qffl_<workload>.md/.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, pm, results_dir, table  # noqa: E402

ROOT = Path(__file__).parent.parent
OUT = results_dir()
SCENARIOS = {"w3": "scenarios/w3-dirichlet-mnist1d.toml", "adult": "scenarios/fair-tickets-adult.toml"}


def main() -> None:
    from fedlth.config.scenario import load_scenario
    from server.simulate import simulate

    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=tuple(SCENARIOS), default="w3")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--qs", default="1,5")
    ap.add_argument("--algorithms", default="fedavg,subfedavg")
    ap.add_argument("--set", action="append", default=[], help="scenario override for every run, key=value")
    ap.add_argument("--tag", default="", help="suffix of the results files (qffl_<workload>-<tag>)")
    ap.add_argument("--no-mean", action="store_true", help="leave out the masked-mean runs (made by another call)")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    qs = [float(q) for q in a.qs.split(",")]
    algs = a.algorithms.split(",")
    cmd = f"python benchmarks/qffl.py --workload {a.workload} --seeds {a.seeds} --qs {a.qs} --algorithms {a.algorithms}"
    cmd += "".join(f" --set {x}" for x in a.set) + (f" --tag {a.tag}" if a.tag else "") + (" --no-mean" if a.no_mean else "")
    configs = {**({} if a.no_mean else {"mean": ["aggregation=mean"]}), **{f"qffl q={q:g}": ["aggregation=qffl", f"qffl-q={q}"] for q in qs}}
    raw: dict = {}
    ref = None
    for alg in algs:
        for label, extra in configs.items():
            for seed in seeds:
                sc = load_scenario(ROOT / SCENARIOS[a.workload], [f"algorithm={alg}", "evaluators=", "eval-every=0", *a.set, *extra, f"seed={seed}"])
                out = ROOT / "runs" / "bench-qffl" / f"{a.workload}{a.tag}" / f"{alg}-{label.replace(' ', '').replace('=', '')}-seed-{seed}"
                shutil.rmtree(out, ignore_errors=True)
                print(f"== {a.workload}: {alg}, {label}, seed {seed}", flush=True)
                t0 = time.perf_counter()
                simulate(sc, out)
                s = json.loads((out / "summary.json").read_text())
                fair = s["evaluation"]["across_clients"]
                row = {"seed": seed, "mean": fair["mean"], "variance_x1e4": fair["variance_x1e4"], "worst10": fair["worst10"],
                       "best10": fair["best10"], "worst": fair["worst"], "density": s["density"]["mean"],
                       "pooled": s.get("personalized_accuracy_pooled"), "global": s.get("global_accuracy"),
                       "seconds": time.perf_counter() - t0}
                ref = ref or s.get("reference")
                raw.setdefault(alg, {}).setdefault(label, []).append(row)
                print(json.dumps(row), flush=True)
    sc = load_scenario(ROOT / SCENARIOS[a.workload], a.set)
    rows = []
    for alg in algs:
        for label, runs in raw[alg].items():
            def col(key: str, runs: list = runs, scale: float = 100.0) -> str:
                vals = [r[key] for r in runs if r[key] is not None]
                return pm(vals, scale=scale) if vals else "n/a"

            rows.append([alg, label, col("mean"), col("variance_x1e4", scale=1.0), col("worst10"), col("worst"), col("best10"),
                         f"{statistics.fmean(r['density'] for r in runs):.3f}", col("pooled")])
    md = [
        f"# q-FFL against the masked mean ({a.workload})", "", f"Command: `{cmd}`  ", f"Machine: {machine()}", "",
        f"{SCENARIOS[a.workload]} ({sc['num-clients']} clients, {sc['clients-per-round']} a round, {sc['rounds']} rounds, "
        f"{sc['local-epochs']} local epochs, lr {sc['lr']:g}, L = {sc['qffl-lipschitz'] or 1 / sc['lr']:g}"
        f"{'' if sc['qffl-lipschitz'] else ' = 1/lr'}; weighting {sc['weighting']}). "
        "Personalized test accuracy of every client (fedavg: the global model on each client's test split; subfedavg: "
        "each client's ticket), then mean ± sample std over seeds "
        f"{seeds}: mean (%), population variance of client accuracies in %² (= variance × 10⁴ of fractions, q-FFL's "
        "convention), worst-10 % (mean of the lowest tenth of clients), worst client, best-10 %, mean density, pooled "
        "test accuracy (all clients' test samples together). q = 0 is the mean (tests/test_qffl.py). Machine loaded "
        "(2 cores shared with other jobs).",
        "",
        table(["algorithm", "aggregation", "mean", "variance (%²)", "worst-10 %", "worst", "best-10 %", "density", "pooled"], rows),
        "",
    ]
    if ref:
        md += [
            f"Reference on the same data (pooled test accuracy): majority class {100 * ref['majority_rate']:.1f} %, "
            + (f"each client's own majority class {100 * ref['local_majority']:.1f} % (mean over clients), " if ref.get("local_majority") is not None else "")
            + (f"logistic regression {100 * ref['logistic_regression']:.1f} %." if ref.get("logistic_regression") is not None else ""),
            "",
        ]
    OUT.mkdir(exist_ok=True)
    stem = f"qffl_{a.workload}" + (f"-{a.tag}" if a.tag else "")
    (OUT / f"{stem}.md").write_text("\n".join(md))
    (OUT / f"{stem}.json").write_text(json.dumps({"command": cmd, "raw": raw, "reference": ref}, indent=1, default=str))
    print("\n".join(md))


if __name__ == "__main__":
    main()
