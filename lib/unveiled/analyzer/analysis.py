"""Analyse one forward pass of an LLM on a device: every operator placed on the roofline, and the totals.

This is the survey's LLM-Viewer [Yuan et al. 2024], rebuilt: :func:`analyze` lists the operators of one
prefill or decode pass, counts their FLOPs and bytes (see :mod:`.costs`), gives each the time
``max(flops / peak, bytes / bandwidth)`` of the roofline model [Williams et al. 2009] with the peak of the
data type it runs in, and sums. The memory footprint (weights, KV cache, peak activations) comes with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._validate import check_choice, check_int
from ..hardware import Device, get_device
from ..roofline import roofline_time
from .configs import ModelSpec, model_spec, param_classes
from .costs import ATTENTION_KERNELS, CONVENTIONS, LOGITS, STAGES, Op, Setting, build_ops
from .number_formats import FormatRoof, check_number_format, format_roof
from .precision import Precision

__all__ = ["Analysis", "MemoryFootprint", "analyze", "resolve_device", "setting"]

_DTYPE_ORDER = {  # candidates, narrowest first, for the widest operand of a matrix product
    4: ("int4", "int8", "fp8", "fp16", "bf16", "fp32"),
    8: ("int8", "fp8", "fp16", "bf16", "fp32"),
    16: ("fp16", "bf16", "fp32"),
    32: ("fp32", "tf32", "fp16", "bf16"),
}
_VECTOR_ORDER = ("fp32", "fp16", "bf16")  # elementwise work runs on the ordinary (non-tensor) units


def _first(device: Device, candidates) -> str:
    for d in candidates:
        if d in device.peaks:
            return d
    raise ValueError(f"{device.display_name} has none of the peaks {list(candidates)}; it has {device.dtypes}")


def resolve_device(device: str | Device, conventions: str = "exact") -> Device:
    """The device to use: a name is looked up; with ``conventions="paper"`` LLM-Viewer's own numbers
    (preset ``"llm-viewer"``) replace the datasheet's when the registry has them, as the survey used them."""
    if isinstance(device, Device):
        if conventions != "exact" and device.preset == "datasheet":
            try:
                return get_device(device.name, preset="llm-viewer")
            except ValueError:
                return device
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a name such as 'a6000' or a Device, got {type(device).__name__}")
    if conventions != "exact":
        try:
            return get_device(device, preset="llm-viewer")
        except ValueError:
            pass
    return get_device(device)


@dataclass
class _Evaluation:
    names: list[str]
    counts: np.ndarray
    kinds: list[str]
    flops: np.ndarray  # (n_ops, *shape), per instance
    parts: dict[str, np.ndarray]
    bytes: np.ndarray
    dtypes: list[str]
    dtype_idx: np.ndarray
    time: np.ndarray
    compute_bound: np.ndarray
    peaks: np.ndarray


def _dtype_indices(ops: list[Op], device: Device, st: Setting, shape) -> tuple[list[str], np.ndarray]:
    names: list[str] = []

    def idx(d: str) -> int:
        if d not in names:
            names.append(d)
        return names.index(d)

    out = np.empty((len(ops), *shape), dtype=np.int8)
    if st.conventions != "exact":
        # LLM-Viewer: the INT8 roof for every operator when weights, activations and KV are all <= 8 bits
        low = (np.asarray(st.w_bits) <= 8) & (np.asarray(st.a_bits) <= 8) & (np.asarray(st.kv_bits) <= 8)
        low = np.broadcast_to(low, shape)
        if np.any(low) and "int8" not in device.peaks:
            raise ValueError(f"{device.display_name} has no int8 peak, which LLM-Viewer uses at <= 8 bits")
        i16 = idx("fp16" if "fp16" in device.peaks else _first(device, _DTYPE_ORDER[16]))
        i8 = idx("int8") if np.any(low) else i16
        out[:] = np.where(low, i8, i16)
        return names, out
    class_idx: dict[int, int] = {}
    cache: dict[tuple, object] = {}  # operators share a handful of operand-bit pairs
    scalar = shape == ()
    for i, op in enumerate(ops):
        if op.kind == "elementwise":
            key = ("vec",)
            if key not in cache:
                cache[key] = idx(_first(device, _VECTOR_ORDER))
            out[i] = cache[key]
            continue
        key = (id(op.bits[0]), id(op.bits[1])) if not scalar else (float(op.bits[0]), float(op.bits[1]))
        if key not in cache:
            if scalar:
                cls = _bits_class_scalar(max(float(op.bits[0]), float(op.bits[1])))
                cache[key] = idx(_first(device, _DTYPE_ORDER[cls]))
            else:
                b = np.broadcast_to(np.maximum(np.asarray(op.bits[0]), np.asarray(op.bits[1])), shape)
                classes = _bits_class(b)
                for cls in np.unique(classes):
                    if int(cls) not in class_idx:
                        class_idx[int(cls)] = idx(_first(device, _DTYPE_ORDER[int(cls)]))
                lut = np.zeros(33, dtype=np.int8)
                for cls, j in class_idx.items():
                    lut[cls] = j
                cache[key] = lut[classes]
        out[i] = cache[key]
    return names, out


