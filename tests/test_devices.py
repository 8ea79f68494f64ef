"""Compute settings: the device a client trains on, the Ray resources a simulated client
reserves, and the data caches that let many clients (and Ray workers) start fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedlth.config.scenario import defaults
from fedlth.data import client_data as cd
from fedlth.data import datasets as data_module
from fedlth.data.partition import partition
from fedlth.learning.devices import module_device, resolve_device
from fedlth.learning.training import TrainConfig, evaluate, predict, train_
from server.simulate import backend_config

ROOT = Path(__file__).parent.parent


def _sc(**kw) -> dict:
    return {**defaults(), **{k.replace("_", "-"): v for k, v in kw.items()}}


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


# --- resolve_device ---------------------------------------------------------------------


def test_cpu_and_auto_without_a_gpu(no_cuda):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


def test_auto_takes_the_gpu_when_there_is_one(with_cuda):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"sees 1 GPU\(s\); allowed: auto, cpu, cuda, cuda:0 \.\. cuda:0"):
        resolve_device("cuda:1")


def test_cuda_asked_for_and_missing_is_a_clear_error(no_cuda, monkeypatch):
    with pytest.raises(ValueError, match=r"device 'cuda' asked for, but .*; allowed here: auto, cpu$"):
        resolve_device("cuda")
    # A CUDA build whose GPUs Ray hid (a client that reserved no GPU) says what to change.
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES is empty .*client-gpus > 0"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match="CPU-only build"):
        resolve_device("cuda")


def test_unknown_device_names_what_is_allowed():
    for bad in ("gpu", "cuda:x", "mps", ""):
        with pytest.raises(ValueError, match=r"unknown device .*; allowed: auto, cpu, cuda \(or cuda:N\)"):
            resolve_device(bad)


# --- backend_config -----------------------------------------------------------------------


def test_backend_config_defaults_one_cpu_per_client_local_ray():
    cfg = backend_config(_sc(), cuda=False)
    assert cfg["client_resources"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert "address" not in cfg["init_args"]
    assert cfg["init_args"]["include_dashboard"] is False
    json.dumps(cfg)  # Flower passes it on as JSON


def test_backend_config_client_cpus_sets_clients_at_once():
    assert backend_config(_sc(client_cpus=2.0), cuda=False)["client_resources"]["num_cpus"] == 2.0
    assert backend_config(_sc(client_cpus=0.5), cuda=False)["client_resources"]["num_cpus"] == 0.5
    too_many = float(len(os.sched_getaffinity(0)) + 1)
    with pytest.raises(ValueError, match=r"client-cpus = .* no client could run; allowed: 0 < client-cpus <= \d+"):
        backend_config(_sc(client_cpus=too_many), cuda=False)


def test_backend_config_gpu_share_only_where_a_gpu_may_be_used(caplog):
    def share(gpus: float, device: str, cuda: bool) -> float:
        return backend_config(_sc(client_gpus=gpus, device=device), cuda=cuda)["client_resources"]["num_gpus"]

    assert share(0.25, "auto", cuda=True) == 0.25
    assert share(0.25, "cuda", cuda=True) == 0.25
    assert share(0.25, "cpu", cuda=True) == 0.0  # device cpu: never a GPU
    assert share(0.25, "auto", cuda=False) == 0.0  # no GPU here
    assert not caplog.records
    assert share(0.0, "auto", cuda=True) == 0.0  # auto with no share: the clients train on CPUs, and are told
    assert "a GPU is present but client-gpus = 0" in caplog.text


def test_backend_config_refuses_cuda_it_cannot_give(no_cuda):
    with pytest.raises(ValueError, match="asked for, but .*allowed here: auto, cpu"):
        backend_config(_sc(device="cuda", client_gpus=0.5))
    with pytest.raises(ValueError, match="device = cuda in a simulation needs client-gpus > 0"):
        backend_config(_sc(device="cuda", client_gpus=0.0), cuda=True)


def test_backend_config_joins_a_cluster_with_ray_address():
    cfg = backend_config(_sc(ray_address="127.0.0.1:6379", client_cpus=64.0, client_gpus=0.5), cuda=False)
    assert cfg["init_args"]["address"] == "127.0.0.1:6379"
    # A cluster's CPUs and GPUs are not this machine's: no local check, the GPU share is kept.
    assert cfg["client_resources"] == {"num_cpus": 64.0, "num_gpus": 0.5}
    assert backend_config(_sc(ray_address="auto", device="cpu", client_gpus=0.5))["client_resources"]["num_gpus"] == 0.0


# --- training follows the model's device ----------------------------------------------------


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_training_on_cpu_is_the_same_with_or_without_a_device():
    x, y = torch.randn(50, 6, generator=torch.Generator().manual_seed(1)), torch.arange(50) % 3
    mask = {"0.weight": torch.rand(8, 6, generator=torch.Generator().manual_seed(2)) > 0.5}
    cfg = TrainConfig(lr=0.1, batch_size=8)
    a, b = _net(), _net()
    ra = train_(a, x, y, mask, cfg, epochs=2, generator=torch.Generator().manual_seed(3))
    rb = train_(b, x, y, mask, cfg, epochs=2, generator=torch.Generator().manual_seed(3), device="cpu")
    assert ra == rb
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert evaluate(a, x, y) == evaluate(b, x, y, device=torch.device("cpu"))
    p = predict(b, x, device="cpu")
    assert p.device.type == "cpu" and torch.equal(p, predict(a, x))
    assert module_device(b) == torch.device("cpu") and module_device(torch.nn.ReLU()) == torch.device("cpu")


# --- data caches -------------------------------------------------------------------------------


def test_dataset_is_loaded_once_per_process_whatever_the_seed(digits):
    cd._dataset.cache_clear()
    a = cd._scenario_dataset(_sc(dataset="digits", seed=0))
    b = cd._scenario_dataset(_sc(dataset="digits", seed=7))
    assert a is b
    # Bounded: per-client tensors are never cached, datasets and index splits by a few keys only.
    assert cd._dataset.cache_info().maxsize <= 4 and cd._splits.cache_info().maxsize <= 4


@pytest.mark.parametrize(
    "keys",
    [
        {"dataset": "digits", "partition": "pathological", "num-clients": 7, "classes-per-client": 3},
        {"dataset": "digits", "partition": "dirichlet", "num-clients": 12, "alpha": 0.3},
        {"dataset": "digits", "partition": "iid", "num-clients": 300, "seed": 4},
    ],
)
def test_partitions_come_back_from_the_disk_cache_identical(keys, monkeypatch):
    sc = {**defaults(), **keys}
    data = cd._scenario_dataset(sc)
    ref = partition(
        data, sc["partition"], sc["num-clients"], seed=sc["seed"], alpha=sc["alpha"],
        classes_per_client=sc["classes-per-client"], shards_per_client=sc["shards-per-client"],
        val_fraction=sc["val-fraction"],
    )
    cd._splits.cache_clear()
    first = cd._splits(cd.data_key(sc))  # computed, then written
    assert cd._partition_file(cd.data_key(sc), data).is_file()
    cd._splits.cache_clear()

    def boom(*a, **k):
        raise AssertionError("partitioned again instead of reading the cache")

    monkeypatch.setattr(cd, "partition", boom)
    again = cd._splits(cd.data_key(sc))
    for r, a, b in zip(ref, first, again, strict=True):
        for part in ("train", "val", "test"):
            assert getattr(b, part).dtype == np.int64
            assert np.array_equal(getattr(r, part), getattr(a, part)) and np.array_equal(getattr(r, part), getattr(b, part))
    x = cd.client_data(sc, sc["num-clients"] - 1)
    assert torch.equal(x.y_train, torch.as_tensor(data.y_train[ref[-1].train]))


def test_partition_cache_key_and_damaged_files(monkeypatch):
    sc = {**defaults(), "dataset": "digits", "partition": "pathological", "num-clients": 5}
    data = cd._scenario_dataset(sc)
    key = cd.data_key(sc)
    files = {cd._partition_file(cd.data_key({**sc, k: v}), data) for k, v in
             [("seed", 1), ("num-clients", 6), ("val-fraction", 0.3), ("classes-per-client", 3), ("seed", 0)]}
    assert len(files) == 5  # every data key moves the file
    cd._splits.cache_clear()
    cd._splits(key)
    path = cd._partition_file(key, data)
    path.write_bytes(b"not a zip")
    cd._splits.cache_clear()
    assert len(cd._splits(key)) == 5  # a damaged file is recomputed and rewritten
    cd._splits.cache_clear()
    monkeypatch.setattr(cd, "partition", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert len(cd._splits(key)) == 5


def test_mnist1d_warm_cache_does_not_import_the_generator(mnist1d_data, data_cache_dir):
    code = (
        "import sys; from fedlth.data.datasets import load_dataset; "
        f"d = load_dataset('mnist1d', cache_dir={str(data_cache_dir)!r}); "
        "print(d.x_train.shape, 'mnist1d' in sys.modules, 'scipy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(9600,", "40)", "False", "False"]


def test_mnist1d_cache_written_before_version_names_is_still_read(tmp_path, monkeypatch):
    import hashlib

    from mnist1d import data as mnist1d_module

    args = mnist1d_module.get_dataset_args()
    args.num_samples = data_module.MNIST1D_SAMPLES
    spec = json.dumps(vars(args), sort_keys=True, default=str)
    old = tmp_path / f"mnist1d-{hashlib.sha256(spec.encode()).hexdigest()[:16]}.npz"
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((8, 40), dtype=np.float32), "y_train": np.arange(8, dtype=np.int64) % 10,
              "x_test": rng.random((2, 40), dtype=np.float32), "y_test": np.arange(2, dtype=np.int64)}
    np.savez(old, **arrays)
    monkeypatch.setattr(mnist1d_module, "make_dataset", lambda a: (_ for _ in ()).throw(AssertionError("regenerated")))
    d = data_module.load_dataset("mnist1d", cache_dir=tmp_path)
    assert np.array_equal(d.x_train, arrays["x_train"])
    assert len(list(tmp_path.glob("mnist1d-*.npz"))) == 2  # now also under its version name
    again = data_module.load_dataset("mnist1d", cache_dir=tmp_path)
    assert np.array_equal(again.y_test, arrays["y_test"])


@pytest.mark.parametrize("name", ["digits", "arrests"])
def test_embedded_datasets_read_back_from_the_cache_identical(name, tmp_path, monkeypatch):
    import dataclasses

    fresh = data_module.load_dataset(name, cache_dir=tmp_path)  # loaded, then written
    assert len(list(tmp_path.glob(f"{name}-*.npz"))) == 1
    monkeypatch.setitem(data_module.DATASETS, name, data_module._cached(name, lambda *a: pytest.fail("loaded again")))
    again = data_module.load_dataset(name, cache_dir=tmp_path)
    for f in dataclasses.fields(fresh):
        a, b = getattr(fresh, f.name), getattr(again, f.name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), f.name
        elif isinstance(a, dict):
            assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a), f.name
        else:
            assert a == b and type(a) is type(b), f.name


def test_run_refuses_compute_settings_that_cannot_work_here(tmp_path):
    """One line and exit 2 before any work, like every other bad scenario value."""
    from click.testing import CliRunner

    from fedlth.cli import main

    scenario = tmp_path / "s.toml"
    scenario.write_text('dataset = "digits"\nmodel = "mlp"\nnum-clients = 2\nclients-per-round = 2\n')
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(scenario), "--out", str(out), "--set", "backend=ray client-cpus=100000"])
    assert result.exit_code == 2 and "client-cpus" in result.output and "allowed" in result.output
    assert not out.exists()
    # in-process (the default) there is no cluster to join: a ray-address would be ignored
    result = CliRunner().invoke(main, ["run", str(scenario), "--out", str(out), "--set", "ray-address=127.0.0.1:6379"])
    assert result.exit_code == 2 and "ray-address" in result.output and "backend = ray" in result.output
    assert not out.exists()
