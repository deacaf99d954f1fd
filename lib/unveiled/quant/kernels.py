"""Real low-bit execution on the CPU: PyTorch's int8 and int4 weight-only matmul kernels, and timing them.

Fake quantization (the rest of this package) measures *accuracy*; it still multiplies fp32 numbers, so it
cannot be faster. Speed needs kernels that read the packed integers and dequantize them on the fly, so the
bytes moved from memory really shrink. PyTorch ships two for CPUs, as private ``aten`` operators (used by
``torchao``): ``_weight_int8pack_mm`` (int8 weights, one bf16 scale per output channel) and
``_weight_int4pack_mm_for_cpu`` (int4 weights packed two per byte, a bf16 scale and offset per group, dequantized
as ``(q − 8)·scale + offset``). Their fast paths need **bf16 activations**. They are wrapped here in one place:
each module checks the operator exists and otherwise falls back to dequantize-then-matmul (correct, not fast).
Introduced in Chapter 3.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_choice, check_int
from ..models import Decoder, replace_linears
from ..session import progress_bar
from ..timing import Budget, time_repeats
from .layers import _check_model
from .uniform import QuantSpec, quantize

__all__ = [
    "Int4WeightOnlyLinear",
    "Int8WeightOnlyLinear",
    "decode_speed",
    "decode_speed_vs_roofline",
    "gemv_benchmark",
    "int4_kernel_available",
    "int8_kernel_available",
    "lowbit_model",
]


def int8_kernel_available() -> bool:
    """Whether this PyTorch has the CPU int8 weight-only matmul (``aten._weight_int8pack_mm``). Chapter 3."""
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def int4_kernel_available() -> bool:
    """Whether this PyTorch has the CPU int4 weight-only matmul and its packing operator. Chapter 3."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu") and hasattr(
        torch.ops.aten, "_convert_weight_to_int4pack_for_cpu"
    )


def _activation_name(kind: str) -> str:
    return "fp32" if kind == "fp32" else "bf16"


def _activation_dtype(activation: str) -> torch.dtype:
    """The activation type a low-bit kernel computes with: "bf16" (the kernels' fast path) or "fp32"."""
    check_choice("activation", activation, ("bf16", "fp32"))
    return torch.bfloat16 if activation == "bf16" else torch.float32