def _bits_class_scalar(b: float) -> int:
    return 4 if b <= 4 else 8 if b <= 8 else 16 if b <= 16 else 32


def _bits_class(b):
    return np.select([b <= 4, b <= 8, b <= 16], [4, 8, 16], 32)


def evaluate(spec: ModelSpec, device: Device, st: Setting) -> _Evaluation:
    """Build the operators of ``st`` and place each on ``device``'s roofline (arrays broadcast)."""
    ops = build_ops(spec, st, device)
    shape = np.broadcast_shapes(*(np.shape(v) for v in (st.batch, st.seq_len, st.w_bits, st.a_bits, st.kv_bits)))
    full = (len(ops), *shape)

    keys = ("flops", "load_weight", "load_act", "store_act", "load_kv", "store_kv")
    if shape == ():  # one configuration: plain floats, one array (the common, latency-sensitive case)
        table = np.array([[float(op.flops), float(op.load_weight), float(op.load_act), float(op.store_act),
                           float(op.load_kv), float(op.store_kv)] for op in ops])
        cols = dict(zip(keys, table.T, strict=True))
    else:
        cols = {k: np.stack([np.broadcast_to(np.asarray(getattr(op, k), dtype=float), shape) for op in ops])
                for k in keys}
    flops = cols["flops"]
    parts = {k: cols[k] for k in keys[1:]}
    total = parts["load_weight"] + parts["load_act"] + parts["store_act"] + parts["load_kv"] + parts["store_kv"]
    names, dtype_idx = _dtype_indices(ops, device, st, shape)
    time = np.empty(full)
    peaks = np.empty(full)
    for i, d in enumerate(names):
        mask = dtype_idx == i
        if np.any(mask):
            time[mask] = roofline_time(flops[mask], total[mask], device, d)
            peaks[mask] = device.peak(d)
    compute_bound = flops / peaks >= total / device.bandwidth
    counts = np.array([op.count for op in ops], dtype=float)
    return _Evaluation([op.name for op in ops], counts, [op.kind for op in ops], flops, parts, total, names,
                       dtype_idx, time, compute_bound, peaks)


# ---- memory ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryFootprint:
    """Device memory a pass needs, in bytes: ``weights + kv_cache + activations = total``.

    ``activations`` is the peak of live temporary tensors (exact convention) or LLM-Viewer's sum of one
    layer's stored activations (paper convention). ``capacity`` is the device's memory (None if unknown)
    and ``fits`` says whether ``total <= capacity``. Introduced in Chapter 2.
    """

    weights: float
    kv_cache: float
    activations: float
    capacity: float | None = None

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations

    @property
    def fits(self) -> bool | None:
        return None if self.capacity is None else bool(self.total <= self.capacity)

    def as_series(self) -> pd.Series:
        """The footprint in GB (decimal) as a Series."""
        return pd.Series({"weights_GB": self.weights / 1e9, "kv_cache_GB": self.kv_cache / 1e9,
                          "activations_GB": self.activations / 1e9, "total_GB": self.total / 1e9,
                          "capacity_GB": None if self.capacity is None else self.capacity / 1e9,
                          "fits": self.fits})

    def __repr__(self) -> str:
        cap = "" if self.capacity is None else f" of {self.capacity / 1e9:.1f} GB ({'fits' if self.fits else 'does NOT fit'})"
        return (f"MemoryFootprint(weights {self.weights / 1e9:.3f} GB + KV cache {self.kv_cache / 1e9:.3f} GB + "
                f"activations {self.activations / 1e9:.3f} GB = {self.total / 1e9:.3f} GB{cap})")


