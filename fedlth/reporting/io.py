"""Run folders and atomic writes: a crash never leaves a half-written output behind."""

from __future__ import annotations

import atexit
import itertools
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from fedlth.config.core_options import core


class OutputError(ValueError):
    """An output folder can't be used without losing what is there."""


def default_out_dir(kind: str, name: str, root: str | Path = "runs") -> Path:
    """runs/<kind>-<name>-<timestamp>: a new folder for every run."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(root) / f"{kind}-{name}-{stamp}"


def default_run_dir(sc: dict, kind: str = "run", root: str | Path = "runs") -> Path:
    """runs/<kind>-<scenario>-<algorithm>-s<seed>-<timestamp>: the folder says what ran."""
    c = core(sc)
    parts = [p for p in (c.general.name, c.federation.algorithm if kind == "run" else None) if p]
    return default_out_dir(kind, "-".join([*parts, f"s{c.general.seed}"]), root)


def check_out_dir(path: Path) -> None:
    """Refuse a folder that holds anything: a run never overwrites another's outputs."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(f"output folder {str(path)!r} exists and is not empty; choose another --out")


def file_mode() -> int:
    """The mode open() gives a new file: 0o666 less the umask (0o644 under the usual 022).

    mkstemp makes 0o600 files, which would hide a run's outputs from the group; the umask is
    read from /proc (os.umask can only be read by setting it, process-wide, racing threads).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


_temp_names = itertools.count()  # with the pid: a temporary name no other writer uses (next() is atomic)


def _open_temp(path: Path, mode: int) -> tuple[int, str]:
    """A new file beside `path` for writing, created with `mode` less the umask (what open()
    gives for 0o666); a name left by a killed process with this pid is skipped."""
    while True:
        tmp = f"{path.parent}/.{path.name}.{os.getpid()}.{next(_temp_names)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode), tmp
        except FileExistsError:
            continue


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None, durable: bool = True) -> None:
    """Write to a temporary file beside `path`, then rename over it; the file gets `mode`
    (default: what open() would give; private keys pass 0o600) before it appears.
    `durable`: on the disk (fsync) before the rename; False where the caller syncs later
    (a killed process loses nothing either way: only an OS crash can lose unsynced data)."""
    # Few system calls, no Python file object: simulated clients write a ticket file per
    # message, and each call here costs the caller (and a thread waiting for the GIL) time.
    try:
        fd, tmp = _open_temp(path, 0o666 if mode is None else mode)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(path, 0o666 if mode is None else mode)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# One writer thread per process, first in first out: each write (fsync included) is on the disk
# before the next starts, so a crash leaves a prefix of the writes, as if they had been made
# in the caller's thread, while the caller computes. In-process simulations use it for the
# clients' ticket files and the server's checkpoints.
#
# A write is held until the caller says it starts a long computation (start_writes: a client
# about to train): the thread takes the GIL back after each of its system calls, and while
# the caller runs Python each hand-over costs the caller; during torch's kernels it costs nothing.
MAX_PENDING_WRITES = 1024  # then wait: the bytes in the queue stay bounded
_writer: ThreadPoolExecutor | None = None
_writes: dict[str, Future] = {}
_held: list[tuple[Path, bytes, int | None, bool]] = []  # queued, not yet handed to the thread
_writes_lock = threading.Lock()


def write_bytes_later(path: Path, data: bytes, mode: int | None = None, durable: bool = True) -> None:
    """write_bytes_atomic(path, data, ...) in this process's writer thread, after every write
    queued before it, once start_writes() or wait_for_writes() is called (or the process ends);
    wait_for_writes() waits for it (and re-raises its error)."""
    if len(_writes) + len(_held) >= MAX_PENDING_WRITES:
        wait_for_writes()
    with _writes_lock:
        _held.append((path, data, mode, durable))


def start_writes() -> None:
    """Hand the held writes, in order, to the writer thread (see write_bytes_later)."""
    global _writer
    with _writes_lock:
        if not _held:
            return
        _writer = _writer or ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedlth-writer")
        for path, data, mode, durable in _held:
            _writes[str(path)] = _writer.submit(write_bytes_atomic, path, data, mode, durable)
        _held.clear()


def wait_for_writes(path: Path | None = None) -> None:
    """Block until the queued writes (up to the last one of `path`, else all) are done; a write
    that failed raises here."""
    if path is None or any(str(held[0]) == str(path) for held in _held):
        start_writes()  # (another file's held writes stay held: see write_bytes_later)
    with _writes_lock:
        pending = [_writes.pop(str(path), None)] if path is not None else [_writes.pop(k) for k in list(_writes)]
    for future in pending:
        if future is not None:
            future.result()


@atexit.register
def _write_held() -> None:
    # a process that ends (Ctrl-C included) writes what it held: its thread has finished the
    # writes handed to it by now (Python joins it first), so the order stays
    with _writes_lock:
        held, _held[:] = list(_held), []
    for path, data, mode, durable in held:
        write_bytes_atomic(path, data, mode, durable)


def sync_disks() -> None:
    """Flush every file written without fsync to the disk (one call for a round's many files:
    an fsync each costs milliseconds, most of a small model's message)."""
    if hasattr(os, "sync"):
        os.sync()


def write_text_atomic(path: Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomic, indented JSON write."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
