"""Strong baselines and the shared-ticket rule: one optimizer for local-only, fine-tuning chosen
on validation only, a shared mask that reaches its density and never revives, float16 wire."""

from __future__ import annotations

import json
from dataclasses import replace

import torch
from flwr.app import Message
from torch import nn

import fedlth.learning.training as training
from clients.client_app import app as client_app
from fedlth.config.scenario import resolve
from fedlth.data.client_data import client_data, dataset_info
from fedlth.federation.aggregate import MaskedMeanStream, Update
from fedlth.federation.algorithms import (
    ClientState,
    Ctx,
    federation_epochs,
    get_algorithm,
    initial_weights,
    personal_finetune,
)
from fedlth.federation.records import decode_record, encode_record
from fedlth.federation.shared_ticket import density_at, server_prune
from fedlth.learning.finetune import finetune_select
from fedlth.learning.training import TrainConfig
from fedlth.tickets.masks import density, is_subset
from server.local_grid import LocalGrid
from server.server_app import run_federation

BASE = {
    "dataset": "digits", "model": "mlp", "partition": "pathological", "classes-per-client": 2, "num-clients": 4,
    "clients-per-round": 2, "rounds": 6, "local-epochs": 1, "eval-every": 0, "save-tickets": False, "lr": 0.05,
    "plots": False,  # no figures: nothing here looks at them (tests/test_simulation.py, test_reports.py do)
}


def _linear(w: dict) -> nn.Module:
    net = nn.Linear(2, 2, bias=False)
    net.load_state_dict(w)
    return net


def test_local_only_trains_its_budget_with_one_optimizer(monkeypatch):
    sc = resolve(BASE | {"algorithm": "local", "rounds": 8})
    made = []
    real = training.make_optimizer
    monkeypatch.setattr(training, "make_optimizer", lambda m, c: made.append(1) or real(m, c))
    ctx = Ctx(sc, client_data(sc, 0), 0, 1)
    reply = get_algorithm("local").train(None, ClientState(), ctx)
    budget = federation_epochs(sc)  # 8 rounds × 2/4 sampled × 1 epoch
    assert budget == 4 and reply.metrics["epochs"] == budget
    assert len(made) == 1, "every epoch of a local-only client runs under one optimizer (momentum kept)"
    again = get_algorithm("local").train(None, reply.state, replace(ctx, server_round=2))
    assert again.metrics["epochs"] == 0 and again.state.personal is reply.state.personal


def test_finetune_selection_reads_validation_only():
    # train says "class = sign of x0"; validation says the opposite; a test split agreeing
    # with train is never consulted, so the start model (which validation prefers) is kept
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    y = (x[:, 0] > 0).long()
    start = {"weight": torch.tensor([[1.0, 0.0], [-1.0, 0.0]])}  # predicts class 1 when x0 < 0: val-perfect
    cfg = TrainConfig(lr=0.5, momentum=0.0, batch_size=16)
    chosen, sel = finetune_select(_linear, start, {}, (x, y), (x, 1 - y), cfg, epochs=3, lrs=(0.5,), generator=g)
    assert sel.epochs == 0 and torch.equal(chosen["weight"], start["weight"])
    assert sel.epochs_run == 3
    # when validation agrees with train, a fine-tuned epoch wins
    _, sel2 = finetune_select(_linear, start, {}, (x, y), (x, y), cfg, epochs=3, lrs=(0.5,), generator=g)
    assert sel2.epochs > 0 and sel2.val_accuracy > 0.9  # the start model scores 0 there


def test_personal_finetune_is_blind_to_the_test_split():
    sc = resolve(BASE | {"algorithm": "fedavg-ft", "finetune-epochs": 3, "finetune-lrs": "0.05,0.02"})
    data = client_data(sc, 1)
    start = initial_weights(sc, *dataset_info(sc))
    ctx = Ctx(sc, data, 1, 7)
    flipped = replace(data, y_test=(data.y_test + 1) % 10, x_test=torch.zeros_like(data.x_test))
    a, info_a = personal_finetune(ctx, start, None)
    b, info_b = personal_finetune(replace(ctx, data=flipped), start, None)
    assert info_a == info_b and all(torch.equal(a[k], b[k]) for k in a)
    assert info_a["finetune-epochs-run"] == 6  # 3 epochs × 2 learning rates


def test_cubic_schedule_by_hand():
    assert density_at(3, 3, 7, 0.2) == 1.0
    assert density_at(5, 3, 7, 0.2) == 0.2 + 0.8 * 0.5**3
    assert density_at(7, 3, 7, 0.2) == 0.2 and density_at(90, 3, 7, 0.2) == 0.2