def _flat(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    return x.reshape(-1, x.shape[-1]).contiguous(), tuple(x.shape[:-1])


class Int8WeightOnlyLinear(nn.Module):
    """Weight-only int8 linear: per-output-channel symmetric codes and bf16 scales (W8A16 on a CPU).

    ``use_kernel=False`` (or a PyTorch without the operator) runs the dequantize-then-matmul reference.
    Introduced in Chapter 3.
    """

    def __init__(self, linear: nn.Linear, use_kernel: bool = True, activation: str = "bf16"):
        super().__init__()
        self.act_dtype = _activation_dtype(activation)
        qt = quantize(linear.weight.detach().float(), QuantSpec(8, symmetric=True, granularity="channel"))
        self.register_buffer("codes", qt.codes.to(torch.int8).contiguous())
        self.register_buffer("scales", qt.scale.reshape(-1).to(torch.bfloat16))
        self.use_kernel = bool(use_kernel) and int8_kernel_available()
        self.out_features, self.in_features = self.codes.shape

    def dequantized(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return self.codes.to(dtype) * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _flat(x.to(self.act_dtype))
        if self.use_kernel:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scales.to(self.act_dtype))
        else:
            y = F.linear(x2, self.dequantized(self.act_dtype))
        return y.reshape(*lead, self.out_features).to(x.dtype)

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 2 * self.scales.numel()


class Int4WeightOnlyLinear(nn.Module):
    """Weight-only int4 linear: asymmetric codes per group of ``group_size`` inputs, bf16 scale and offset.

    The codes come from this package's asymmetric quantizer (``x̂ = s·(q − z)``), rewritten in the kernel's
    convention ``x̂ = (q − 8)·s + offset`` with ``offset = (8 − z)·s``. Introduced in Chapter 3.
    """

    def __init__(self, linear: nn.Linear, group_size: int = 64, use_kernel: bool = True, activation: str = "bf16"):
        super().__init__()
        self.act_dtype = _activation_dtype(activation)
        group_size = check_choice("group_size", group_size, (32, 64, 128, 256))
        w = linear.weight.detach().float()
        n, k = w.shape
        if k % group_size:
            raise ValueError(f"group_size {group_size} does not divide in_features {k}")
        qt = quantize(w, QuantSpec(4, granularity="group", group_size=group_size))
        scale = qt.scale[..., 0]  # [N, K/g]
        offset = (8.0 - qt.zero[..., 0]) * scale
        self.group_size = group_size
        self.register_buffer("scales_and_zeros", torch.stack([scale.T, offset.T], dim=-1).to(torch.bfloat16).contiguous())
        codes = qt.codes.to(torch.int32).contiguous()
        self.use_kernel = bool(use_kernel) and int4_kernel_available()
        if self.use_kernel:
            self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        else:
            self.register_buffer("packed", codes.to(torch.uint8))
        self.register_buffer("codes", codes.to(torch.uint8))
        self.out_features, self.in_features = n, k

    def dequantized(self, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        sz = self.scales_and_zeros.to(dtype)
        s = sz[..., 0].T.repeat_interleave(self.group_size, dim=1)
        o = sz[..., 1].T.repeat_interleave(self.group_size, dim=1)
        return (self.codes.to(dtype) - 8) * s + o

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2, lead = _flat(x.to(self.act_dtype))
        if self.use_kernel:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size,
                                                           self.scales_and_zeros.to(self.act_dtype))
        else:
            y = F.linear(x2, self.dequantized(self.act_dtype))
        return y.reshape(*lead, self.out_features).to(x.dtype)

    @property
    def nbytes(self) -> int:
        return self.codes.numel() // 2 + 2 * self.scales_and_zeros.numel()


def lowbit_model(model: Decoder, kind: str = "int8", *, group_size: int = 64, include_head: bool = True,
                 use_kernel: bool = True) -> Decoder:
    """A bf16 copy of ``model`` whose linear layers run real low-bit kernels (``kind``: "int8", "int4", "bf16").

    ``"bf16"`` only casts (the 16-bit baseline). The head is converted too with ``include_head`` (it is a fifth
    of SmolLM2's weights); the embedding stays bf16 (a lookup reads one row per token). Introduced in Chapter 3.
    """
    model = _check_model(model)
    check_choice("kind", kind, ("bf16", "int8", "int4"))
    out = copy.deepcopy(model)
    if kind == "int8":
        def make(_name, lin):
            return Int8WeightOnlyLinear(lin, use_kernel)
    elif kind == "int4":
        def make(_name, lin):
            return Int4WeightOnlyLinear(lin, group_size, use_kernel)
    if kind != "bf16":
        replace_linears(out, make, None if not include_head else (lambda n: True))
    return out.to(torch.bfloat16).eval()


@torch.inference_mode()
def decode_speed(model: Decoder, prompt: Sequence[int] | torch.Tensor, new_tokens: int = 16, warmup: int = 2,
                 batch: int = 1, budget_s: float | None = 20.0) -> dict[str, float]:
    """Greedy decoding with a KV cache, timed per step: median seconds per token and tokens/s.

    The prompt is prefilled once (not timed); each timed step runs one token per sequence through the model,
    which is the memory-bound decode stage the roofline describes. Steps stop early when ``budget_s`` seconds
    are spent (at least three are timed), so a format without a fast kernel on this CPU cannot stall a
    chapter. ``steps`` says how many were timed. Introduced in Chapter 3.
    """
    model = _check_model(model)
    new_tokens = check_int("new_tokens", new_tokens)
    warmup = check_int("warmup", warmup, minimum=0)
    batch = check_int("batch", batch)
    budget = Budget(budget_s)
    ids = prompt if isinstance(prompt, torch.Tensor) else torch.tensor(list(prompt), dtype=torch.long)
    ids = ids.reshape(1, -1).expand(batch, -1).contiguous()
    cache = model.new_cache()
    logits = model(ids, cache)
    nxt = logits[:, -1].argmax(-1, keepdim=True)
    times = []
    for step in range(warmup + new_tokens):
        t0 = time.perf_counter()
        logits = model(nxt, cache)
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            if len(times) >= min(3, new_tokens) and budget.remaining() <= 0:
                break
    med = statistics.median(times)
    return {"time_per_token_s": med, "tokens_per_s": batch / med, "batch": batch, "context": ids.shape[1],
            "steps": len(times)}


@torch.inference_mode()
def gemv_benchmark(out_features: int = 4096, in_features: int = 4096, repeats: int = 20,
                   kinds: Sequence[str] = ("fp32", "bf16", "int8", "int4"), group_size: int = 128,
                   seed: int = 0, budget_s: float | None = 10.0,
                   activations: Sequence[str] = ("bf16",)) -> pd.DataFrame:
    """Time one decode-time matrix–vector product ``[1, in] × [in, out]`` per weight format (median of repeats).

    Each format gets an even share of ``budget_s`` (at most ``repeats`` repeats, at least three). The low-bit
    kernels run once per activation type in ``activations`` ("bf16", their fast path, and/or "fp32"); the
    ``activation`` column says which type the input is converted to. Columns: ``kind``, ``activation``, ``weight_bytes`` (what the kernel must read),
    ``time_s``, ``repeats``, ``effective_GB_s`` (weight bytes / time) and ``speedup_vs_fp32``.
    Introduced in Chapter 3.
    """
    out_features = check_int("out_features", out_features)
    in_features = check_int("in_features", in_features)
    repeats = check_int("repeats", repeats)
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out_features, in_features, generator=gen) * 0.02)
    x = torch.randn(1, in_features, generator=gen)
    budget = Budget(budget_s)
    runs = []  # (kind, activation)
    for kind in kinds:
        check_choice("kind", kind, ("fp32", "bf16", "int8", "int4"))
        acts = [_activation_name(kind)] if kind in ("fp32", "bf16") else [check_choice("activation", a, ("bf16", "fp32"))
                                                                          for a in activations]
        runs += [(kind, a) for a in acts]
    rows = []
    for i, (kind, act) in enumerate(runs):
        if kind == "fp32":
            mod, nbytes = lin, 4 * lin.weight.numel()
        elif kind == "bf16":
            mod, nbytes = copy.deepcopy(lin).to(torch.bfloat16), 2 * lin.weight.numel()
        elif kind == "int8":
            mod = Int8WeightOnlyLinear(lin, activation=act)
            nbytes = mod.nbytes
        else:
            mod = Int4WeightOnlyLinear(lin, group_size, activation=act)
            nbytes = mod.nbytes
        xin = x.to(_activation_dtype(act))
        mod(xin)  # first call: kernel selection, packing caches
        share = budget.share(len(runs) - i)
        ts = time_repeats(lambda mod=mod, xin=xin: mod(xin), repeats, min_repeats=min(3, repeats),
                          budget_s=None if share == float("inf") else max(share, 1e-9))
        t = statistics.median(ts)
        rows.append({"kind": kind, "activation": act, "weight_bytes": nbytes, "time_s": t, "repeats": len(ts),
                     "effective_GB_s": nbytes / t / 1e9})
    df = pd.DataFrame(rows)
    if "fp32" in set(df["kind"]):
        df["speedup_vs_fp32"] = float(df.loc[df["kind"] == "fp32", "time_s"].iloc[0]) / df["time_s"]
    return df


