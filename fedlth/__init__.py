"""fedlth: federated and robust lottery tickets on Flower."""

from __future__ import annotations

from typing import Any

__all__ = ["load_ticket"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import fedlth` stays cheap: torch loads only when a ticket is.
    if name == "load_ticket":
        from fedlth.export import load_ticket

        return load_ticket
    raise AttributeError(f"module 'fedlth' has no attribute {name!r}")
