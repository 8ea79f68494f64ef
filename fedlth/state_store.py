"""A client's ticket on disk, so a deployed node keeps it across restarts."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from fedlth.algorithms import ClientState
from fedlth.io import write_bytes_atomic

log = logging.getLogger("fedlth")
FORMAT = "fedlth-client-state-v1"


def state_tag(sc: dict[str, Any], partition_id: int) -> str:
    """What a state file must match to be this client's: data, model, algorithm, seed."""
    keys = ("dataset", "partition", "num-clients", "seed", "model", "algorithm")
    return "|".join(f"{k}={sc[k]}" for k in keys) + f"|partition-id={partition_id}"


def save_state(path: Path, state: ClientState, tag: str) -> None:
    """Write the ticket atomically: a crash mid-write leaves the previous file intact."""
    buf = io.BytesIO()
    torch.save(
        {"format": FORMAT, "tag": tag, "mask": state.mask, "personal": state.personal,
         "candidate": state.candidate, "rounds": state.rounds},
        buf,
    )
    write_bytes_atomic(path, buf.getvalue())


def load_state(path: Path, tag: str) -> ClientState | None:
    """The saved ticket, or None (with a log line saying why) when missing, corrupt or foreign."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError("not a fedlth client-state file")
    except Exception as exc:  # any unreadable file means: start clean from the server's copy
        log.warning("fedlth: ignoring unreadable state file %s (%s); starting from the server's copy", path, exc)
        return None
    if blob["tag"] != tag:
        log.warning("fedlth: ignoring state file %s: it belongs to %r, not %r", path, blob["tag"], tag)
        return None
    return ClientState(mask=blob["mask"], personal=blob["personal"], candidate=blob["candidate"], rounds=int(blob["rounds"]))