def memory_arrays(spec: ModelSpec, st: Setting, ev: _Evaluation) -> tuple:
    """Weights, KV cache and activation bytes (arrays) for a setting already evaluated."""
    B, L = np.asarray(st.batch, dtype=float), np.asarray(st.seq_len, dtype=float)
    wbits, abits, kvbits = (np.asarray(x, dtype=float) for x in (st.w_bits, st.a_bits, st.kv_bits))
    if st.conventions != "exact":
        n = spec.num_layers
        per_layer = np.array([c == n for c in ev.counts]) & np.array([nm != "lm_head" for nm in ev.names])
        lin = np.array([k == "gemm" for k in ev.kinds]) & per_layer
        weights = (ev.parts["load_weight"][lin].sum(axis=0)) * n
        kv = 2.0 * spec.hidden_size * spec.num_kv_heads / spec.num_heads * B * L * kvbits / 8 * n
        act = ev.parts["store_act"][per_layer].sum(axis=0)
        return weights + 0 * B, kv, act
    cls = param_classes(spec)
    wb = wbits / 8
    if st.group_size:
        wb = np.where(wbits < 16, wb + 4.0 / st.group_size, wb)
    hp = np.maximum(wbits, 16) / 8
    head = hp if st.head_bits is None else st.head_bits / 8
    weights = cls["linear"] * wb + cls["embedding"] * head + cls["other"] * hp
    tokens = L
    if spec.sliding_window is not None:
        tokens = np.minimum(tokens, spec.sliding_window)
    kv = B * tokens * spec.kv_elements_per_token * spec.num_layers * kvbits / 8
    T = L if st.stage == "prefill" else 1.0
    residual = B * T * spec.hidden_size * abits / 8
    working = (ev.parts["load_act"] + ev.parts["store_act"]).max(axis=0)
    return weights + 0 * B, kv, residual + working


# ---- the analysis ---------------------------------------------------------------------------------------
_COLUMNS = ["op", "count", "flops", "bytes", "intensity", "bound", "time_s", "compute_dtype",
            "attainable_flop_s", "weight_bytes", "act_load_bytes", "act_store_bytes", "kv_load_bytes",
            "kv_store_bytes", "total_time_s", "time_share"]


