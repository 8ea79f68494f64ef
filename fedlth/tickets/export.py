"""Compact ticket files for edge deployment: packed mask + kept values, pruned channels cut out."""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from fedlth.federation.wire import WireError, to_numpy
from fedlth.learning.models import MODELS, build_model
from fedlth.reporting.io import write_bytes_atomic
from fedlth.tickets.bits import pack, unpack
from fedlth.tickets.masks import Mask, MaskError, Weights, apply_mask, density, validate_mask

MAGIC = b"FLTHTKT\x00"
FORMAT, VERSION = "fedlth-export", 1
_HEAD = struct.Struct("<8sI")  # magic, length of the JSON header that follows
_MAX_HEADER = 64 * 2**20
_DTYPES = ("float16", "float32", "float64", "int32", "int64", "uint8", "bool")
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d)
# Modules that act on each channel alone, so a cut channel's values never mix with kept ones.
_PER_CHANNEL = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Dropout,
    nn.Identity, *_BNS,
)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)


class ExportError(ValueError):
    """A ticket can't be exported, or a file is missing, damaged or not a fedlth export."""


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild the architecture: a fedlth.learning.models name and its constructor arguments."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True)
class Exported:
    """A decoded export file: its header, the (possibly shrunk) state dict and its mask."""

    header: dict[str, Any]
    weights: Weights
    mask: Mask


class BiasMapConv1d(nn.Conv1d):
    """Conv1d plus a fixed output map: what cut input channels added through zero padding."""

    def __init__(self, *args: Any, map_shape: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("bias_map", torch.zeros(map_shape))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).add_(self.bias_map)  # in place: the conv output is fresh


class BiasMapConv2d(nn.Conv2d):
    """Conv2d plus a fixed output map: what cut input channels added through zero padding."""

    def __init__(self, *args: Any, map_shape: tuple[int, ...], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("bias_map", torch.zeros(map_shape))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).add_(self.bias_map)  # in place: the conv output is fresh


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _fresh(spec: ModelSpec) -> nn.Module:
    # Its random init is overwritten at once: fork the RNG so the caller's stream is untouched.
    # (The meta device would skip the init, but its first use imports for seconds.)
    if spec.name not in MODELS:
        raise ExportError(f"unknown model {spec.name!r}; known: {sorted(MODELS)}")
    try:
        with torch.random.fork_rng(devices=[]):
            return build_model(spec.name, tuple(spec.input_shape), spec.num_classes)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ExportError(_one_line(f"can't build {spec.name!r} for {spec.input_shape}: {exc}")) from None


def _materialize(model: nn.Module, state: Weights) -> nn.Module:
    """The freshly built model with `state` as its tensors (no copy), in eval mode."""
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise ExportError(_one_line(f"the tensors do not fit the model: {exc}")) from None
    return model.eval()


