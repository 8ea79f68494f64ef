"""Run folders and atomic writes: a crash never leaves a half-written output behind."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any


class OutputError(ValueError):
    """An output folder can't be used without losing what is there."""


def default_out_dir(kind: str, name: str, root: str | Path = "runs") -> Path:
    """runs/<kind>-<name>-<timestamp>: a new folder for every run."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(root) / f"{kind}-{name}-{stamp}"


def check_out_dir(path: Path) -> None:
    """Refuse a folder that holds anything: a run never overwrites another's outputs."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"output folder {str(path)!r} exists and is not empty; choose another --out")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomic, indented JSON write."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