@dataclass
class Analysis:
    """The result of :func:`analyze`: one pass of one stage of a model on a device.

    ``ops`` is a DataFrame with one row per operator kind: ``op, count, flops, bytes, intensity, bound,
    time_s`` (FLOPs, bytes and time of ONE instance; ``count`` instances run per pass), then the compute data
    type, the attainable FLOP/s, the bytes split by tensor class and ``total_time_s = count × time_s``.
    ``flops``, ``bytes`` and ``time_s`` are the totals for the pass; ``memory`` is a :class:`MemoryFootprint`;
    ``precision`` is the :class:`Precision` it ran at (``w_bits``, ``a_bits`` and ``kv_bits`` repeat its bits,
    ``kv_bits`` resolved). Introduced in Chapter 2.
    """

    model: ModelSpec
    device: Device
    stage: str
    batch: int
    seq_len: int
    w_bits: int
    a_bits: int
    kv_bits: int
    flash_attention: bool
    conventions: str
    logits: str
    flops: float
    bytes: float
    time_s: float
    memory: MemoryFootprint
    _ev: _Evaluation = field(repr=False)
    _ops: pd.DataFrame | None = field(default=None, repr=False)
    precision: Precision = field(default_factory=Precision)
    new_tokens: int = 1
    attention: str = ""  # the attention kernel convention ("fused", "unfused" or "eager")
    format_roof: FormatRoof | None = None

    @property
    def number_format(self) -> str | None:
        """The number format of the linear layers (``analyze(..., number_format=...)``), or None."""
        return None if self.format_roof is None else self.format_roof.number_format

    @property
    def format_note(self) -> str:
        """Whether the device executes the number format natively or only stores it (empty without a format)."""
        return "" if self.format_roof is None else self.format_roof.note

    @property
    def ops(self) -> pd.DataFrame:
        if self._ops is None:
            ev = self._ev
            f, q, t = ev.flops.ravel(), ev.bytes.ravel(), ev.time.ravel()
            with np.errstate(divide="ignore", invalid="ignore"):
                intensity = np.where(q > 0, f / q, 0.0)
                attain = np.where(t > 0, f / t, 0.0)
            total_t = ev.counts * t
            self._ops = pd.DataFrame({
                "op": ev.names, "count": ev.counts.astype(int), "flops": f, "bytes": q, "intensity": intensity,
                "bound": np.where(ev.compute_bound.ravel(), "compute", "memory"), "time_s": t,
                "compute_dtype": [ev.dtypes[i] for i in ev.dtype_idx.ravel()], "attainable_flop_s": attain,
                "weight_bytes": ev.parts["load_weight"].ravel(), "act_load_bytes": ev.parts["load_act"].ravel(),
                "act_store_bytes": ev.parts["store_act"].ravel(), "kv_load_bytes": ev.parts["load_kv"].ravel(),
                "kv_store_bytes": ev.parts["store_kv"].ravel(), "total_time_s": total_t,
                "time_share": total_t / total_t.sum(),
            }, columns=_COLUMNS)
        return self._ops

    @property
    def intensity(self) -> float:
        """Arithmetic intensity of the whole pass (FLOPs per byte)."""
        return self.flops / self.bytes

    @property
    def tokens(self) -> int:
        """Tokens processed by the pass: batch × prompt length in prefill, batch × new tokens in decode."""
        return self.batch * (self.seq_len if self.stage == "prefill" else self.new_tokens)

    @property
    def tokens_per_s(self) -> float:
        """Tokens processed per second by this pass."""
        return self.tokens / self.time_s

    @property
    def memory_bound_share(self) -> float:
        """Fraction of the pass's time spent in memory-bound operators."""
        ev = self._ev
        t = (ev.counts * ev.time.ravel())
        return float(t[~ev.compute_bound.ravel()].sum() / t.sum())

    def summary(self) -> pd.Series:
        """The totals as a Series (FLOPs, bytes, time, throughput, memory)."""
        return pd.Series({
            "model": self.model.name, "device": self.device.display_name, "stage": self.stage,
            "batch": self.batch, "seq_len": self.seq_len, "w_bits": self.w_bits, "a_bits": self.a_bits,
            "kv_bits": self.kv_bits, "flash_attention": self.flash_attention, "conventions": self.conventions,
            "flops": self.flops, "bytes": self.bytes, "intensity": self.intensity, "time_s": self.time_s,
            "tokens_per_s": self.tokens_per_s, "memory_bound_share": self.memory_bound_share,
            "weights_bytes": self.memory.weights, "kv_cache_bytes": self.memory.kv_cache,
            "activation_bytes": self.memory.activations, "memory_bytes": self.memory.total,
            "fits": self.memory.fits, "number_format": self.number_format,
            "format_support": None if self.format_roof is None else self.format_roof.support,
        })

    def __repr__(self) -> str:
        bits = f"W{self.w_bits}A{self.a_bits}KV{self.kv_bits}"
        if self.format_roof is not None:
            r = self.format_roof
            bits += f", {r.number_format} ({r.support or 'unknown'}: {r.compute_dtype} roof)"
        return (f"Analysis({self.model.name} on {self.device.display_name}, {self.stage}, batch {self.batch}, "
                f"seq_len {self.seq_len}, {bits}, {'FlashAttention, ' if self.flash_attention else ''}"
                f"{self.conventions}: {self.flops / 1e12:.4g} TFLOP, {self.bytes / 1e9:.4g} GB, "
                f"{self.time_s * 1e3:.4g} ms)")


def check_setting(spec: ModelSpec, *, stage, batch, seq_len, flash_attention, conventions, logits, check_context,
                  new_tokens: int = 1) -> tuple:
    """Validate the arguments shared by analyze, estimate_generation and sweep (scalars); the bit widths are
    checked by :class:`Precision`. Returns the cleaned ``(batch, seq_len, flash_attention, new_tokens)``."""
    check_choice("stage", stage, STAGES)
    check_choice("conventions", conventions, CONVENTIONS)
    check_choice("logits", logits, LOGITS)
    batch = check_int("batch", batch)
    seq_len = check_int("seq_len", seq_len)
    new_tokens = check_int("new_tokens", new_tokens)
    if new_tokens > 1:
        if stage != "decode":
            raise ValueError(f"new_tokens={new_tokens} needs stage='decode' (a prefill pass processes seq_len tokens)")
        if conventions != "exact":
            raise ValueError("new_tokens > 1 (a decode step scoring several tokens) exists only in conventions='exact'")
        if new_tokens > np.min(seq_len):
            raise ValueError(f"new_tokens={new_tokens} exceeds seq_len={seq_len}: the cache holds the new tokens too")
    if not isinstance(flash_attention, (bool, np.bool_)):
        raise TypeError(f"flash_attention must be True or False, got {flash_attention!r}")
    if check_context is None:
        check_context = conventions == "exact"
    if check_context:
        _check_context(spec, stage, seq_len)
    return batch, seq_len, bool(flash_attention), new_tokens


