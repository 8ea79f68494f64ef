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
