"""fedlth: federated and robust lottery tickets on Flower."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["__version__", "load_ticket"]

try:
    __version__ = version("fedlth")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    # Lazy, so `import fedlth` stays cheap: torch loads only when a ticket is.
    if name == "load_ticket":
        from fedlth.tickets.export import load_ticket

        return load_ticket
    raise AttributeError(f"module 'fedlth' has no attribute {name!r}")
