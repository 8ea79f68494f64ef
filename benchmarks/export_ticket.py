"""Benchmark: exported ticket files (bytes) and their CPU inference latency against the dense model.

    python benchmarks/export_ticket.py [--densities 1.0,0.5,0.2,0.1,0.05] [--models cnn1d,lenet5,cifar-cnn]
                                       [--reps 30] [--budget 4]

Unstructured tickets: magnitude-global pruning of every conv/linear weight to density d; target:
file <= (32 d + 1) / 32 of the dense file (torch.save of the state dict) + the export's header.
Structured tickets: half the output channels of every layer but the last (structured-l1;
structured-bn for cifar-cnn); target: >= 1.8x faster than dense on CPU. Weights are a seeded
random init (file size and latency do not depend on training). Latency: one thread, median
over reps (batch 256: --reps, fewer where they would take over --budget seconds; batch 1: 10x),
dense and ticket timed alternately so machine noise hits both alike.
Writes export_ticket.md and .json into benchmarks/results (or $FEDLTH_BENCH_RESULTS).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, results_dir, table  # noqa: E402

OUT = results_dir()
HEAD = struct.Struct("<8sI")  # the export's fixed prefix: magic, header length
MODELS = {"cnn1d": (40,), "lenet5": (1, 28, 28), "cifar-cnn": (3, 32, 32)}  # MNIST-1D, MNIST, CIFAR-10 shapes


def _dense(name: str):
    import torch

    from fedlth.learning.models import build_model

    torch.manual_seed(0)
    return build_model(name, MODELS[name], 10).eval()


def _ticket(name: str, structured: bool, d: float):
    from fedlth.learning.models import bn_pairs
    from fedlth.tickets.masks import ones_mask, prunable_names
    from fedlth.tickets.pruning import magnitude_global, structured_bn, structured_l1

    net = _dense(name)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    if structured:
        pruner = structured_bn if name == "cifar-cnn" else structured_l1
        mask = ones_mask(weights, prunable_names(net, skip_last=True))  # the logits layer keeps its classes
        return weights, pruner(weights, mask, 0.5, bn_of=bn_pairs(net))
    mask = ones_mask(weights, prunable_names(net))
    return weights, magnitude_global(weights, mask, 1.0 - d)


def _latency(dense, ticket, x, reps: int, budget: float) -> tuple[float, float, int]:
    import torch

    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        t0 = time.perf_counter()
        for _ in range(3):
            dense(x), ticket(x)
        # Bound the run time where one batch is slow (cifar-cnn at batch 256).
        reps = max(5, min(reps, int(budget / ((time.perf_counter() - t0) / 3))))
        for _ in range(reps):
            for net, out in zip((dense, ticket), times, strict=True):
                t0 = time.perf_counter()
                net(x)
                out.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1]), reps


def measure(name: str, structured: bool, d: float, reps: int, budget: float) -> dict:
    import torch

    from fedlth.tickets.export import ModelSpec, export_ticket, load_ticket, read_ticket
    from fedlth.tickets.masks import density

    weights, mask = _ticket(name, structured, d)
    blob = export_ticket(weights, mask, ModelSpec(name, MODELS[name], 10))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.fltk"
        path.write_bytes(blob)
        ticket = load_ticket(path)
    header = read_ticket(blob).header
    dense = _dense(name)
    buf = io.BytesIO()
    torch.save(dense.state_dict(), buf)
    dense_file = buf.tell()
    head_bytes = HEAD.size + HEAD.unpack_from(blob)[1]
    dd = density(mask)
    x = torch.randn(512, *MODELS[name], generator=torch.Generator().manual_seed(1))
    ref = _dense(name)
    ref.load_state_dict({k: v * mask[k] if k in mask else v for k, v in weights.items()})
    with torch.no_grad():
        ya, yb = ref(x), ticket(x)
    row = {
        "model": name, "kind": "structured" if structured else "unstructured", "density": dd,
        "file_bytes": len(blob), "header_bytes": head_bytes, "dense_file_bytes": dense_file,
        "dense_tensor_bytes": header["dense_bytes"], "target_bytes": (32 * dd + 1) / 32 * dense_file + head_bytes,
        "params": header["params"], "shrunk_layers": sum(1 for p in header["shrunk"].values() if "kept" in p),
        "notes": header["notes"], "max_abs_logit_diff": float((ya - yb).abs().max()),
        "same_argmax": bool(torch.equal(ya.argmax(1), yb.argmax(1))),
    }
    for batch, n in ((1, reps * 10), (256, reps)):
        dense_s, ticket_s, n = _latency(dense, ticket, x[:batch].clone(), n, budget)
        row[f"latency_b{batch}"] = {
            "dense_ms": 1e3 * dense_s, "ticket_ms": 1e3 * ticket_s, "speedup": dense_s / ticket_s, "reps": n,
        }
    return row


def render(rows: list[dict], cmd: str, where: str) -> str:
    unstructured = [r for r in rows if r["kind"] == "unstructured"]
    structured = [r for r in rows if r["kind"] == "structured"]

    def lat(r: dict, b: int) -> str:
        v = r[f"latency_b{b}"]
        return f"{v['dense_ms']:.3f} / {v['ticket_ms']:.3f} ({v['speedup']:.2f}×)"

    def ok(flag: bool) -> str:
        return "yes" if flag else "**MISSED**"

    md = [
        "# Exported tickets: file size and CPU latency against the dense model", "",
        f"Command: `{cmd}`  ", f"Machine: {where}", "",
        "Latency: one thread, median, dense / ticket in ms (speed-up); batch 1 and batch 256. "
        "Exactness: max |logit difference| on 512 random inputs and whether every argmax agrees.", "",
        "## Unstructured (magnitude-global over all layers)", "",
        "Target: file ≤ (32 d + 1)/32 × dense file + header, where the dense file is `torch.save(state_dict)`.", "",
    ]
    md.append(table(
        ["model", "density", "file B", "header B", "dense file B", "target B", "within", "cut layers",
         "latency b1", "latency b256", "max Δlogit", "same argmax"],
        [[r["model"], f"{r['density']:.3f}", f"{r['file_bytes']:,}", f"{r['header_bytes']:,}",
          f"{r['dense_file_bytes']:,}", f"{r['target_bytes']:,.0f}", ok(r["file_bytes"] <= r["target_bytes"]),
          str(r["shrunk_layers"]), lat(r, 1), lat(r, 256), f"{r['max_abs_logit_diff']:.1e}",
          ok(r["same_argmax"])] for r in unstructured],
    ))
    md += ["", "## Structured (half the output channels of every layer but the last)", "",
           "Target: ≥ 1.8× faster than dense.", ""]
    md.append(table(
        ["model", "density", "file B", "dense file B", "params (ticket / dense)", "latency b1", "latency b256",
         "≥ 1.8× at b256", "≥ 1.8× at b1", "max Δlogit", "same argmax"],
        [[r["model"], f"{r['density']:.3f}", f"{r['file_bytes']:,}", f"{r['dense_file_bytes']:,}",
          f"{r['params']['exported']:,} / {r['params']['dense']:,}", lat(r, 1), lat(r, 256),
          ok(r["latency_b256"]["speedup"] >= 1.8), ok(r["latency_b1"]["speedup"] >= 1.8),
          f"{r['max_abs_logit_diff']:.1e}", ok(r["same_argmax"])] for r in structured],
    ))
    notes = sorted({f"{r['model']} d={r['density']:.3f}: {n}" for r in rows for n in r["notes"]})
    md += ["", "An unstructured ticket loads as the dense architecture with zeros: it saves bytes, not "
           "CPU time (dense kernels). Cut layers appear where pruning left whole output channels empty."]
    if notes:
        md += ["", "Notes from the export headers:", "", *[f"- {n}" for n in notes]]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--densities", default="1.0,0.5,0.2,0.1,0.05")
    ap.add_argument("--models", default="cnn1d,lenet5,cifar-cnn")
    ap.add_argument("--reps", type=int, default=30, help="Timed batches of 256 (batch 1 gets 10x as many).")
    ap.add_argument("--budget", type=float, default=4.0, help="Seconds of timing per row and batch size, at most.")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for name in a.models.split(","):
        for d in (float(s) for s in a.densities.split(",") if s.strip()):
            rows.append(measure(name, False, d, a.reps, a.budget))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(measure(name, True, 0.5, a.reps, a.budget))
        print(json.dumps(rows[-1]), flush=True)
    cmd = "python benchmarks/export_ticket.py " + " ".join(sys.argv[1:])
    where = machine()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "export_ticket.md").write_text(render(rows, cmd.strip(), where))
    (OUT / "export_ticket.json").write_text(json.dumps({"command": cmd.strip(), "machine": where, "rows": rows}, indent=1))
    print((OUT / "export_ticket.md").read_text())


if __name__ == "__main__":
    main()
