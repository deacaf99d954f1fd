"""What one serving step costs: the roofline analyzer on the batch the step runs, or a measured cost table.

A continuous-batching engine runs *iterations*: each step pushes some sequences' next token (decode) and some
prompts' chunks (prefill) through the model at once [Yu et al. 2022; Agrawal et al. 2024]. Its cost has three
parts. Every *token* in the step goes through the same linear layers, norms and activations, so those costs
depend on the step's token count ``N`` (weights are read once per step, whatever ``N``). *Attention* depends on
each sequence's own query tokens and context. The *head* (``lm_head``) runs only on the rows that sample a token
(the analyzer applies the final norm to every token, so it counts with the first part). :class:`RooflineStepCost` takes the first and last from :func:`unveiled.analyze` (per operator,
at ``N`` tokens) and attention from the analyzer's :func:`~unveiled.analyzer.attention_cost`, with decode and
prefill attention as two kernels (as engines run them); each operator's time is the roofline's
``max(flops / peak, bytes / bandwidth)``. For a uniform batch it equals :func:`unveiled.analyze` exactly; the
tests check that on random batches. :class:`LinearStepCost` is the measured alternative: a step time linear
in a few features of the step, fitted to timed steps of a real engine (as Vidur does with profiles
[Agrawal et al. 2024b]). Introduced in Chapter 9.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._validate import check_int, check_positive
from ..analyzer import analyze, attention_cost, flash_tile, model_spec
from ..analyzer.configs import ModelSpec
from ..hardware import Device, get_device

__all__ = [
    "FEATURES",
    "LinearStepCost",
    "RooflineStepCost",
    "StepShape",
    "fit_step_cost",
    "kv_pool_blocks",
    "step_features",
]

_ATTENTION = ("qk_matmul", "softmax", "sv_matmul", "fused_attention")
_HEAD = ("lm_head",)  # the analyzer applies the final norm to every token, the head to sampled rows


@dataclass(frozen=True)
class StepShape:
    """The work of one engine step.

    ``decode_seqs`` sequences each push one token and attend to ``decode_context`` keys in total (after
    appending their new one); each prefill ``chunk`` is ``(q, k)``: ``q`` new prompt tokens attending to
    ``k`` keys (the chunk's own and the ones cached before it; ``q == k`` for a whole prompt);
    ``logit_rows`` rows go through the head (the decodes and the prefills that finish in this step).
    Introduced in Chapter 9.
    """

    decode_seqs: int = 0
    decode_context: int = 0
    chunks: tuple[tuple[int, int], ...] = ()
    logit_rows: int = 0

    @property
    def prefill_tokens(self) -> int:
        return sum(q for q, _ in self.chunks)

    @property
    def tokens(self) -> int:
        return self.decode_seqs + self.prefill_tokens


def _device(device: str | Device) -> Device:
    if isinstance(device, Device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a name such as 'a100-80gb' or a Device, got {type(device).__name__}")
    return get_device(device)


def _grid(max_tokens: int) -> np.ndarray:
    small = np.arange(1, 33)
    big = np.unique(np.rint(np.geomspace(32, max_tokens, 48)).astype(int))
    return np.unique(np.concatenate([small, big]))


@dataclass
class _OpTable:
    """Per-operator FLOPs and bytes of one instance at grid points of a row count, and how to interpolate."""

    names: list[str]
    counts: np.ndarray  # (ops,)
    peaks: np.ndarray  # (ops,) FLOP/s of each op's compute type
    grid: np.ndarray  # (g,)
    flops: np.ndarray  # (ops, g)
    bytes: np.ndarray  # (ops, g)
    cache: dict = field(default_factory=dict)

    def time(self, n: int, bandwidth: float) -> float:
        if n <= 0:
            return 0.0
        hit = self.cache.get(n)
        if hit is not None:
            return hit
        g = self.grid
        # beyond the grid: extrapolate the last segment (exact for affine costs)
        i = len(g) - 2 if n >= g[-1] else int(np.searchsorted(g, n, side="right")) - 1
        w = (n - g[i]) / (g[i + 1] - g[i])
        f = self.flops[:, i] * (1 - w) + self.flops[:, i + 1] * w
        b = self.bytes[:, i] * (1 - w) + self.bytes[:, i + 1] * w
        t = float(self.counts @ np.maximum(f / self.peaks, b / bandwidth))
        if len(self.cache) < 1 << 16:
            self.cache[n] = t
        return t


class RooflineStepCost:
    """Roofline time of a serving step of ``model`` on ``device``, from the analyzer (see the module docstring).

    ``w_bits``, ``a_bits``, ``kv_bits``, ``group_size`` and ``flash_attention`` mean what they mean for
    :func:`unveiled.analyze` (exact convention). Decode attention reads the cache at ``kv_bits``; a prefill
    chunk reads its own new keys at ``a_bits`` and the keys cached before it at ``kv_bits``; with FlashAttention
    the chunk skips the tiles above the diagonal of its own block and re-reads the cached keys once per query
    tile [Dao 2023]. Multi-head latent attention (DeepSeek) is not supported. ``max_tokens`` is the largest
    step the per-operator tables cover exactly (larger ones extrapolate linearly). Introduced in Chapter 9.
    """

    def __init__(self, m: str | ModelSpec, device: str | Device, *, w_bits: int = 16, a_bits: int = 16,
                 kv_bits: int | None = None, flash_attention: bool = True, group_size: int | None = None,
                 max_tokens: int = 1 << 16) -> None:
        self.spec = model_spec(m)
        self.device = _device(device)
        if self.spec.is_mla:
            raise ValueError(f"{self.spec.name} uses multi-head latent attention, which the serving cost model does "
                             "not support; pick a model with MHA/GQA/MQA attention")
        self.w_bits, self.a_bits = w_bits, a_bits
        self.kv_bits = a_bits if kv_bits is None else kv_bits
        self.flash_attention = bool(flash_attention)
        self.group_size = group_size
        self.max_tokens = check_int("max_tokens", max_tokens, minimum=64)
        self.window = self.spec.sliding_window
        self._kw = dict(w_bits=w_bits, a_bits=a_bits, kv_bits=self.kv_bits, flash_attention=self.flash_attention,
                        group_size=group_size, check_context=False)
        self._build()

    # -- tables -----------------------------------------------------------------------------------

    def _ops_at(self, stage: str, batch: int, seq_len: int) -> pd.DataFrame:
        return analyze(self.spec, self.device, stage=stage, batch=int(batch), seq_len=int(seq_len), **self._kw).ops

    def _peaks(self, ops: pd.DataFrame) -> np.ndarray:
        return np.array([self.device.peak(d) for d in ops["compute_dtype"]], dtype=float)

    def _table(self, names: Sequence[str], frames: list[pd.DataFrame], grid: np.ndarray) -> _OpTable:
        first = frames[0].set_index("op").loc[list(names)]
        flops = np.stack([f.set_index("op").loc[list(names), "flops"].to_numpy(float) for f in frames], axis=1)
        nbytes = np.stack([f.set_index("op").loc[list(names), "bytes"].to_numpy(float) for f in frames], axis=1)
        return _OpTable(list(names), first["count"].to_numpy(float), self._peaks(first.reset_index()), grid,
                        flops, nbytes)

    def _build(self) -> None:
        probe = self._ops_at("decode", 1, 1)
        names = list(probe["op"])
        token_names = [n for n in names if n not in _ATTENTION and n not in _HEAD]
        head_names = [n for n in names if n in _HEAD]
        # Linear in the row count for dense models: three points prove it; MoE layers are not, so use a grid.
        three = np.array([1, 2, self.max_tokens])
        frames = {int(n): self._ops_at("decode", n, 1) for n in three}
        f = np.stack([frames[int(n)].set_index("op").loc[token_names + head_names, ["flops", "bytes"]].to_numpy(float)
                      for n in three])
        slope = f[1] - f[0]
        affine = np.allclose(f[0] + slope * (three[2] - 1), f[2], rtol=1e-9, atol=0)
        grid = np.array([1, 2]) if affine else _grid(self.max_tokens)
        frames.update({int(n): self._ops_at("decode", n, 1) for n in grid if int(n) not in frames})
        ordered = [frames[int(n)] for n in grid]
        self._tokens = self._table(token_names, ordered, grid)
        self._head = self._table(head_names, ordered, grid)
        # Decode attention, one query per sequence: FLOPs and bytes are affine in the context length.
        d1, d2 = self._ops_at("decode", 1, 1), self._ops_at("decode", 1, 2)
        att = [n for n in d1["op"] if n in _ATTENTION]
        a1, a2 = d1.set_index("op").loc[att], d2.set_index("op").loc[att]
        self._dec_names = att
        self._dec_counts = a1["count"].to_numpy(float)
        self._dec_peaks = self._peaks(a1.reset_index())
        self._dec_f = (a1["flops"].to_numpy(float), (a2["flops"] - a1["flops"]).to_numpy(float))
        self._dec_b = (a1["bytes"].to_numpy(float), (a2["bytes"] - a1["bytes"]).to_numpy(float))
        self._dec_terms = [tuple(float(x) for x in t) for t in zip(self._dec_counts, self._dec_peaks, *self._dec_f,
                                                                     *self._dec_b, strict=True)]
        self._bandwidth = float(self.device.bandwidth)
        p = self._ops_at("prefill", 1, 16).set_index("op").loc[att]
        self._pre_peaks = self._peaks(p.reset_index())
        self._pre_counts = p["count"].to_numpy(float)
        s = self.spec
        self._tile = flash_tile(self.device, s.head_dim, self.a_bits / 8, self.a_bits / 8)
        self._chunk_cache: dict[int, tuple] = {}

    # -- costs ------------------------------------------------------------------------------------

    def decode_attention_time(self, seqs: int, context: int) -> float:
        """Roofline time of the decode attention of ``seqs`` sequences attending to ``context`` keys in total."""
        if seqs <= 0:
            return 0.0
        extra = context - seqs
        total = 0.0
        for c, p, f0, f1, b0, b1 in self._dec_terms:  # a handful of operators: plain floats beat NumPy here
            total += c * max((seqs * f0 + extra * f1) / p, (seqs * b0 + extra * b1) / self._bandwidth)
        return total

    def _chunk_terms(self, q: int) -> tuple[np.ndarray, ...]:
        """Per operator: FLOPs and bytes of a chunk of ``q`` tokens attending to itself, and the affine
        coefficients (in the number of cached keys) of its attention to the keys cached before it."""
        hit = self._chunk_cache.get(q)
        if hit is not None:
            return hit
        s = self.spec
        ab, kvb = self.a_bits / 8, self.kv_bits / 8
        H, K, d = s.num_heads, s.num_kv_heads, s.head_dim
        own = attention_cost(1, q, q, H, K, d, act_bytes=ab, kv_bytes=ab, flash=self.flash_attention, causal=True,
                             tile=self._tile, window=self.window)
        rect = [attention_cost(1, q, past, H, K, d, act_bytes=ab, kv_bytes=kvb, flash=self.flash_attention,
                               causal=False) for past in (1, 2)]
        names = self._dec_names
        own_f = np.array([float(own[n][0]) for n in names])
        own_b = np.array([float(own[n][1]) for n in names])
        rf = [np.array([float(r[n][0]) for n in names]) for r in rect]
        rb = [np.array([float(r[n][1]) for n in names]) for r in rect]
        # The chunk's queries are read and its outputs written once, already counted with `own`.
        counted = {"fused_attention": H * q * 2 * d * ab, "qk_matmul": H * q * d * ab, "sv_matmul": H * q * d * ab}
        rb0 = rb[0] - np.array([counted.get(n, 0.0) for n in names])
        rb1 = rb[1] - rb[0]
        if self.flash_attention:  # a tiled kernel re-reads the cached keys and values once per query tile
            rb1 = rb1 + np.array([(math.ceil(q / self._tile) - 1) * K * 2 * d * kvb if n == "fused_attention" else 0.0
                                  for n in names])
        out = (own_f, own_b, rf[0] - (rf[1] - rf[0]), rf[1] - rf[0], rb0 - rb1, rb1)
        self._chunk_cache[q] = out
        return out

    def prefill_attention_time(self, chunks: Sequence[tuple[int, int]]) -> float:
        """Roofline time of the attention of prefill chunks ``(q new tokens, k keys)`` run as one kernel."""
        if not chunks:
            return 0.0
        f = np.zeros(len(self._dec_names))
        b = np.zeros(len(self._dec_names))
        for q, k in chunks:
            own_f, own_b, rf0, rf1, rb0, rb1 = self._chunk_terms(int(q))
            f = f + own_f
            b = b + own_b
            past = k - q if self.window is None else min(k - q, self.window)
            if past > 0:
                f = f + rf0 + past * rf1
                b = b + rb0 + past * rb1
        return float(self._pre_counts @ np.maximum(f / self._pre_peaks, b / self.device.bandwidth))

    def step_time(self, shape: StepShape) -> float:
        """Roofline time in seconds of one step: token operators at the step's token count, decode and prefill
        attention, and the head on its logit rows."""
        bw = self.device.bandwidth
        return (self._tokens.time(shape.tokens, bw) + self._head.time(shape.logit_rows, bw)
                + self.decode_attention_time(shape.decode_seqs, shape.decode_context)
                + self.prefill_attention_time(shape.chunks))

    def __repr__(self) -> str:
        return (f"RooflineStepCost({self.spec.name} on {self.device.display_name}, W{self.w_bits}A{self.a_bits}"
                f"KV{self.kv_bits}{', FlashAttention' if self.flash_attention else ''})")


# --------------------------------------------------------------------------------------------------
# Measured costs
# --------------------------------------------------------------------------------------------------

#: Features of a step that a measured cost is linear in, in coefficient order.
FEATURES = ("steps", "tokens", "seqs", "prefill_seqs", "attention_pairs", "logit_rows")


def step_features(shape: StepShape) -> dict[str, float]:
    """The :data:`FEATURES` of one step: 1, tokens, sequences, prefill chunks, query-key pairs of attention
    (each decode attends to its context, each chunk's ``q`` queries to its ``k`` keys) and logit rows.
    Introduced in Chapter 9."""
    return {"steps": 1.0, "tokens": float(shape.tokens), "seqs": float(shape.decode_seqs + len(shape.chunks)),
            "prefill_seqs": float(len(shape.chunks)),
            "attention_pairs": float(shape.decode_context + sum(q * k for q, k in shape.chunks)),
            "logit_rows": float(shape.logit_rows)}


@dataclass(frozen=True)
class LinearStepCost:
    """A measured step cost: ``time = Σ coefficient · feature`` over :data:`FEATURES` (seconds).

    ``coefficients`` maps feature names to seconds per unit: a fixed cost per step, per token (the linear
    layers' work), per sequence (per-sequence attention calls), per prefill chunk, per query-key pair and
    per logit row. Fitted to timed steps with :func:`fit_step_cost`. Introduced in Chapter 9.
    """

    coefficients: Mapping[str, float]
    window: int | None = None
    points: int = 0
    rel_error: float = float("nan")

    def __post_init__(self) -> None:
        unknown = set(self.coefficients) - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown step features {sorted(unknown)}; known: {list(FEATURES)}")
        for k, v in self.coefficients.items():
            check_positive(f"coefficient {k}", v, allow_zero=True)

    def step_time(self, shape: StepShape) -> float:
        c = self.coefficients
        g = c.get
        pairs = shape.decode_context
        for q, k in shape.chunks:
            pairs += q * k
        return (g("steps", 0.0) + g("tokens", 0.0) * shape.tokens
                + g("seqs", 0.0) * (shape.decode_seqs + len(shape.chunks)) + g("prefill_seqs", 0.0) * len(shape.chunks)
                + g("attention_pairs", 0.0) * pairs + g("logit_rows", 0.0) * shape.logit_rows)

    def table(self) -> pd.DataFrame:
        """The coefficients in µs per unit."""
        return pd.DataFrame({"feature": list(FEATURES),
                             "us_per_unit": [1e6 * self.coefficients.get(f, 0.0) for f in FEATURES]})


def fit_step_cost(steps: pd.DataFrame, target: str = "time_s",
                  features: Sequence[str] = FEATURES) -> LinearStepCost:
    """Fit a :class:`LinearStepCost` to timed steps by non-negative least squares on the relative error.

    ``steps`` has one row per timed step with the ``features`` columns (see :func:`step_features`) and the
    measured ``target``. Each row is divided by its own time, so a 3 ms decode step counts as much as a
    300 ms prefill [Lawson & Hanson 1974]. Introduced in Chapter 9.
    """
    from scipy.optimize import nnls

    features = list(features)
    missing = [c for c in [*features, target] if c not in steps.columns]
    if missing:
        raise ValueError(f"the step table lacks the columns {missing}; it has {list(steps.columns)}")
    if len(steps) < len(features):
        raise ValueError(f"need at least {len(features)} timed steps to fit {len(features)} coefficients, got {len(steps)}")
    y = steps[target].to_numpy(float)
    if np.any(~np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("measured step times must be positive and finite")
    x = steps[features].to_numpy(float) / y[:, None]
    scale = np.linalg.norm(x, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(x / scale, np.ones(len(y)))
    coef = coef / scale
    pred = steps[features].to_numpy(float) @ coef
    err = float(np.median(np.abs(pred / y - 1)))
    return LinearStepCost(dict(zip(features, map(float, coef), strict=True)), points=len(y), rel_error=err)


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def kv_pool_blocks(m: str | ModelSpec, device: str | Device, *, block_size: int = 16, w_bits: int = 16,
                   a_bits: int = 16, kv_bits: int | None = None, group_size: int | None = None,
                   memory_fraction: float = 0.9, max_batched_tokens: int = 2048) -> int:
    """KV blocks a device holds after the weights and the activations of the largest step, as vLLM sizes its
    pool: ``(memory_fraction · capacity − weights − activations) / block bytes`` [Kwon et al. 2023].

    The activation reserve is the analyzer's peak for a prefill of ``max_batched_tokens`` tokens. Returns 0
    when the weights alone do not fit. Introduced in Chapter 9.
    """
    from ..kvcache.sizing import kv_bytes_per_token

    spec = model_spec(m)
    dev = _device(device)
    if not dev.memory_bytes:
        raise ValueError(f"{dev.display_name} has no memory capacity in the hardware table")
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    block_size = check_int("block_size", block_size)
    kv_bits = a_bits if kv_bits is None else kv_bits
    a = analyze(spec, dev, stage="prefill", batch=1, seq_len=check_int("max_batched_tokens", max_batched_tokens),
                w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits, group_size=group_size, check_context=False)
    free = memory_fraction * dev.memory_bytes - a.memory.weights - a.memory.activations
    per_block = block_size * kv_bytes_per_token(spec, kv_bits)
    return max(0, math.floor(free / per_block))
