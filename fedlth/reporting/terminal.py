"""A quiet terminal: colour only on a terminal (and never under NO_COLOR), no third-party progress bars."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TextIO


def use_colour(stream: TextIO, env: dict[str, str] | None = None) -> bool:
    """ANSI colour only on a terminal, and not when NO_COLOR is set to anything non-empty (no-color.org)."""
    env = os.environ if env is None else env
    if env.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def flower_console(stream: TextIO | None = None) -> None:
    """Flower's console handler colours every level name with ANSI codes, piped or not; keep the
    colour for a terminal only. Touches only Flower's own handler, never its level or filters."""
    import sys

    from flwr.supercore.logger import ConsoleHandler

    for handler in logging.getLogger("flwr").handlers:
        if isinstance(handler, ConsoleHandler):
            handler.colored = use_colour(stream or handler.stream or sys.stderr)


@contextlib.contextmanager
def no_datasets_progress_bars() -> Iterator[None]:
    """Hugging Face datasets draws tqdm bars for its table operations (partitioning calls them);
    fedlth shows its own progress, so they are off for the block and as they were after it."""
    try:
        from datasets.utils import logging as ds_logging
    except ImportError:  # a deployed node without the `sim` extra partitions nothing
        yield
        return
    was_on = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            ds_logging.enable_progress_bar()