def _trace(model: nn.Sequential, input_shape: tuple[int, ...]) -> dict[int, tuple[tuple, tuple]]:
    """Input and output shape of every child of the model for one sample."""
    shapes: dict[int, tuple[tuple, tuple]] = {}

    def hook(k: int):
        return lambda _m, inp, out: shapes.__setitem__(k, (tuple(inp[0].shape), tuple(out.shape)))

    handles = [child.register_forward_hook(hook(k)) for k, child in enumerate(model)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _cut_blocker(mods: list[nn.Module], a: int, b: int, shapes: dict) -> str | None:
    """Why layer a's channels can't be cut with layer b as the next consumer; None when they can."""
    first, nxt = mods[a], mods[b]
    for layer in (first, nxt):
        if not isinstance(layer, nn.Linear) and (layer.groups != 1 or layer.padding_mode != "zeros"):
            return f"layer {mods.index(layer)} has groups > 1 or non-zero padding"
    between = mods[a + 1 : b]
    allowed = _PER_CHANNEL if isinstance(first, nn.Linear) else (*_PER_CHANNEL, *_POOLS)
    odd = [type(m).__name__ for m in between if not isinstance(m, (*allowed, nn.Flatten))]
    if odd:
        return f"{odd[0]} between layers {a} and {b}"
    channels = shapes[a][1][1]
    if any(isinstance(m, _BNS) and m.num_features != channels for m in between):
        return f"a BatchNorm between layers {a} and {b} does not match {channels} channels"
    flattens = [m for m in between if isinstance(m, nn.Flatten)]
    into = shapes[b][0]
    if isinstance(first, nn.Linear):
        ok = isinstance(nxt, nn.Linear) and not flattens and len(into) == 2 and into[1] == channels
    elif isinstance(nxt, nn.Linear):
        # Flatten keeps channels outermost, so channel c owns one contiguous block of features.
        ok = len(flattens) == 1 and flattens[0].start_dim == 1 and flattens[0].end_dim == -1
        ok = ok and len(into) == 2 and into[1] % channels == 0
    else:
        ok = not flattens and into[1] == channels
    return None if ok else f"layers {a} and {b} are not joined channel to channel"


def _zero_channels(x: Tensor, kept: Tensor, channels: int) -> Tensor:
    """x with the features of the kept channels set to 0 (channels outermost after the batch)."""
    out = x.reshape(x.shape[0], channels, -1).clone()
    out[:, kept] = 0
    return out.reshape(x.shape)


def _no_bias(layer: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight)
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    return conv(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _take_inputs(t: Tensor, kept: Tensor, channels: int) -> Tensor:
    """The slices of a next-layer weight (or mask) that read the kept channels."""
    out = t.shape[0]
    picked = t.reshape(out, channels, -1)[:, kept]
    return picked.reshape(out, -1) if t.dim() == 2 else picked.reshape(out, len(kept), *t.shape[2:])


@torch.no_grad()
def _shrink(
    model: nn.Sequential, weights: Weights, mask: Mask, input_shape: tuple[int, ...]
) -> tuple[Weights, Mask, dict[str, dict], list[str]]:
    """Cut every output channel whose mask row is empty; returns new tensors, mask, plan, notes.

    A cut channel still emits something: its bias (plus any folded map), through BatchNorm,
    activation and pooling. That output is the same for every input, so its effect on the next
    layer is computed once and added there: to the bias where it is the same at every position,
    else as a fixed map (a zero-padded conv sees a constant channel differently at the borders).
    Exact up to float summation order. The last layer keeps all outputs: they are the logits.
    """
    mods = list(model)
    shapes = _trace(model, input_shape)
    w, m = dict(weights), dict(mask)
    layers = [k for k, mod in enumerate(mods) if isinstance(mod, _LAYERS)]
    extra: dict[int, Tensor] = {}  # layer -> input-independent addition to its output
    plan: dict[str, dict] = {}
    notes: list[str] = []
    for a, b in zip(layers, layers[1:], strict=False):
        key = f"{a}.weight"
        if key not in m:
            continue
        rows = m[key].reshape(m[key].shape[0], -1).any(dim=1)
        if bool(rows.all()):
            continue
        blocker = _cut_blocker(mods, a, b, shapes)
        if blocker:
            notes.append(f"layer {a} keeps its pruned channels: {blocker}")
            continue
        if not bool(rows.any()):
            rows = rows.clone()
            rows[0] = True  # a layer with no channel at all would not be a layer
        kept = rows.nonzero().squeeze(1)
        out_shape = shapes[a][1]
        channels = out_shape[1]
        emitted = torch.zeros(out_shape, dtype=w[key].dtype)
        if f"{a}.bias" in w:
            emitted = emitted + w[f"{a}.bias"].reshape(1, channels, *[1] * (len(out_shape) - 2))
        if a in extra:
            emitted = emitted + extra[a]
        for k in range(a + 1, b):
            emitted = mods[k](emitted)
        gone = _no_bias(mods[b], _zero_channels(emitted, kept, channels), w[f"{b}.weight"])
        extra[b] = extra[b] + gone[0] if b in extra else gone[0]

        w[key], m[key] = w[key][kept], m[key][kept]
        if f"{a}.bias" in w:
            w[f"{a}.bias"] = w[f"{a}.bias"][kept]
        if a in extra:
            extra[a] = extra[a][kept]
        for k in range(a + 1, b):
            if isinstance(mods[k], _BNS):
                for part in ("weight", "bias", "running_mean", "running_var"):
                    if f"{k}.{part}" in w:
                        w[f"{k}.{part}"] = w[f"{k}.{part}"][kept]
                plan[str(k)] = {"features": len(kept)}
        nxt = f"{b}.weight"
        w[nxt] = _take_inputs(w[nxt], kept, channels)
        if nxt in m:
            m[nxt] = _take_inputs(m[nxt], kept, channels)
        plan[str(a)] = {"kept": kept.tolist()}

    maps: dict[int, tuple[int, ...]] = {}
    for b, e in extra.items():
        if not bool(e.any()):
            continue
        flat = e.reshape(e.shape[0], -1)
        if bool((flat == flat[:, :1]).all()):
            w[f"{b}.bias"] = w.get(f"{b}.bias", torch.zeros(e.shape[0])) + flat[:, 0]
        else:
            w[f"{b}.bias_map"] = e.contiguous()
            maps[b] = tuple(e.shape)
    for k in layers:
        weight, mod = w[f"{k}.weight"], mods[k]
        has_bias = f"{k}.bias" in w
        changed = tuple(weight.shape) != tuple(mod.weight.shape) or has_bias != (mod.bias is not None)
        if changed or k in maps or str(k) in plan:
            entry = plan.setdefault(str(k), {})
            entry |= {"in": int(weight.shape[1]), "out": int(weight.shape[0]), "bias": has_bias}
            entry["bias_map"] = list(maps[k]) if k in maps else None
    return w, m, plan, notes


def _resize(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """The freshly built model with the planned layers swapped for smaller ones."""
    if plan and not isinstance(model, nn.Sequential):
        raise ExportError("the file shrinks layers of a model that is not an nn.Sequential")
    with torch.random.fork_rng(devices=[]):
        for key, p in plan.items():
            k = int(key)
            old = model[k]
            if isinstance(old, _BNS):
                model[k] = type(old)(int(p["features"]), old.eps, old.momentum, old.affine, old.track_running_stats)
            elif isinstance(old, nn.Linear):
                model[k] = nn.Linear(int(p["in"]), int(p["out"]), bias=bool(p["bias"]))
            elif isinstance(old, nn.Conv1d | nn.Conv2d):
                args = (int(p["in"]), int(p["out"]), old.kernel_size, old.stride, old.padding, old.dilation,
                        old.groups, bool(p["bias"]), old.padding_mode)
                if p.get("bias_map"):
                    cls = BiasMapConv1d if isinstance(old, nn.Conv1d) else BiasMapConv2d
                    model[k] = cls(*args, map_shape=tuple(int(s) for s in p["bias_map"]))
                else:
                    model[k] = type(old)(*args)
            else:
                raise ExportError(f"the file resizes module {k}, a {type(old).__name__}")
    return model


def _array(t: Tensor, name: str) -> np.ndarray:
    try:
        a = to_numpy(t, name)
    except WireError:  # bfloat16 and friends have no numpy dtype
        raise ExportError(f"{name!r} has dtype {t.dtype}; supported: {', '.join(_DTYPES)}") from None
    if a.dtype.name not in _DTYPES:
        raise ExportError(f"{name!r} has dtype {a.dtype.name}; supported: {', '.join(_DTYPES)}")
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def _pack(meta: dict[str, Any], weights: Weights, mask: Mask) -> bytes:
    """Header + data: each masked tensor as packed bits and kept values, everything else dense."""
    entries, chunks = [], []
    for name, t in weights.items():
        a = _array(t, name)
        entry: dict[str, Any] = {"name": name, "shape": list(a.shape), "dtype": a.dtype.name}
        mk = mask.get(name)
        if mk is None or bool(mk.all()):
            # A fully kept tensor goes dense: its bits would only add 1/32 to its size.
            entry["enc"] = "dense" if mk is None else "full"
            chunks.append(a.tobytes())
        else:
            keep = mk.detach().cpu().numpy()
            entry |= {"enc": "bits", "kept": int(keep.sum())}
            chunks += [pack(keep).tobytes(), a[keep].tobytes()]
        entries.append(entry)
    raw = b"".join(chunks)
    squeezed = zlib.compress(raw, 9)
    zipped = len(squeezed) < len(raw)
    data = squeezed if zipped else raw
    header = {**meta, "tensors": entries, "data_bytes": len(raw),
              "compression": "zlib" if zipped else "none", "crc32": zlib.crc32(data)}
    text = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, len(text)) + text + data


def _max_diff(a: nn.Module, b: nn.Module, spec: ModelSpec) -> float:
    x = torch.randn(4, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ya, yb = a(x), b(x)
    scale = max(1.0, float(ya.abs().max()))
    return float((ya - yb).abs().max()) / scale


def export_ticket(
    weights: Weights,
    mask: Mask,
    spec: ModelSpec,
    *,
    shrink: bool | None = None,
    meta: dict[str, Any] | None = None,
) -> bytes:
    """The bytes of a compact ticket file for (weights, mask) of the model `spec` describes.

    Pruned positions are dropped (the ticket holds exact zeros there). `shrink`: True cuts
    output channels whose mask rows are empty, False never does, None (default) cuts them
    unless that makes the file larger. `meta` adds JSON-able fields to the header.
    """
    try:
        validate_mask(mask, weights)
    except MaskError as exc:
        raise ExportError(str(exc)) from None
    masked = apply_mask(weights, mask)
    full = _materialize(_fresh(spec), masked)
    n_dense = sum(p.numel() for p in full.parameters())
    # what the ticket keeps, apart from how many parameters the saved model has (pruned zeros included)
    counts = {"prunable": sum(m.numel() for m in mask.values()), "kept": sum(int(m.sum()) for m in mask.values())}
    header = {
        "format": FORMAT, "version": VERSION, **(meta or {}),
        "model": {"name": spec.name, "input_shape": list(spec.input_shape), "num_classes": spec.num_classes},
        "density": density(mask), "dense_bytes": sum(a.numel() * a.element_size() for a in masked.values()),
    }

    def plain(notes: list[str]) -> bytes:
        params = {"dense": n_dense, "exported": n_dense, **counts}
        return _pack({**header, "shrunk": {}, "notes": notes, "params": params}, masked, mask)

    if shrink is False:
        return plain(["not shrunk: shrink was turned off"])
    if not isinstance(full, nn.Sequential):
        return plain([f"not shrunk: {type(full).__name__} is not an nn.Sequential"])
    w, m, plan, notes = _shrink(full, masked, mask, spec.input_shape)
    if not plan:
        return plain(notes)
    small = _materialize(_resize(_fresh(spec), plan), w)
    diff = _max_diff(full, small, spec)
    if diff > 1e-4:  # a guard against a bug in _shrink: never ship a model that predicts differently
        return plain([*notes, f"not shrunk: the shrunk model differed by {diff:.2g}"])
    params = {"dense": n_dense, "exported": sum(p.numel() for p in small.parameters()), **counts}
    cut = _pack({**header, "shrunk": plan, "notes": notes, "params": params}, w, m)
    if shrink is None:
        flat = plain([*notes, "not shrunk: cutting channels would make the file larger"])
        if len(flat) < len(cut):
            return flat
    return cut


def _split(blob: bytes, where: str) -> tuple[dict[str, Any], bytes]:
    if len(blob) < _HEAD.size or blob[: len(MAGIC)] != MAGIC:
        raise ExportError(f"{where} is not a fedlth export file (no {MAGIC!r} magic)")
    _, n = _HEAD.unpack_from(blob)
    if n > min(_MAX_HEADER, len(blob) - _HEAD.size):
        raise ExportError(f"{where} is truncated or damaged (header of {n} bytes)")
    try:
        header = json.loads(blob[_HEAD.size : _HEAD.size + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExportError(f"{where} has a damaged header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ExportError(f"{where} is not a fedlth export file")
    if header.get("version") != VERSION:
        raise ExportError(f"{where} has format version {header.get('version')!r}; this fedlth reads {VERSION}")
    return header, blob[_HEAD.size + n :]


def _inflate(header: dict[str, Any], data: bytes) -> bytes:
    if zlib.crc32(data) != header["crc32"]:
        raise ExportError("its data is damaged (checksum mismatch)")
    size = int(header["data_bytes"])
    if header["compression"] == "none":
        raw = data
    elif header["compression"] == "zlib":
        d = zlib.decompressobj()
        raw = d.decompress(data, size)  # bounded: a damaged size can't make it allocate more
        if not d.eof or d.unconsumed_tail:
            raise ExportError("its data is longer than the header says")
    else:
        raise ExportError(f"unknown compression {header['compression']!r}")
    if len(raw) != size:
        raise ExportError(f"its data has {len(raw)} bytes; the header says {size}")
    return raw


def _tensors(header: dict[str, Any], raw: bytes) -> tuple[Weights, Mask]:
    weights: Weights = {}
    mask: Mask = {}
    offset = 0

    def take(dtype: np.dtype, count: int) -> np.ndarray:
        nonlocal offset
        end = offset + count * dtype.itemsize
        if end > len(raw):
            raise ExportError("its data is shorter than its tensors need")
        a = np.frombuffer(raw, dtype, count, offset)
        offset = end
        return a.astype(dtype.newbyteorder("="))  # a private, aligned, native-order copy

    for e in header["tensors"]:
        name, enc, dtype_name = str(e["name"]), e["enc"], e["dtype"]
        shape = tuple(int(s) for s in e["shape"])
        if name in weights or dtype_name not in _DTYPES or any(s < 0 for s in shape):
            raise ExportError(f"tensor {name!r} is described wrongly")
        dtype, n = np.dtype(dtype_name).newbyteorder("<"), math.prod(shape)
        if enc in ("dense", "full"):
            a = take(dtype, n).reshape(shape)
            if enc == "full":
                mask[name] = torch.ones(shape, dtype=torch.bool)
        elif enc == "bits":
            kept = int(e["kept"])
            try:
                keep = unpack(take(np.dtype(np.uint8), -(-n // 8)), n, f"the mask of {name!r}").reshape(shape)
            except ValueError as err:
                raise ExportError(str(err)) from None
            if int(keep.sum()) != kept:
                raise ExportError(f"the mask of {name!r} does not match its {kept} kept values")
            a = np.zeros(shape, dtype.newbyteorder("="))
            a[keep] = take(dtype, kept)
            mask[name] = torch.from_numpy(keep)
        else:
            raise ExportError(f"tensor {name!r} has unknown encoding {enc!r}")
        weights[name] = torch.from_numpy(a)
    if offset != len(raw):
        raise ExportError(f"its data has {len(raw) - offset} bytes no tensor claims")
    return weights, mask


def read_ticket(source: str | Path | bytes) -> Exported:
    """Decode an export file (or its bytes); plain numpy and JSON, no code is executed."""
    if isinstance(source, bytes):
        blob, where = source, "the data"
    else:
        path = Path(source)
        where = repr(str(path))
        if not path.is_file():
            raise ExportError(f"no ticket file {where}")
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise ExportError(f"can't read {where}: {exc.strerror}") from None
    header, data = _split(blob, where)
    try:
        weights, mask = _tensors(header, _inflate(header, data))
    except ExportError as exc:
        raise ExportError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError, zlib.error) as exc:
        raise ExportError(_one_line(f"{where} has a damaged header or data: {exc!r}")) from None
    return Exported(header, weights, mask)


def spec_of(header: dict[str, Any]) -> ModelSpec:
    """The model description an export file's header carries."""
    try:
        model = header["model"]
        return ModelSpec(str(model["name"]), tuple(int(s) for s in model["input_shape"]), int(model["num_classes"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"the header's model description is damaged: {exc!r}") from None


def load_ticket(path: str | Path) -> nn.Module:
    """A plain CPU torch module (eval mode) from an export file; no Flower needed."""
    ex = read_ticket(path)
    try:
        model = _resize(_fresh(spec_of(ex.header)), dict(ex.header.get("shrunk") or {}))
        return _materialize(model, ex.weights)
    except ExportError as exc:
        raise ExportError(f"{str(path)!r}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ExportError(_one_line(f"{str(path)!r} has a damaged layer plan: {exc!r}")) from None


def _ticket_ids(folder: Path) -> list[int]:
    ids = []
    for p in folder.glob("client-*.pt"):
        suffix = p.stem.removeprefix("client-")
        if suffix.isdigit():
            ids.append(int(suffix))
    return sorted(ids)


def export_line(head: dict[str, Any], out: Path) -> str:
    """`fedlth export`'s report: the kept weights and the model's parameter count, each named."""
    params = head["params"]
    layers = sum(1 for p in head["shrunk"].values() if "kept" in p)
    kept = (
        f"ticket keeps {params['kept']:,} of {params['prunable']:,} prunable weights (density {head['density']:.3f})"
        if "kept" in params else f"ticket density {head['density']:.3f}"  # files written before the counts
    )
    model = f"model {params['dense']:,} parameters"
    if params["exported"] != params["dense"]:
        model += f", {params['exported']:,} with {layers} layer(s) cut to their kept channels"
    return (
        f"client {head['client']}: {kept}; {model} (pruned zeros included); "
        f"file {head['file_bytes']:,} bytes (dense tensors {head['dense_bytes']:,}) -> {out}"
    )


def export_run_ticket(
    run_dir: Path, client: str | int, out: Path, *, force: bool = False, shrink: bool | None = None
) -> dict[str, Any]:
    """Write client `client`'s ticket of a finished run to `out`; returns the file's header.

    Every check runs before anything is written, and the write is atomic.
    """
    from fedlth.config.component_options import CentralTicketOptions
    from fedlth.config.core_options import core
    from fedlth.config.options import options
    from fedlth.config.scenario import load_scenario
    from fedlth.data.client_data import dataset_info
    from fedlth.data.datasets import DatasetUnavailableError
    from fedlth.tickets.saved import load_ticket_file, ticket_path

    if out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a folder; give a file name")
    if out.exists() and not force:
        raise ExportError(f"{str(out)!r} exists; pass --force to overwrite it")
    # The same checks and words as `fedlth evaluate` (fedlth.evaluation.reevaluate, which imports far more).
    if not run_dir.is_dir():
        raise ExportError(f"run folder {str(run_dir)!r} does not exist")
    if not (run_dir / "scenario.toml").is_file():
        raise ExportError(f"{str(run_dir)!r} has no scenario.toml: not a fedlth run folder")
    folder = run_dir / "tickets"
    if not folder.is_dir():
        raise ExportError(f"{str(run_dir)!r} has no tickets/ (the run had save-tickets = false, or did not finish)")
    ids = _ticket_ids(folder)
    valid = ", ".join(map(str, ids)) or "none"
    try:
        pid = int(str(client).strip())
    except ValueError:
        raise ExportError(f"--client must be a client id (an integer); got {client!r}; valid ids: {valid}") from None
    if pid not in ids:
        raise ExportError(f"client {pid} has no ticket in {str(folder)!r}; valid ids: {valid}")
    source = ticket_path(folder, pid)
    if out.resolve() == source.resolve():
        raise ExportError(f"--out {str(out)!r} is the run's own ticket file")
    try:
        sc = load_scenario(run_dir / "scenario.toml")
        weights, mask = load_ticket_file(source)
        shape, classes = dataset_info(sc)
    except (ValueError, DatasetUnavailableError) as exc:  # ScenarioError, TicketFileError, data settings
        raise ExportError(_one_line(str(exc))) from None
    c = core(sc)
    run = {  # the run the ticket came from, as the file records it
        "name": c.general.name, "dataset": c.data.dataset, "algorithm": c.federation.algorithm,
        "pruner": options(sc, CentralTicketOptions).pruner, "seed": c.general.seed,
    }
    spec = ModelSpec(c.training.model, tuple(shape), int(classes))
    blob = export_ticket(weights, mask, spec, shrink=shrink, meta={"client": pid, "run": run})
    write_bytes_atomic(out, blob)
    return {**_split(blob, repr(str(out)))[0], "file_bytes": len(blob)}
