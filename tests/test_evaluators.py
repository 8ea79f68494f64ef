"""The evaluator plug-in interface: built-ins, entry-point plug-ins, early checks."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from fedlth.evaluation.evaluators import (
    DataInfo,
    EvalData,
    build_evaluators,
    registry,
    run_evaluators,
)
from fedlth.evaluation.fairness import metrics_from_counts, unflatten_counts

PLUGIN = '''
from dataclasses import dataclass

@dataclass(frozen=True)
class MeanLogit:
    scale: float
    name: str = "mean-logit"

    def check(self, info):
        pass

    def __call__(self, model, data):
        return {"mean-logit.value": self.scale * float(model(data.x).detach().mean())}

def make(options):
    return MeanLogit(float(options.get("scale", 1.0)))
'''


def _data(n: int = 64, binary: bool = True) -> EvalData:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 4, generator=g)
    y = (x[:, 0] > 0.5).long() if binary else torch.randint(0, 3, (n,), generator=g)
    sens = {"sex": np.array(["f", "m"] * (n // 2))}
    return EvalData(x, y, (4,), 2 if binary else 3, (0.0, 1.0), sens)


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    d = _data(256)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(m(d.x), d.y).backward()
        opt.step()
    return m


def test_an_entry_point_plugin_is_found_and_runs(tmp_path, monkeypatch):
    (tmp_path / "fedlth_testplugin.py").write_text(PLUGIN)
    dist = tmp_path / "fedlth_testplugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fedlth-testplugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedlth.evaluators]\nmean-logit = fedlth_testplugin:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert "mean-logit" in registry()
    (ev,) = build_evaluators("mean-logit", {"scale": 2.0})
    model = _model()
    out = run_evaluators([ev], model, _data())
    assert out["mean-logit.value"] == pytest.approx(2.0 * float(model(_data().x).detach().mean()))


def test_bad_names_and_options_fail_early_listing_what_exists():
    with pytest.raises(ValueError, match=r"unknown evaluator\(s\) \['robustnes'\]; available: .*fairness.*robustness"):
        build_evaluators("robustnes", {})
    with pytest.raises(ValueError, match="key 'attack' is 'pgdd'; allowed: fgsm, pgd"):
        build_evaluators("robustness", {"attack": "pgdd"})
    with pytest.raises(ValueError, match="key 'attack-eps'"):
        build_evaluators("robustness", {"attack-eps": "0.1,x"})
    with pytest.raises(ValueError, match="needs a binary task; this dataset has 10 classes"):
        build_evaluators("fairness", {}, DataInfo(num_classes=10, sensitive=()))
    with pytest.raises(ValueError, match="the dataset has: colour, sex"):
        build_evaluators("fairness", {"sensitive": "race"}, DataInfo(num_classes=2, sensitive=("colour", "sex")))


def test_robustness_evaluator_reports_each_eps_and_pgd_bites():
    (ev,) = build_evaluators("robustness", {"attack": "pgd", "attack-eps": "0.0,0.3", "attack-steps": 10})
    out = ev(_model(), _data())
    assert out["robustness.clean_accuracy"] > 0.9
    assert out["robustness.pgd.eps=0.robust_accuracy"] == pytest.approx(out["robustness.clean_accuracy"])
    assert out["robustness.pgd.eps=0.3.robust_accuracy"] < out["robustness.clean_accuracy"]


def test_fairness_evaluator_emits_counts_that_sum_to_the_client():
    (ev,) = build_evaluators("fairness", {}, DataInfo(num_classes=2, sensitive=("sex",)))
    data = _data()
    out = run_evaluators([ev], _model(), data)
    counts = unflatten_counts(out, "counts.fair.sex")
    assert set(counts) == {"f", "m"}
    assert sum(sum(c.values()) for c in counts.values()) == len(data.y)
    assert metrics_from_counts(counts)["n_groups"] == 2
