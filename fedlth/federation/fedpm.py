"""FedPM (Isik et al., ICLR 2023): frozen random weights, Bernoulli mask scores, sampled-mask uplink, Beta posterior."""

from __future__ import annotations

import lzma
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from fedlth.learning.training import batches
from fedlth.tickets.bits import pack, unpack
from fedlth.tickets.masks import Mask, Weights

# Following BerivanIsik/sparse-random-networks (src/fedssm):
#   masked_layers.py  every conv/linear weight AND bias is frozen at ±c, c = e·sqrt(1/fan_in)
#                     ("ME_init"), and has a score tensor initialised N(0, 1); forward multiplies
#                     the frozen tensor by a Bernoulli(σ(score)) sample drawn per forward pass
#   random.py         Bern: forward torch.bernoulli(p), backward p · grad (the code's gradient)
#   utils.py          Adam, lr 0.1, on the scores only (the frozen tensors get no gradient)
#   client.py         upload: one Bernoulli(σ(score)) sample; 0 → ε, 1 → 1 − ε (ε = 0.01)
#   server.py         α, β reset to λ0 = 1 every round (update_prior's schedule is commented
#                     out), α += Σ uploads, β += K − Σ uploads, p = mode = (α − 1)/(α + β − 2),
#                     scores = logit(p) sent back
#   simulator.py      the global model is tested with sampled masks (ths=None)
CODECS = ("none", "lzma", "zlib")
KEY_PREFIX = "fedpm@"  # no tensor name holds "@" (fedlth.federation.wire reserves it)
_LZMA_PRESET = 9 | lzma.PRESET_EXTREME
# liblzma's dictionary size for each preset level (xz(1)'s table); LZMA_DICT_SIZE_MIN is 4 KiB
_PRESET_DICT = (1 << 18, 1 << 20, 1 << 21, 1 << 22, 1 << 22, 1 << 23, 1 << 23, 1 << 24, 1 << 25, 1 << 26)
_DICT_MIN = 1 << 12
_P_MIN = 1e-6  # probabilities are clamped before logit: a score of ±Inf would never move again


def upload_key(codec: str) -> str:
    """The one array name of a FedPM upload with `codec`."""
    if codec not in CODECS:
        raise ValueError(f"unknown fedpm codec {codec!r}; valid: {', '.join(CODECS)}")
    return KEY_PREFIX + ("bits" if codec == "none" else codec)


# --- the frozen random network ---------------------------------------------------------------


def masked_names(weights: Weights, prunable: Sequence[str]) -> list[str]:
    """The tensors that get scores: every prunable (conv/linear) weight and its module's bias, in state-dict order."""
    modules = {k.rpartition(".")[0] for k in prunable}
    chosen = set(prunable) | {f"{m}.bias" if m else "bias" for m in modules}
    return [k for k in weights if k in chosen]


def _fan_in(weight: Tensor) -> int:
    return int(weight[0].numel())  # in_features, or in_channels × kernel size


def frozen_weights(theta0: Weights, names: Sequence[str], init: str, generator: torch.Generator) -> Weights:
    """The random network FedPM never trains. init "signed-constant": each named tensor ±c with
    c = e·sqrt(1/fan_in) of its module, signs from `generator` (the code's ME_init); "model":
    θ0 as the model zoo initialises it. Every other tensor is θ0's."""
    if init == "model":
        return {k: v.clone() for k, v in theta0.items()}
    if init != "signed-constant":
        raise ValueError(f"unknown fedpm init {init!r}; valid: signed-constant, model")
    out = {k: v.clone() for k, v in theta0.items()}
    for name in names:
        module = name.rpartition(".")[0]
        weight = theta0[f"{module}.weight" if module else "weight"]
        c = math.e * math.sqrt(1.0 / _fan_in(weight))
        signs = torch.randint(0, 2, theta0[name].shape, generator=generator, dtype=torch.int64) * 2 - 1
        out[name] = (signs * c).to(theta0[name].dtype)
    return out


def network(theta0: Weights, prunable: Sequence[str], init: str, seed: int) -> tuple[Weights, list[str]]:
    """FedPM's frozen network and the names that get scores; the same on the server and on every
    client (signs drawn from a generator seeded by the scenario seed)."""
    names = masked_names(theta0, prunable)
    return frozen_weights(theta0, names, init, torch.Generator().manual_seed(seed)), names


