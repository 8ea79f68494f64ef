"""The Flower ClientApp: a thin shell around fedlth.federation.algorithms; state lives in Context.state.

Node config (simulation: Flower sets `partition-id`; deployment: `flower-supernode --node-config`):
  partition-id  required: the node's stable id in the federation (0 .. num-clients - 1). The server
                samples, names outputs and keeps masks by it; node ids are random.
  data-file     optional: an .npz of this device's own data (fedlth.data.local_data). Without it the
                node takes partition `partition-id` of the scenario's dataset (a trial).
  state-dir     optional: where the ticket is kept across restarts (fedlth.federation.state_store); without
                it, the `state-dir` the server names in its messages (in-process simulation).
The ticket file is tagged with the server's `run-key` (a resumed run keeps it), else the run id.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlth.config.component_options import FedPMOptions
from fedlth.config.core_options import core
from fedlth.config.scenario import resolve
from fedlth.data.client_data import ClientData, client_data, data_key
from fedlth.data.local_data import local_client_data
from fedlth.federation.algorithms import (
    ClientState,
    Ctx,
    evaluate_client,
    fedpm_network,
    get_algorithm,
    initial_weights,
    model_names,
    received_loss,
    weight_specs,
)
from fedlth.federation.records import (
    config_from_record,
    decode_record,
    encode_mask_upload,
    encode_record,
    mask_from_record,
    mask_to_record,
    metrics_to_record,
    weights_from_record,
    weights_to_record,
)
from fedlth.federation.state_store import (
    holds_tensors,
    mask_digest,
    read_state_file,
    state_tag,
    write_state_file,
)
from fedlth.federation.wire_delta import Base, base_of
from fedlth.reporting.io import start_writes
from fedlth.tickets.masks import density

app = ClientApp()
log = logging.getLogger("fedlth")

_STATE = {"mask": "fedlth.mask", "personal": "fedlth.personal", "candidate": "fedlth.candidate", "base": "fedlth.base",
          "base_mask": "fedlth.base-mask"}
_WEIGHTS = ("personal", "base")  # the other fields are masks
_META = "fedlth.meta"


def context_state(context: Context) -> ClientState:
    """The client's ticket as kept in Context.state (an empty state on first contact)."""
    st = context.state
    arrays = st.array_records
    meta = st.config_records.get(_META)
    return ClientState(
        mask=mask_from_record(arrays[_STATE["mask"]]) if _STATE["mask"] in arrays else None,
        personal=weights_from_record(arrays[_STATE["personal"]]) if _STATE["personal"] in arrays else None,
        candidate=mask_from_record(arrays[_STATE["candidate"]]) if _STATE["candidate"] in arrays else None,
        rounds=int(meta["rounds"]) if meta is not None else 0,
        base=weights_from_record(arrays[_STATE["base"]]) if _STATE["base"] in arrays else None,
        base_mask=mask_from_record(arrays[_STATE["base_mask"]]) if _STATE["base_mask"] in arrays else None,
        base_version=int(meta.get("base-version", -1)) if meta is not None else -1,
    )


def _held_round(context: Context) -> int:
    """The server round that made the ticket in Context.state (0: none trained yet)."""
    meta = context.state.config_records.get(_META)
    return int(meta.get("round", 0)) if meta is not None else 0


def set_context_state_(context: Context, state: ClientState, round_: int = 0) -> None:
    """Write the client's ticket into Context.state, replacing what was there."""
    st = context.state
    for field, key in _STATE.items():
        value = getattr(state, field)
        if value is None:
            if key in st:
                del st[key]
        else:
            st[key] = weights_to_record(value) if field in _WEIGHTS else mask_to_record(value)
    st[_META] = ConfigRecord({"rounds": state.rounds, "round": int(round_), "base-version": int(state.base_version)})


Config = Mapping[str, Any] | None  # the message's config: the server's `run-key` and `state-dir`


def state_file(context: Context, config: Config = None) -> Path | None:
    """Where this client keeps its ticket: node config `state-dir` (a deployed node), else the
    `state-dir` the server names (in-process simulation on the server's disk), else nowhere."""
    folder = context.node_config.get("state-dir") or (config or {}).get("state-dir")
    return _ticket_path(str(folder), partition_id(context)) if folder else None


@lru_cache(maxsize=4096)
def _ticket_path(folder: str, pid: int) -> Path:
    return Path(folder).expanduser() / f"ticket-{pid}.pt"  # (pathlib costs more than a small ticket's read)


def _disk_only(context: Context, config: Config) -> bool:
    """Simulated clients whose server names a state folder keep their tickets only there: a
    federation of 1,000 clients must not hold 1,000 models in the simulation's memory."""
    return not context.node_config.get("state-dir") and bool((config or {}).get("state-dir"))


