"""The fedlth strategy: per-client subnets down, masked aggregation up, bytes counted."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedlth.aggregate import MaskedMeanStream, Update, get_aggregator, validate_update
from fedlth.algorithms import get_algorithm
from fedlth.masks import Mask, Weights, is_subset
from fedlth.records import (
    config_to_record,
    decode_record,
    encode_record,
    metrics_from_record,
    record_bytes,
    weights_to_record,
)
from server.exchange import stream_replies


class TicketStrategy(Strategy):
    """Sends each sampled client global ⊙ its mask and averages each weight over its keepers."""

    def __init__(self, sc: dict[str, Any], initial: Weights) -> None:
        self.sc = sc
        self.alg = get_algorithm(sc["algorithm"])
        self.global_weights = initial
        self.shapes = {k: tuple(v.shape) for k, v in initial.items()}
        self.masks: dict[int, Mask] = {}  # partition id -> the last mask that client reported
        self.node_of: dict[int, int] = {}  # partition id -> Flower node id
        self.pid_of: dict[int, int] = {}  # Flower node id -> partition id
        self.dense_bytes = record_bytes(encode_record(initial, None))
        self.max_update_bytes = sc["max-update-bytes"] or 2 * self.dense_bytes
        self.aggregator = get_aggregator(sc["aggregation"], sc["trim-fraction"])
        # sent with every message: "run-key" names this run's lineage (a resumed run keeps it),
        # "state-dir" where simulated clients keep their tickets (fedlth run only)
        self.run_config: dict[str, str] = {}
        self.open_round(0, [])
        self.rng = random.Random(sc["seed"])
        self.scenario_record = config_to_record(sc)
        # what the last call of each phase saw, for the run log
        self.train_log: dict[int, dict[str, Any]] = {}
        self.eval_log: dict[int, dict[str, Any]] = {}
        self.rejected: list[dict[str, Any]] = []
        self.sent_bytes: dict[int, int] = {}
        self.tickets: dict[int, tuple[Weights, Mask]] = {}  # the personal tickets sent after the last round
        self.ticket_bytes: dict[int, int] = {}

    # --- who is who ----------------------------------------------------------------------

    def identify(self, grid: Grid, timeout: float) -> None:
        """Ask every node not yet known for its partition id: node ids are random, partition
        ids are not (a SuperNode restarted without authentication comes back as a new node)."""
        nodes = sorted(n for n in grid.get_node_ids() if n not in self.pid_of)
        if not nodes:
            return
        msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
        for node, reply in stream_replies(grid, msgs, timeout):
            if reply.has_error():
                log(WARNING, "node %s did not identify itself: %s", node, reply.error.reason)
                continue
            pid = int(reply.content["metrics"]["partition-id"])
            if pid in self.node_of and self.node_of[pid] != node:
                # a restarted SuperNode registers under a new node id: the newest one answers
                log(WARNING, "partition %s is held by nodes %s and %s; using %s", pid, self.node_of[pid], node, node)
                self.pid_of.pop(self.node_of[pid], None)
            self.node_of[pid] = node
            self.pid_of[node] = pid

    def sample(self) -> list[int]:
        """This round's clients: a seeded draw from the sorted partition ids."""
        ids = sorted(self.node_of)
        k = min(self.sc["clients-per-round"], len(ids))
        return sorted(self.rng.sample(ids, k))

    # --- messages ------------------------------------------------------------------------------

    def _payload(self, pid: int) -> ArrayRecord:
        """What client `pid` receives: nothing (local), its subnet, or the dense global."""
        if not self.alg.uploads:
            return ArrayRecord()
        mask = self.masks.get(pid) if self.alg.masked else None
        # both ends know the model's shapes: no shape arrays on the wire
        return encode_record(self.global_weights, mask, with_shapes=False)

    def _messages(self, pids: Iterable[int], server_round: int, kind: str, **config: int | str) -> list[Message]:
        out = []
        self.sent_bytes = {}
        for pid in pids:
            arrays = self._payload(pid)
            self.sent_bytes[pid] = record_bytes(arrays)
            content = RecordDict(
                {"arrays": arrays, "config": ConfigRecord({"server-round": server_round, **self.run_config, **config}), "scenario": self.scenario_record}
            )
            out.append(Message(content, dst_node_id=self.node_of[pid], message_type=kind))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """One message per sampled client, each with its own subnet; opens the round for replies."""
        pids = self.sample()
        self.open_round(server_round, pids)
        return self._messages(pids, server_round, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """Every client scores its personal ticket (and sends it, after the last round)."""
        send = int(server_round == self.sc["rounds"] and self.sc["save-tickets"])
        return self._messages(sorted(self.node_of), server_round, MessageType.EVALUATE, **{"send-ticket": send})

    # --- replies -------------------------------------------------------------------------------

    def open_round(self, server_round: int, pids: Iterable[int]) -> None:
        """Expect replies from `pids`; a fresh running sum (mean) or list (robust rules)."""
        self.round = server_round
        self.train_log, self.rejected, self.accepted, self.dropped = {}, [], [], []
        self._expected = sorted(pids)
        self._next = 0  # replies are folded in client-id order: sums are bit-reproducible
        self._seen: set[int] = set()
        self._waiting: dict[int, Update | None] = {}  # replied, not yet folded (None: nothing to fold)
        mean = self.sc["aggregation"] == "mean"
        self._stream = MaskedMeanStream(self.global_weights) if mean else None
        self._kept: list[Update] = []

    def fold(self, reply: Message, node: int | None = None) -> None:
        """Validate one reply (to the instruction sent to `node`; default: its sender) and fold
        it in as soon as every lower client id is settled."""
        node = reply.metadata.src_node_id if node is None else node
        if not reply.has_error() and reply.metadata.src_node_id != node:
            self._reject(self.pid_of.get(node), node, f"reply sent by node {reply.metadata.src_node_id}, not by node {node}")
            return
        pid = self.pid_of.get(node)
        if pid is None or pid not in self._expected or pid in self._seen:
            self._reject(pid, node, "reply from a client not sampled this round, or a second reply")
            return
        self._seen.add(pid)
        self._waiting[pid] = self._update_of(pid, node, reply)
        self._advance()

    def _advance(self) -> None:
        while self._next < len(self._expected) and self._expected[self._next] in self._waiting:
            pid = self._expected[self._next]
            update = self._waiting.pop(pid)
            self._next += 1
            if update is None:
                continue
            try:
                if self._stream is not None:
                    self._stream.add(update, client=pid)
                else:
                    validate_update(self.global_weights, update, client=pid)  # robust rules fold at the end
                    self._kept.append(update)
            except ValueError as exc:
                self._reject(pid, self.node_of.get(pid, -1), str(exc))
                continue
            self.accepted.append(pid)
            if self.alg.masked:
                self.masks[pid] = update.mask

    def _update_of(self, pid: int, node: int, reply: Message) -> Update | None:
        """The reply as an Update, or None (rejected with a logged reason, or nothing uploaded)."""
        if reply.has_error():
            self._reject(pid, node, f"client error: {reply.error.reason}")
            return None
        if "metrics" not in reply.content.metric_records:
            self._reject(pid, node, "no metrics")
            return None
        metrics = metrics_from_record(reply.content["metrics"])
        if int(metrics.get("partition-id", -1)) != pid:
            self._reject(pid, node, f"claims partition {metrics.get('partition-id')} but node {node} holds {pid}")
            return None
        arrays = reply.content.array_records.get("arrays")
        metrics["upload_bytes"] = record_bytes(arrays) if arrays is not None else 0
        metrics["download_bytes"] = self.sent_bytes.get(pid, 0)
        self.train_log[pid] = metrics
        if not self.alg.uploads:
            return None
        if arrays is None or len(arrays) == 0:
            self._reject(pid, node, "no weights in the reply")
            return None
        if metrics["upload_bytes"] > self.max_update_bytes:
            self._reject(pid, node, f"payload of {metrics['upload_bytes']} bytes exceeds the limit of {self.max_update_bytes}")
            return None
        n = metrics.get("num-examples")
        if not isinstance(n, int | float) or isinstance(n, bool) or not float(n).is_integer() or n <= 0:
            self._reject(pid, node, f"num-examples must be a whole number > 0; got {n!r}")
            return None
        n = int(n)
        try:
            weights, mask = decode_record(arrays, self.shapes)
        except ValueError as exc:
            self._reject(pid, node, str(exc))
            return None
        reason = self._check(pid, weights, mask)
        if reason is not None:
            self._reject(pid, node, reason)
            return None
        return Update(weights, mask, n)

    def _reject(self, pid: int | None, node: int, reason: str) -> None:
        log(WARNING, "round %s: rejected the update of client %s (node %s): %s", self.round, pid, node, reason)
        self.rejected.append({"round": self.round, "client": pid, "reason": reason})

    def _check(self, pid: int, weights: Weights, mask: Mask) -> str | None:
        """Why an update can't be aggregated, or None."""
        ref = self.global_weights
        if set(weights) != set(ref):
            return f"tensor names differ from the model's: {sorted(set(weights) ^ set(ref))}"
        for k, w in weights.items():
            if w.shape != ref[k].shape or w.dtype != ref[k].dtype:
                return f"tensor {k!r} is {tuple(w.shape)} {w.dtype}; expected {tuple(ref[k].shape)} {ref[k].dtype}"
            if w.dtype.is_floating_point and not bool(torch.isfinite(w).all()):
                return f"tensor {k!r} has NaN or Inf values"
        if self.alg.masked:
            if not mask:
                return "no mask"
            old = self.masks.get(pid)
            if old is not None and (old.keys() != mask.keys() or not is_subset(mask, old)):
                return "mask revives weights it had pruned"
        return None

    def finish_round(self) -> bool:
        """Leave out clients that never replied; aggregate if at least `min-clients` updates are valid."""
        self.dropped = [pid for pid in self._expected if pid not in self._seen]
        for pid in self.dropped:
            log(WARNING, "round %s: client %s sent no reply within %.0f s; the round goes on without it",
                self.round, pid, self.sc["round-timeout"])
            self._waiting[pid] = None
        self._advance()
        if not self.alg.uploads:
            return False
        if len(self.accepted) < self.sc["min-clients"]:
            log(WARNING, "round %s: %d valid updates, fewer than min-clients = %d; the global model is kept",
                self.round, len(self.accepted), self.sc["min-clients"])
            return False
        if self._stream is not None:
            self.global_weights = self._stream.result()
        else:
            self.global_weights = self.aggregator(self.global_weights, self._kept)
        self._stream, self._kept = None, []
        return True

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook: fold every reply of the round opened by configure_train, then aggregate."""
        for reply in replies:
            self.fold(reply)
        aggregated = self.finish_round()
        metrics = MetricRecord({"accepted": len(self.accepted), "rejected": len(self.rejected), "aggregated": int(aggregated)})
        return weights_to_record(self.global_weights), metrics

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly: global weights, known masks, sampler state."""
        return {"global": self.global_weights, "masks": self.masks, "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by state_dict()."""
        self.global_weights = state["global"]
        self.masks = state["masks"]
        self.rng.setstate(rng_state_tuple(state["rng"]))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Collect every client's scores; the run log turns them into summaries."""
        self.eval_log = {}
        for reply in replies:
            if not reply.has_error() and "ticket" in reply.content.array_records:
                pid = int(reply.content["metrics"]["partition-id"])
                try:
                    self.tickets[pid] = decode_record(reply.content["ticket"], self.shapes)
                    self.ticket_bytes[pid] = record_bytes(reply.content["ticket"])
                except ValueError as exc:
                    log(WARNING, "round %s: client %s sent an unreadable ticket: %s", server_round, pid, exc)
            if reply.has_error():
                log(WARNING, "round %s: evaluation failed on node %s: %s", server_round, reply.metadata.src_node_id, reply.error.reason)
                continue
            metrics = metrics_from_record(reply.content["metrics"])
            metrics["download_bytes"] = self.sent_bytes.get(int(metrics["partition-id"]), 0)
            self.eval_log[int(metrics["partition-id"])] = metrics
        if not self.eval_log:
            return None
        accs = [m["accuracy"] for m in self.eval_log.values()]
        return MetricRecord({"accuracy-mean": sum(accs) / len(accs)})

    def summary(self) -> None:
        """Flower's hook to log the configuration."""
        log(INFO, "fedlth strategy: %s, %s clients, %s per round", self.alg.name, self.sc["num-clients"], self.sc["clients-per-round"])


def rng_state_tuple(state: Sequence[Any]) -> tuple[Any, ...]:
    """random.setstate wants tuples; a checkpoint may hand back lists."""
    version, internal, gauss = state
    return (int(version), tuple(int(x) for x in internal), gauss)
