"""One decode step of the book's Decoder written for a compiler, and a per-operator profile of a real step.

``torch.compile`` turns a Python function into one graph it can fuse, if the function has fixed shapes and no
Python-side state that changes every call. ``Decoder.forward`` with a growing :class:`~unveiled.models.KVCache`
has both (the cache length, per-layer Python lists): compiled as is, it breaks into many graphs and
recompiles at every layer. :class:`StaticDecodeStep` is the same computation over a preallocated cache:
the new key/value is written in place at a position given as a tensor (``index_copy_``) and the token
attends over the whole buffer with a mask, so every step has the same shapes and one graph serves them all
(the "static cache" of Hugging Face's compiled generation). It reuses the model's weights and gives the
Decoder's logits (tested).

:func:`profile_decode_step` times every ATen kernel of one eager decode step of the Decoder and sums time and
bytes per analyzer operator, next to the analyzer's roofline prediction for the same operator on a device:
where the step's time really goes. Introduced in Chapter 8.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_choice, check_int
from ..hardware import Device, get_device
from ..models import Decoder, KVCache
from ..roofline import roofline_time
from ..timing import time_repeats
from .traffic import ByteCounter
from .validation import _CountedCache, _name_records, analyzer_traffic

__all__ = ["StaticDecodeStep", "best_and_median", "decode_step_bytes", "profile_decode_step"]


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class StaticDecodeStep(nn.Module):
    """A Decoder's decode step over a preallocated KV cache of ``max_len`` tokens (compiler-friendly).

    ``step.prefill(tokens)`` runs the Decoder on a prompt ``[B, T]`` and stores its keys and values;
    ``step(token, position)`` appends the token ``[B, 1]`` at ``position`` (a 1-element LongTensor, so the
    shapes never change) and returns the logits ``[B, 1, V]``, equal to ``Decoder.forward`` with a cache.
    Attention runs over the buffer, masked past ``position``, with no repeated K/V: ``scaled_dot_product_attention``
    with ``enable_gqa`` in the library form, and written out (scores, softmax, weighted sum of values, each
    query head grouped with its KV head) in the generated forms, so that the compiler generates it too instead of
    calling a library kernel per layer. ``gemv="library"`` computes the projections with ``nn.Linear`` (a call to the
    CPU's matrix library); ``gemv="generated"`` writes each one as ``(x · W).sum(-1)``, a multiply and a
    reduction that a compiler turns into its own matrix-vector loop, fused with its neighbours.
    ``gemv="blocked"`` is the same product over the weight laid out in blocks of :attr:`BLOCK` output rows,
    ``[out/BLOCK, in, BLOCK]``: the generated loop then keeps ``BLOCK`` outputs in a vector register and
    streams each block as one contiguous run, with no horizontal sum per output (the layout that CPU GEMV
    kernels pre-pack their weights into). The relayout is written in the step, so a compiler that freezes the
    weights folds it into a constant once. The generated and blocked forms are only meant to be compiled: run
    eagerly they materialise the product (and the blocked one copies the weights every call).
    Introduced in Chapter 8.
    """

    GEMVS = ("library", "generated", "blocked")
    #: Output rows per block of the ``"blocked"`` layout: one AVX-512 vector of fp32, two of AVX2.
    BLOCK = 16

    def __init__(self, model: Decoder, max_len: int, batch: int = 1, gemv: str = "library"):
        super().__init__()
        if not isinstance(model, Decoder):
            raise TypeError(f"model must be an unveiled Decoder, got {type(model).__name__}")
        self.model = model
        self.max_len = check_int("max_len", max_len, minimum=1)
        batch = check_int("batch", batch, minimum=1)
        self.gemv = check_choice("gemv", gemv, self.GEMVS)
        cfg = model.config
        shape = (batch, cfg.num_kv_heads, self.max_len, cfg.head_dim)
        for i in range(cfg.num_layers):  # one buffer per layer: the layers' kernels are then identical
            self.register_buffer(f"k{i}", torch.zeros(shape), persistent=False)
            self.register_buffer(f"v{i}", torch.zeros(shape), persistent=False)
        cos, sin = model.rope.tables(torch.arange(self.max_len), torch.zeros(()))
        self.register_buffer("cos", cos.clone(), persistent=False)
        self.register_buffer("sin", sin.clone(), persistent=False)

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the prompt through the Decoder (eager) and copy its keys/values into the buffers."""
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.shape[1] >= self.max_len:
            raise ValueError(f"a prompt of {tokens.shape[1]} tokens leaves no room in a cache of {self.max_len}")
        cache = KVCache(self.model.config.num_layers)
        logits = self.model(tokens, cache=cache)
        n = tokens.shape[1]
        for i in range(self.model.config.num_layers):
            getattr(self, f"k{i}")[:, :, :n] = cache.keys(i)
            getattr(self, f"v{i}")[:, :, :n] = cache.values(i)
        return logits

    def _linear(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self.gemv == "library":
            return layer(x)
        w = layer.weight
        out, b = w.shape[0], self.BLOCK
        if self.gemv == "generated" or out % b:
            return (x[..., None, :] * w).sum(-1)
        blocks = w.view(out // b, b, -1).transpose(1, 2).contiguous()  # [out/b, in, b]: one stream per block
        return (x[..., None, :, None] * blocks).sum(-2).reshape(*x.shape[:-1], out)

    def forward(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        m, cfg = self.model, self.model.config
        lin = self._linear
        H, K, d, eps = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.rms_norm_eps
        B = token.shape[0]
        x = m.embed_tokens(token)
        cos, sin = self.cos[position], self.sin[position]
        visible = (torch.arange(self.max_len, device=token.device) <= position)[None, :]
        for i, block in enumerate(m.layers):
            attn, k_buf, v_buf = block.self_attn, getattr(self, f"k{i}"), getattr(self, f"v{i}")
            h = _rms(x, block.input_layernorm.weight, eps)
            q = _rotate(lin(attn.q_proj, h).view(B, 1, H, d).transpose(1, 2), cos, sin)
            k = _rotate(lin(attn.k_proj, h).view(B, 1, K, d).transpose(1, 2), cos, sin)
            k_buf.index_copy_(2, position, k)
            v_buf.index_copy_(2, position, lin(attn.v_proj, h).view(B, 1, K, d).transpose(1, 2))
            if self.gemv == "library":
                o = F.scaled_dot_product_attention(q, k_buf, v_buf, attn_mask=visible, enable_gqa=H != K)
            else:
                o = _grouped_attention(q, k_buf, v_buf, visible)
            x = x + lin(attn.o_proj, o.transpose(1, 2).reshape(B, 1, H * d))
            h = _rms(x, block.post_attention_layernorm.weight, eps)
            mlp = block.mlp
            x = x + lin(mlp.down_proj, F.silu(lin(mlp.gate_proj, h)) * lin(mlp.up_proj, h))
        return lin(m.lm_head, _rms(x, m.norm.weight, eps))


def _grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """One query per head ``[B, H, 1, d]`` over keys and values ``[B, K, L, d]`` (H = K·G: query head h reads KV
    head h // G, as ``enable_gqa``), with key positions where ``visible`` ``[1, L]`` is False masked out."""
    B, H, _, d = q.shape
    K = k.shape[1]
    qg = q.reshape(B, K, H // K, 1, d)
    scores = (qg * k[:, :, None]).sum(-1) * d ** -0.5  # [B, K, G, L]
    p = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return (p[..., None] * v[:, :, None]).sum(-2).reshape(B, H, 1, d)


def best_and_median(fn, repeats: int = 5, clock: str = "wall", budget_s: float | None = None) -> tuple[float, float]:
    """Best and median seconds of up to ``repeats`` calls of ``fn`` (after a warm-up) that fit ``budget_s``.

    A thin wrapper of :func:`unveiled.timing.time_repeats` (``clock="thread"``: the calling thread's CPU time,
    for one PyTorch thread on a busy machine). Introduced in Chapter 8.
    """
    times = time_repeats(fn, repeats, budget_s=budget_s, clock_name=clock)
    return float(min(times)), float(np.median(times))


def decode_step_bytes(model: Decoder, context: int) -> float:
    """Bytes one decode step moves by the analyzer's count (fp32, the step attends to ``context`` keys)."""
    return float(analyzer_traffic(model, stage="decode", seq_len=context)["bytes"].sum())


def profile_decode_step(model: Decoder, device: str | Device, *, context: int = 64, repeats: int = 5,
                        seed: int = 0, clock: str = "wall", budget_s: float | None = None) -> pd.DataFrame:
    """Where one eager decode step's time goes: per analyzer operator, measured next to predicted.

    Runs ``repeats`` decode steps of ``model`` (batch 1, attending to ``context`` keys) under a timing
    :class:`~unveiled.kernels.traffic.ByteCounter`, keeps each kernel's fastest run, and sums per operator
    name. Columns: ``op``, ``calls``, ``bytes`` (counted), ``time_s`` (measured), ``achieved_bytes_s``,
    ``predicted_s`` (the analyzer's bytes and FLOPs on ``device``'s roofline), ``measured_over_predicted``.
    A last row ``python`` is the plain step's best time (timed without the counter) minus the kernels' time:
    the interpreter and PyTorch's dispatch between kernels.
    ``clock="thread"`` times CPU time instead of wall time (see :class:`ByteCounter`); ``budget_s`` caps the
    plain step's timing (the counted repeats are ``repeats``, few by default). Introduced in Chapter 8.
    """
    dev = get_device(device)
    context = check_int("context", context, minimum=2)
    repeats = check_int("repeats", repeats, minimum=1)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (1, context), generator=gen)
    cache = _CountedCache(model.config.num_layers, context)
    per_call, names = None, None
    with torch.inference_mode():
        model(tokens[:, :-1], cache=cache)

        def step() -> None:
            model(tokens[:, -1:], cache=cache)
            cache.crop(-1)

        wall, _ = best_and_median(step, repeats, clock, budget_s)  # the plain step, no counter
        for _ in range(repeats):
            counter = ByteCounter(model, time_ops=True, clock=clock)
            cache.counter = counter
            with counter:
                model(tokens[:, -1:], cache=cache)
            cache.crop(-1)
            cache.counter = None
            times = np.array([r.time_s for r in counter.records])
            per_call = times if per_call is None else np.minimum(per_call, times)
            if names is None:
                names, table = _name_records(counter), counter.table()
    table["name"], table["time_s"] = names, per_call
    got = table.groupby("name", sort=False).agg(calls=("op", "size"), bytes=("bytes", "sum"), time_s=("time_s", "sum"))
    got = got.reset_index().rename(columns={"name": "op"})
    pred = _predicted_times(model, dev, context)
    out = got.merge(pred, on="op", how="left")
    out["achieved_bytes_s"] = out["bytes"] / out["time_s"]
    out["measured_over_predicted"] = out["time_s"] / out["predicted_s"]
    python_s = max(wall - float(out["time_s"].sum()), 0.0)
    out = pd.concat([out, pd.DataFrame([{"op": "python", "calls": 0, "bytes": 0, "time_s": python_s}])],
                    ignore_index=True)
    return out[["op", "calls", "bytes", "time_s", "achieved_bytes_s", "predicted_s", "measured_over_predicted"]]


def _predicted_times(model: Decoder, device: Device, context: int) -> pd.DataFrame:
    from ..analyzer import analyze, model_from_hf_config

    spec = model_from_hf_config(model.config.to_hf_config(), name=model.config.name or "decoder")
    a = analyze(spec, device, stage="decode", batch=1, seq_len=context, w_bits=32, a_bits=32, kv_bits=32,
                attention="fused", check_context=False)
    ops = a.ops
    dtype = "fp32" if device.has("fp32") else device.dtypes[0]
    predicted = [float(roofline_time(f, b, device, dtype)) * c
                 for f, b, c in zip(ops["flops"], ops["bytes"], ops["count"], strict=True)]
    return pd.DataFrame({"op": ops["op"], "predicted_s": predicted})
