"""The analyzer's bytes checked against traffic counted on a real forward pass of the book's ``Decoder``.

The analyzer (Chapter 2) charges every operator of a forward pass its compulsory bytes from formulas.
:func:`decoder_traffic` runs one prefill or decode step of a :class:`~unveiled.models.Decoder` under a
:class:`~unveiled.kernels.traffic.ByteCounter` and sums what every ATen kernel read and wrote, attributed to
the analyzer's operator names (``q_proj``, ``attn_norm``, ``softmax``, ...) through the module that ran it.
:func:`compare_traffic` puts both side by side. Where they differ, the difference is a convention, and the
table names it: eager PyTorch runs an RMSNorm as six kernels where the analyzer charges one fused kernel,
copies K/V once per query head (``repeat_kv``) before attention, scales and masks the scores in extra passes,
and copies the attention output into the layout ``o_proj`` reads. Introduced in Chapter 8.
"""

from __future__ import annotations

import re

import pandas as pd
import torch

from .._validate import check_choice, check_int
from ..models import LINEAR_NAMES, Decoder
from .traffic import ByteCounter

__all__ = ["ATTENTION_PATHS", "analyzer_traffic", "compare_traffic", "decoder_traffic"]

#: How the Decoder computes attention: ``"sdpa"`` (its default: ``scaled_dot_product_attention``, a fused
#: kernel on the CPU) or ``"explicit"`` (scores, scale, mask, softmax and ``P·V`` as separate kernels: the path
#: it takes when a cache observes the attention weights, as H2O does, and how eager reference code is written).
ATTENTION_PATHS = ("sdpa", "explicit")
_FUSED_ATTENTION_KERNELS = {"aten._scaled_dot_product_flash_attention_for_cpu", "aten._scaled_dot_product_flash_attention",
                            "aten._scaled_dot_product_efficient_attention", "aten._scaled_dot_product_cudnn_attention"}
_NOTES = {
    "attn_norm": "eager RMSNorm is 6 kernels (square, mean, add ε, rsqrt, two multiplies); the analyzer charges one fused kernel",
    "mlp_norm": "eager RMSNorm is 6 kernels; the analyzer charges one fused kernel",
    "final_norm": "eager RMSNorm is 6 kernels; the analyzer charges one fused kernel",
    "rope": "eager rotate-half RoPE gathers the tables and runs neg, cat, 2 multiplies and an add per tensor; the analyzer charges one fused pass",
    "mlp_act": "eager SwiGLU runs SiLU and the multiply as two kernels; the analyzer charges one fused kernel",
    "repeat_kv": "eager GQA copies K and V once per query head before attention (the analyzer's 'eager' convention counts it)",
    "attn_scale": "the explicit path scales the scores in a separate pass",
    "attn_mask": "the explicit path masks the scores in a separate pass (the counter also sees the mask being built)",
    "attn_layout": "layout copies: the output into the layout o_proj reads, Q into the batched product's (batch > 1)",
    "embed_tokens": "the counter also reads the token ids (8 bytes each)",
    "qk_matmul": "reads the repeated K, one copy per query head; the analyzer reads K once per key/value head",
    "sv_matmul": "reads the repeated V, one copy per query head; the analyzer reads V once per key/value head",
    "fused_attention": "PyTorch's CPU kernel also writes each row's log-sum-exp (and reads repeated K/V under GQA)",
}


