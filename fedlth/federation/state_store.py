"""A client's ticket on disk, so a deployed node keeps it across restarts.

One file per client, replaced atomically after every round it trains. It holds the ticket the
client has now (and the server round that made it) and the one it had before that round: a
server resumed from a checkpoint may send the same round again, and the client must then
start from the ticket it had before, not train that round twice.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import OrderedDict
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from fedlth.federation.algorithms import ClientState
from fedlth.reporting.io import wait_for_writes, write_bytes_atomic, write_bytes_later

log = logging.getLogger("fedlth")
FORMAT = "fedlth-client-state-v2"


def state_tag(sc: dict[str, Any], partition_id: int, run_id: int | str | None = None) -> str:
    """What a state file must match to be this client's: data, model, algorithm, seed, and
    the run lineage (Flower's run id, or the server's `run-key`, which a resumed run keeps):
    the server holds the other half of the ticket, and a new run starts from θ0."""
    keys = ("dataset", "partition", "num-clients", "seed", "model", "algorithm")
    tag = "|".join(f"{k}={sc[k]}" for k in keys) + f"|partition-id={partition_id}"
    return tag if run_id is None else f"{tag}|run={run_id}"


def mask_digest(mask: dict[str, torch.Tensor] | None) -> str:
    """A short fingerprint of a mask (names, shapes, bits), for log lines that must show which
    ticket a node holds."""
    h = hashlib.sha256()
    for name in sorted(mask or {}):
        m = mask[name].to(torch.bool).contiguous()
        h.update(f"{name}{tuple(m.shape)}".encode())
        h.update(m.numpy().tobytes())
    return h.hexdigest()[:12]


def _blob(state: ClientState, round_: int) -> dict[str, Any]:
    return {"mask": state.mask, "personal": state.personal, "candidate": state.candidate, "rounds": state.rounds,
            "round": int(round_), "base": state.base, "base_mask": state.base_mask, "base_version": int(state.base_version)}


def write_state_file(
    path: Path, state: ClientState, tag: str, round_: int = 0, previous: tuple[ClientState, int] | None = None,
    durable: bool = True, background: bool = False,
) -> None:
    """Write the ticket made in server round `round_` (and the one from before it) atomically:
    a crash mid-write leaves the previous file intact. `durable`: fsync it (False: whoever
    checkpoints the run syncs the disk first, see fedlth.reporting.io.sync_disks). `background`: this
    process's writer thread writes it while the caller goes on (fedlth.reporting.io.write_bytes_later)."""
    buf = io.BytesIO()
    blob = {"format": FORMAT, "tag": tag, **_blob(state, round_)}
    blob["previous"] = _blob(*previous) if previous is not None else None
    torch.save(blob, buf)
    data = buf.getvalue()
    if background:
        write_bytes_later(path, data, durable=durable)
    else:
        wait_for_writes(path)  # a write queued earlier must not land after this one
        write_bytes_atomic(path, data, durable=durable)
    _remember(path, data, tag, [(state, round_), *([previous] if previous is not None else [])])


# The last ticket file this process wrote or read, per path, with its bytes: a simulated client
# reads its file at every message, and a file whose bytes are those cached needs no torch.load.
CACHE_BYTES = 128 * 2**20  # per process: a federation still costs disk, not RAM
_cache: OrderedDict[str, tuple[bytes, str, list[tuple[ClientState, int]], int]] = OrderedDict()


def _copy(state: ClientState) -> ClientState:
    """Fresh tensors: whoever gets a cached ticket may not change the cache's."""
    def dup(d: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        return None if d is None else {k: v.clone() for k, v in d.items()}
    if all(getattr(state, f) is None for f in _TENSOR_FIELDS):
        return state  # nothing to copy: a frozen state without tensors is shared safely (FedAvg's)
    # every tensor field, whatever ClientState grows (wire-download = delta keeps a base)
    return replace(state, **{f.name: dup(getattr(state, f.name)) for f in fields(state) if f.name in _TENSOR_FIELDS})


_TENSOR_FIELDS = ("mask", "personal", "candidate", "base", "base_mask")


def holds_tensors(state: ClientState | None) -> bool:
    """True when `state` keeps a ticket, a model or a base: something a restarted client restores."""
    return state is not None and any(getattr(state, f) is not None for f in _TENSOR_FIELDS)


def _remember(path: Path, data: bytes, tag: str, entries: list[tuple[ClientState, int]]) -> None:
    key = str(path)
    _cache.pop(key, None)
    size = len(data) + sum(v.nbytes for st, _ in entries for f in _TENSOR_FIELDS if (d := getattr(st, f)) for v in d.values())
    if size > CACHE_BYTES:
        return
    _cache[key] = (data, tag, [(_copy(st), r) for st, r in entries], size)
    while sum(x[3] for x in _cache.values()) > CACHE_BYTES:
        _cache.popitem(last=False)  # the least recently used


def _recall(path: Path, data: bytes, tag: str) -> list[tuple[ClientState, int]] | None:
    hit = _cache.get(str(path))
    if hit is None or hit[1] != tag or hit[0] != data:
        return None
    _cache.move_to_end(str(path))
    return [(_copy(st), r) for st, r in hit[2]]


def _tensors(value: Any, what: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise ValueError(f"{what} is not a name -> tensor mapping")
    if dtype is not None and any(v.dtype != dtype for v in value.values()):
        raise ValueError(f"{what} is not boolean")
    return value


def _entry(blob: Any) -> tuple[ClientState, int]:
    if not isinstance(blob, dict):
        raise ValueError("a ticket entry is not a mapping")
    rounds, round_ = blob["rounds"], blob["round"]
    for name, value in (("rounds", rounds), ("round", round_)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} is {value!r}")
    state = ClientState(
        mask=_tensors(blob["mask"], "mask", torch.bool), personal=_tensors(blob["personal"], "personal"),
        candidate=_tensors(blob["candidate"], "candidate", torch.bool), rounds=rounds,
        # wire-download = delta (files written before it: none, so the next download is full)
        base=_tensors(blob.get("base"), "base"), base_mask=_tensors(blob.get("base_mask"), "base mask", torch.bool),
        base_version=int(blob.get("base_version", -1)),
    )
    return state, round_


def read_state_file(path: Path, tag: str, before: int | None = None) -> tuple[ClientState, int] | None:
    """The saved ticket and the server round that made it, or None (with a log line saying why)
    when the file is missing, corrupt or foreign. `before`: the newest ticket made before that
    round (a round the server sends again after resuming from a checkpoint)."""
    wait_for_writes(path)
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("fedlth: ignoring unreadable state file %s (%s: %s); starting from the server's copy", path, type(exc).__name__, exc)
        return None
    entries = _recall(path, data, tag)
    if entries is None:
        try:
            blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != FORMAT:
                raise ValueError("not a fedlth client-state file")
            if blob.get("tag") != tag:
                log.warning("fedlth: ignoring state file %s: it belongs to %r, not %r; starting from the server's copy", path, blob.get("tag"), tag)
                return None
            entries = [_entry(blob)] + ([_entry(blob["previous"])] if blob.get("previous") is not None else [])
        except Exception as exc:  # any unreadable file means: start clean from the server's copy
            log.warning("fedlth: ignoring unreadable state file %s (%s: %s); starting from the server's copy", path, type(exc).__name__, exc)
            return None
        _remember(path, data, tag, entries)
    for state, round_ in entries:
        if before is None or round_ < before:
            return state, round_
    log.warning("fedlth: state file %s holds no ticket from before round %s; starting from the server's copy", path, before)
    return None