def initial_probabilities(frozen: Weights, names: Sequence[str], generator: torch.Generator) -> Weights:
    """The server's first probabilities: σ(s), s ~ N(0, 1) per entry (the code's score init)."""
    return {k: torch.sigmoid(torch.randn(frozen[k].shape, generator=generator, dtype=frozen[k].dtype)) for k in names}


def scores_from_probabilities(probs: Weights) -> Weights:
    """Scores s with σ(s) = p: where a client's training starts from the server's probabilities."""
    return {k: torch.logit(p.float().clamp(_P_MIN, 1.0 - _P_MIN)) for k, p in probs.items()}


# --- local training of the scores ------------------------------------------------------------


class _Bernoulli(torch.autograd.Function):
    """A Bernoulli(p) sample whose backward passes p · grad, as the reference code's Bern does."""

    @staticmethod
    def forward(ctx: Any, p: Tensor, generator: torch.Generator) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(p)
        return torch.bernoulli(p, generator=generator)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (p,) = ctx.saved_tensors
        return p * grad, None


def sample_masks(probs: Weights, generator: torch.Generator) -> Mask:
    """One Bernoulli(p) mask per tensor (bool), drawn from `generator` in `probs` order."""
    return {k: torch.bernoulli(p.float(), generator=generator).bool() for k, p in probs.items()}


def threshold_masks(probs: Weights, threshold: float = 0.5) -> Mask:
    """p > threshold per entry: the code's deterministic alternative (`ths`)."""
    return {k: p > threshold for k, p in probs.items()}


def masked_weights(frozen: Weights, mask: Mask) -> Weights:
    """The frozen network with the masked-off entries at 0: a sparse network of random weights."""
    return {k: (v * mask[k].to(v.dtype) if k in mask else v.clone()) for k, v in frozen.items()}


