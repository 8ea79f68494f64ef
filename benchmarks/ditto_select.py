"""Benchmark: Ditto with λ chosen per client on validation, as the paper does, from two runs.

    python benchmarks/ditto_select.py --workload w1 [--seeds 0,1,2]

Ditto's global model does not depend on λ (it is trained as FedAvg; the personal models are
never sent), so two runs of one seed that differ only in `ditto-lambda` share the federation
and differ only in each client's personal model. Picking, per client, the λ whose personal
model scores higher on the client's validation split (ties: the smaller λ) is therefore Ditto
with per-client λ ∈ {0.1, 1}, at the cost of training both personal models. Reads the runs of
`benchmarks/federated.py --algorithms fedper,fedrep,ditto --tag personalized` and
`--algorithms ditto:ditto-lambda=1 --tag ditto-lambda1` (runs/bench-<w>-*); writes
benchmarks/results/ditto_select_<w>.md/.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import pm, results_dir  # noqa: E402

ROOT = Path(__file__).parent.parent
RUNS = {0.1: "runs/bench-{w}-personalized/ditto", 1.0: "runs/bench-{w}-ditto-lambda1/ditto_ditto-lambda-1"}


def final_evaluation(run: Path) -> dict[str, dict]:
    """The last evaluation's per-client metrics of a run folder."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("evaluate")][-1]["evaluate"]


def select(evals: dict[float, dict[str, dict]]) -> tuple[list[float], dict[float, int]]:
    """Per client, the test accuracy of the λ with the best validation accuracy (ties: smaller λ)."""
    lambdas = sorted(evals)
    clients = sorted(set.intersection(*(set(e) for e in evals.values())), key=int)
    chosen, counts = [], dict.fromkeys(lambdas, 0)
    for c in clients:
        best = max(lambdas, key=lambda lam: (evals[lam][c]["val-accuracy"], -lam))
        counts[best] += 1
        chosen.append(evals[best][c]["accuracy"])
    return chosen, counts


def _scores(accs: list[float]) -> tuple[float, float]:
    accs = sorted(accs)
    k = max(1, len(accs) // 10)
    return statistics.fmean(accs), statistics.fmean(accs[:k])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=("w1", "w3"), default="w1")
    ap.add_argument("--seeds", default="0,1,2")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    per_lambda: dict[float, tuple[list[float], list[float]]] = {lam: ([], []) for lam in RUNS}
    selected: tuple[list[float], list[float]] = ([], [])
    picks: list[dict[float, int]] = []
    for seed in seeds:
        evals = {lam: final_evaluation(ROOT / p.format(w=a.workload) / f"seed-{seed}") for lam, p in RUNS.items()}
        for lam, ev in evals.items():
            m, w = _scores([x["accuracy"] for x in ev.values()])
            per_lambda[lam][0].append(m)
            per_lambda[lam][1].append(w)
        accs, counts = select(evals)
        m, w = _scores(accs)
        selected[0].append(m)
        selected[1].append(w)
        picks.append(counts)
    rows = [[f"ditto, λ = {lam:g} (every client)", pm(m), pm(w)] for lam, (m, w) in per_lambda.items()]
    rows.append(["ditto, λ per client on validation from {0.1, 1}", pm(selected[0]), pm(selected[1])])
    share = statistics.fmean(p[1.0] / sum(p.values()) for p in picks)
    md = [
        f"# Ditto with λ chosen per client on validation ({a.workload.upper()})",
        "",
        f"Command: `python benchmarks/ditto_select.py --workload {a.workload} --seeds {a.seeds}` (reads the runs of "
        "`benchmarks/federated.py ... --tag personalized` and `... --algorithms ditto:ditto-lambda=1 --tag ditto-lambda1`).",
        "",
        "Same seed, same federation: Ditto's global model does not depend on λ. Per client, the λ whose personal model "
        "scores higher on that client's validation split; its test accuracy is reported. Mean ± sample std (ddof 1) "
        f"over seeds {seeds}; worst-10 %: mean of the lowest 10 % of clients. Clients that chose λ = 1: {100 * share:.0f} %.",
        "",
        "| Ditto | personalized acc. (%) | worst-10 % clients (%) |",
        "|---|---|---|",
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ditto_select_{a.workload}.md").write_text("\n".join(md))
    (out / f"ditto_select_{a.workload}.json").write_text(json.dumps({
        "seeds": seeds, "per_lambda": {str(k): {"personalized": v[0], "worst10": v[1]} for k, v in per_lambda.items()},
        "selected": {"personalized": selected[0], "worst10": selected[1]}, "picks": [{str(k): v for k, v in p.items()} for p in picks],
    }, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
