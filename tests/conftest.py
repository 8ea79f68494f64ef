"""Shared pytest fixtures: datasets loaded once per session into a temporary cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedlth.data.datasets import ArrayData, load_dataset


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache folder, so tests never read or write ~/.cache/fedlth."""
    folder = tmp_path_factory.mktemp("fedlth-cache")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _copy_shared_mnist1d(folder, tmp_path_factory.getbasetemp().parent)
    return folder


def _generate_shared_mnist1d(run_root: Path) -> Path:
    """MNIST-1D in the run's temp root, generated once under a lock (~10 s of CPU): whoever
    takes the lock first generates, the others wait and find it there."""
    import fcntl

    shared = run_root / "fedlth-shared-cache"
    with (run_root / "fedlth-shared-cache.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load_dataset("mnist1d", cache_dir=shared)
    return shared


def _copy_shared_mnist1d(folder: Path, run_root: Path) -> None:
    """Under pytest-xdist: MNIST-1D generated once for all workers, then copied into this
    worker's own cache folder (which stays the worker's: tests compare its contents before
    and after)."""
    import shutil

    for file in _generate_shared_mnist1d(run_root).glob("mnist1d*.npz"):
        shutil.copyfile(file, folder / file.name)


_GENERATE = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from conftest import _generate_shared_mnist1d
_generate_shared_mnist1d(Path(sys.argv[2]))
"""


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, the controller starts generating MNIST-1D for the run at once, in a
    process of its own, while the workers start and collect (seconds each); before, the first
    worker generated it at its first test while the other waited on the lock, a core idle."""
    import subprocess
    import sys

    config = session.config
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None):
        return
    run_root = config._tmp_path_factory.getbasetemp()  # the workers' temp folders go under it (as xdist's own)
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, (str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH"))))}
    config._fedlth_mnist1d = subprocess.Popen([sys.executable, "-c", _GENERATE, str(Path(__file__).parent), str(run_root)],
                                              env=env, stdout=subprocess.DEVNULL)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The generating process is done long before; never leave it behind."""
    proc = getattr(session.config, "_fedlth_mnist1d", None)
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def mnist1d_data(data_cache_dir: Path) -> ArrayData:
    """mnist1d, generated once per session (about 10 s) and cached in data_cache_dir."""
    return load_dataset("mnist1d", cache_dir=data_cache_dir)


@pytest.fixture(scope="session")
def digits() -> ArrayData:
    """sklearn's 1,797 8x8 digits."""
    return load_dataset("digits")


@pytest.fixture(scope="session", autouse=True)
def _isolated_homes(data_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Every test caches data and keeps Flower's home in temporary folders, never in ~."""
    import os

    saved = {k: os.environ.get(k) for k in ("FEDLTH_CACHE", "FLWR_HOME")}
    os.environ["FEDLTH_CACHE"] = str(data_cache_dir)
    os.environ["FLWR_HOME"] = str(tmp_path_factory.mktemp("flwr-home"))
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup`, tests marked xdist_group("name") go to one worker.
    pytest-xdist 3.8 tags their ids with "@name" through Item._nodeid, which pytest 9 no longer
    reads (ids live in Item._id), so every group would be scattered: tag them here instead."""
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import NodeId  # pytest >= 9
    except ImportError:  # older pytest: xdist's own tag works
        return
    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")