def train_scores(
    net: nn.Module, frozen: Weights, scores: Weights, x: Tensor, y: Tensor, *,
    epochs: int, batch_size: int, lr: float, generator: torch.Generator, sampler: torch.Generator,
) -> tuple[Weights, float]:
    """Train the scores with Adam for `epochs` (batches from `generator`, masks from `sampler`,
    a fresh mask every forward pass); the frozen weights never change. Returns the trained
    scores (on the CPU) and the mean loss of the last epoch."""
    dev = next(iter(net.parameters())).device
    fixed = {k: v.to(dev) for k, v in frozen.items() if k not in scores}
    base = {k: frozen[k].to(dev) for k in scores}
    params = {k: s.detach().to(dev).clone().requires_grad_(True) for k, s in scores.items()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    x, y = x.to(dev), y.to(dev)
    net.train()
    last = float("nan")
    for _ in range(epochs):
        total, seen = 0.0, 0
        for xb, yb in batches(x, y, batch_size, generator):
            effective = {k: base[k] * _Bernoulli.apply(torch.sigmoid(s), sampler) for k, s in params.items()}
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(functional_call(net, {**fixed, **effective}, (xb,)), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
            seen += len(xb)
        last = total / max(seen, 1)
    return {k: p.detach().cpu() for k, p in params.items()}, last


# --- the uplink: one sampled mask, packed bits, optionally compressed -------------------------


def pack_masks(mask: Mask, names: Sequence[str]) -> np.ndarray:
    """The masks of `names`, flattened row-major and concatenated in that order, as packed bits (uint8)."""
    missing = [k for k in names if k not in mask]
    if missing or set(mask) - set(names):
        raise ValueError(f"mask names differ from FedPM's: missing {missing}, unknown {sorted(set(mask) - set(names))}")
    return pack(np.concatenate([mask[k].detach().cpu().numpy().astype(bool).ravel() for k in names]))


def unpack_masks(bits: np.ndarray, names: Sequence[str], shapes: Mapping[str, tuple[int, ...]]) -> Mask:
    """pack_masks inverted; ValueError for a wrong dtype, length or set padding bits."""
    sizes = [math.prod(shapes[k]) for k in names]
    flat = unpack(bits, sum(sizes), "mask bits")
    out: Mask = {}
    start = 0
    for k, n in zip(names, sizes, strict=True):
        out[k] = torch.from_numpy(flat[start : start + n].reshape(shapes[k]))
        start += n
    return out


def _lzma_filters(preset: int | None, size: int) -> list[dict[str, int]]:
    """Raw LZMA2 at `preset` (default 9e) with its dictionary cut to `size` bytes of data (at least
    4 KiB) when the data are shorter: setting up 9e's 64 MiB dictionary costs ~50 ms and ~670 MiB
    per call whatever the data's length (a device's mask upload is kilobytes). A dictionary as
    long as the data reaches every byte of it; the streams came out byte-identical to the full
    preset's on 300 payloads of 1 kB-500 kB (masks and float16 planes, presets 9e and 6). A raw
    stream carries no dictionary size and any decoder dictionary at least as long as the data
    decodes it, so older streams decode as before."""
    level = _LZMA_PRESET if preset is None else preset
    dict_size = min(_PRESET_DICT[level & 0xF], max(_DICT_MIN, size))
    return [{"id": lzma.FILTER_LZMA2, "preset": level, "dict_size": dict_size}]


def compress(data: bytes, codec: str, lzma_preset: int | None = None) -> bytes:
    """`data` through a standard codec (none, lzma raw LZMA2 at preset 9e or `lzma_preset`, zlib raw deflate at level 9)."""
    if codec == "none":
        return data
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(lzma_preset, len(data)))
    if codec == "zlib":
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush()
    raise ValueError(f"unknown fedpm codec {codec!r}; valid: {', '.join(CODECS)}")


def decompress(data: bytes, codec: str, size: int, lzma_preset: int | None = None) -> bytes:
    """compress inverted, refusing anything that does not decode to exactly `size` bytes (and
    never inflating more than that: a hostile payload can't make the server allocate more)."""
    if codec == "none":
        out, rest = data, b""
    elif codec == "lzma":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(lzma_preset, size))
        try:
            out = d.decompress(data, max_length=size + 1)
        except lzma.LZMAError as exc:
            raise ValueError(f"lzma: {exc}") from None
        rest = d.unused_data if d.eof else b"?"  # not at the end marker: truncated, or more than `size`
    elif codec == "zlib":
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(data, size + 1)
        except zlib.error as exc:
            raise ValueError(f"zlib: {exc}") from None
        rest = d.unconsumed_tail + d.unused_data
    else:
        raise ValueError(f"unknown fedpm codec {codec!r}; valid: {', '.join(CODECS)}")
    if len(out) != size or rest:
        raise ValueError(f"{codec} payload decodes to {len(out)}{'+' if rest else ''} bytes; expected {size}")
    return out


def encode_upload(mask: Mask, names: Sequence[str], codec: str) -> dict[str, np.ndarray]:
    """A client's upload: one uint8 array, the packed mask bits (through `codec`), nothing else."""
    raw = pack_masks(mask, names).tobytes()
    return {upload_key(codec): np.frombuffer(compress(raw, codec), dtype=np.uint8).copy()}