def _check_context(spec: ModelSpec, stage: str, seq_len) -> None:
    if np.max(seq_len) > spec.max_context:
        what = "a prompt of" if stage == "prefill" else "a KV cache of"
        raise ValueError(
            f"{what} {int(np.max(seq_len))} tokens does not fit the context of {spec.name} "
            f"({spec.max_context} tokens, max_position_embeddings); pass check_context=False to analyse it anyway"
        )


def analyze(m: str | ModelSpec, hw: str | Device, *, stage: str = "prefill", batch: int = 1, seq_len: int = 2048,
            precision: Precision | str | None = None, w_bits: int | None = None, a_bits: int | None = None,
            kv_bits: int | None = None, flash_attention: bool = False, conventions: str = "exact",
            logits: str = "last", check_context: bool | None = None, group_size: int | None = None,
            head_bits: int | None = None, new_tokens: int = 1, attention: str | None = None,
            number_format: str | None = None) -> Analysis:
    """Analyse one prefill or decode pass of model ``m`` on device ``hw`` with the roofline model.

    ``stage="prefill"`` processes ``batch`` prompts of ``seq_len`` tokens; ``stage="decode"`` processes one
    new token per sequence with a KV cache of ``seq_len`` tokens (the new token's keys and values included:
    it is the ``seq_len``-th token, and it attends to all of them). ``new_tokens`` > 1 makes a decode step
    score several tokens per sequence, each attending causally to the cache and the new tokens before it
    (the verification pass of speculative decoding, Chapter 7).

    The precision is one :class:`Precision` or its name (``precision="W4A16KV8"``), or the same settings as
    flat keywords: weights, activations and the KV cache have their own bit widths (``w_bits`` and ``a_bits``
    default to 16, ``kv_bits`` to ``a_bits``); ``group_size`` adds an fp16 scale and zero point per group of
    quantized weights; embeddings and ``lm_head`` stay in 16 bits unless ``head_bits`` says otherwise.
    ``number_format`` (``"fp8_e4m3"``, ``"mxfp4"``, ``"nvfp4"``, ... see
    :data:`~unveiled.analyzer.number_formats.NUMBER_FORMATS`) stores the linear layers' weights in that format,
    block scales counted (the weight width becomes its element width), and runs their matrix products at the
    format's peak where the device executes it natively, at the 16-bit peak where it only stores it
    (Chapter 10); ``Analysis.format_note`` says which. ``logits="last"`` computes the logits of the last
    position (serving), ``"all"`` of every position (a plain forward). ``conventions="paper"`` reproduces
    LLM-Viewer's accounting and the survey's numbers [Yuan et al. 2024]; ``"exact"`` (default) counts from
    first principles. A prompt longer than the model's context raises unless ``check_context=False`` (the
    paper convention does not check, as LLM-Viewer did not). ``attention`` names the attention kernels
    explicitly (see :data:`~unveiled.analyzer.costs.ATTENTION_KERNELS`): ``"fused"`` is
    ``flash_attention=True``, ``"unfused"`` the default three GQA-aware kernels, ``"eager"`` what eager
    PyTorch code moves (K/V repeated per query head, separate scale and mask passes; exact convention, not
    for multi-head latent attention; Chapter 8). Introduced in Chapter 2.
    """
    spec = model_spec(m)
    conventions = check_choice("conventions", conventions, CONVENTIONS)
    if attention is not None:
        check_choice("attention", attention, ATTENTION_KERNELS)
        if flash_attention and attention != "fused":
            raise ValueError(f"flash_attention=True contradicts attention={attention!r}; pass one of them")
        if attention == "eager" and conventions != "exact":
            raise ValueError("attention='eager' is a first-principles count: use conventions='exact'")
        flash_attention = attention == "fused"
    device = resolve_device(hw, conventions)
    p = Precision.resolve(precision, w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits, head_bits=head_bits,
                          group_size=group_size)
    roof = None
    if number_format is not None:
        check_number_format(number_format)
        if conventions != "exact":
            raise ValueError("number_format needs conventions='exact' (LLM-Viewer has no notion of formats)")
        roof = format_roof(device, number_format)
        if p.w_bits not in (16, roof.element_bits):
            raise ValueError(f"number_format={number_format!r} stores {roof.element_bits}-bit weights; "
                             f"leave w_bits out (got w_bits={p.w_bits})")
        p = dataclasses.replace(p, w_bits=roof.element_bits)
    batch, seq_len, flash_attention, new_tokens = check_setting(
        spec, stage=stage, batch=batch, seq_len=seq_len, flash_attention=flash_attention, conventions=conventions,
        logits=logits, check_context=check_context, new_tokens=new_tokens)
    st = setting(stage, batch, seq_len, p, flash_attention, conventions, logits, new_tokens,
                 eager_attention=attention == "eager")
    ev = evaluate(spec, device, st)
    weights, kv, act = memory_arrays(spec, st, ev)
    if roof is not None:
        ev = _apply_format_roof(ev, device, roof)
        weights = weights + param_classes(spec)["linear"] * (roof.stored_bits - roof.element_bits) / 8
    counts = ev.counts
    flops = float(counts @ ev.flops)
    total_bytes = float(counts @ ev.bytes)
    time_s = float(counts @ ev.time)
    mem = MemoryFootprint(float(weights), float(kv), float(act), device.memory_bytes)
    kernels = attention or ("fused" if flash_attention else "unfused")
    return Analysis(spec, device, stage, batch, seq_len, p.w_bits, p.a_bits, p.kv, flash_attention, conventions,
                    logits, flops, total_bytes, time_s, mem, ev, precision=p, new_tokens=new_tokens,
                    attention=kernels, format_roof=roof)


