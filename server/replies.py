"""One check for every reply a client sends (query, train, evaluate) before the server uses any of it.

Nothing in a reply is trusted: the server attributes it to the node its instruction went to,
and a reply that fails a check raises ReplyError with a reason; the strategy then rejects it
for that client only. Scores may be NaN where the client has no data to score on (a client
with no test samples), but never ±Inf; counts are whole numbers; fractions lie in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import ArrayRecord, Message

from fedlth.evaluation.evaluators import COUNTS_PREFIX
from fedlth.federation.records import decode_mask_upload, decode_record, record_bytes
from fedlth.federation.wire_delta import Base
from fedlth.tickets.masks import Mask, Weights

QUERY, TRAIN, EVALUATE = "query", "train", "evaluate"
MAX_EXAMPLES = 2**40  # no client holds a trillion examples; sums of counts stay far from int64's end


class ReplyError(ValueError):
    """A client's reply can't be used; the message says why."""


def _whole(x: float) -> bool:
    return math.isfinite(x) and float(x).is_integer() and x >= 0


def _count(x: float) -> bool:
    return _whole(x) and x <= MAX_EXAMPLES


def _fraction(x: float) -> bool:
    return 0.0 <= x <= 1.0


def _score(x: float) -> bool:
    return math.isnan(x) or 0.0 <= x <= 1.0


def _loss(x: float) -> bool:
    return math.isnan(x) or x >= 0.0  # a diverged model's loss may be +Inf


def _finite_loss(x: float) -> bool:
    return math.isfinite(x) and x >= 0.0  # q-FFL raises it to the power q: NaN or Inf would poison the step


def _flag(x: float) -> bool:
    return x in (0, 1)


def _not_inf(x: float) -> bool:
    return not math.isinf(x)


Rule = tuple[Callable[[float], bool], str]
WHOLE: Rule = (_whole, "a whole number >= 0")
RULES: dict[str, Rule] = {
    "partition-id": WHOLE,
    "num-examples": (_count, f"a whole number in [0, {MAX_EXAMPLES}]"),
    "density": (_fraction, "a number in [0, 1]"),
    "accuracy": (_score, "a number in [0, 1] (NaN: nothing to score)"),
    "val-accuracy": (_score, "a number in [0, 1] (NaN: nothing to score)"),
    "global-accuracy": (_score, "a number in [0, 1] (NaN: nothing to score)"),
    "gate-accuracy": (_score, "a number in [0, 1] (NaN: nothing to score)"),
    "mask-distance": (_fraction, "a number in [0, 1]"),
    "pruned": (_flag, "0 or 1"),
    "loss": (_loss, "a number >= 0 or NaN"),
    "train-loss": (_loss, "a number >= 0 or NaN"),
    "head-loss": (_loss, "a number >= 0 or NaN"),
    "personal-loss": (_loss, "a number >= 0 or NaN"),
    "received-loss": (_finite_loss, "a finite number >= 0"),
    "mask-ones": (_fraction, "a number in [0, 1]"),
}
OTHER: Rule = (_not_inf, "a number or NaN, not ±Inf")
REQUIRED = {
    QUERY: ("partition-id",),
    TRAIN: ("partition-id", "num-examples"),
    EVALUATE: ("partition-id", "num-examples", "accuracy", "density"),
}
# the records each kind may carry besides "metrics" (an evaluate reply: the ticket, when asked)
ARRAYS = {QUERY: (), TRAIN: ("arrays",), EVALUATE: ("ticket",)}


def rule_for(key: str) -> Rule:
    """The check one metric must pass: by name, confusion counts whole, anything else not ±Inf."""
    if key.startswith(COUNTS_PREFIX + "."):
        return WHOLE
    return RULES.get(key, OTHER)


def check_metrics(metrics: Mapping[str, float], kind: str, required: tuple[str, ...] = ()) -> None:
    """Raise ReplyError unless every metric is a number its rule allows and none required is missing."""
    missing = [k for k in REQUIRED[kind] + required if k not in metrics]
    if missing:
        raise ReplyError(f"{kind} reply lacks {', '.join(missing)}")
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ReplyError(f"metric {key!r} is {type(value).__name__}; expected a number")
        ok, allowed = rule_for(key)
        if not ok(value):
            raise ReplyError(f"metric {key!r} is {value!r}; allowed: {allowed}")
    if kind == EVALUATE:
        _check_scores(metrics)


def _check_scores(metrics: Mapping[str, float]) -> None:
    """A score is NaN exactly when there is nothing to score: else a client with no test data
    could add any accuracy to the federation's mean."""
    empty = metrics["num-examples"] == 0
    for key in ("accuracy", "global-accuracy"):
        if key in metrics and math.isnan(metrics[key]) != empty:
            raise ReplyError(f"metric {key!r} is {metrics[key]!r} with num-examples = {metrics['num-examples']}")


