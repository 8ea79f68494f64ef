"""Client rules of every algorithm, driven by a plain in-memory loop (no Flower): masks only
shrink, no client holds a nonzero weight outside its mask, gates read validation only."""

from __future__ import annotations

import pytest
import torch

from fedlth.config.scenario import ALGORITHM_NAMES, resolve
from fedlth.data.client_data import client_data, dataset_info
from fedlth.federation.aggregate import Update, masked_mean
from fedlth.federation.algorithms import (
    ALGORITHMS,
    ClientState,
    Ctx,
    evaluate_client,
    get_algorithm,
    initial_weights,
)
from fedlth.tickets.masks import apply_mask, density, is_subset

BASE = {
    "dataset": "digits", "model": "mlp", "partition": "pathological", "classes-per-client": 2,
    "num-clients": 4, "clients-per-round": 4, "local-epochs": 1, "lr": 0.05, "prune-rate": 0.5,
    "target-density": 0.2, "acc-threshold": 0.0, "prune-tolerance": 1.0, "mask-epsilon": 0.0,
}


def _federate(sc, rounds):
    shape, classes = dataset_info(sc)
    alg = get_algorithm(sc["algorithm"])
    glob = initial_weights(sc, shape, classes)
    states = {pid: ClientState() for pid in range(sc["num-clients"])}
    masks = {}
    history = []
    for rnd in range(1, rounds + 1):
        updates = []
        for pid in range(sc["num-clients"]):
            ctx = Ctx(sc, client_data(sc, pid), pid, rnd)
            received = None
            if alg.uploads:
                received = apply_mask(glob, masks[pid]) if pid in masks else glob
            reply = alg.train(received, states[pid], ctx)
            history.append((pid, states[pid], reply))
            states[pid] = reply.state
            if reply.weights is not None:
                updates.append(Update(reply.weights, reply.mask or {}, int(reply.metrics["num-examples"])))
                if reply.mask:
                    masks[pid] = reply.mask
        glob = masked_mean(glob, updates)
    return alg, glob, states, masks, history


@pytest.mark.parametrize("name", ["lotteryfl", "lotteryfl-faithful", "subfedavg", "subfedavg-hybrid"])
def test_masked_algorithms_prune_never_revive_and_keep_zeros(name):
    sc = resolve(BASE | {"algorithm": name})
    alg, glob, states, masks, history = _federate(sc, rounds=3)
    for pid, before, reply in history:
        if before.mask is not None:
            assert is_subset(reply.mask, before.mask), (pid, "mask revived weights")
        for k, m in reply.mask.items():
            assert torch.all(reply.weights[k][~m] == 0), (pid, k, "uploads a weight outside its mask")
            assert torch.all(reply.state.personal[k][~m] == 0), (pid, k, "holds a weight outside its mask")
    # with permissive gates every client pruned: 0.5 then 0.25 then the 0.2 target
    for st in states.values():
        assert density(st.mask) == pytest.approx(0.2, abs=0.01)
    assert all(st.rounds == 3 for st in states.values())


def test_hybrid_prunes_whole_neurons_of_the_mlp_layers_it_treats_as_fc():
    # the MLP has no conv layers: hybrid falls back to magnitude pruning on every layer, so it
    # must equal unstructured Sub-FedAvg exactly
    a = _federate(resolve(BASE | {"algorithm": "subfedavg"}), rounds=2)[2]
    b = _federate(resolve(BASE | {"algorithm": "subfedavg-hybrid"}), rounds=2)[2]
    for pid in a:
        assert all(torch.equal(a[pid].mask[k], b[pid].mask[k]) for k in a[pid].mask)


def test_hybrid_on_a_bn_cnn_removes_whole_channels():
    sc = resolve(BASE | {"algorithm": "subfedavg-hybrid", "model": "cifar-cnn", "num-clients": 2, "clients-per-round": 2})
    _, _, states, _, _ = _federate(sc, rounds=1)
    for st in states.values():
        for k, m in st.mask.items():
            if m.dim() == 4:
                per_channel = m.flatten(1)
                assert torch.all(per_channel.all(1) | ~per_channel.any(1)), k
                assert 0 < int(per_channel.all(1).sum()) < m.shape[0]


def test_gates_block_pruning_when_validation_accuracy_is_too_low():
    sc = resolve(BASE | {"algorithm": "subfedavg", "acc-threshold": 1.0})
    _, _, states, _, history = _federate(sc, rounds=2)
    assert all(density(st.mask) == 1.0 for st in states.values())
    assert all(r.metrics["pruned"] == 0.0 for _, _, r in history)


def test_local_uploads_nothing_and_fedavg_uploads_dense():
    _, _, states, _, history = _federate(resolve(BASE | {"algorithm": "local"}), rounds=2)
    assert all(r.weights is None for _, _, r in history)
    assert all(st.personal is not None for st in states.values())
    _, _, _, masks, history = _federate(resolve(BASE | {"algorithm": "fedavg"}), rounds=1)
    assert not masks and all(r.mask is None for _, _, r in history)


def test_evaluation_scores_the_personal_ticket_on_test():
    sc = resolve(BASE | {"algorithm": "subfedavg", "local-epochs": 3})
    alg, glob, states, masks, _ = _federate(sc, rounds=2)
    out = evaluate_client(alg, apply_mask(glob, masks[0]), states[0], Ctx(sc, client_data(sc, 0), 0, 3))
    assert out["num-examples"] == len(client_data(sc, 0).y_test)
    # two classes per client, a trained ticket beats the 0.5 of guessing between them
    assert out["accuracy"] > 0.6
    assert out["density"] == pytest.approx(density(states[0].mask))


def test_registry_is_complete_and_unknown_names_list_the_valid_ones():
    assert set(ALGORITHMS) == set(ALGORITHM_NAMES)
    with pytest.raises(ValueError, match="valid: fedavg, local"):
        get_algorithm("fedprox")


def test_finetune_ticket_eval_trains_the_final_global_subnet_and_keeps_its_mask():
    sc = resolve(BASE | {"algorithm": "subfedavg", "ticket-eval": "finetune", "finetune-epochs": 1})
    alg, glob, states, masks, _ = _federate(sc, rounds=2)
    ctx = Ctx(sc, client_data(sc, 1), 1, 3)
    tuned, _ = alg.personal(apply_mask(glob, masks[1]), states[1], ctx)
    assert not torch.equal(tuned["1.weight"], states[1].personal["1.weight"])
    for k, m in masks[1].items():
        assert torch.all(tuned[k][~m] == 0)