def test_server_prune_never_revives_and_random_control_matches_layer_densities():
    g = torch.Generator().manual_seed(1)
    w = {"a": torch.randn(10, 10, generator=g), "b": torch.randn(5, 20, generator=g) * 0.01}
    ones = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
    half = server_prune(w, ones, 0.5, "magnitude-global", g)
    quarter = server_prune(w, half, 0.25, "magnitude-global", g)
    assert density(half) == 0.5 and density(quarter) == 0.25 and is_subset(quarter, half)
    assert int(quarter["b"].sum()) < int(quarter["a"].sum())  # global: the small layer loses more
    layer = server_prune(w, ones, 0.3, "magnitude-layer", g)
    rand = server_prune(w, ones, 0.3, "random", g)
    assert {k: int(m.sum()) for k, m in rand.items()} == {k: int(m.sum()) for k, m in layer.items()}
    assert server_prune(w, quarter, 0.3, "magnitude-global", g) is quarter  # already there


def test_float16_wire_widens_back_and_keeps_pruned_zeros():
    w = {"w": torch.tensor([[0.1, -2.5], [3.0, 7.0]]), "n": torch.tensor(3, dtype=torch.int64)}
    mask = {"w": torch.tensor([[True, False], [True, True]])}
    rec16, rec32 = encode_record(w, mask, wire_dtype="float16"), encode_record(w, mask)
    assert rec16.count_bytes() < rec32.count_bytes()
    back, m = decode_record(rec16, dtypes={"w": torch.float32, "n": torch.int64})
    assert back["w"].dtype == torch.float32 and back["n"].dtype == torch.int64 and int(back["n"]) == 3
    assert back["w"][0, 1] == 0 and torch.equal(m["w"], mask["w"])
    assert torch.allclose(back["w"], w["w"] * mask["w"], atol=1e-3)
    assert torch.equal(back["w"], w["w"].half().float() * mask["w"])  # exactly what float16 holds


def test_uniform_weighting_is_the_plain_mean_over_keepers():
    g = {"w": torch.zeros(3)}
    mask = {"w": torch.tensor([True, True, False])}
    ups = [Update({"w": torch.tensor([1.0, 2.0, 0.0])}, mask, 1), Update({"w": torch.tensor([3.0, 6.0, 0.0])}, mask, 1)]
    s = MaskedMeanStream(g)
    for i, u in enumerate(ups):
        s.add(u, client=i)
    assert torch.equal(s.result()["w"], torch.tensor([2.0, 4.0, 0.0]))


def _widen(msg: Message, reply: Message) -> Message:
    """A client that uploads its subnet with every entry kept (reviving pruned weights)."""
    if msg.metadata.message_type != "train" or reply.has_error():
        return reply
    sc = resolve(BASE | {"algorithm": "shared-ticket"})
    shapes = {k: tuple(v.shape) for k, v in initial_weights(sc, *dataset_info(sc)).items()}
    weights, mask = decode_record(reply.content["arrays"], shapes)
    if mask:
        full = {k: torch.ones_like(m) for k, m in mask.items()}
        reply.content["arrays"] = encode_record({k: v + (k in full) * 0.1 for k, v in weights.items()}, full, with_shapes=False)
    return reply


def test_shared_ticket_reaches_its_density_and_never_takes_a_revived_weight(tmp_path):
    sc = resolve(BASE | {
        "algorithm": "shared-ticket", "prune-start": 1, "prune-end": 3, "target-density": 0.3, "rounds": 5,
        "wire-dtype": "float16", "finetune-epochs": 2,
    })
    grid = LocalGrid(client_app, sc["num-clients"], tamper={3: _widen})
    summary = run_federation(grid, sc, tmp_path / "run")
    rounds = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # client 3's widened uploads are refused once the mask is sparse, and only then
    rejected = [r for rr in rounds for r in rr["rejected"]]
    assert rejected and all(r["client"] == 3 and "outside the shared ticket" in r["reason"] for r in rejected)
    assert all(r["round"] > 1 for r in rejected)
    state = torch.load(tmp_path / "run" / "server_state.pt")
    kept = {k: v != 0 for k, v in state["global"].items() if k.endswith("weight") and v.dim() > 1}
    assert abs(density(kept) - 0.3) < 0.01  # the server's model is the shared ticket
    assert all(abs(d - 0.3) < 0.01 for d in summary["density"]["per_client"].values())
    # sparse rounds upload less than dense ones: float16 values at density 0.3
    dense = rounds[0]["bytes"]["dense_fedavg_upload"] / len(rounds[0]["train"])
    honest = [m["upload_bytes"] for r in rounds[3:] for pid, m in r["train"].items() if pid != "3"]
    assert honest and max(honest) < 0.25 * dense
    assert summary["personalized_accuracy"]["mean"] > 0.5