def setting(stage: str, batch, seq_len, precision: Precision, flash_attention: bool = False,
            conventions: str = "exact", logits: str = "last", new_tokens: int = 1,
            eager_attention: bool = False) -> Setting:
    """The :class:`Setting` the cost formulas evaluate (batch and seq_len may be arrays), from checked values."""
    p = precision
    return Setting(stage, np.asarray(batch, dtype=float) if np.ndim(batch) else float(batch),
                   np.asarray(seq_len, dtype=float) if np.ndim(seq_len) else float(seq_len), float(p.w_bits),
                   float(p.a_bits), float(p.kv), flash_attention, conventions, logits, p.group_size, p.head_bits,
                   new_tokens, eager_attention)


#: Linear layers that stay in 16 bits under a number format (as under w_bits): the head, routers, gates.
_HIGH_PRECISION_GEMMS = ("lm_head", "router", "shared_expert_gate")


def _apply_format_roof(ev: _Evaluation, device: Device, roof: FormatRoof) -> _Evaluation:
    """Re-price the quantized linear layers of an evaluation in a number format: weight bytes at the format's
    stored bits (block scales), time at the format's compute roof (native) or the 16-bit one (storage)."""
    lin = np.array([k == "gemm" and n not in _HIGH_PRECISION_GEMMS for k, n in zip(ev.kinds, ev.names, strict=True)])
    parts = dict(ev.parts)
    scale = np.where(lin, roof.stored_bits / roof.element_bits, 1.0).reshape((-1,) + (1,) * (ev.flops.ndim - 1))
    parts["load_weight"] = ev.parts["load_weight"] * scale
    total = parts["load_weight"] + parts["load_act"] + parts["store_act"] + parts["load_kv"] + parts["store_kv"]
    names = list(ev.dtypes)
    if roof.compute_dtype not in names:
        names.append(roof.compute_dtype)
    dtype_idx = ev.dtype_idx.copy()
    dtype_idx[lin] = names.index(roof.compute_dtype)
    time = np.empty_like(ev.time)
    peaks = np.empty_like(ev.peaks)
    for i, d in enumerate(names):
        mask = dtype_idx == i
        if np.any(mask):
            time[mask] = roofline_time(ev.flops[mask], total[mask], device, d)
            peaks[mask] = device.peak(d)
    compute_bound = ev.flops / peaks >= total / device.bandwidth
    return _Evaluation(ev.names, ev.counts, ev.kinds, ev.flops, parts, total, names, dtype_idx, time, compute_bound,
                       peaks)