def _tag(context: Context, sc: dict[str, Any], config: Config = None) -> str:
    # the run lineage: the server's run-key (kept when it resumes), else Flower's run id; a new
    # run starts from θ0 on the server, so an older run's ticket is foreign to it
    run = (config or {}).get("run-key") or context.run_id
    return state_tag(sc, partition_id(context), run_id=run)


def restore_state(context: Context, sc: dict[str, Any], config: Config = None, round_: int | None = None) -> tuple[ClientState, int]:
    """The ticket to start server round `round_` from, and the round that made it: Context.state
    if it holds one; else the state file (a restarted node). A round the client already trained
    (the server resumed from a checkpoint) starts from the ticket it had before that round."""
    held = _META in context.state.config_records
    if held and (round_ is None or _held_round(context) < round_):
        return context_state(context), _held_round(context)
    path = state_file(context, config)
    saved = read_state_file(path, _tag(context, sc, config), before=round_) if path else None
    if saved is None:
        if held:
            log.warning("fedlth: partition %s already trained round %s; starting from the server's copy", partition_id(context), round_)
        return ClientState(), 0
    state, made_in = saved
    if _disk_only(context, config):
        return state, made_in  # its usual home, read at every message: nothing to report
    log.warning(
        "fedlth: restored the ticket of partition %s from %s (%d rounds trained, density %.4f, mask %s)",
        partition_id(context), path, state.rounds, density(state.mask) if state.mask else 1.0, mask_digest(state.mask),
    )
    set_context_state_(context, state, made_in)  # read the file once per process, not once per message
    return state, made_in


def persist_state_(
    context: Context, sc: dict[str, Any], state: ClientState, config: Config = None, round_: int = 0,
    previous: tuple[ClientState, int] | None = None,
) -> None:
    """Keep the ticket made in round `round_` in Context.state and, where the client has a state
    folder, in its state file together with `previous` (the ticket it started that round from)."""
    if not _disk_only(context, config):
        set_context_state_(context, state, round_)
    path = state_file(context, config)
    if path is not None and not holds_tensors(state) and not holds_tensors((previous or (None, 0))[0]) and not path.exists():
        # nothing to restore (FedAvg's clients keep no tensors between rounds): no file, and no
        # write per message. (An existing file is still replaced: it must not outlive its state.)
        return
    if path is not None:
        # a server in this process ("process") waits before each checkpoint for the writes (each
        # with its fsync) made in the background, while the next client trains; one on this
        # machine ("disk") syncs the disk then, so the client skips its fsync
        sync = str((config or {}).get("state-sync", "")) if _disk_only(context, config) else ""
        write_state_file(path, state, _tag(context, sc, config), round_, previous, durable=sync != "disk", background=sync == "process")


def partition_id(context: Context) -> int:
    """This node's stable id (simulation: Flower's `partition-id`; deployment: node config)."""
    value = context.node_config.get("partition-id")
    if value is None or isinstance(value, bool) or not str(value).lstrip("-").isdigit():
        raise ValueError(
            f"node config needs partition-id=<integer>, this node's id in the federation; got {value!r} "
            '(flower-supernode --node-config "partition-id=0 state-dir=\"...\"")'
        )
    return int(value)


def node_data(context: Context, sc: dict[str, Any]) -> ClientData:
    """The node's own data file (node config `data-file`), else its partition of the scenario's dataset."""
    file, pid = context.node_config.get("data-file"), partition_id(context)
    if file:
        return local_client_data(str(file), sc, pid)
    try:
        return client_data(sc, pid)
    except ImportError as exc:  # partitioning needs flwr-datasets and Hugging Face datasets
        raise RuntimeError(
            f"partition-id {pid} asks for a partition of {core(sc).data.dataset!r}, which needs the simulation extra "
            f"({exc.name or exc} is not installed: pip install 'fedlth[sim]'); a device with the base install "
            f'reads its own data: --node-config \'partition-id={pid} data-file="/path/to/data.npz"\''
        ) from exc


class _Run:
    """One scenario as this process serves it: resolved once, and the partitions it cut lately."""

    DATA_BYTES = 32 * 2**20  # of client tensors kept per scenario: a Ray worker of 1,000 clients stays small

    def __init__(self, items: tuple[tuple[str, Any], ...]) -> None:
        self.sc = resolve(dict(items), source="server config")
        self._data: OrderedDict[tuple[int, tuple[Any, ...]], tuple[ClientData, int]] = OrderedDict()
        self._bytes = 0

    def data(self, context: Context, sc: dict[str, Any]) -> ClientData:
        """node_data(context, sc); a partition of the scenario's dataset (the same tensors for
        every message, as the plain loop keeps them: nobody writes into them) is cut once while
        it fits the bound, not at every message."""
        if context.node_config.get("data-file"):
            return node_data(context, sc)
        # (a partition file's content hash is part of the key: a file rewritten in place is a new split)
        key = (partition_id(context), data_key(sc))
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
            return hit[0]
        data = node_data(context, sc)
        size = sum(t.nbytes for t in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test))
        if size <= self.DATA_BYTES:
            self._data[key] = (data, size)
            self._bytes += size
            while self._bytes > self.DATA_BYTES:
                self._bytes -= self._data.popitem(last=False)[1][1]  # the least recently used
        return data


