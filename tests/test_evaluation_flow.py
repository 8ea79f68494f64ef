"""Evaluators inside the federated evaluation: exact pooled fairness, robust tickets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

from fedlth.config.scenario import resolve
from fedlth.data.client_data import client_data, dataset_info
from fedlth.federation.algorithms import (
    ClientState,
    Ctx,
    evaluate_client,
    get_algorithm,
    initial_weights,
    local_train,
)
from fedlth.learning.models import build_model
from fedlth.learning.training import predict
from fedlth.reporting.report import evaluation_summary

ARRESTS = {
    "dataset": "arrests", "model": "tabular-mlp", "partition": "natural-id", "num-clients": 6,
    "clients-per-round": 6, "local-epochs": 2, "algorithm": "local", "evaluators": "fairness,robustness",
    "attack-eps": "0.1", "attack-steps": 5, "attack-samples": 50,
}


def test_pooled_fairness_equals_fairlearn_on_all_clients_predictions():
    sc = resolve(ARRESTS)
    alg = get_algorithm("local")
    evals, y_all, p_all, sex_all = {}, [], [], []
    for pid in range(6):
        ctx = Ctx(sc, client_data(sc, pid), pid, 1)
        state = alg.train(None, ClientState(), ctx).state
        evals[pid] = evaluate_client(alg, None, state, ctx)
        net = build_model(sc["model"], ctx.data.input_shape, ctx.data.num_classes)
        net.load_state_dict(state.personal)
        y_all.append(ctx.data.y_test.numpy())
        p_all.append(predict(net, ctx.data.x_test).numpy())
        sex_all.append(ctx.data.sensitive_test["sex"])
    summary = evaluation_summary(evals)
    y, p, sex = np.concatenate(y_all), np.concatenate(p_all), np.concatenate(sex_all)
    pooled = summary["pooled_fairness"]["sex"]
    assert pooled["demographic_parity_difference"] == pytest.approx(demographic_parity_difference(y, p, sensitive_features=sex))
    assert pooled["equalized_odds_difference"] == pytest.approx(equalized_odds_difference(y, p, sensitive_features=sex))
    assert set(summary["pooled_fairness"]) == {"colour", "sex"}
    per = summary["per_client_fairness"]
    assert set(per) == {str(p) for p in range(6)} and set(per["0"]) == {"colour", "sex"}
    assert sum(r["count"] for r in per["0"]["sex"]["by_group"].values()) == len(y_all[0])
    assert summary["across_clients"]["n"] == 6
    rob = summary["evaluators_mean"]
    assert rob["robustness.pgd.eps=0.1.robust_accuracy"] <= rob["robustness.clean_accuracy"]


def test_adversarial_training_changes_what_clients_learn():
    base = {"dataset": "digits", "model": "mlp", "num-clients": 2, "clients-per-round": 2, "local-epochs": 1}
    trained = []
    for adv in (False, True):
        sc = resolve(base | {"adv-train": adv, "adv-eps": 0.2, "adv-steps": 2})
        ctx = Ctx(sc, client_data(sc, 0), 0, 1)
        w, _ = local_train(ctx, initial_weights(sc, *dataset_info(sc)), None)
        trained.append(w)
    assert any(not torch.equal(trained[0][k], trained[1][k]) for k in trained[0])


def test_adversarial_training_repeats_whatever_the_global_rng_holds():
    # PGD-AT's random starts come from the client's (seed, round, client) generator: a client
    # trains the same whichever clients ran before it (they move torch's global RNG)
    sc = resolve({"dataset": "digits", "model": "mlp", "num-clients": 2, "clients-per-round": 2, "local-epochs": 1,
                  "adv-train": True, "adv-eps": 0.2, "adv-steps": 2})
    ctx = Ctx(sc, client_data(sc, 1), 1, 3)
    start = initial_weights(sc, *dataset_info(sc))
    runs = []
    for global_seed in (0, 4321):
        torch.manual_seed(global_seed)
        runs.append(local_train(ctx, start, None)[0])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_personal_ticket_fine_tunes_and_retrains_adversarially():
    # personal-ticket's warm-up and its retraining inside the mask both run PGD-AT when adv-train is on
    from fedlth.federation.algorithms import ClientState, personal_ticket

    base = {"dataset": "digits", "model": "mlp", "num-clients": 2, "clients-per-round": 2, "algorithm": "personal-ticket",
            "ticket-warmup-epochs": 1, "finetune-epochs": 1, "target-density": 0.5, "adv-eps": 0.3, "adv-steps": 2}
    out = []
    for adv in (False, True):
        sc = resolve(base | {"adv-train": adv})
        ctx = Ctx(sc, client_data(sc, 0), 0, 1)
        out.append(personal_ticket(initial_weights(sc, *dataset_info(sc)), ClientState(), ctx))
    (clean, clean_info), (robust, robust_info) = out
    assert clean_info["density"] == robust_info["density"] == pytest.approx(0.5, abs=0.01)
    assert any(not torch.equal(clean[k], robust[k]) for k in clean)
