"""The Flower ClientApp: a thin shell around fedlth.algorithms; state lives in Context.state."""

from __future__ import annotations

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


def partition_id(context: Context) -> int:
    """This node's partition (simulation: Flower's `partition-id`; deployment: node config)."""
    return int(context.node_config["partition-id"])


def _setup(msg: Message, context: Context) -> tuple[dict[str, Any], Ctx, ClientState]:
    sc = resolve(config_from_record(msg.content["scenario"]), source="server config")
    round_ = int(msg.content["config"]["server-round"])
    pid = partition_id(context)
    ctx = Ctx(sc=sc, data=client_data(sc, pid), partition_id=pid, server_round=round_)
    return sc, ctx, load_state(context)


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
    save_state_(context, reply.state)
    content = RecordDict({"metrics": metrics_to_record(reply.metrics)})
    has = reply.weights is not None
    content["arrays"] = encode_record(reply.weights, reply.mask, with_shapes=False) if has else ArrayRecord()
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score this client's personal model on its own test split."""
    sc, ctx, state = _setup(msg, context)
    metrics = evaluate_client(get_algorithm(sc["algorithm"]), _received(msg, ctx), state, ctx)
    return Message(RecordDict({"metrics": metrics_to_record(metrics)}), reply_to=msg)