def test_personal_ticket_uploads_a_sparse_share_and_ends_at_its_density(tmp_path):
    sc = resolve(BASE | {
        "algorithm": "personal-ticket", "upload-density": 0.25, "target-density": 0.3, "rounds": 3,
        "wire-dtype": "float16", "finetune-epochs": 2, "ticket-warmup-epochs": 1, "save-tickets": True,
    })
    summary = run_federation(LocalGrid(client_app, sc["num-clients"]), sc, tmp_path / "run")
    from fedlth.tickets.saved import load_ticket_file, ticket_path

    weights, mask = load_ticket_file(ticket_path(tmp_path / "run" / "tickets", 0))
    assert abs(density(mask) - 0.3) < 0.01 and all(bool((weights[k][~m] == 0).all()) for k, m in mask.items())
    rounds = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    per_upload = [m["upload_bytes"] for r in rounds for m in r["train"].values()]
    dense = rounds[0]["bytes"]["dense_fedavg_upload"] / len(rounds[0]["train"])
    assert max(per_upload) < 0.2 * dense  # a quarter of the weights, float16, plus 1 bit each
    assert all(abs(m["upload-density"] - 0.25) < 0.01 for r in rounds for m in r["train"].values())
    assert all(abs(d - 0.3) < 0.01 for d in summary["density"]["per_client"].values())
    assert summary["personalized_accuracy"]["mean"] > 0.5


def test_personal_ticket_controls_keep_the_per_layer_counts():
    sc = resolve(BASE | {"algorithm": "personal-ticket", "target-density": 0.3, "finetune-epochs": 1, "ticket-warmup-epochs": 1})
    ctx = Ctx(sc, client_data(sc, 0), 0, 6)
    glob = initial_weights(sc, *dataset_info(sc))
    alg = get_algorithm("personal-ticket")
    out = {c: alg.personal(glob, ClientState(), replace(ctx, sc=sc | {"ticket-control": c}))[0] for c in ("none", "random-mask", "reinit")}
    names = [k for k in glob if k.endswith("weight") and glob[k].dim() > 1]
    kept = {c: {k: int((w[k] != 0).sum()) for k in names} for c, w in out.items()}
    assert kept["none"] == kept["random-mask"] == kept["reinit"]
    assert any(not torch.equal(out["none"][k] != 0, out["random-mask"][k] != 0) for k in names)
    assert all(torch.equal(out["none"][k] != 0, out["reinit"][k] != 0) for k in names)


def test_repersonalize_reproduces_the_run_then_swaps_in_a_control(tmp_path):
    from fedlth.evaluation.reevaluate import repersonalize

    sc = resolve(BASE | {
        "algorithm": "personal-ticket", "rounds": 2, "wire-dtype": "float16", "finetune-epochs": 2, "ticket-warmup-epochs": 1,
    })
    run_federation(LocalGrid(client_app, sc["num-clients"]), sc, tmp_path / "run")
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["evaluate"]
    again = repersonalize(tmp_path / "run", sc)
    assert {pid: m["accuracy"] for pid, m in again.items()} == {int(p): m["accuracy"] for p, m in last.items()}
    control = repersonalize(tmp_path / "run", sc | {"ticket-control": "random-mask"})
    assert all(abs(m["density"] - again[p]["density"]) < 1e-9 for p, m in control.items())


def test_fill_unsent_counts_a_silent_client_as_leaving_the_weight_unchanged():
    from server.strategy import fill_unsent

    glob = {"w": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([0.0])}
    up = Update({"w": torch.tensor([3.0, 0.0, 0.0]), "b": torch.tensor([2.0])}, {"w": torch.tensor([True, False, False])}, 5)
    filled = fill_unsent(up, glob)
    assert filled.mask == {} and filled.num_examples == 5
    assert torch.equal(filled.weights["w"], torch.tensor([3.0, 1.0, 1.0])) and torch.equal(filled.weights["b"], torch.tensor([2.0]))
    s = MaskedMeanStream(glob)
    s.add(filled, client=0)
    s.add(Update({"w": torch.tensor([1.0, 1.0, 1.0]), "b": torch.tensor([0.0])}, {}, 5), client=1)
    assert torch.equal(s.result()["w"], torch.tensor([2.0, 1.0, 1.0]))  # (3 + 1) / 2, the rest unchanged
