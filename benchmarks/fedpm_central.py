"""Sanity check of FedPM's client rule without the federation: one client holding a dataset's whole
train pool trains the mask scores of the frozen random network, epoch after epoch.

    python benchmarks/fedpm_central.py DATASET MODEL [--epochs 8] [--lr 0.1] [--batch-size 128]

Prints per epoch the training loss and the test accuracy of the frozen weights ⊙ a mask sampled
from σ(s) and ⊙ the mask p > 0.5, and the mean probability. Seeds: scenario seed 0.
"""

from __future__ import annotations

import argparse
import time

import torch

from fedlth.config.scenario import resolve
from fedlth.data.client_data import client_data, dataset_info
from fedlth.federation import fedpm
from fedlth.federation.algorithms import fedpm_network
from fedlth.learning.models import build_model
from fedlth.learning.training import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dataset")
    ap.add_argument("model")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sc = resolve({"dataset": args.dataset, "model": args.model, "partition": "iid", "num-clients": 1,
                  "clients-per-round": 1, "algorithm": "fedpm"})
    data = client_data(sc, 0)
    shape, classes = dataset_info(sc)
    frozen, names = fedpm_network(sc, shape, classes)
    net = build_model(args.model, shape, classes)
    net.load_state_dict(frozen)
    gen = torch.Generator().manual_seed(1)
    scores = fedpm.scores_from_probabilities(fedpm.initial_probabilities(frozen, names, torch.Generator().manual_seed(2)))

    def accuracy(mask: dict) -> float:
        model = build_model(args.model, shape, classes)
        model.load_state_dict(fedpm.masked_weights(frozen, mask))
        return evaluate(model, data.x_test, data.y_test)[1]

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        scores, loss = fedpm.train_scores(net, frozen, scores, data.x_train, data.y_train, epochs=1,
                                          batch_size=args.batch_size, lr=args.lr, generator=gen, sampler=gen)
        probs = {k: torch.sigmoid(s) for k, s in scores.items()}
        sampled, thresholded = accuracy(fedpm.sample_masks(probs, gen)), accuracy(fedpm.threshold_masks(probs))
        mean_p = sum(float(p.mean()) for p in probs.values()) / len(probs)
        print(f"epoch {epoch}: loss {loss:.3f}  sampled-mask acc {sampled:.3f}  p>0.5 acc {thresholded:.3f}  "
              f"mean p {mean_p:.3f}  {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