class _CountedCache:
    """A preallocated KV cache (no growth copies) whose appends run in the counter's ``kv_store`` region."""

    keys_before_rope = False

    def __init__(self, num_layers: int, capacity: int, counter: ByteCounter | None = None, explicit: bool = False):
        self.capacity, self.counter = capacity, counter
        self._k: list[torch.Tensor | None] = [None] * num_layers
        self._v: list[torch.Tensor | None] = [None] * num_layers
        self._len = [0] * num_layers
        if explicit:  # Decoder computes attention explicitly when the cache observes the weights
            self.observe_attention = lambda layer, weights: None

    @property
    def offset(self) -> int:
        return self._len[0]

    def __len__(self) -> int:
        return self._len[0]

    def crop(self, n: int) -> None:
        self._len = [min(x, n if n >= 0 else len(self) + n) for x in self._len]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._k[layer] is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self._k[layer], self._v[layer] = k.new_empty(shape), v.new_empty(shape)
        n, t = self._len[layer], k.shape[2]
        if self.counter is not None:
            with self.counter.region("kv_store"):
                self._k[layer][:, :, n:n + t] = k
                self._v[layer][:, :, n:n + t] = v
        else:
            self._k[layer][:, :, n:n + t] = k
            self._v[layer][:, :, n:n + t] = v
        self._len[layer] = n + t
        return self._k[layer][:, :, :n + t], self._v[layer][:, :, :n + t]


def _attention_name(op: str, region: str, broadcast: bool, state: dict) -> str:
    """Name an operator that ran inside a layer's attention module (its projections have their own names)."""
    if region == "kv_store":
        state["phase"] = "attention"
        return "kv_store"
    if state["phase"] == "rope":
        return "rope"
    if op in _FUSED_ATTENTION_KERNELS:
        state["done"] = True
        return "fused_attention"
    if op == "aten.bmm":
        state["matmuls"] += 1
        if state["matmuls"] == 2:
            state["done"] = True
        return "qk_matmul" if state["matmuls"] == 1 else "sv_matmul"
    if op == "aten._softmax":
        return "softmax"
    if state["done"]:
        return "attn_layout"
    if state["matmuls"] == 0 and op == "aten.clone":  # a copy of an expanded K/V, or a layout copy of Q
        return "repeat_kv" if broadcast else "attn_layout"
    if op in ("aten.div", "aten.mul"):
        return "attn_scale"
    return "attn_mask"


def _name_records(counter: ByteCounter) -> list[str]:
    names, states, adds = [], {}, {}
    for rec in counter.records:
        mod, last = rec.module, rec.module.rsplit(".", 1)[-1]
        if mod == "embed_tokens" or mod == "lm_head":
            names.append(mod)
        elif mod == "norm":
            names.append("final_norm")
        elif last == "input_layernorm":
            names.append("attn_norm")
        elif last == "post_attention_layernorm":
            names.append("mlp_norm")
        elif last in LINEAR_NAMES:
            names.append(last)
        elif last == "mlp":
            names.append("mlp_act")
        elif last == "self_attn":
            state = states.setdefault(mod, {"phase": "rope", "matmuls": 0, "done": False})
            names.append(_attention_name(rec.op, rec.region, rec.broadcast, state))
        elif re.fullmatch(r"layers\.\d+", mod) and rec.op == "aten.add":
            adds[mod] = adds.get(mod, 0) + 1
            names.append("attn_add" if adds[mod] == 1 else "mlp_add")
        else:
            names.append("other")
    return names


