"""Provenance: what produced a result (versions, code, command, machine, time), for every output."""

from __future__ import annotations

import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fedlth import __version__

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the checkout, when fedlth runs from one


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(root: Path, *args: str) -> str | None:
    """One git command's output in `root`, or None when git or the checkout is missing."""
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(root: Path = PACKAGE_ROOT) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout fedlth runs from; (None, None) when it is not one.

    Dirty means tracked files differ from the commit (untracked files are not counted).
    """
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != root.resolve():  # e.g. site-packages inside another repo
        return None, None
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None or commit is None else bool(status))


def command_line(argv: Sequence[str] | None = None, program: str | None = None) -> str:
    """The command as typed, shell-quoted: argv with the program shortened to its name, or
    replaced by `program` (the fedlth CLI says "fedlth" however Python was started)."""
    args = list(sys.argv if argv is None else argv) or [""]
    args[0] = program or Path(args[0]).name
    return shlex.join(args)


def provenance(
    argv: Sequence[str] | None = None, started: datetime | None = None, program: str | None = None
) -> dict[str, Any]:
    """The provenance record: fedlth, flwr, torch and Python versions, git commit and dirty flag
    (None outside a git checkout), command line, host name and start time (UTC, ISO 8601)."""
    commit, dirty = git_state()
    return {
        "fedlth": __version__,
        "flwr": package_version("flwr"),
        "torch": package_version("torch"),
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": command_line(argv, program),
        "host": socket.gethostname(),
        "started": (started or datetime.now(UTC)).isoformat(timespec="seconds"),
    }


def provenance_markdown(prov: Mapping[str, Any]) -> list[str]:
    """The record as a markdown section (lines)."""
    commit = prov.get("git_commit")
    code = "not a git checkout" if commit is None else f"git {commit[:12]}{', uncommitted changes' if prov.get('git_dirty') else ''}"
    lines = [
        "## Provenance",
        "",
        f"fedlth {prov['fedlth']} ({code}), flwr {prov['flwr']}, torch {prov['torch']}, Python {prov['python']}; "
        f"host {prov['host']}, started {prov['started']}.",
        "",
        f"    {prov['command']}",
        "",
    ]
    first = prov.get("resumed_from")
    if first:
        lines += [f"Resumed a run started {first.get('started')} by:", "", f"    {first.get('command')}", ""]
    return lines
