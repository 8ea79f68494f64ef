"""Ctrl-C for long runs: the first SIGINT asks the run to stop at a clean point, the second quits.

Flower's `run_simulation` runs the ServerApp in a non-daemon thread. A KeyboardInterrupt in the
main thread stops the simulation engine but not that thread, which keeps waiting for replies
that never come, and Python waits for it at exit: the old "Aborted!" then a hang. Instead the
first Ctrl-C only sets an Event; the server checks it whenever it talks to the grid and raises
RunInterrupted there, so its thread ends, Flower shuts Ray down, and the run folder keeps the
checkpoint of the last finished round.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a Ctrl-C


class RunInterrupted(Exception):
    """The user asked the run to stop (Ctrl-C); raised where the server can stop cleanly."""


def check_stop(stop: threading.Event | None) -> None:
    """Raise RunInterrupted once `stop` is set."""
    if stop is not None and stop.is_set():
        raise RunInterrupted("interrupted by the user")


@contextmanager
def stop_on_sigint(notice: str = "fedlth: stopping at a clean point (Ctrl-C again to quit at once)") -> Iterator[threading.Event]:
    """Within the block the first SIGINT sets the yielded Event and the second exits 130 at once.

    Outside the main thread (where Python can't install handlers) the Event is never set.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            os.write(2, b"\nfedlth: interrupted again; quitting now\n")
            os._exit(EXIT_INTERRUPTED)  # threads that wait on Ray would block a normal exit
        stop.set()
        os.write(2, f"\n{notice}\n".encode())

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