def reply_metrics(reply: Message, kind: str, required: tuple[str, ...] = ()) -> dict[str, float]:
    """The metrics of a reply of `kind` after every check on them and on its record names."""
    if reply.has_error():
        raise ReplyError(f"client error: {reply.error.reason}")
    content = reply.content
    if "metrics" not in content.metric_records:
        raise ReplyError("no metrics")
    unexpected = sorted(set(content) - {"metrics", *ARRAYS[kind]})
    if unexpected:
        raise ReplyError(f"unexpected records in a {kind} reply: {unexpected}")
    metrics = dict(content["metrics"].items())
    check_metrics(metrics, kind, required)
    return metrics


def claimed_partition(metrics: Mapping[str, float], pid: int, node: int) -> None:
    """Raise ReplyError when the reply names another partition than the one `node` is bound to."""
    if int(metrics["partition-id"]) != pid:
        raise ReplyError(f"claims partition {int(metrics['partition-id'])} but node {node} holds {pid}")


def payload_bytes(reply: Message) -> int:
    """Bytes of every ArrayRecord in the reply (0 for an error reply)."""
    if reply.has_error():
        return 0
    return sum(record_bytes(r) for r in reply.content.array_records.values())


def decode_payload(
    record: ArrayRecord | None, shapes: Mapping[str, tuple[int, ...]], limit: int, dtypes: Mapping[str, Any] | None = None,
    base: Base | None = None,
) -> tuple[Weights, Mask]:
    """Weights and mask from a reply's ArrayRecord (narrow values widened to `dtypes`), refused
    when missing, too large or malformed, or a delta against anything but `base` (what the
    server sent this client this round)."""
    if record is None or len(record) == 0:
        raise ReplyError("no weights in the reply")
    size = record_bytes(record)
    if size > limit:
        raise ReplyError(f"payload of {size} bytes exceeds the limit of {limit}")
    try:
        return decode_record(record, shapes, dtypes, base)
    except Exception as exc:  # hostile arrays can fail numpy or the decoder in many ways
        raise ReplyError(f"{type(exc).__name__}: {exc}") from None


def decode_mask_payload(
    record: ArrayRecord | None, names: list[str], shapes: Mapping[str, tuple[int, ...]], limit: int, codec: str
) -> Mask:
    """A FedPM reply's sampled mask, refused when missing, too large, or holding anything but
    the packed bits (weight values, a dense or non-binary mask, a wrong length or codec)."""
    if record is None or len(record) == 0:
        raise ReplyError("no mask in the reply")
    size = record_bytes(record)
    if size > limit:
        raise ReplyError(f"payload of {size} bytes exceeds the limit of {limit}")
    try:
        return decode_mask_upload(record, names, shapes, codec)
    except Exception as exc:  # hostile arrays can fail numpy or the decoder in many ways
        raise ReplyError(f"{type(exc).__name__}: {exc}") from None
