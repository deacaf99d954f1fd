"""How big the KV cache gets: per token, per sequence, per serving batch, and next to the weights.

Every decoder layer caches, for every token, what later tokens will attend to. Multi-head attention (MHA)
caches a key and a value for each of its ``H`` heads, ``2·H·d`` elements per token and layer; grouped-query
attention [Ainslie et al. 2023] shares each cached head among ``H/K`` query heads (``2·K·d``), multi-query
attention [Shazeer 2019] keeps one (``2·d``), and DeepSeek's multi-head latent attention [DeepSeek-AI 2024]
caches one compressed latent of rank ``r`` plus a small rotary key (``r + d_rope``, no factor 2). Times the
layers, the bytes per element, the tokens and the batch: that is the memory decode must hold *and read at
every step*. These formulas are written here independently of the analyzer's and the tests check that both
agree. Introduced in Chapter 6.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .._validate import check_int

__all__ = [
    "attention_kind",
    "attention_variants",
    "decode_traffic",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "kv_elements_per_token",
    "kv_size_table",
    "kv_weights_crossover",
    "memory_wall",
]

_REFERENCE_DEVICE = "h100-sxm"  # any device: memory accounting does not depend on it


def _spec(m):
    from ..analyzer import model_spec

    return model_spec(m)


def _check_kv_bits(kv_bits: object) -> int:
    if isinstance(kv_bits, bool) or not isinstance(kv_bits, (int, np.integer)):
        raise TypeError(f"kv_bits must be an int between 1 and 16 (or 32), got {kv_bits!r}")
    if not (1 <= kv_bits <= 16 or kv_bits == 32):
        raise ValueError(f"kv_bits must be between 1 and 16, or 32, got {kv_bits}")
    return int(kv_bits)


def attention_kind(m) -> str:
    """``"MHA"``, ``"GQA"``, ``"MQA"`` or ``"MLA"`` for a model (name or analyzer spec). Introduced in Chapter 6."""
    s = _spec(m)
    if s.is_mla:
        return "MLA"
    if s.num_kv_heads == s.num_heads:
        return "MHA"
    return "MQA" if s.num_kv_heads == 1 else "GQA"


def kv_elements_per_token(m) -> int:
    """Cached elements per token, summed over layers: ``n·2·K·d`` (MHA/GQA/MQA) or ``n·(r + d_rope)`` (MLA).

    Introduced in Chapter 6.
    """
    s = _spec(m)
    per_layer = s.kv_lora_rank + s.qk_rope_head_dim if s.is_mla else 2 * s.num_kv_heads * s.head_dim
    return s.num_layers * per_layer


def _bits_per_element(kv_bits: int, group_size: int | None, scale_bits: int) -> float:
    if group_size is None or kv_bits >= 16:
        return float(kv_bits)
    group_size = check_int("group_size", group_size)
    return kv_bits + 2 * scale_bits / group_size  # a scale and a zero point per group


def kv_bytes_per_token(m, kv_bits: int = 16, *, group_size: int | None = None, scale_bits: int = 16) -> float:
    """Bytes one token adds to one sequence's cache, all layers, at ``kv_bits`` per element.

    With ``group_size`` every group of that many elements also stores a ``scale_bits`` scale and zero point,
    as KIVI does [Liu et al. 2024]. Introduced in Chapter 6.
    """
    kv_bits = _check_kv_bits(kv_bits)
    return kv_elements_per_token(m) * _bits_per_element(kv_bits, group_size, scale_bits) / 8


def kv_cache_bytes(m, seq_len: int, batch: int = 1, kv_bits: int = 16, *, group_size: int | None = None,
                   residual: int = 0, scale_bits: int = 16) -> float:
    """Bytes of the KV cache of ``batch`` sequences holding ``seq_len`` tokens each.

    ``residual`` tokens per sequence (the most recent) stay at 16 bits, as KIVI's full-precision window; a
    sliding-window model (Mistral) never holds more than its window. Introduced in Chapter 6.
    """
    s = _spec(m)
    seq_len = check_int("seq_len", seq_len, minimum=0)
    batch = check_int("batch", batch)
    residual = check_int("residual", residual, minimum=0)
    tokens = seq_len if s.sliding_window is None else min(seq_len, s.sliding_window)
    fp = min(residual, tokens) if kv_bits < 16 else 0
    per_q = kv_bytes_per_token(s, kv_bits, group_size=group_size, scale_bits=scale_bits)
    return batch * ((tokens - fp) * per_q + fp * kv_bytes_per_token(s, 16))


def _weights_bytes(m, w_bits: int) -> float:
    from ..analyzer import analyze

    return analyze(m, _REFERENCE_DEVICE, stage="decode", batch=1, seq_len=1, w_bits=w_bits,
                   check_context=False).memory.weights


def kv_weights_crossover(m, batch: int = 1, w_bits: int = 16, kv_bits: int = 16) -> float:
    """Tokens per sequence at which ``batch`` sequences' KV cache weighs as much as the weights.

    Weights are counted by the analyzer's memory model (embeddings and head included). Past this length the
    cache, not the model, is the larger thing decode must keep and read. Introduced in Chapter 6.
    """
    batch = check_int("batch", batch)
    return _weights_bytes(m, w_bits) / (batch * kv_bytes_per_token(m, kv_bits))


def kv_size_table(models: Iterable, seq_len: int = 4096, batch: int = 1, kv_bits: int = 16,
                  w_bits: int = 16) -> pd.DataFrame:
    """One row per model: attention kind, cached elements and bytes per token, per sequence and per batch,
    the weights, and the context length at which one sequence's cache outweighs them (``num_kv_heads`` is 0
    for MLA, which caches a latent vector instead of per-head keys and values). Introduced in Chapter 6.
    """
    rows = []
    for m in models:
        s = _spec(m)
        per_token = kv_bytes_per_token(s, kv_bits)
        weights = _weights_bytes(s, w_bits)
        rows.append({
            "model": s.name,
            "attention": attention_kind(s),
            "num_layers": s.num_layers,
            "num_heads": s.num_heads,
            "num_kv_heads": s.num_kv_heads if not s.is_mla else 0,
            "head_dim": s.head_dim,
            "elements_per_token_layer": kv_elements_per_token(s) // s.num_layers,
            "bytes_per_token": per_token,
            "bytes_per_sequence": kv_cache_bytes(s, seq_len, 1, kv_bits),
            "bytes_batch": kv_cache_bytes(s, seq_len, batch, kv_bits),
            "weights_bytes": weights,
            "crossover_tokens": weights / per_token,
        })
    df = pd.DataFrame(rows)
    df.attrs.update(seq_len=seq_len, batch=batch, kv_bits=kv_bits, w_bits=w_bits)
    return df


def attention_variants(m, gqa_kv_heads: int = 8, latent_rank: int = 512, rope_dim: int = 64) -> dict:
    """The same model with four attention designs: MHA, GQA (``gqa_kv_heads`` shared heads), MQA and MLA.

    Only the attention changes (MLA gets DeepSeek-V2's latent rank 512 and rotary width 64, with the model's
    head width for the rest), so the rows differ in KV cache and attention weights alone. Returns analyzer
    specs named ``"<model> MHA"`` etc. Introduced in Chapter 6.
    """
    s = _spec(m)
    gqa_kv_heads = check_int("gqa_kv_heads", gqa_kv_heads)
    if s.num_heads % gqa_kv_heads:
        raise ValueError(f"gqa_kv_heads {gqa_kv_heads} must divide the {s.num_heads} query heads")
    base = s.with_(kv_lora_rank=0, qk_rope_head_dim=0, qk_nope_head_dim=0, v_head_dim=0, q_lora_rank=None)
    out = {
        "MHA": base.with_(num_kv_heads=s.num_heads, name=f"{s.name} MHA"),
        "GQA": base.with_(num_kv_heads=gqa_kv_heads, name=f"{s.name} GQA-{gqa_kv_heads}"),
        "MQA": base.with_(num_kv_heads=1, name=f"{s.name} MQA"),
        "MLA": base.with_(num_kv_heads=s.num_heads, kv_lora_rank=check_int("latent_rank", latent_rank),
                          qk_rope_head_dim=check_int("rope_dim", rope_dim), qk_nope_head_dim=s.head_dim,
                          v_head_dim=s.head_dim, name=f"{s.name} MLA-{latent_rank}"),
    }
    return out


def decode_traffic(models: Iterable | object, device: str = "h100-sxm", seq_lens: Sequence[int] = (1024,),
                   batch: int = 1, w_bits: int = 16, kv_bits: int = 16) -> pd.DataFrame:
    """What one decode step reads, split into weights, KV cache and the rest, as the context grows.

    For each model and context length the analyzer's operator table gives the bytes of weights and of cached
    keys/values a step loads; their shares show when decoding stops being "read the model" and becomes
    "read the cache". ``time_s`` is the analyzer's roofline time of the step. Introduced in Chapter 6.
    """
    from ..analyzer import analyze

    if isinstance(models, (str,)) or not isinstance(models, Iterable):
        models = [models]
    rows = []
    for m in models:
        s = _spec(m)
        for L in seq_lens:
            a = analyze(s, device, stage="decode", batch=batch, seq_len=int(L), w_bits=w_bits, kv_bits=kv_bits,
                        check_context=False)
            ops = a.ops
            w = float((ops["count"] * ops["weight_bytes"]).sum())
            kv = float((ops["count"] * ops["kv_load_bytes"]).sum())
            rows.append({
                "model": s.name, "attention": attention_kind(s), "seq_len": int(L), "batch": batch,
                "w_bits": w_bits, "kv_bits": kv_bits, "weight_bytes": w, "kv_bytes": kv,
                "other_bytes": a.bytes - w - kv, "bytes": a.bytes, "kv_share": kv / a.bytes, "time_s": a.time_s,
            })
    return pd.DataFrame(rows)


def memory_wall(models: Iterable, seq_lens: Sequence[int], batch: int = 1, kv_bits: int = 16,
                w_bits: int = 16) -> pd.DataFrame:
    """Weights and KV-cache bytes for each model and context length (long format, for the memory-wall chart).

    Introduced in Chapter 6.
    """
    rows = []
    for m in models:
        s = _spec(m)
        weights = _weights_bytes(s, w_bits)
        for L in seq_lens:
            kv = kv_cache_bytes(s, int(L), batch, kv_bits)
            rows.append({"model": s.name, "attention": attention_kind(s), "seq_len": int(L), "batch": batch,
                         "kv_bits": kv_bits, "weights_bytes": weights, "kv_bytes": kv, "total_bytes": weights + kv,
                         "kv_share": kv / (weights + kv)})
    return pd.DataFrame(rows)