def decode_speed_vs_roofline(model: Decoder, analyzer_model: str, device, prompt: Sequence[int] | torch.Tensor, *,
                             kinds: Sequence[str] = ("fp32", "bf16", "int8", "int4"), new_tokens: int = 12,
                             group_size: int = 64, progress: bool = False,
                             budget_s: float | None = 40.0) -> pd.DataFrame:
    """Measure greedy decode speed of ``model`` in each weight format and put the roofline's prediction beside it.

    ``"fp32"`` runs the model as is; ``"bf16"``, ``"int8"`` and ``"int4"`` run :func:`lowbit_model` copies
    (head included). The prediction is :func:`unveiled.analyze` for one decode step of ``analyzer_model`` on
    ``device`` (e.g. the measured ``uv.measure_machine().device``) with the same weight, head and activation
    widths and a KV cache as long as the context. Each format's decode gets an even share of ``budget_s``.
    Columns: ``kind``, ``w_bits``, ``measured_s`` (median per token), ``predicted_s``,
    ``measured_over_predicted``, ``speedup_vs_fp32`` (measured), ``predicted_speedup``. Introduced in Chapter 3.
    """
    from ..analyzer import analyze

    bits = {"fp32": (32, 32, None), "bf16": (16, 16, None), "int8": (8, 16, None), "int4": (4, 16, group_size)}
    rows = []
    it = list(kinds)
    if progress:
        it = progress_bar(it, desc="decode speed", leave=False)
    context = len(prompt) + new_tokens // 2
    budget = Budget(budget_s)
    for i, kind in enumerate(it):
        check_choice("kind", kind, tuple(bits))
        m = model if kind == "fp32" else lowbit_model(model, kind, group_size=group_size)
        share = budget.share(len(kinds) - i)
        speed = decode_speed(m, prompt, new_tokens=new_tokens, budget_s=None if share == float("inf") else max(share, 1e-9))
        w, a, g = bits[kind]
        pred = analyze(analyzer_model, device, stage="decode", batch=1, seq_len=context, w_bits=w, a_bits=a,
                       kv_bits=a, head_bits=w, group_size=g).time_s
        rows.append({"kind": kind, "w_bits": w, "measured_s": speed["time_per_token_s"], "predicted_s": pred})
        if m is not model:
            del m
    df = pd.DataFrame(rows)
    df["measured_over_predicted"] = df["measured_s"] / df["predicted_s"]
    ref = df.loc[df["kind"] == kinds[0]]
    df["speedup_vs_fp32"] = float(ref["measured_s"].iloc[0]) / df["measured_s"]
    df["predicted_speedup"] = float(ref["predicted_s"].iloc[0]) / df["predicted_s"]
    return df
