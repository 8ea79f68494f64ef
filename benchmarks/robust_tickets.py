"""Benchmark: sparse robust tickets on MNIST-1D — PGD-AT tickets at density 0.2 and 0.1 beside dense PGD-AT and standard training.

    python benchmarks/robust_tickets.py [--seeds 0,1,2] [--set key=value ...] [--subfedavg-seeds 0]

For each seed and each training (standard, local PGD-AT) one `personal-ticket` federation runs on
scenarios/robust-tickets-mnist1d.toml with target-density 0.2; its clients' tickets at 0.2 are
the run's own evaluation, and the tickets at 0.1 and the dense personal models (1.0) are made
again from the same run's final global model (fedlth.evaluation.reevaluate.repersonalize: the same
fine-tune → prune → retrain, PGD-AT in both phases when adv-train is on). Every personal model
is judged by the scenario's `robustness` evaluator (PGD, L∞, at the scenario's attack-eps, in
MNIST-1D's raw input units, on each client's first attack-samples test samples) and by its
accuracy on its whole test split. `--subfedavg-seeds` adds Sub-FedAvg PGD-AT runs at
target-density 0.1 with the scenario's rules, to show how far its gated pruning gets.
Writes benchmarks/results/robust_tickets.md and .json.
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
SCENARIO = ROOT / "scenarios/robust-tickets-mnist1d.toml"
DENSITIES = (1.0, 0.2, 0.1)


def _row(summary_like: dict, eps: list[str]) -> dict[str, float]:
    ev = summary_like["evaluators_mean"]
    row = {"accuracy": summary_like["accuracy"], "density": summary_like["density"], "clean": ev["robustness.clean_accuracy"]}
    for e in eps:
        row[f"pgd{e}"] = ev[f"robustness.pgd.eps={e}.robust_accuracy"]
    return row


def ticket_runs(seeds: list[int], extra: list[str]) -> dict:
    from fedlth.config.scenario import load_scenario
    from fedlth.evaluation.reevaluate import repersonalize
    from fedlth.reporting.report import evaluation_summary
    from server.simulate import simulate

    raw: dict = {}
    for adv in (True, False):
        for seed in seeds:
            sc = load_scenario(SCENARIO, ["algorithm=personal-ticket", "target-density=0.2", "eval-every=0",
                                          f"adv-train={str(adv).lower()}", *extra, f"seed={seed}"])
            eps = [f"{float(e):g}" for e in sc["attack-eps"].split(",")]
            out = ROOT / "runs" / "bench-robust-tickets" / f"{'at' if adv else 'std'}-seed-{seed}"
            shutil.rmtree(out, ignore_errors=True)
            print(f"== personal-ticket, adv-train {adv}, seed {seed}", flush=True)
            t0 = time.perf_counter()
            simulate(sc, out)
            wall = time.perf_counter() - t0
            s = json.loads((out / "summary.json").read_text())
            rows = {0.2: _row({"accuracy": s["personalized_accuracy"]["mean"], "density": s["density"]["mean"],
                               "evaluators_mean": s["evaluation"]["evaluators_mean"]}, eps)}
            for d in (1.0, 0.1):
                t1 = time.perf_counter()
                per = repersonalize(out, sc | {"target-density": d})
                ev = evaluation_summary(per)
                rows[d] = _row({"accuracy": statistics.fmean(m["accuracy"] for m in per.values()),
                                "density": statistics.fmean(m["density"] for m in per.values()),
                                "evaluators_mean": ev["evaluators_mean"]}, eps)
                rows[d]["seconds"] = time.perf_counter() - t1
            rows[0.2]["seconds"] = wall
            for d, r in rows.items():
                raw.setdefault(f"{'PGD-AT' if adv else 'standard'}@{d:g}", []).append(r | {"seed": seed})
            print(json.dumps({f"{d:g}": r for d, r in rows.items()}), flush=True)
    return raw


def subfedavg_runs(seeds: list[int], extra: list[str], rounds: int) -> dict:
    from fedlth.config.scenario import load_scenario
    from server.simulate import simulate

    raw: dict = {}
    for seed in seeds:
        sc = load_scenario(SCENARIO, ["target-density=0.1", "eval-every=0", "adv-train=true", *extra, f"rounds={rounds}", f"seed={seed}"])
        eps = [f"{float(e):g}" for e in sc["attack-eps"].split(",")]
        out = ROOT / "runs" / "bench-robust-tickets" / f"subfedavg-at-seed-{seed}"
        shutil.rmtree(out, ignore_errors=True)
        print(f"== subfedavg PGD-AT, target 0.1, seed {seed}", flush=True)
        simulate(sc, out)
        s = json.loads((out / "summary.json").read_text())
        # the round each client first reached 0.2 and 0.1 (prunable weights), from the run's log
        first: dict[str, dict[str, int]] = {}
        for line in (out / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            for pid, m in (r.get("train") or {}).items():
                for tgt in (0.2, 0.1):
                    if m["density"] <= tgt + 1e-3:
                        first.setdefault(f"{tgt:g}", {}).setdefault(pid, r["round"])
        row = _row({"accuracy": s["personalized_accuracy"]["mean"], "density": s["density"]["mean"],
                    "evaluators_mean": s["evaluation"]["evaluators_mean"]}, eps)
        raw.setdefault("subfedavg PGD-AT@0.1", []).append(row | {"seed": seed, "first_round_at": first,
                                                                 "per_client_density": s["density"]["per_client"]})
    return raw


def main() -> None:
    from fedlth.config.scenario import load_scenario

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], help="scenario override for every run, key=value")
    ap.add_argument("--subfedavg-seeds", default="")
    ap.add_argument("--subfedavg-rounds", type=int, default=20, help="rounds of the Sub-FedAvg runs (the scenario's)")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",") if s]
    sfa_seeds = [int(s) for s in a.subfedavg_seeds.split(",") if s]
    cmd = "python benchmarks/robust_tickets.py --seeds " + a.seeds + "".join(f" --set {x}" for x in a.set)
    cmd += f" --subfedavg-seeds {a.subfedavg_seeds} --subfedavg-rounds {a.subfedavg_rounds}" if sfa_seeds else ""
    sc = load_scenario(SCENARIO, ["algorithm=personal-ticket", *a.set])
    eps = [f"{float(e):g}" for e in sc["attack-eps"].split(",")]
    raw = ticket_runs(seeds, a.set)
    rows = []
    for adv in ("PGD-AT", "standard"):
        for d in DENSITIES:
            r = raw[f"{adv}@{d:g}"]
            name = f"{adv}, {'dense' if d == 1.0 else f'ticket {d:g}'}"
            rows.append([name, f"{statistics.fmean(x['density'] for x in r):.3f}", pm([x["accuracy"] for x in r]),
                         pm([x["clean"] for x in r]), *(pm([x[f"pgd{e}"] for x in r]) for e in eps)])
    md = [
        "# Sparse robust tickets on MNIST-1D", "", f"Command: `{cmd}`  ", f"Machine: {machine()}", "",
        f"scenarios/robust-tickets-mnist1d.toml with `algorithm = personal-ticket`: {sc['num-clients']} IID clients, "
        f"{sc['clients-per-round']} a round, {sc['rounds']} rounds of {sc['local-epochs']} local epochs (dense global model "
        f"from uploads of the {sc['upload-density']:g} share of weights that changed most); each client's ticket: "
        f"{sc['ticket-warmup-epochs']} warm-up epoch(s), magnitude pruning ({sc['ticket-pruner']}) to exactly the target "
        f"density, then up to {sc['finetune-epochs']} retraining epochs inside the mask (validation-selected). PGD-AT: L∞ "
        f"ε = {sc['adv-eps']:g}, {sc['adv-steps']} steps, in every local training, warm-up and retraining. The 0.1 tickets "
        "and the dense (1.0) personal models are made from the same run's final global model as the 0.2 tickets. Test "
        f"accuracy: each client's whole test split; clean and PGD-{sc['attack-steps']} (L∞, raw input units): each client's "
        f"first {sc['attack-samples']} test samples, robust = right both clean and attacked. Percent, mean over clients, "
        f"then mean ± sample std over seeds {seeds}. Machine loaded (2 cores shared with other jobs).",
        "",
        table(["personal model", "density", "test acc.", "clean (attacked samples)", *(f"PGD ε={e}" for e in eps)], rows),
        "",
    ]
    if sfa_seeds:
        sfa = subfedavg_runs(sfa_seeds, a.set, a.subfedavg_rounds)
        for r in sfa["subfedavg PGD-AT@0.1"]:
            reached = {t: len(v) for t, v in r["first_round_at"].items()}
            md += [
                f"Sub-FedAvg with PGD-AT (the scenario's own algorithm and rules, prune-tolerance = "
                f"{sc['prune-tolerance']:g}), target 0.1, {a.subfedavg_rounds} rounds, seed {r['seed']}: mean final density {r['density']:.3f}; clients that reached "
                f"0.2: {reached.get('0.2', 0)} of {sc['num-clients']}, 0.1: {reached.get('0.1', 0)}; first round at 0.2 per "
                f"client {r['first_round_at'].get('0.2', {})}; test acc. {100 * r['accuracy']:.1f} %, clean "
                f"{100 * r['clean']:.1f} %, " + ", ".join(f"PGD ε={e} {100 * r[f'pgd{e}']:.1f} %" for e in eps) + ".",
                "",
            ]
        raw |= sfa
    OUT.mkdir(exist_ok=True)
    (OUT / "robust_tickets.md").write_text("\n".join(md))
    (OUT / "robust_tickets.json").write_text(json.dumps({"command": cmd, "raw": raw}, indent=1, default=str))
    print("\n".join(md))


if __name__ == "__main__":
    main()