@lru_cache(maxsize=8)
def _run(items: tuple[tuple[str, Any], ...]) -> _Run:
    # every message carries the run's scenario: validated once per process, not per message
    return _Run(items)


def _setup(msg: Message, context: Context, training: bool) -> tuple[dict[str, Any], Ctx, ClientState, int]:
    run = _run(tuple(config_from_record(msg.content["scenario"]).items()))
    sc = dict(run.sc)
    config = dict(msg.content["config"])
    round_ = int(config["server-round"])
    pid = partition_id(context)
    ctx = Ctx(sc=sc, data=run.data(context, sc), partition_id=pid, server_round=round_)
    held, made_in = restore_state(context, sc, config, round_ if training else None)
    state = _fitting(context, held, _shapes(ctx))
    return sc, ctx, state, made_in if state is held else 0


def _shapes(ctx: Ctx) -> dict[str, tuple[int, ...]]:
    return {k: shape for k, (shape, _) in weight_specs(ctx.sc, ctx.data.input_shape, ctx.data.num_classes).items()}


def _dtypes(ctx: Ctx) -> dict[str, Any]:
    return {k: dtype for k, (_, dtype) in weight_specs(ctx.sc, ctx.data.input_shape, ctx.data.num_classes).items()}


def _fitting(context: Context, state: ClientState, shapes: dict[str, tuple[int, ...]]) -> ClientState:
    """The state if its tensors fit the model; else a clean start (a ticket for another model
    must not fail every round)."""
    parts = [t for t in (state.mask, state.candidate) if t is not None]
    fits = all(k in shapes and tuple(v.shape) == shapes[k] for t in parts for k, v in t.items()) and (
        state.personal is None
        or (state.personal.keys() == shapes.keys() and all(tuple(v.shape) == shapes[k] for k, v in state.personal.items()))
    )
    if fits:
        return state
    log.warning("fedlth: partition %s holds a ticket that does not fit the model; starting from the server's copy", partition_id(context))
    set_context_state_(context, ClientState())
    return ClientState()


def _held_base(state: ClientState) -> Base | None:
    """The last training download this client holds (wire-download = delta), for a delta against it."""
    return Base(state.base, state.base_mask or {}, state.base_version) if state.base is not None else None


def _received(msg: Message, ctx: Ctx, state: ClientState, sent: dict[str, Any] | None = None):
    """The weights the server sent (None when none) and the state to start from; `sent`, when
    given, receives the mask that came with them under "mask".

    A node that lost its ticket (fresh state after a restart with no usable state file) takes
    the server's copy of its mask, which comes with its subnet, rather than restarting dense.
    """
    rec = msg.content.array_records.get("arrays")
    if rec is None or len(rec) == 0:
        return None, state
    try:
        weights, mask = _decode_download(rec, _shapes(ctx), _dtypes(ctx), _held_base(state))
    except ValueError as exc:
        raise ValueError(
            f"the server's weights do not decode for this node's model (its data: input shape "
            f"{ctx.data.input_shape}, {ctx.data.num_classes} classes): {exc}"
        ) from exc
    if sent is not None:
        sent["mask"] = mask
    alg = get_algorithm(ctx.core.federation.algorithm)
    if alg.server_mask:
        return weights, replace(state, mask=mask or None)  # the server owns the shared mask
    if alg.masked and state.mask is None and mask:  # (fedper's head mask is no ticket)
        if not _initial_mask(alg, ctx, mask):  # dispfl's first download is the client's own initial mask
            log.warning("fedlth: partition %s has no ticket of its own; taking the server's copy of its mask", ctx.partition_id)
        state = replace(state, mask=mask)
    return weights, state


# The last download decoded in this process: the clients of an in-process round get the same
# Arrays (the server encodes a shared download once), and need decode it only once.
_last_download: list[tuple[Any, tuple[Any, ...], tuple[Any, ...], Any]] = []


