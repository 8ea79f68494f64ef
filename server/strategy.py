"""The fedlth strategy: per-client subnets down, masked aggregation up, bytes counted."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import Any, TypeVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from fedlth.config.component_options import (
    FedPMOptions,
    PersonalTicketOptions,
    QFFLOptions,
    SharedTicketOptions,
    TrimmedMeanOptions,
)
from fedlth.config.core_options import Core, core
from fedlth.config.options import options
from fedlth.federation import fedpm
from fedlth.federation.aggregate import MaskedMeanStream, Update, get_aggregator, validate_update
from fedlth.federation.algorithms import get_algorithm, head_off
from fedlth.federation.qffl import QFFLStream
from fedlth.federation.records import (
    config_to_record,
    encode_record,
    record_bytes,
    weights_to_record,
)
from fedlth.federation.shared_ticket import density_at, reinit_kept, server_prune
from fedlth.federation.wire_delta import Base, as_received, base_of, kept_count
from fedlth.tickets.masks import Mask, Weights, apply_mask, is_subset, ones_mask
from server.directory import OffsetIds, sorted_keys
from server.exchange import stream_replies
from server.replies import (
    EVALUATE,
    QUERY,
    TRAIN,
    ReplyError,
    claimed_partition,
    decode_mask_payload,
    decode_payload,
    payload_bytes,
    reply_metrics,
)

Opts = TypeVar("Opts")
Reply = Message | tuple[int, Message]  # a bare reply, or (the node its instruction went to, the reply)


@dataclass(frozen=True)
class TrainResult:
    """One training round as the server loop records it (by partition id): who trained and what
    they reported, who was refused or never answered, whether the global model moved."""

    aggregated: bool
    train: dict[int, dict[str, Any]]
    rejected: list[dict[str, Any]]
    dropped: list[int]


@dataclass(frozen=True)
class EvaluationResult:
    """One evaluation round (by partition id): the scores, who was asked and sent none, and the
    round's refusals so far (its training replies' included)."""

    scores: dict[int, dict[str, Any]]
    missing: list[int]
    rejected: list[dict[str, Any]]


class TicketStrategy(Strategy):
    """Sends each sampled client global ⊙ its mask and averages each weight over its keepers.

    A Flower `Strategy`: configure_train / aggregate_train / configure_evaluate /
    aggregate_evaluate work as Flower's `start` expects. fedlth's ServerApp departs in one way,
    on purpose: it folds each training reply as it arrives (`fold`, then `finish_round`, which
    returns a TrainResult) so that a round of many clients never holds all their updates at
    once; aggregate_train is that same fold over a list. Evaluation goes through Flower's hook,
    and `evaluation_result` hands the loop what it filed.
    """

    def __init__(self, sc: dict[str, Any], initial: Weights, prunable: list[str] | None = None, fresh: Weights | None = None) -> None:
        self.sc = sc
        self._typed_for: dict[str, Any] | None = None  # the scenario `core` and `opts` were read from
        self.alg = get_algorithm(self.core.federation.algorithm)
        self.global_weights = initial
        self.shapes = {k: tuple(v.shape) for k, v in initial.items()}
        self.dtypes = {k: v.dtype for k, v in initial.items()}
        # shared-ticket: the server's one mask (None: still dense), over the prunable weights;
        # `fresh` is the re-init control's other random init
        self.prunable = prunable or [k for k, v in initial.items() if k.endswith("weight") and v.dim() > 1]
        self.shared_mask: Mask | None = None
        # fedper, fedrep: the head's all-False mask; it goes down as mask bits only and is forced
        # onto every upload, so the server's head stays θ0 and no client's head is ever averaged
        self.head: Mask = head_off(initial, self.prunable) if self.alg.local_head else {}
        self.fresh = fresh
        # fedpm (alg.mask_posterior): the global model is the frozen random network; what the
        # server learns is a Beta(α, β) posterior per entry of its conv/linear weights and biases
        self.probs: Weights = {}
        self.alpha: Weights = {}
        self.beta: Weights = {}
        if self.alg.mask_posterior:
            self.global_weights, self.fedpm_names = fedpm.network(initial, self.prunable, self.opts(FedPMOptions).fedpm_init, self.core.general.seed)
            self.probs = fedpm.initial_probabilities(self.global_weights, self.fedpm_names, torch.Generator().manual_seed(self.core.general.seed + 2**40))
            self.alpha, self.beta = fedpm.prior({k: self.shapes[k] for k in self.fedpm_names})
        self.masks: dict[int, Mask] = {}  # partition id -> the last mask that client reported
        self._initial_masks: dict[int, Mask] = {}  # partition id -> its initial mask (alg.initial_mask), drawn once
        self._initial = initial
        # partition id -> Flower node id and back: learnt by query (dicts), or the grid's own (OffsetIds)
        self.node_of: dict[int, int] | OffsetIds = {}
        self.pid_of: dict[int, int] | OffsetIds = {}
        self.dense_bytes = record_bytes(encode_record(initial, None))
        rel = self.core.reliability
        self.max_update_bytes = rel.max_update_bytes or 2 * self.dense_bytes
        # qffl folds replies with their losses (QFFLStream); the other rules are (previous, updates) -> weights
        self.aggregator = (get_aggregator(rel.aggregation, self.opts(TrimmedMeanOptions).trim_fraction, sc)
                           if rel.aggregation != "qffl" else None)
        # sent with every message: "run-key" names this run's lineage (a resumed run keeps it),
        # "state-dir" where simulated clients keep their tickets (fedlth run only)
        self.run_config: dict[str, str] = {}
        # partition id -> num-examples of its first accepted update: its weight never grows past it
        self.declared: dict[int, int] = {}
        self._identify_rejected: list[dict[str, Any]] = []  # query replies refused before a round opens
        self.open_round(0, [])
        self.rng = random.Random(self.core.general.seed)
        self.scenario_record = config_to_record(sc)
        # what the last call of each phase saw, for the run log
        self.train_log: dict[int, dict[str, Any]] = {}
        self.eval_log: dict[int, dict[str, Any]] = {}
        self.eval_missing: list[int] = []  # clients asked to evaluate that sent no valid score
        self._eval_expected: set[int] = set()
        self._send_ticket = False
        self.sent_bytes: dict[int, int] = {}
        self.tickets: dict[int, tuple[Weights, Mask]] = {}  # the personal tickets sent after the last round
        self.ticket_bytes: dict[int, int] = {}
        # wire-download = delta: past downloads (version = the server round they were sent in, minus
        # one) as the clients decoded them, and per client the version and mask it holds (updated
        # when its reply is accepted: only then is it known to have them); checkpointed
        self.versions: dict[int, Weights] = {}
        self.held: dict[int, tuple[int, Mask | None]] = {}
        self._sent: dict[int, tuple[int, Mask | None]] = {}  # this round's training downloads: version, mask
        self._received_now: Weights = {}  # this round's download as the clients decode it (upload deltas' base)
        self.sent_values: dict[int, int] = {}  # values (kept weights) of each download, for bits per kept weight
        self.num_params = sum(w.numel() for w in initial.values())
        # the downloads of the batch of messages being made, by (weights, mask, version): see _full_download
        self._downloads: dict[tuple[int, int, int], tuple[ArrayRecord, int, tuple[Weights, Mask | None]]] = {}

    # --- who is who ----------------------------------------------------------------------

    def adopt_known_partitions(self, grid: Grid) -> bool:
        """Take the node <-> partition map from a grid that knows it (fedlth's in-process
        simulation: no message, no per-client storage); False for a grid that does not
        (deployment, Flower's Ray engine: their nodes say who they are, see identify)."""
        if isinstance(self.node_of, OffsetIds):
            return True
        known = getattr(grid, "known_partitions", None)
        maps = known() if callable(known) else None
        if maps is None:
            return False
        self.node_of, self.pid_of = maps
        return True

    def identify(self, grid: Grid, timeout: float) -> None:
        """Ask every node not yet known for its partition id: node ids are random, partition
        ids are not (a SuperNode restarted without authentication comes back as a new node).
        A grid that knows every node's partition is asked nothing (adopt_known_partitions).

        A partition stays with the first node bound to it while that node is online: another
        node claiming it is refused (counted in the next round's `rejected`, kind "query"); a
        node that left (`grid.get_node_ids()` no longer lists it) hands it to the newcomer.
        """
        if self.adopt_known_partitions(grid):
            return
        online = set(grid.get_node_ids())
        nodes = sorted(n for n in online if n not in self.pid_of)
        if not nodes:
            return
        msgs = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
        replies = sorted(stream_replies(grid, msgs, timeout), key=lambda pair: pair[0])  # first binding: lowest node id
        for node, reply in replies:
            reason = self._bind(node, reply, online)
            if reason is not None:
                self._identify_rejected = [r for r in self._identify_rejected if r["node"] != node]
                self._reject(None, node, reason, kind=QUERY, nbytes=payload_bytes(reply), into=self._identify_rejected,
                             rnd=self.round + 1)

    def _typed(self) -> None:
        """Read the scenario typed once, and again only when `sc` is replaced (core(sc) costs about
        60 µs: the reply path reads it per reply, not per weight)."""
        if self._typed_for is not self.sc:
            self._typed_for, self._core, self._opts = self.sc, core(self.sc), {}

    @property
    def core(self) -> Core:
        """The scenario's core keys, typed (fedlth.config.core_options)."""
        self._typed()
        return self._core

    def opts(self, cls: type[Opts]) -> Opts:
        """A component's options `cls` (fedlth.config.component_options), read from the scenario."""
        self._typed()
        if cls not in self._opts:
            self._opts[cls] = options(self.sc, cls)
        return self._opts[cls]

    def _bind(self, node: int, reply: Message, online: set[int]) -> str | None:
        """Bind `node` to the partition its query reply names; why not, or None."""
        try:
            metrics = reply_metrics(reply, QUERY)
        except ReplyError as exc:
            return str(exc)
        if reply.metadata.src_node_id != node:
            return f"reply sent by node {reply.metadata.src_node_id}, not by node {node}"
        pid = int(metrics["partition-id"])
        n = self.core.data.num_clients
        if pid >= n:
            return f"claims partition {pid}; allowed: 0 .. {n - 1}"
        assert isinstance(self.node_of, dict) and isinstance(self.pid_of, dict)  # learnt by query
        held = self.node_of.get(pid)
        if held is not None and held != node:
            if held in online:
                return f"claims partition {pid}, which node {held} holds"
            log(WARNING, "partition %s moves from node %s (gone) to node %s", pid, held, node)
            self.pid_of.pop(held, None)
        self.node_of[pid] = node
        self.pid_of[node] = pid
        return None

    def sample(self) -> list[int]:
        """This round's clients: a seeded draw from the sorted partition ids."""
        ids = sorted_keys(self.node_of)
        k = min(self.core.federation.clients_per_round, len(ids))
        return sorted(self.rng.sample(ids, k))

    # --- messages ------------------------------------------------------------------------------

    def _payload(self, pid: int, version: int = -1) -> ArrayRecord:
        """What client `pid` receives: nothing (local), its subnet, or the dense global; `version`
        (>= 0: a training download, the round before this one) makes it a delta candidate."""
        if not self.alg.uploads:
            return ArrayRecord()
        if self.alg.mask_posterior:  # fedpm: the probabilities alone; clients know the frozen weights
            return self._encode_download(pid, self.probs, None, version)
        mask = self.shared_mask if self.alg.server_mask else self.known_mask(pid) if self.alg.masked else None
        return self._encode_download(pid, self.global_weights, self.head or mask, version)

    def _encode_download(self, pid: int, weights: Weights, mask: Mask | None, version: int) -> ArrayRecord:
        """The download in the scenario's wire format (both ends know the shapes: none on the wire);
        with wire-download = delta, against the version the client holds when that is smaller."""
        wire = self.core.wire
        opts: dict[str, Any] = {"with_shapes": False, "wire_dtype": wire.wire_dtype, "codec": wire.wire_codec}
        if version >= 0:
            self._sent[pid] = (version, mask)
        delta = version >= 0 and wire.wire_download == "delta"
        full, self.sent_values[pid] = self._full_download(weights, mask, opts, version if delta else -1)
        if not delta:
            return full
        held = self.held.get(pid)
        if held is None or held[0] not in self.versions:
            return full
        delta = encode_record(weights, mask, **opts, version=version, base=base_of(self.versions[held[0]], held[1], held[0]))
        return delta if record_bytes(delta) < record_bytes(full) else full

    def _full_download(self, weights: Weights, mask: Mask | None, opts: dict[str, Any], version: int) -> tuple[ArrayRecord, int]:
        """encode_record(weights, mask, ...) and its kept values, encoded once per message batch for
        every client sent the same mask (FedAvg's dense download: once a round, not once a client).
        Those clients' messages share the record: a download is read, never changed, on its way."""
        key = (id(weights), id(mask), version)
        if key not in self._downloads:  # (holding weights and mask: their ids stay theirs for the batch)
            self._downloads[key] = (encode_record(weights, mask, **opts, version=version), kept_count(weights, mask or {}), (weights, mask))
        record, values, _ = self._downloads[key]
        return record, values

    def _keep_version(self, version: int, weights: Weights) -> None:
        """wire-download = delta: remember this round's download as the clients decode it; keep at
        most wire-history versions (the newest held ones), forgetting which client holds the rest."""
        self.versions[version] = as_received(weights, self.core.wire.wire_dtype)
        held = {v for v, _ in self.held.values()} | {version}
        keep = sorted(held)[-self.core.wire.wire_history:]
        self.versions = {v: w for v, w in self.versions.items() if v in keep}
        self.held = {pid: h for pid, h in self.held.items() if h[0] in self.versions}

    def upload_base(self, pid: int) -> Base | None:
        """wire-upload = delta: what client `pid` was sent this round, the base its reply may be a delta against."""
        if self.core.wire.wire_upload != "delta" or pid not in self._sent:
            return None
        version, mask = self._sent[pid]
        return base_of(self._received_now, mask, version)

    def known_mask(self, pid: int) -> Mask | None:
        """The mask the server holds for client `pid`: the last it reported, else the initial mask
        the algorithm derives for it (dispfl), else None (dense)."""
        if pid in self.masks or self.alg.initial_mask is None:
            return self.masks.get(pid)
        return self.initial_mask(pid)

    def initial_mask(self, pid: int) -> Mask:
        """The mask client `pid` starts from (alg.initial_mask), drawn once; its counts bound a
        regrowing client's later masks."""
        if pid not in self._initial_masks:
            assert self.alg.initial_mask is not None
            self._initial_masks[pid] = self.alg.initial_mask(self.sc, self._initial, self.prunable, pid)
        return self._initial_masks[pid]

    def _messages(self, pids: Iterable[int], server_round: int, kind: str, **config: int | str) -> list[Message]:
        out = []
        self.sent_bytes, self.sent_values = {}, {}
        self._downloads = {}
        version = server_round - 1 if kind == MessageType.TRAIN else -1
        if version >= 0:
            self._sent = {}
            sent = self.probs if self.alg.mask_posterior else self.global_weights
            wire = self.core.wire
            self._received_now = as_received(sent, wire.wire_dtype)
            if wire.wire_download == "delta" and self.alg.uploads:
                self._keep_version(version, sent)
        for pid in pids:
            arrays = self._payload(pid, version)
            self.sent_bytes[pid] = record_bytes(arrays)
            content = RecordDict(
                {"arrays": arrays, "config": ConfigRecord({"server-round": server_round, **self.run_config, **config}), "scenario": self.scenario_record}
            )
            out.append(Message(content, dst_node_id=self.node_of[pid], message_type=kind))
        self._downloads = {}  # the batch is made: its weights and masks may change from here
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """One message per sampled client, each with its own subnet; opens the round for replies."""
        pids = self.sample()
        self.open_round(server_round, pids)
        return self._messages(pids, server_round, MessageType.TRAIN)

    def eval_sample(self, server_round: int) -> Sequence[int]:
        """The clients scored in `server_round`: every known client (eval-clients = 0, or at least
        as many as are known), else a draw of eval-clients of them seeded by (seed, round) alone,
        so the training sampler's sequence and a resumed run's draws are unchanged. O(eval-clients)."""
        ids = sorted_keys(self.node_of)
        k = self.core.federation.eval_clients
        if k <= 0 or k >= len(ids):
            return ids
        return sorted(random.Random(f"fedlth-eval/{self.core.general.seed}/{server_round}").sample(ids, k))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> list[Message]:
        """Each evaluated client (eval_sample) scores its personal ticket (and sends it, after the last round)."""
        self._send_ticket = server_round == self.core.federation.rounds and self.core.outputs.save_tickets
        pids = self.eval_sample(server_round)
        self._eval_expected = set(pids)
        self.eval_log, self.eval_missing = {}, []
        return self._messages(pids, server_round, MessageType.EVALUATE, **{"send-ticket": int(self._send_ticket)})

    # --- replies -------------------------------------------------------------------------------

    def open_round(self, server_round: int, pids: Iterable[int]) -> None:
        """Expect replies from `pids`; a fresh running sum (mean) or list (robust rules)."""
        self.round = server_round
        self.train_log, self.accepted, self.dropped = {}, [], []
        self.rejected, self._identify_rejected = self._identify_rejected, []
        self._expected = sorted(pids)
        self._next = 0  # replies are folded in client-id order: sums are bit-reproducible
        self._seen: set[int] = set()
        self._waiting: dict[int, Update | None] = {}  # replied, not yet folded (None: nothing to fold)
        self._metrics: dict[int, dict[str, Any]] = {}  # checked metrics, logged once the update is accepted
        rule = self.core.reliability.aggregation
        self._stream: MaskedMeanStream | QFFLStream | None = None
        if rule == "mean":
            self._stream = MaskedMeanStream(self.global_weights)
        elif rule == "qffl":  # the paper's Lipschitz constant, 1 / the clients' learning rate, unless set
            o = self.opts(QFFLOptions)
            lipschitz = o.qffl_lipschitz or 1.0 / self.core.training.lr
            self._stream = QFFLStream(self.global_weights, o.qffl_q, lipschitz)
        self._losses: dict[int, float] = {}  # qffl: each reply's loss at the model it received
        self._kept: list[Update] = []
        self._sampled: list[Mask] = []  # fedpm: the round's accepted masks, in client-id order
        # the median first-update count the weights are bounded by; None: no client known yet,
        # so this round's updates wait for the round's own median before they are folded
        self._reference = statistics.median(self.declared.values()) if self.declared else None
        self._held: list[tuple[int, Update]] = []
        self._new_masks: dict[int, Mask] = {}  # mask_regrows: the whole mask of a reply, kept once it is accepted

    def fold(self, reply: Message, node: int | None = None) -> None:
        """Validate one reply (to the instruction sent to `node`; default: its sender) and fold
        it in as soon as every lower client id is settled."""
        node = reply.metadata.src_node_id if node is None else node
        pid = self.pid_of.get(node)
        if not reply.has_error() and reply.metadata.src_node_id != node:
            self._reject(pid, node, f"reply sent by node {reply.metadata.src_node_id}, not by node {node}", nbytes=payload_bytes(reply))
            return
        if pid is None or pid not in self._expected or pid in self._seen:
            self._reject(pid, node, "reply from a client not sampled this round, or a second reply", nbytes=payload_bytes(reply))
            return
        self._seen.add(pid)
        try:
            self._waiting[pid] = self._update_of(pid, node, reply)
        except ReplyError as exc:
            self._reject(pid, node, str(exc), nbytes=payload_bytes(reply), download=self.sent_bytes.get(pid, 0),
                         download_values=self.sent_values.get(pid, 0))
            self._waiting[pid] = None
        self._advance()

    def _advance(self) -> None:
        """Fold every update whose lower client ids are all settled. Updates held for want of a
        median (see open_round) are folded, in client-id order, once the last client is settled."""
        while self._next < len(self._expected) and self._expected[self._next] in self._waiting:
            pid = self._expected[self._next]
            update = self._waiting.pop(pid)
            self._next += 1
            if update is not None:
                self._accept(pid, update)
        if self._held and self._next == len(self._expected):
            self._reference = statistics.median(self.declared.values())
            for pid, update in self._held:
                self.train_log[pid]["weight"] = self._fold_update(pid, update)
            self._held = []

    def _accept(self, pid: int, update: Update) -> None:
        """Fold (or hold) one update, or reject it; an accepted one's metrics and mask are kept."""
        weight = None
        try:
            if self.alg.mask_posterior:  # fedpm counts every client once (the code): no example weights
                self._sampled.append(update.mask)
                weight = 1
            elif self._reference is None and self.core.reliability.example_cap > 0:
                validate_update(self.global_weights, update, client=pid)
                self._held.append((pid, update))
            else:
                weight = self._fold_update(pid, update)
        except ValueError as exc:
            metrics = self._metrics.pop(pid, {})
            self._reject(pid, self.node_of.get(pid, -1), str(exc), nbytes=metrics.get("upload_bytes", 0),
                         download=self.sent_bytes.get(pid, 0), download_values=self.sent_values.get(pid, 0))
            return
        self.accepted.append(pid)
        if self.core.wire.wire_download == "delta" and pid in self._sent:
            self.held[pid] = self._sent[pid]  # it replied to that download: it holds it now
        self.declared.setdefault(pid, update.num_examples)
        self.train_log[pid] = self._metrics.pop(pid)
        if weight is not None:
            self.train_log[pid]["weight"] = weight
        if self.alg.masked:
            self.masks[pid] = self._new_masks.pop(pid, update.mask)

    def _fold_update(self, pid: int, update: Update) -> int:
        """Add the update, at its bounded weight, to the running mean (or the robust rule's list);
        the weight it got."""
        n = self.weight_of(pid, update.num_examples)
        if n != update.num_examples:
            log(WARNING, "round %s: client %s declares %s examples; weighted as %s (example-cap)",
                self.round, pid, update.num_examples, n)
        update = Update(update.weights, update.mask, n)
        if self.alg.sparse_upload and self.opts(PersonalTicketOptions).sparse_fill == "global":
            update = fill_unsent(update, self.global_weights)
        if isinstance(self._stream, QFFLStream):
            self._stream.add(update, self._losses[pid], client=pid)
        elif self._stream is not None:
            self._stream.add(update, client=pid)
        else:
            validate_update(self.global_weights, update, client=pid)  # robust rules fold at the end
            self._kept.append(update)
        return n

    def weight_of(self, pid: int, n: int) -> int:
        """A client's weight in the mean: `n`, at most its first accepted count and at most
        example-cap × the median first count (see the scenario key)."""
        if self.core.personal.weighting == "uniform":
            return 1
        cap = self.core.reliability.example_cap
        if cap <= 0:
            return n
        bound = min(n, self.declared.get(pid, n))
        if self._reference is not None:
            bound = min(bound, max(1, math.floor(cap * self._reference)))
        return bound

    def _update_of(self, pid: int, node: int, reply: Message) -> Update | None:
        """The reply as an Update, None when the algorithm uploads nothing; ReplyError when it
        fails a check (every metric, the partition it claims, the payload)."""
        qffl = self.core.reliability.aggregation == "qffl" and self.alg.uploads
        metrics = reply_metrics(reply, TRAIN, ("received-loss",) if qffl else ())
        claimed_partition(metrics, pid, node)
        if qffl:
            self._losses[pid] = metrics["received-loss"]
        arrays = reply.content.array_records.get("arrays")
        metrics["upload_bytes"] = record_bytes(arrays) if arrays is not None else 0
        metrics["download_bytes"] = self.sent_bytes.get(pid, 0)
        metrics["download_values"] = self.sent_values.get(pid, 0)
        if not self.alg.uploads:
            self.train_log[pid] = metrics
            return None
        n = metrics["num-examples"]
        if n <= 0:
            raise ReplyError(f"num-examples must be a whole number > 0; got {n!r}")
        if self.alg.mask_posterior:  # fedpm: a sampled mask and nothing else
            mask = decode_mask_payload(arrays, self.fedpm_names, self.shapes, self.max_update_bytes, self.opts(FedPMOptions).fedpm_codec)
            self._metrics[pid] = metrics
            return Update({}, mask, int(n))
        weights, mask = decode_payload(arrays, self.shapes, self.max_update_bytes, self.dtypes, self.upload_base(pid))
        reason = self._check(pid, weights, mask)
        if reason is not None:
            raise ReplyError(reason)
        metrics["upload_values"] = kept_count(weights, mask)
        self._metrics[pid] = metrics
        if self.alg.mask_regrows:
            # regrown entries hold no trained value yet: the mean takes only the entries the client
            # was sent and trained; the whole new mask is what it gets next round
            sent = self.known_mask(pid)
            self._new_masks[pid] = mask
            mask = {k: m & sent[k] for k, m in mask.items()} if sent is not None else mask
        return Update(weights, mask | self.head, int(n))  # a head a client sent anyway is not averaged

    def _reject(
        self, pid: int | None, node: int, reason: str, *, kind: str = TRAIN, nbytes: int = 0, download: int | None = None,
        into: list[dict[str, Any]] | None = None, rnd: int | None = None, download_values: int = 0,
    ) -> None:
        """Log and count a refused reply; its payload bytes are counted apart from uploads."""
        rnd = self.round if rnd is None else rnd
        log(WARNING, "round %s: rejected the %s reply of client %s (node %s): %s", rnd, kind, pid, node, reason)
        if kind == TRAIN and pid is not None:
            self.held.pop(pid, None)  # whatever it holds now is unknown: its next download goes full
        entry: dict[str, Any] = {"round": rnd, "kind": kind, "client": pid, "node": node, "reason": reason, "bytes": nbytes}
        if download is not None:
            entry["download_bytes"] = download  # sent to a sampled client: still a real download
            entry["download_values"] = download_values
        (self.rejected if into is None else into).append(entry)

    def _check(self, pid: int, weights: Weights, mask: Mask, need_mask: bool = True) -> str | None:
        """Why an update (or a ticket: `need_mask` False) can't be used, or None."""
        ref = self.global_weights
        if set(weights) != set(ref):
            return f"tensor names differ from the model's: {sorted(set(weights) ^ set(ref))}"
        # (no NaN or Inf here: decode_payload refused them, the plain wire and the coded one alike,
        # and the running mean checks every update again)
        for k, w in weights.items():
            if w.shape != ref[k].shape or w.dtype != ref[k].dtype:
                return f"tensor {k!r} is {tuple(w.shape)} {w.dtype}; expected {tuple(ref[k].shape)} {ref[k].dtype}"
        if self.alg.masked:
            old = self.known_mask(pid)
            if not mask and (need_mask or old is not None):
                return "no mask"
            if self.alg.mask_regrows:
                return self._check_regrown(pid, mask, old)
            if old is not None and (old.keys() != mask.keys() or not is_subset(mask, old)):
                return "mask revives weights it had pruned"
        # shared-ticket: the mask went out with the subnet this round; the reply may not widen it
        shared = self.shared_mask if self.alg.server_mask else None
        if shared is not None and (mask.keys() != shared.keys() or not is_subset(mask, shared)):
            return "mask revives weights outside the shared ticket"
        return None

    def _check_regrown(self, pid: int, mask: Mask, old: Mask | None) -> str | None:
        """mask_regrows: the mask may move, but it names the same tensors and keeps no more of
        any layer than the client's initial mask (its density is constant), or why not."""
        bound = self.initial_mask(pid) if self.alg.initial_mask is not None else old
        if bound is None:
            return None
        if mask.keys() != bound.keys():
            return f"mask names {sorted(mask)}; expected {sorted(bound)}"
        for k, m in mask.items():
            kept, allowed = int(m.sum()), int(bound[k].sum())
            if kept > allowed:
                return f"mask keeps {kept} entries of {k!r}; at most {allowed} (its initial count: density is constant)"
        return None

    def finish_round(self) -> TrainResult:
        """Leave out clients that never replied; aggregate if at least `min-clients` updates are
        valid; what the round produced."""
        aggregated = self._aggregate_round()
        return TrainResult(
            aggregated, {pid: self.train_log[pid] for pid in sorted(self.train_log)}, list(self.rejected), list(self.dropped),
        )

    def _aggregate_round(self) -> bool:
        self.dropped = [pid for pid in self._expected if pid not in self._seen]
        for pid in self.dropped:
            self.held.pop(pid, None)  # it may or may not hold this round's download
            log(WARNING, "round %s: client %s sent no reply within %.0f s; the round goes on without it",
                self.round, pid, self.core.reliability.round_timeout)
            self._waiting[pid] = None
        self._advance()
        if not self.alg.uploads:
            return False
        least = self.core.reliability.min_clients
        if len(self.accepted) < least:
            log(WARNING, "round %s: %d valid updates, fewer than min-clients = %d; the global model is kept",
                self.round, len(self.accepted), least)
            return False
        if self.alg.mask_posterior:
            self._update_posterior()
            return True
        if self._stream is not None:
            self.global_weights = self._stream.result()
        else:
            self.global_weights = self.aggregator(self.global_weights, self._kept)
        self._stream, self._kept = None, []
        if self.alg.server_mask:
            self._prune_shared()
        return True

    def _update_posterior(self) -> None:
        """fedpm's server rule: reset α, β to the prior on schedule, then α += Σ m_i and
        β += Σ (1 − m_i) over the round's masks (softened by fedpm-epsilon); send the mode or mean."""
        o = self.opts(FedPMOptions)
        if fedpm.resets_before(self.round, o.fedpm_reset_every):
            self.alpha, self.beta = fedpm.prior({k: self.shapes[k] for k in self.fedpm_names})
        self.alpha, self.beta = fedpm.beta_update(self.alpha, self.beta, self._sampled, o.fedpm_epsilon)
        self.probs = fedpm.posterior_probabilities(self.alpha, self.beta, o.fedpm_estimate)
        self._sampled = []

    def _prune_shared(self) -> None:
        """shared-ticket's server rule: the shared mask follows its schedule after each round."""
        o = self.opts(SharedTicketOptions)
        target = density_at(self.round, o.prune_start, o.prune_end, self.core.federation.target_density)
        if target >= 1.0:
            return
        mask = self.shared_mask or ones_mask(self.global_weights, self.prunable)
        # seeded by (seed, round): the random-mask control draws the same mask on a resumed run
        gen = torch.Generator().manual_seed(self.core.general.seed * 1_000_003 + self.round)
        self.shared_mask = server_prune(self.global_weights, mask, target, o.server_pruner, gen)
        self.global_weights = apply_mask(self.global_weights, self.shared_mask)
        if o.ticket_control == "reinit" and self.round == o.prune_end and self.fresh is not None:
            self.global_weights = reinit_kept(self.shared_mask, self.fresh)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook: fold every reply of the round opened by configure_train, then aggregate."""
        for reply in replies:
            self.fold(reply)
        result = self.finish_round()
        metrics = MetricRecord({"accepted": len(self.accepted), "rejected": len(result.rejected), "aggregated": int(result.aggregated)})
        return weights_to_record(self.global_weights), metrics

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly: global weights, known masks, sampler state,
        the example counts that bound each client's weight."""
        return {
            "global": self.global_weights, "masks": self.masks, "rng": rng_state_compact(self.rng.getstate()), "declared": self.declared,
            "shared_mask": self.shared_mask, "fedpm": {"probs": self.probs, "alpha": self.alpha, "beta": self.beta},
            "wire": {"versions": self.versions, "held": {pid: {"version": v, "mask": m} for pid, (v, m) in self.held.items()}},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by state_dict()."""
        self.global_weights = state["global"]
        self.masks = state["masks"]
        self.shared_mask = state.get("shared_mask")
        if "fedpm" in state:  # older checkpoints: none
            self.probs, self.alpha, self.beta = (state["fedpm"][k] for k in ("probs", "alpha", "beta"))
        self.rng.setstate(rng_state_tuple(state["rng"]))
        self.declared = {int(k): int(v) for k, v in state.get("declared", {}).items()}  # older checkpoints: none
        wire = state.get("wire", {"versions": {}, "held": {}})  # older checkpoints: none (every client gets the full subnet)
        self.versions = {int(v): w for v, w in wire["versions"].items()}
        self.held = {int(pid): (int(h["version"]), h["mask"]) for pid, h in wire["held"].items()}

    def evaluation_result(self) -> EvaluationResult:
        """What the last aggregate_evaluate filed (Flower's hook returns only summary metrics)."""
        return EvaluationResult({pid: self.eval_log[pid] for pid in sorted(self.eval_log)}, list(self.eval_missing), list(self.rejected))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Reply]) -> MetricRecord | None:
        """Check and file every client's scores (and ticket) under the partition of the node the
        instruction went to (a pair names it; a bare reply: its sender); the run log turns them
        into summaries. Clients asked that sent no valid score are listed in `eval_missing`."""
        for item in replies:
            node, reply = item if isinstance(item, tuple) else (item.metadata.src_node_id, item)
            pid = self.pid_of.get(node)
            try:
                self._score(server_round, pid, node, reply)
            except ReplyError as exc:
                self._reject(pid, node, str(exc), kind=EVALUATE, nbytes=payload_bytes(reply))
        self.eval_missing = sorted(self._eval_expected - set(self.eval_log))
        self._bound_eval_weights()
        if self.eval_missing:
            log(WARNING, "round %s: no valid evaluation from clients %s; scores are over %d of %d clients",
                server_round, self.eval_missing, len(self.eval_log), len(self._eval_expected))
        accs = [m["accuracy"] for m in self.eval_log.values() if not math.isnan(m["accuracy"])]  # NaN: no test data
        if not accs:
            return None
        return MetricRecord({"accuracy-mean": sum(accs) / len(accs)})

    def _bound_eval_weights(self) -> None:
        """Each score's weight in example-weighted summaries (global accuracy): its test count, at
        most example-cap × the median count of this evaluation (all replies are in by now)."""
        counts = [m["num-examples"] for m in self.eval_log.values() if m["num-examples"] > 0]
        cap = self.core.reliability.example_cap
        bound = math.floor(cap * statistics.median(counts)) if counts and cap > 0 else None
        for m in self.eval_log.values():
            m["weight"] = m["num-examples"] if bound is None else min(m["num-examples"], max(1, bound))

    def _score(self, server_round: int, pid: int | None, node: int, reply: Message) -> None:
        """File one evaluation reply; ReplyError when any part of it fails a check."""
        if not reply.has_error() and reply.metadata.src_node_id != node:
            raise ReplyError(f"reply sent by node {reply.metadata.src_node_id}, not by node {node}")
        if pid is None or pid not in self._eval_expected or pid in self.eval_log:
            raise ReplyError("reply from a client not asked to evaluate, or a second reply")
        required = ("global-accuracy",) if self.alg.has_global else ()
        metrics = reply_metrics(reply, EVALUATE, required)
        claimed_partition(metrics, pid, node)
        record = reply.content.array_records.get("ticket")
        if self._send_ticket != (record is not None):
            raise ReplyError("a ticket was asked for and is missing" if self._send_ticket else "a ticket nobody asked for")
        if record is not None:
            weights, mask = decode_payload(record, self.shapes, self.max_update_bytes, self.dtypes)
            reason = self._check(pid, weights, mask, need_mask=False)
            if reason is not None:
                raise ReplyError(f"ticket: {reason}")
            self.tickets[pid] = (weights, mask)
            self.ticket_bytes[pid] = record_bytes(record)
        metrics["download_bytes"] = self.sent_bytes.get(pid, 0)
        self.eval_log[pid] = metrics

    def summary(self) -> None:
        """Flower's hook to log the configuration."""
        log(INFO, "fedlth strategy: %s, %s clients, %s per round", self.alg.name, self.core.data.num_clients,
            self.core.federation.clients_per_round)


def fill_unsent(update: Update, global_weights: Weights) -> Update:
    """A sparse upload as a dense one whose unsent entries are the current global values: the
    mean then counts a client that did not send a weight as leaving it unchanged (top-k
    sparsification), instead of averaging only over the clients that sent it."""
    weights = {k: torch.where(m, update.weights[k], global_weights[k]) for k, m in update.mask.items()}
    return Update({**update.weights, **weights}, {}, update.num_examples)


def rng_state_tuple(state: Sequence[Any]) -> tuple[Any, ...]:
    """random.setstate wants tuples; a checkpoint may hand back lists."""
    version, internal, gauss = state
    if isinstance(internal, torch.Tensor):  # rng_state_compact's
        internal = internal.tolist()
    return (int(version), tuple(int(x) for x in internal), gauss)


def rng_state_compact(state: tuple[Any, ...]) -> tuple[Any, ...]:
    """random.getstate() with its 625 words in one int64 tensor: a checkpoint pickles one object,
    not 625 (torch.save's pickler costs per object, every round); rng_state_tuple reads either."""
    version, internal, gauss = state
    return (version, torch.tensor(internal, dtype=torch.int64), gauss)
