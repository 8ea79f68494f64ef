"""A Grid that runs the ClientApp in this process, one node after another: for tests and
fault injection (a node can crash, go silent or tamper with its reply)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

# (message, reply) -> the reply to deliver, or None for a node that never answers
Tamper = Callable[[Message, Message], Message | None]


class LocalGrid:
    """Nodes 1001, 1002, … hold partitions 0, 1, …; replies are computed on push."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        state_dir: Path | None = None,
        tamper: dict[int, Tamper] | None = None,
    ) -> None:
        # Message() reads the sender's identity from Flower's process-wide TaskIdentity.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.app = client_app
        self.tamper = tamper or {}
        self.contexts: dict[int, Context] = {}
        for pid in range(num_nodes):
            config: dict[str, Any] = {"partition-id": pid, "num-partitions": num_nodes}
            if state_dir is not None:
                config["state-dir"] = str(state_dir)
            self.contexts[1001 + pid] = Context(run_id=1, node_id=1001 + pid, node_config=config, state=RecordDict(), run_config={})
        self._replies: dict[str, Message] = {}
        self._on_reply: Callable[[], None] | None = None

    def set_reply_hook(self, on_reply: Callable[[], None]) -> None:
        """Called after each reply is computed: replies come during the push here, not the pull."""
        self._on_reply = on_reply

    def restart_node(self, node: int) -> None:
        """Forget a node's in-memory state, as a killed and restarted SuperNode would."""
        old = self.contexts[node]
        self.contexts[node] = Context(run_id=1, node_id=node, node_config=dict(old.node_config), state=RecordDict(), run_config={})

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            node = msg.metadata.dst_node_id
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as exc:  # what a real engine does with a crashing ClientApp
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=repr(exc)), reply_to=msg)
            pid = int(self.contexts[node].node_config["partition-id"])
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