def _decode_download(
    rec: ArrayRecord, shapes: dict[str, Any], dtypes: dict[str, Any], base: Base | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """decode_record(rec, shapes, dtypes, base); a record of the very bytes objects decoded last
    (bytes never change: same objects, same content) gets fresh copies of that result."""
    if base is not None:  # a delta decodes against this client's own base
        return decode_record(rec, shapes, dtypes, base)
    key = tuple((k, a.dtype, a.shape, a.stype, id(a.data)) for k, a in rec.items())
    if _last_download and _last_download[0][0] == key and _last_download[0][2] == (shapes, dtypes):
        weights, mask = _last_download[0][3]
        return {k: v.clone() for k, v in weights.items()}, {k: m.clone() for k, m in mask.items()}
    weights, mask = decode_record(rec, shapes, dtypes)
    # (the bytes objects are held, so that their ids stay theirs while the entry lives)
    _last_download[:] = [(key, tuple(a.data for a in rec.values()), (shapes, dtypes), (weights, mask))]
    return {k: v.clone() for k, v in weights.items()}, {k: m.clone() for k, m in mask.items()}


def _initial_mask(alg: Any, ctx: Ctx, mask: dict[str, Any]) -> bool:
    """True when `mask` is the initial mask the algorithm derives for this client."""
    if alg.initial_mask is None:
        return False
    theta0 = initial_weights(ctx.sc, ctx.data.input_shape, ctx.data.num_classes)
    mine = alg.initial_mask(ctx.sc, theta0, model_names(ctx.sc, ctx.data.input_shape, ctx.data.num_classes), ctx.partition_id)
    return mine.keys() == mask.keys() and all(bool((mine[k] == mask[k]).all()) for k in mine)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, so its sampling is reproducible."""
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": partition_id(context)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round of the scenario's algorithm."""
    sc, ctx, state, made_in = _setup(msg, context, training=True)
    import torch

    c = ctx.core  # read once: core(sc) costs about 60 µs
    alg, wire = get_algorithm(c.federation.algorithm), c.wire
    if c.general.torch_threads > 0 and torch.get_num_threads() != c.general.torch_threads:
        # only when it changes: setting it, even to the same count, slows the ops that follow
        # (about 1 % of a small net's training call, measured; most of it in the model build)
        torch.set_num_threads(c.general.torch_threads)
    sent: dict[str, Any] = {}
    received, state = _received(msg, ctx, state, sent)
    # q-FFL weighs this reply by its loss at the model it received, measured before training
    loss_in = {"received-loss": received_loss(ctx, received)} if c.reliability.aggregation == "qffl" and received is not None else {}
    start_writes()  # the ticket files held by earlier messages are written while this one trains
    reply = alg.train(received, state, ctx)
    reply = replace(reply, metrics=reply.metrics | loss_in) if loss_in else reply
    # the download as decoded, with the version the server gives it (its round minus one): the base
    # of this reply's delta (wire-upload) and, kept, of the next download's (wire-download)
    base = base_of(received, sent.get("mask"), ctx.server_round - 1) if received is not None else None
    kept = reply.state
    if wire.wire_download == "delta" and base is not None:
        kept = replace(kept, base=base.weights, base_mask=base.mask, base_version=base.version)
    persist_state_(context, sc, kept, dict(msg.content["config"]), ctx.server_round, (state, made_in))
    content = RecordDict({"metrics": metrics_to_record(reply.metrics)})
    has = reply.weights is not None
    up_base = base if wire.wire_upload == "delta" else None
    content["arrays"] = encode_record(
        reply.weights, reply.mask, with_shapes=False, wire_dtype=wire.wire_dtype, codec=wire.wire_codec, base=up_base,
    ) if has else ArrayRecord()
    if alg.mask_posterior and reply.mask is not None:  # fedpm: the sampled mask's bits alone
        names = fedpm_network(sc, ctx.data.input_shape, ctx.data.num_classes)[1]
        content["arrays"] = encode_mask_upload(reply.mask, names, ctx.opts(FedPMOptions).fedpm_codec)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score this client's personal model on its own test split."""
    sc, ctx, state, _ = _setup(msg, context, training=False)
    alg, (received, state) = get_algorithm(ctx.core.federation.algorithm), _received(msg, ctx, state)
    personal = alg.personal(received, state, ctx)  # once: it may fine-tune
    content = RecordDict({"metrics": metrics_to_record(evaluate_client(alg, received, state, ctx, personal))})
    if int(msg.content["config"].get("send-ticket", 0)):
        # the run keeps every personal ticket, for re-evaluation and export
        mask = state.mask
        # personal-ticket prunes at evaluation, fedpm samples a mask: either way the mask is its kept weights
        if mask is None and (alg.sparse_upload or alg.mask_posterior):
            mask = {k: personal[0][k] != 0 for k in model_names(sc, ctx.data.input_shape, ctx.data.num_classes)}
        content["ticket"] = encode_record(personal[0], mask)
    return Message(content, reply_to=msg)
