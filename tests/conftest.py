"""Shared pytest fixtures: datasets loaded once per session into a temporary cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlth.data import ArrayData, load_dataset


@pytest.fixture(scope="session")
def data_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache folder, so tests never read or write ~/.cache/fedlth."""
    return tmp_path_factory.mktemp("fedlth-cache")


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
