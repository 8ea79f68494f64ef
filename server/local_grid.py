"""A Grid that runs the ClientApp in this process, one node after another: `fedlth run`'s
in-process simulation, and fault injection in tests (a node can crash, go silent or tamper
with its reply)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from server.directory import OffsetIds, known_partitions

# (message, reply) -> the reply to deliver, or None for a node that never answers
Tamper = Callable[[Message, Message], Message | None]


FIRST_NODE = 1001


class LocalGrid:
    """Nodes 1001, 1002, … hold partitions 0, 1, …; replies are computed on push.

    `known_partitions` (fedlth run): the server may read the node -> partition map from the
    grid instead of asking every node (a message per client), and a node's Context is made
    when it first gets a message, so a federation of 100,000 costs what its used clients do.
    Otherwise (tests of identification) every node is built up front and must be asked;
    tests may then replace nodes in `contexts`.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        state_dir: Path | None = None,
        tamper: dict[int, Tamper] | None = None,
        known_partitions: bool = False,
    ) -> None:
        # Message() reads the sender's identity from Flower's process-wide TaskIdentity.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.app = client_app
        self.tamper = tamper or {}
        self.num_nodes, self.state_dir, self.known = num_nodes, state_dir, known_partitions
        self.contexts: dict[int, Context] = {}  # known_partitions: the nodes messaged so far
        if not known_partitions:
            for node in range(FIRST_NODE, FIRST_NODE + num_nodes):
                self.contexts[node] = self._new_context(node)
        self._replies: dict[str, Message] = {}
        self._on_reply: Callable[[], None] | None = None

    def _new_context(self, node: int) -> Context:
        config: dict[str, Any] = {"partition-id": node - FIRST_NODE, "num-partitions": self.num_nodes}
        if self.state_dir is not None:
            config["state-dir"] = str(self.state_dir)
        return Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})

    def _context(self, node: int) -> Context:
        """The node's Context (known_partitions: made on first use); KeyError for no such node."""
        if node not in self.contexts and self.known and FIRST_NODE <= node < FIRST_NODE + self.num_nodes:
            self.contexts[node] = self._new_context(node)
        return self.contexts[node]

    def known_partitions(self) -> tuple[OffsetIds, OffsetIds] | None:
        """(partition -> node, node -> partition), or None where the nodes must be asked."""
        return known_partitions(FIRST_NODE, self.num_nodes) if self.known else None

    def set_reply_hook(self, on_reply: Callable[[], None]) -> None:
        """Called after each reply is computed: replies come during the push here, not the pull."""
        self._on_reply = on_reply

    def restart_node(self, node: int) -> None:
        """Forget a node's in-memory state, as a killed and restarted SuperNode would."""
        old = self._context(node)
        self.contexts[node] = Context(run_id=1, node_id=node, node_config=dict(old.node_config), state=RecordDict(), run_config={})

    def get_node_ids(self) -> Iterable[int]:
        if self.known:  # a range: O(1) to make, however many nodes
            return range(FIRST_NODE, FIRST_NODE + self.num_nodes)
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node = msg.metadata.dst_node_id
            try:
                reply = self.app(msg, self._context(node))
            except Exception as exc:  # what a real engine does with a crashing ClientApp
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=repr(exc)), reply_to=msg)
            pid = int(self._context(node).node_config["partition-id"])
            if pid in self.tamper:
                reply = self.tamper[pid](msg, reply)
            if reply is not None:
                self._replies[msg.metadata.message_id] = reply
            if self._on_reply is not None:
                self._on_reply()
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]
