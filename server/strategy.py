"""The fedlth strategy: per-client subnets down, masked aggregation up, bytes counted."""

from __future__ import annotations

import random
from collections.abc import Iterable
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedlth.aggregate import Update, masked_mean
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


class TicketStrategy(Strategy):
    """Sends each sampled client global ⊙ its mask and averages each weight over its keepers."""

    def __init__(self, sc: dict[str, Any], initial: Weights) -> None:
        self.sc = sc
        self.alg = get_algorithm(sc["algorithm"])
        self.global_weights = initial
        self.shapes = {k: tuple(v.shape) for k, v in initial.items()}
        self.masks: dict[int, Mask] = {}  # partition id -> the last mask that client reported
        self.node_of: dict[int, int] = {}  # partition id -> Flower node id
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
        """Ask every node for its partition id: node ids are random, partition ids are not."""
        nodes = sorted(grid.get_node_ids())
        msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
        for reply in grid.send_and_receive(msgs, timeout=timeout):
            if reply.has_error():
                log(WARNING, "node %s did not identify itself: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            pid = int(reply.content["metrics"]["partition-id"])
            self.node_of[pid] = reply.metadata.src_node_id

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

    def _messages(self, pids: Iterable[int], server_round: int, kind: str, **config: int) -> list[Message]:
        out = []
        self.sent_bytes = {}
        for pid in pids:
            arrays = self._payload(pid)
            self.sent_bytes[pid] = record_bytes(arrays)
            content = RecordDict(
                {"arrays": arrays, "config": ConfigRecord({"server-round": server_round, **config}), "scenario": self.scenario_record}
            )
            out.append(Message(content, dst_node_id=self.node_of[pid], message_type=kind))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """One message per sampled client, each with its own subnet."""
        return self._messages(self.sample(), server_round, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """Every client scores its personal ticket (and sends it, after the last round)."""
        send = int(server_round == self.sc["rounds"] and self.sc["save-tickets"])
        return self._messages(sorted(self.node_of), server_round, MessageType.EVALUATE, **{"send-ticket": send})

    # --- replies -------------------------------------------------------------------------------

    def _reject(self, server_round: int, pid: int | None, node: int, reason: str) -> None:
        log(WARNING, "round %s: rejected the update of client %s (node %s): %s", server_round, pid, node, reason)
        self.rejected.append({"round": server_round, "client": pid, "reason": reason})

    def _check(self, pid: int, weights: Weights, mask: Mask) -> str | None:
        """Why an update can't be aggregated, or None."""
        ref = self.global_weights
        if set(weights) != set(ref):
            return f"tensor names differ from the model's: {sorted(set(weights) ^ set(ref))}"
        for k, w in weights.items():
            if w.shape != ref[k].shape or w.dtype != ref[k].dtype:
                return f"tensor {k!r} is {tuple(w.shape)} {w.dtype}; expected {tuple(ref[k].shape)} {ref[k].dtype}"
        if self.alg.masked:
            if not mask:
                return "no mask"
            old = self.masks.get(pid)
            if old is not None and (old.keys() != mask.keys() or not is_subset(mask, old)):
                return "mask revives weights it had pruned"
        return None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Masked mean over valid replies, folded in a fixed (client id) order."""
        self.train_log, self.rejected = {}, []
        good: list[tuple[int, Weights, Mask, dict[str, Any]]] = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self._reject(server_round, None, node, f"client error: {reply.error.reason}")
                continue
            metrics = metrics_from_record(reply.content["metrics"])
            pid = int(metrics.get("partition-id", -1))
            arrays = reply.content.array_records.get("arrays")
            metrics["upload_bytes"] = record_bytes(arrays) if arrays is not None else 0
            metrics["download_bytes"] = self.sent_bytes.get(pid, 0)
            self.train_log[pid] = metrics
            if not self.alg.uploads:
                continue
            try:
                weights, mask = decode_record(arrays, self.shapes)
            except ValueError as exc:
                self._reject(server_round, pid, node, str(exc))
                continue
            reason = self._check(pid, weights, mask)
            if reason is not None:
                self._reject(server_round, pid, node, reason)
                continue
            good.append((pid, weights, mask, metrics))
        good.sort(key=lambda g: g[0])
        if good:
            updates = [Update(w, m, int(md["num-examples"])) for _, w, m, md in good]
            self.global_weights = masked_mean(self.global_weights, updates)
            if self.alg.masked:
                for pid, _, mask, _ in good:
                    self.masks[pid] = mask
        return weights_to_record(self.global_weights), MetricRecord({"accepted": len(good), "rejected": len(self.rejected)})

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
        log(WARNING, "fedlth strategy: %s, %s clients, %s per round", self.alg.name, self.sc["num-clients"], self.sc["clients-per-round"])
