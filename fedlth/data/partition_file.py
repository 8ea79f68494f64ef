"""Partitions read from a JSON file: a paper's exact split, checked before any work starts.

The file is `{"clients": [{"train": [...], "val": [...], "test": [...]}, ...]}`. Entry k is
partition id k. `train` and `val` index the dataset's train pool (`x_train`), `test` its test
pool (`x_test`); the order of the indices in the file does not matter (clients hold their rows
in index order).

Rules, each broken one is a ScenarioError naming the file, the client and what is wrong:
- the number of entries equals `num-clients`;
- every split is a non-empty list of integers, 0 <= index < the pool's size;
- no index repeats within a split, and a client's `train` and `val` are disjoint (both come
  from the train pool; `test` comes from the other pool, so it can't overlap them);
- indices MAY repeat across clients (overlapping clients, as in some papers' splits), in any
  split: each client is checked on its own.

`val-fraction` and `seed` don't change a file partition: the file gives every split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedlth.config.component_options import FilePartitionOptions
from fedlth.config.core_options import core
from fedlth.config.options import options
from fedlth.config.scenario import ScenarioError
from fedlth.data.partition import ClientSplit

METHOD = "file"
RECORD_NAME = "partition-file.json"  # in a run folder: the file's path and hash when the run began
PARTS = ("train", "val", "test")
SHAPE = '{"clients": [{"train": [...], "val": [...], "test": [...]}, ...]}'
_MAX_INDEX = 2**62  # no pool is this large; keeps every index inside int64


def _name(path: str | Path) -> str:
    """How messages name the file."""
    return f"partition-file {str(path)!r}"


@lru_cache(maxsize=8)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """SHA-256 of the file's bytes, cached per (path, mtime, size)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of the file's bytes (re-read only when its mtime or size changes)."""
    try:
        st = Path(path).stat()
        return _digest(str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        raise ScenarioError(f"{_name(path)} does not exist or can't be read") from None


def _read_json(path: Path) -> Any:
    """The parsed file; ScenarioError when missing, unreadable or not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{_name(path)} does not exist") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{_name(path)}: not valid JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise ScenarioError(f"{_name(path)} can't be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{_name(path)}: not valid JSON: {exc}") from None


def _indices(value: Any, where: str) -> np.ndarray:
    """A split's list as sorted int64 indices; ScenarioError if not a list of ints >= 0 or repeating."""
    if not isinstance(value, list):
        raise ScenarioError(f"{where} must be a list of indices, got {type(value).__name__}")
    if not value:
        raise ScenarioError(f"{where} is empty; every split needs at least one index")
    for i, x in enumerate(value):
        if type(x) is not int:
            raise ScenarioError(f"{where}: item {i} is {x!r}; indices are integers")
        if x < 0:
            raise ScenarioError(f"{where}: index {x} is out of range; indices are >= 0")
        if x >= _MAX_INDEX:
            raise ScenarioError(f"{where}: index {x} is out of range")
    idx = np.sort(np.asarray(value, dtype=np.int64))
    repeats = idx[1:][np.diff(idx) == 0]
    if repeats.size:
        raise ScenarioError(f"{where} repeats index {int(repeats[0])}")
    return idx


def _client(entry: Any, k: int, name: str) -> ClientSplit:
    """Client k's entry as a ClientSplit, after its own checks (all but the ranges)."""
    where = f"{name}: client {k}"
    if not isinstance(entry, dict):
        raise ScenarioError(f"{where} must be an object with train, val and test; got {type(entry).__name__}")
    missing = [p for p in PARTS if p not in entry]
    extra = sorted(set(entry) - set(PARTS))
    if missing or extra:
        what = f"misses {', '.join(map(repr, missing))}" if missing else f"has unknown keys {', '.join(map(repr, extra))}"
        raise ScenarioError(f"{where} {what}; allowed keys: train, val, test")
    split = ClientSplit(**{p: _indices(entry[p], f"{where}: '{p}'") for p in PARTS})
    both = np.intersect1d(split.train, split.val)
    if both.size:
        raise ScenarioError(
            f"{where}: index {int(both[0])} is in both 'train' and 'val' (both index the train pool; they must be disjoint)"
        )
    return split


def read_partition_file(path: str | Path, num_clients: int) -> tuple[ClientSplit, ...]:
    """Every client's splits, after the checks that need no data (all but the pool sizes)."""
    path = Path(path)
    doc = _read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("clients"), list) or set(doc) != {"clients"}:
        raise ScenarioError(f"{_name(path)}: expected {SHAPE}")
    clients = doc["clients"]
    if len(clients) != num_clients:
        raise ScenarioError(
            f"{_name(path)} has {len(clients)} client{'' if len(clients) == 1 else 's'} but num-clients is "
            f"{num_clients}; they must be equal"
        )
    return tuple(_client(entry, k, _name(path)) for k, entry in enumerate(clients))


def check_ranges(splits: Sequence[ClientSplit], path: str | Path, n_train: int, n_test: int) -> None:
    """Every index inside its pool: train and val below n_train, test below n_test."""
    for k, s in enumerate(splits):
        for part, n, pool in (("train", n_train, "train"), ("val", n_train, "train"), ("test", n_test, "test")):
            idx = getattr(s, part)
            if idx[-1] >= n:
                raise ScenarioError(
                    f"{_name(path)}: client {k}: '{part}' index {int(idx[-1])} is out of range; "
                    f"the {pool} pool has {n} samples (0 <= index < {n})"
                )


def load_partition_file(path: str | Path, num_clients: int, n_train: int, n_test: int) -> tuple[ClientSplit, ...]:
    """Read and check a partition file against pools of n_train and n_test samples."""
    splits = read_partition_file(path, num_clients)
    check_ranges(splits, path, n_train, n_test)
    return splits


def partition_file_record(sc: dict[str, Any]) -> dict[str, str | None] | None:
    """{"path", "sha256"} of the scenario's partition file for the run's outputs; None without one."""
    if core(sc).data.partition != METHOD:
        return None
    path = options(sc, FilePartitionOptions).partition_file
    try:
        digest: str | None = file_digest(path)
    except ScenarioError:
        digest = None  # a deployed server need not hold the file its devices were split by
    return {"path": path, "sha256": digest}


def check_unchanged(sc: dict[str, Any], run_dir: Path) -> None:
    """A resumed run's partition file still has the content the run began with."""
    record = run_dir / RECORD_NAME
    if core(sc).data.partition != METHOD or not record.is_file():
        return
    path = options(sc, FilePartitionOptions).partition_file
    began = json.loads(record.read_text()).get("sha256")
    now = file_digest(path)
    if began and began != now:
        raise ScenarioError(
            f"--resume: {_name(path)} changed since the run began (sha256 {began[:12]}… now {now[:12]}…); "
            "restore it to resume, or start a new run"
        )


def partition_document(splits: Sequence[ClientSplit]) -> dict[str, list[dict[str, list[int]]]]:
    """The JSON document of a partition file holding `splits`."""
    return {"clients": [{p: [int(i) for i in getattr(s, p)] for p in PARTS} for s in splits]}


def write_partition_file(path: str | Path, splits: Sequence[ClientSplit]) -> Path:
    """Write `splits` (e.g. an existing run's partitions) as a partition file; returns the path."""
    from fedlth.reporting.io import write_text_atomic

    path = Path(path)
    write_text_atomic(path, json.dumps(partition_document(splits)) + "\n")
    return path
