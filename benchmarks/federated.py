"""Benchmark: every algorithm on a workload scenario over seeds, with the issue's targets checked.

    python benchmarks/federated.py --workload w1 [--seeds 0,1,2] [--algorithms ...] [--set k=v ...]

Writes benchmarks/results/federated_<workload>.md and .json (runs land in runs/bench-<workload>/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, results_dir  # noqa: E402

ROOT = Path(__file__).parent.parent
OUT = results_dir()
WORKLOADS = {"w1": "scenarios/w1-pathological-mnist1d.toml", "w3": "scenarios/w3-dirichlet-mnist1d.toml"}
ALL = "local,fedavg,fedavg-ft,lotteryfl,lotteryfl-faithful,subfedavg,subfedavg-hybrid"


def targets(rows: dict[str, dict], workload: str) -> list[str]:
    """The issue's targets, each with its measured verdict."""
    lines = []

    def mean(alg: str, key: str) -> float | None:
        r = rows.get(alg)
        return None if r is None else sum(r["raw"][key]) / len(r["raw"][key])

    if workload == "w1" and "local" in rows:
        for alg in ("subfedavg", "lotteryfl"):
            if alg not in rows:
                continue
            ok_acc = mean(alg, "personalized") >= mean("local", "personalized")
            ok_worst = mean(alg, "worst10") >= mean("local", "worst10")
            dens = mean(alg, "density")
            ratio = float(rows[alg]["upload_vs_fedavg"])
            lines.append(
                f"- `{alg}`: mean {100 * mean(alg, 'personalized'):.1f} vs local {100 * mean('local', 'personalized'):.1f} "
                f"({'met' if ok_acc else 'MISSED'}); worst-10 % {100 * mean(alg, 'worst10'):.1f} vs {100 * mean('local', 'worst10'):.1f} "
                f"({'met' if ok_worst else 'MISSED'}); density {dens:.3f} ({'met' if dens <= 0.3 else 'MISSED'}, ≤ 0.3); "
                f"upload {ratio:.2f}× dense FedAvg ({'met' if ratio <= 0.35 else 'MISSED'}, ≤ 0.35×)"
            )
    if workload == "w3":
        for alg in ("subfedavg", "lotteryfl"):
            if alg not in rows or "local" not in rows or "fedavg-ft" not in rows:
                continue
            best_base = max(mean("local", "personalized"), mean("fedavg-ft", "personalized"))
            best_worst = max(mean("local", "worst10"), mean("fedavg-ft", "worst10"))
            lines.append(
                f"- `{alg}` beats local-only and FedAvg+FT: mean {100 * mean(alg, 'personalized'):.1f} vs best baseline "
                f"{100 * best_base:.1f} ({'met' if mean(alg, 'personalized') > best_base else 'MISSED'}); worst-10 % "
                f"{100 * mean(alg, 'worst10'):.1f} vs {100 * best_worst:.1f} ({'met' if mean(alg, 'worst10') > best_worst else 'MISSED'})"
            )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="w1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--algorithms", default=ALL)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--tag", default="", help="Suffix of the result files, for variant runs (e.g. finetune).")
    a = ap.parse_args()
    from fedlth.compare import compare
    from fedlth.scenario import load_scenario
    from server.simulate import simulate

    sc = load_scenario(ROOT / WORKLOADS[a.workload], a.overrides)
    seeds = [int(s) for s in a.seeds.split(",")]
    algs = a.algorithms.split(",")
    name = a.workload + (f"-{a.tag}" if a.tag else "")
    runs = ROOT / "runs" / f"bench-{name}"
    shutil.rmtree(runs, ignore_errors=True)
    res = compare(sc, algs, seeds, runs, lambda s, d: simulate(s, d), on_run=lambda alg, s: print(f"== {alg} seed {s}", flush=True))
    rows = {r["algorithm"]: r for r in res["rows"]}
    base_file = OUT / f"federated_{a.workload}.json"
    if a.tag and base_file.is_file():
        # a variant run is judged against the baselines of the main run of the same workload
        for r in json.loads(base_file.read_text())["rows"]:
            rows.setdefault(r["algorithm"], r)
    cmd = f"python benchmarks/federated.py --workload {a.workload} --seeds {a.seeds} --algorithms {a.algorithms}" + "".join(f" --set {o}" for o in a.overrides) + (f" --tag {a.tag}" if a.tag else "")
    md = [
        f"# Federated tickets on {a.workload.upper()} ({WORKLOADS[a.workload]})",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine()}",
        "",
        f"{sc['num-clients']} clients ({sc['partition']}), {sc['clients-per-round']} per round, {sc['rounds']} rounds, "
        f"{sc['local-epochs']} local epochs. Personalized accuracy: each client's final personal model on its own test "
        f"split, mean ± std over seeds {seeds}; worst-10 %: mean of the lowest 10 % of clients. Upload/download: "
        "serialized Flower ArrayRecords of all training rounds (masks included). Wall time includes Ray's start.",
        "",
        res["table"],
        "",
        "Targets:",
        *targets(rows, a.workload),
        "",
    ]
    OUT.mkdir(exist_ok=True)
    (OUT / f"federated_{name}.md").write_text("\n".join(md))
    (OUT / f"federated_{name}.json").write_text(json.dumps({"command": cmd, "rows": res["rows"]}, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