def decoder_traffic(model: Decoder, *, stage: str = "decode", batch: int = 1, seq_len: int = 64,
                    attention: str = "sdpa", seed: int = 0) -> pd.DataFrame:
    """Bytes every operator of one forward pass of ``model`` reads and writes, counted by a ByteCounter.

    ``stage="prefill"`` runs ``batch`` prompts of ``seq_len`` tokens (logits at every position, as
    ``Decoder.forward`` computes them); ``stage="decode"`` runs one new token per sequence after ``seq_len − 1``
    cached ones (the analyzer's convention: the step attends to ``seq_len`` keys). ``attention`` picks the
    Decoder's path (:data:`ATTENTION_PATHS`). Tokens are seeded random ids; the cache is preallocated so no
    growth copy is counted. One row per operator name: ``op, calls, read_bytes, write_bytes, bytes``
    (totals over layers). Introduced in Chapter 8.
    """
    if not isinstance(model, Decoder):
        raise TypeError(f"model must be an unveiled Decoder, got {type(model).__name__}")
    check_choice("stage", stage, ("prefill", "decode"))
    check_choice("attention", attention, ATTENTION_PATHS)
    batch = check_int("batch", batch, minimum=1)
    seq_len = check_int("seq_len", seq_len, minimum=1 if stage == "prefill" else 2)
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=gen)
    counter = ByteCounter(model)
    cache = _CountedCache(cfg.num_layers, seq_len, explicit=attention == "explicit")
    with torch.inference_mode():
        if stage == "decode":
            model(tokens[:, :-1], cache=cache)
            step = tokens[:, -1:]
        else:
            step = tokens
        cache.counter = counter
        with counter:
            model(step, cache=cache)
    table = counter.table()
    table["name"] = _name_records(counter)
    out = table.groupby("name", sort=False).agg(calls=("op", "size"), read_bytes=("read_bytes", "sum"),
                                                write_bytes=("write_bytes", "sum"), bytes=("bytes", "sum"))
    return out.reset_index().rename(columns={"name": "op"})


def analyzer_traffic(model: Decoder, *, stage: str = "decode", batch: int = 1, seq_len: int = 64,
                     attention: str = "unfused", device: str = "a6000") -> pd.DataFrame:
    """The analyzer's bytes for the same pass, in the Decoder's precision (fp32 weights, activations, cache).

    One row per operator: ``op`` and ``bytes`` (per pass, all layers). ``attention`` is the analyzer's attention
    kernel convention (``"fused"``, ``"unfused"`` or ``"eager"``). ``logits="all"`` in prefill, since
    ``Decoder.forward`` computes every position's logits. Introduced in Chapter 8.
    """
    from ..analyzer import analyze, model_from_hf_config

    spec = model_from_hf_config(model.config.to_hf_config(), name=model.config.name or "decoder")
    a = analyze(spec, device, stage=stage, batch=batch, seq_len=seq_len, w_bits=32, a_bits=32, kv_bits=32,
                attention=attention, logits="all", check_context=False)
    ops = a.ops
    return pd.DataFrame({"op": ops["op"], "bytes": ops["bytes"] * ops["count"]})


def compare_traffic(model: Decoder, *, stage: str = "decode", batch: int = 1, seq_len: int = 64,
                    attention: str = "sdpa", against: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Counted bytes next to the analyzer's, per operator: ``op, analyzer_bytes, counted_bytes, ratio, note``.

    ``attention`` is the Decoder's path (:data:`ATTENTION_PATHS`); ``against`` the analyzer's attention
    convention, by default ``"fused"`` for ``"sdpa"`` and ``"eager"`` for ``"explicit"``. ``ratio`` is
    counted / analyzer (empty where the analyzer has no such operator); ``note`` names the convention behind
    a difference. Introduced in Chapter 8.
    """
    check_choice("attention", attention, ATTENTION_PATHS)
    against = against or ("fused" if attention == "sdpa" else "eager")
    counted = decoder_traffic(model, stage=stage, batch=batch, seq_len=seq_len, attention=attention, seed=seed)
    predicted = analyzer_traffic(model, stage=stage, batch=batch, seq_len=seq_len, attention=against)
    t = predicted.rename(columns={"bytes": "analyzer_bytes"}).merge(
        counted[["op", "bytes"]].rename(columns={"bytes": "counted_bytes"}), on="op", how="outer", sort=False)
    t = t[~((t["analyzer_bytes"].fillna(0) == 0) & (t["counted_bytes"].fillna(0) == 0))]
    t["ratio"] = t["counted_bytes"] / t["analyzer_bytes"].where(t["analyzer_bytes"] > 0)
    t["note"] = [_NOTES.get(op, "") if abs((r if r == r else 0) - 1) > 1e-9 else "" for op, r in zip(t["op"], t["ratio"], strict=True)]
    return t.reset_index(drop=True)
