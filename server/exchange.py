"""Push a round's messages and yield the replies as they arrive, until all are in or time is up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedlth.reporting.interrupt import check_stop

FIRST_POLL_SECONDS = 0.02
MAX_POLL_SECONDS = 0.5


def stream_replies(grid: Grid, messages: Iterable[Message], timeout: float) -> Iterator[tuple[int, Message]]:
    """Yield (node the instruction went to, its reply) once per reply; stop when every message
    is answered or `timeout` seconds pass.

    Flower's `send_and_receive` returns only when all replies are in, and its gRPC grid
    polls every 3 s; polling here starts fast and backs off, so replies are folded while
    slower clients still train and a short round costs no fixed 3 s. The node comes from our
    own instruction: the SuperLink answers for a node it lost with its own id as the sender.
    """
    messages = list(messages)
    pending = set(grid.push_messages(messages))
    dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # ids set by the push
    deadline = time.monotonic() + timeout
    poll = FIRST_POLL_SECONDS
    while pending:
        got = list(grid.pull_messages(pending))
        for reply in got:
            pending.discard(reply.metadata.reply_to_message_id)
            yield dst_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id), reply
        if not pending or time.monotonic() >= deadline:
            return
        poll = FIRST_POLL_SECONDS if got else min(poll * 2, MAX_POLL_SECONDS)
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


class StoppableGrid:
    """A grid that raises RunInterrupted on its next use once `stop` is set.

    The server polls the grid at least every MAX_POLL_SECONDS while a round runs and between
    rounds, so a Ctrl-C takes effect within a second, wherever the round loop is waiting.
    """

    def __init__(self, grid: Grid, stop: threading.Event) -> None:
        self._grid, self._stop = grid, stop

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push, unless the run was asked to stop."""
        check_stop(self._stop)
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull, unless the run was asked to stop."""
        check_stop(self._stop)
        return self._grid.pull_messages(message_ids)

    def get_node_ids(self) -> Iterable[int]:
        """The grid's nodes, unless the run was asked to stop."""
        check_stop(self._stop)
        return self._grid.get_node_ids()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
