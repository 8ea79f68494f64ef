"""A run's personal tickets on disk (tickets/client-<id>.pt), for re-evaluation and export."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from fedlth.reporting.io import write_bytes_atomic
from fedlth.tickets.masks import Mask, Weights


class TicketFileError(ValueError):
    """A ticket file is missing, unreadable or not a fedlth ticket."""


def ticket_path(folder: Path, pid: int) -> Path:
    """Where client `pid`'s ticket lives in a run's tickets/ folder."""
    return folder / f"client-{pid}.pt"


def save_tickets(folder: Path, tickets: dict[int, tuple[Weights, Mask]]) -> None:
    """Write each client's (weights, mask) atomically."""
    for pid, (weights, mask) in sorted(tickets.items()):
        buf = io.BytesIO()
        torch.save({"format": "fedlth-ticket-v1", "client": pid, "weights": weights, "mask": mask}, buf)
        write_bytes_atomic(ticket_path(folder, pid), buf.getvalue())


def load_ticket_file(path: Path) -> tuple[Weights, Mask]:
    """A saved ticket's weights and mask; TicketFileError says what is wrong."""
    if not path.is_file():
        raise TicketFileError(f"no ticket file {str(path)!r}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise TicketFileError(f"ticket file {str(path)!r} is unreadable: {exc}") from None
    if not isinstance(blob, dict) or blob.get("format") != "fedlth-ticket-v1":
        raise TicketFileError(f"{str(path)!r} is not a fedlth ticket file")
    return blob["weights"], blob["mask"]
