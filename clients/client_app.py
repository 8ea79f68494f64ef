"""The Flower ClientApp: a thin shell around fedlth.algorithms; state lives in Context.state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedlth.algorithms import ClientState, Ctx, evaluate_client, get_algorithm, initial_weights
from fedlth.client_data import client_data
from fedlth.records import (
    config_from_record,
    decode_record,
    encode_record,
    mask_from_record,
    mask_to_record,
    metrics_to_record,
    weights_from_record,
    weights_to_record,
)
from fedlth.scenario import resolve
from fedlth.state_store import load_state as load_state_file
from fedlth.state_store import save_state as save_state_file
from fedlth.state_store import state_tag

app = ClientApp()

_STATE = {"mask": "fedlth.mask", "personal": "fedlth.personal", "candidate": "fedlth.candidate"}
_META = "fedlth.meta"


def load_state(context: Context) -> ClientState:
    """The client's ticket as kept in Context.state (an empty state on first contact)."""
    st = context.state
    arrays = st.array_records
    meta = st.config_records.get(_META)
    return ClientState(
        mask=mask_from_record(arrays[_STATE["mask"]]) if _STATE["mask"] in arrays else None,
        personal=weights_from_record(arrays[_STATE["personal"]]) if _STATE["personal"] in arrays else None,
        candidate=mask_from_record(arrays[_STATE["candidate"]]) if _STATE["candidate"] in arrays else None,
        rounds=int(meta["rounds"]) if meta is not None else 0,
    )


def save_state_(context: Context, state: ClientState) -> None:
    """Write the client's ticket into Context.state, replacing what was there."""
    st = context.state
    for field, key in _STATE.items():
        value = getattr(state, field)
        if value is None:
            if key in st:
                del st[key]
        else:
            st[key] = mask_to_record(value) if field != "personal" else weights_to_record(value)
    st[_META] = ConfigRecord({"rounds": state.rounds})


def state_file(context: Context) -> Path | None:
    """Where a deployed node keeps its ticket (node config `state-dir`), if it has one."""
    folder = context.node_config.get("state-dir")
    return Path(str(folder)) / f"ticket-{partition_id(context)}.pt" if folder else None


def restore_state(context: Context, sc: dict[str, Any]) -> ClientState:
    """Context.state if it holds a ticket; else the node's state file (after a restart)."""
    if _META in context.state.config_records:
        return load_state(context)
    path = state_file(context)
    saved = load_state_file(path, state_tag(sc, partition_id(context))) if path else None
    return saved or ClientState()


def persist_state_(context: Context, sc: dict[str, Any], state: ClientState) -> None:
    """Keep the ticket in Context.state and, on a deployed node, in its state file."""
    save_state_(context, state)
    path = state_file(context)
    if path is not None:
        save_state_file(path, state, state_tag(sc, partition_id(context)))


def partition_id(context: Context) -> int:
    """This node's partition (simulation: Flower's `partition-id`; deployment: node config)."""
    return int(context.node_config["partition-id"])


def _setup(msg: Message, context: Context) -> tuple[dict[str, Any], Ctx, ClientState]:
    sc = resolve(config_from_record(msg.content["scenario"]), source="server config")
    round_ = int(msg.content["config"]["server-round"])
    pid = partition_id(context)
    ctx = Ctx(sc=sc, data=client_data(sc, pid), partition_id=pid, server_round=round_)
    return sc, ctx, restore_state(context, sc)


def _shapes(ctx: Ctx) -> dict[str, tuple[int, ...]]:
    theta0 = initial_weights(ctx.sc, ctx.data.input_shape, ctx.data.num_classes)
    return {k: tuple(v.shape) for k, v in theta0.items()}


def _received(msg: Message, ctx: Ctx):
    rec = msg.content.array_records.get("arrays")
    if rec is None or len(rec) == 0:
        return None
    return decode_record(rec, _shapes(ctx))[0]


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds, so its sampling is reproducible."""
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": partition_id(context)})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round of the scenario's algorithm."""
    sc, ctx, state = _setup(msg, context)
    import torch

    if sc["torch-threads"] > 0:
        torch.set_num_threads(sc["torch-threads"])
    reply = get_algorithm(sc["algorithm"]).train(_received(msg, ctx), state, ctx)
    persist_state_(context, sc, reply.state)
    content = RecordDict({"metrics": metrics_to_record(reply.metrics)})
    has = reply.weights is not None
    content["arrays"] = encode_record(reply.weights, reply.mask, with_shapes=False) if has else ArrayRecord()
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score this client's personal model on its own test split."""
    sc, ctx, state = _setup(msg, context)
    alg, received = get_algorithm(sc["algorithm"]), _received(msg, ctx)
    content = RecordDict({"metrics": metrics_to_record(evaluate_client(alg, received, state, ctx))})
    if int(msg.content["config"].get("send-ticket", 0)):
        # the run keeps every personal ticket, for re-evaluation and export
        content["ticket"] = encode_record(alg.personal(received, state, ctx), state.mask)
    return Message(content, reply_to=msg)