def decode_upload(arrays: Mapping[str, np.ndarray], names: Sequence[str], shapes: Mapping[str, tuple[int, ...]], codec: str) -> Mask:
    """The sampled mask of an upload; ValueError for any other content (weight values, a dense
    or non-binary mask, a wrong length or codec)."""
    key = upload_key(codec)
    other = sorted(set(arrays) - {key})
    if other or key not in arrays:
        raise ValueError(f"a FedPM upload is its sampled mask only, one array {key!r}; got {sorted(arrays)}")
    data = arrays[key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1:
        raise ValueError(f"{key!r} must be a 1-D uint8 array; got {getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}")
    size = -(-sum(math.prod(shapes[k]) for k in names) // 8)
    raw = decompress(data.tobytes(), codec, size)
    return unpack_masks(np.frombuffer(raw, dtype=np.uint8), names, shapes)


def binary_entropy(p: float) -> float:
    """H(p) in bits (0 at p = 0 or 1)."""
    return 0.0 if p <= 0.0 or p >= 1.0 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def upload_bits(mask: Mask, names: Sequence[str], codec: str, probs: Weights | None = None) -> dict[str, float]:
    """Bits per masked parameter of one upload: packed (raw), through `codec` (lzma when the
    wire sends raw bits, so the coded size is always reported), the paper's entropy estimate
    H(share of ones) — what an ideal coder with one global frequency would need — and, given the
    probabilities both ends know (`probs`, the server's), −mean log2 P(m | p): what an ideal
    arithmetic coder driven by them would need (an estimate; no such coder runs here)."""
    raw = pack_masks(mask, names).tobytes()
    n = sum(mask[k].numel() for k in names)
    ones = sum(int(mask[k].sum()) for k in names) / n
    coded = compress(raw, codec if codec != "none" else "lzma")
    out = {
        "mask-ones": ones, "mask-params": float(n), "bpp-raw": 8 * len(raw) / n, "bpp-coded": 8 * len(coded) / n,
        "bpp-entropy": binary_entropy(ones),
    }
    if probs is not None:
        nats = sum(float(-torch.where(mask[k], probs[k].double(), 1 - probs[k].double()).clamp_min(_P_MIN).log().sum()) for k in names)
        out["bpp-conditional"] = nats / math.log(2) / n
    return out


# --- the server: Beta posterior per entry ---------------------------------------------------


def prior(shapes: Mapping[str, tuple[int, ...]], lambda0: float = 1.0) -> tuple[Weights, Weights]:
    """α = β = λ0 everywhere (the code's λ0 = 1: a uniform prior)."""
    return (
        {k: torch.full(s, lambda0, dtype=torch.float64) for k, s in shapes.items()},
        {k: torch.full(s, lambda0, dtype=torch.float64) for k, s in shapes.items()},
    )


def soften(mask: Mask, epsilon: float) -> Weights:
    """A binary mask as the code counts it: 1 → 1 − ε, 0 → ε (so no probability reaches 0 or 1)."""
    return {k: torch.where(m, 1.0 - epsilon, epsilon).to(torch.float64) for k, m in mask.items()}


def beta_update(alpha: Weights, beta: Weights, masks: Sequence[Mask], epsilon: float) -> tuple[Weights, Weights]:
    """α += Σ_i m_i, β += Σ_i (1 − m_i) over the round's K uploads (each softened by ε); new dicts."""
    a = {k: v.clone() for k, v in alpha.items()}
    b = {k: v.clone() for k, v in beta.items()}
    for mask in masks:
        for k, v in soften(mask, epsilon).items():
            a[k] += v
            b[k] += 1.0 - v
    return a, b


def posterior_probabilities(alpha: Weights, beta: Weights, estimate: str) -> Weights:
    """The probabilities sent down (float32): the posterior mode (α − 1)/(α + β − 2), as the code,
    or the mean α/(α + β)."""
    if estimate == "mode":
        return {k: ((alpha[k] - 1) / (alpha[k] + beta[k] - 2)).float() for k in alpha}
    if estimate == "mean":
        return {k: (alpha[k] / (alpha[k] + beta[k])).float() for k in alpha}
    raise ValueError(f"unknown fedpm estimate {estimate!r}; valid: mode, mean")


def resets_before(server_round: int, every: int) -> bool:
    """Whether the prior is reset before aggregating round `server_round` (1-based): every
    `every` rounds (1: every round, as the code; 0: never, the posterior keeps every round)."""
    return every > 0 and (server_round - 1) % every == 0


def upload_summary(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Bits per masked parameter over every accepted upload of a run: the real wire bytes
    (count_bytes, framing included), and the clients' raw / coded / entropy figures."""
    ups = [m for r in rounds for m in r.get("train", {}).values() if "mask-params" in m]
    if not ups:
        return None
    params = sum(m["mask-params"] for m in ups)
    return {
        "uploads": len(ups),
        "wire": 8 * sum(m.get("upload_bytes", 0) for m in ups) / params,
        **{k: sum(m[f"bpp-{k}"] * m["mask-params"] for m in ups) / params for k in ("raw", "coded", "entropy", "conditional")},
        "mask_ones": sum(m["mask-ones"] * m["mask-params"] for m in ups) / params,
    }
