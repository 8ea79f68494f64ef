"""q-FFL aggregation: q = 0 is the masked mean, q > 0 matches a brute-force reference and Flower's QFedAvg."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedlth.federation.aggregate import Update, masked_mean
from fedlth.federation.qffl import QFFLStream, qffl


def _tiny():
    # 2 weights of a layer (masked), a bias (never masked), an integer counter
    prev = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5]), "n": torch.tensor(4)}
    a = Update({"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.5]), "n": torch.tensor(6)},
               {"w": torch.tensor([True, False])}, 3)
    b = Update({"w": torch.tensor([3.0, 5.0]), "b": torch.tensor([0.5]), "n": torch.tensor(8)},
               {"w": torch.tensor([True, True])}, 1)
    return prev, [a, b]


def test_q_zero_is_the_masked_mean():
    prev, ups = _tiny()
    got = qffl(prev, ups, [0.7, 2.3], q=0.0, lipschitz=20.0)
    want = masked_mean(prev, ups)
    # by hand: w[0] = (3·0 + 1·3) / 4 = 0.75; w[1] kept by b alone = 5; b = (3·1.5 + 0.5) / 4 = 1.25; n = 6.5 → 6
    assert torch.allclose(got["w"], torch.tensor([0.75, 5.0]), atol=1e-6)
    assert torch.allclose(got["b"], torch.tensor([1.25]), atol=1e-6)
    assert got["n"].dtype == torch.int64 and int(got["n"]) == int(want["n"]) == 6
    for k in ("w", "b"):
        assert torch.allclose(got[k], want[k], atol=1e-6)


def test_q_one_by_hand():
    # L = 1, q = 1; A: w_A = 0, F_A = 2 → Δ = 1, h = 1·‖Δ‖² + 2 = 3; B: unchanged, F_B = 1 → Δ = 0, h = 1
    # w ← 1 − (2·1 + 1·0) / (3 + 1) = 0.5 (FedAvg would give 0.5 too only by chance: check q = 5 moves further)
    prev = {"w": torch.tensor([1.0])}
    ups = [Update({"w": torch.tensor([0.0])}, {}, 1), Update({"w": torch.tensor([1.0])}, {}, 1)]
    assert float(qffl(prev, ups, [2.0, 1.0], q=1.0, lipschitz=1.0)["w"]) == pytest.approx(0.5)
    # q = 5: F^q = 32 and 1, h_A = 5·16·1 + 32 = 112, h_B = 1 → w = 1 − 32 / 113, pulled towards the lossy client
    assert float(qffl(prev, ups, [2.0, 1.0], q=5.0, lipschitz=1.0)["w"]) == pytest.approx(1 - 32 / 113)


def _brute(prev, ups, losses, q, lip):
    """Entry by entry, in plain Python floats: the q-FFL step over the clients that keep each entry."""
    eps = 1e-10
    terms = []
    for u, f in zip(ups, losses, strict=True):
        norm = 0.0
        for k, p in prev.items():
            m = u.mask.get(k, torch.ones_like(p, dtype=torch.bool))
            for j in range(p.numel()):
                if m.reshape(-1)[j]:
                    norm += (lip * (float(p.reshape(-1)[j]) - float(u.weights[k].reshape(-1)[j]))) ** 2
        fq = (f + eps) ** q
        terms.append((fq, q * (f + eps) ** (q - 1) * norm + lip * fq))
    out = {}
    for k, p in prev.items():
        flat = []
        for j in range(p.numel()):
            num = den = 0.0
            for u, (fq, h) in zip(ups, terms, strict=True):
                m = u.mask.get(k, torch.ones_like(p, dtype=torch.bool))
                if m.reshape(-1)[j]:
                    d = lip * (float(p.reshape(-1)[j]) - float(u.weights[k].reshape(-1)[j]))
                    num += u.num_examples * fq * d
                    den += u.num_examples * h
            flat.append(float(p.reshape(-1)[j]) - num / den if den > 0 else float(p.reshape(-1)[j]))
        out[k] = torch.tensor(flat, dtype=torch.float64).reshape(p.shape)
    return out


@pytest.mark.parametrize("q", [0.5, 1.0, 5.0])
def test_matches_a_brute_force_reference_with_masks(q):
    gen = torch.Generator().manual_seed(0)
    prev = {"w": torch.randn(3, 4, generator=gen), "b": torch.randn(3, generator=gen)}
    ups = []
    for n in (5, 2, 9):
        mask = {"w": torch.rand(3, 4, generator=gen) < 0.6}
        mask["w"][0, 0] = False  # an entry nobody keeps keeps its value
        w = {"w": torch.randn(3, 4, generator=gen) * mask["w"], "b": torch.randn(3, generator=gen)}
        ups.append(Update(w, mask, n))
    losses = [0.3, 1.7, 0.9]
    got = qffl(prev, ups, losses, q=q, lipschitz=10.0)
    want = _brute(prev, ups, losses, q, 10.0)
    for k in prev:
        assert torch.allclose(got[k].double(), want[k], rtol=1e-5, atol=1e-6), k
    assert got["w"][0, 0] == prev["w"][0, 0]


@pytest.mark.parametrize("q", [0.0, 0.1, 2.0])
def test_dense_updates_match_flowers_qfedavg(q):
    from flwr.serverapp.strategy.qfedavg import compute_delta_and_h

    gen = torch.Generator().manual_seed(1)
    prev = {"a": torch.randn(4, 3, generator=gen), "c": torch.randn(5, generator=gen)}
    ups = [Update({k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in prev.items()}, {}, 1) for _ in range(3)]
    losses = [0.4, 1.2, 2.5]
    lr = 0.05
    sum_delta, sum_h = None, 0.0
    for u, f in zip(ups, losses, strict=True):
        glob = [prev[k].double().numpy() for k in prev]
        local = [u.weights[k].double().numpy().copy() for k in prev]
        delta, h = compute_delta_and_h(glob, local, q, 1.0 / lr, f)
        sum_delta = delta if sum_delta is None else [s + d for s, d in zip(sum_delta, delta, strict=True)]
        sum_h += h
    flower = {k: g - d / sum_h for k, g, d in zip(prev, [prev[k].double().numpy() for k in prev], sum_delta, strict=True)}
    got = qffl(prev, ups, losses, q=q, lipschitz=1.0 / lr)
    for k in prev:
        np.testing.assert_allclose(got[k].numpy(), flower[k], rtol=1e-5, atol=1e-6)


def test_a_bad_loss_is_refused_for_that_client_only():
    prev, ups = _tiny()
    stream = QFFLStream(prev, q=1.0, lipschitz=1.0)
    stream.add(ups[0], 0.5, client=7)
    before = stream.result()
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="client 9: q-FFL needs"):
            stream.add(ups[1], bad, client=9)
    assert stream.count == 1
    after = stream.result()
    assert all(torch.equal(before[k], after[k]) for k in prev)


def test_no_update_leaves_the_model_and_inputs_unchanged():
    prev, ups = _tiny()
    copy = {k: v.clone() for k, v in prev.items()}
    assert all(torch.equal(QFFLStream(prev, 1.0, 1.0).result()[k], prev[k]) for k in prev)
    qffl(prev, ups, [1.0, 1.0], q=2.0, lipschitz=1.0)
    assert all(torch.equal(prev[k], copy[k]) for k in prev)
    with pytest.raises(ValueError, match="one loss per update"):
        qffl(prev, ups, [1.0], q=1.0, lipschitz=1.0)


# --- through the server: the client reports its loss, the server checks it and folds it in ----------


def _federation(tmp_path, tamper=None, **over):
    import json

    from clients.client_app import app as client_app
    from fedlth.config.scenario import resolve
    from server.local_grid import LocalGrid
    from server.server_app import run_federation

    sc = resolve({
        "dataset": "digits", "model": "mlp", "partition": "iid", "num-clients": 3, "clients-per-round": 3, "rounds": 1,
        "local-epochs": 1, "algorithm": "subfedavg", "prune-rate": 0.5, "target-density": 0.2, "acc-threshold": 0.0,
        "prune-tolerance": 1.0, "mask-epsilon": 0.0, "eval-every": 0, "save-tickets": False, "plots": False, **over,
    })
    run_federation(LocalGrid(client_app, 3, tamper=tamper), sc, tmp_path)
    rounds = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return torch.load(tmp_path / "server_state.pt", weights_only=True)["global"], rounds


def test_server_qffl_at_q_zero_is_the_mean_and_reads_the_clients_loss(tmp_path):
    mean, _ = _federation(tmp_path / "mean")
    q0, rounds = _federation(tmp_path / "q0", aggregation="qffl", **{"qffl-q": 0.0})
    q5, _ = _federation(tmp_path / "q5", aggregation="qffl", **{"qffl-q": 5.0})
    for k in mean:
        assert torch.allclose(mean[k].double(), q0[k].double(), atol=1e-6), k
    assert any(not torch.allclose(mean[k].double(), q5[k].double(), atol=1e-4) for k in mean if mean[k].is_floating_point())
    losses = [m["received-loss"] for m in rounds[0]["train"].values()]
    assert len(losses) == 3 and all(f > 0 for f in losses)  # at θ0, the untrained model's loss (about ln 10)


def test_server_refuses_a_reply_without_a_usable_loss(tmp_path):
    def drop(msg, reply):
        if msg.metadata.message_type == "train":
            del reply.content["metrics"]["received-loss"]
        return reply

    def negative(msg, reply):
        if msg.metadata.message_type == "train":
            reply.content["metrics"]["received-loss"] = -1.0
        return reply

    _, rounds = _federation(tmp_path, {1: drop, 2: negative}, aggregation="qffl")
    reasons = {r["client"]: r["reason"] for r in rounds[0]["rejected"]}
    assert sorted(reasons) == [1, 2]
    assert "lacks received-loss" in reasons[1] and "finite number >= 0" in reasons[2]
    assert rounds[0]["aggregated"]  # client 0's update still made the round


def test_qffl_is_refused_where_clients_do_not_train_the_received_model():
    from fedlth.config.scenario import ScenarioError, resolve

    with pytest.raises(ScenarioError, match="qffl.*fedpm"):
        resolve({"aggregation": "qffl", "algorithm": "fedpm"})
