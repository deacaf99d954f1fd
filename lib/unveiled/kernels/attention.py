"""Attention built three ways: the naive three-pass form, FlashAttention's tiled pass, Flash-Decoding's split-K.

Naive attention computes the score matrix ``S = Q Kᵀ / √d`` of every head, writes it, reads it back for the
softmax, writes the probabilities ``P`` and reads them again for ``P V``: the ``N × N`` matrices travel to
memory and back. FlashAttention [Dao et al. 2022] never stores them. It cuts Q into query tiles and K/V into
key tiles; for one query tile it streams the key tiles through a small on-chip buffer and keeps, per query
row, a running maximum ``m``, a running sum ``denom`` of ``exp(s − m)`` and an unnormalised output ``acc``. When a
new key tile raises the maximum, the old sum and output are rescaled by ``exp(m_old − m_new)`` (the *online
softmax* [Milakov & Gimelshein 2018]), so after the last tile ``acc / denom`` is exactly the softmax-weighted sum.
The loop order here is FlashAttention-2's [Dao 2023]: the outer loop runs over query tiles, so each query tile
is loaded once and its output written once, and K/V are read once per query tile.

Flash-Decoding [Dao et al. 2023] parallelises the one-query decode step over the *keys*: each of ``splits``
chunks of the KV cache yields a partial output (normalised within the chunk) and its log-sum-exp; the partial
results merge exactly with weights ``exp(lse_s − lse)``.

Everything is plain PyTorch, written to be read next to the papers' algorithms; scores and accumulators are
fp32 (fp64 for fp64 inputs), whatever the input type. Grouped-query attention [Ainslie et al. 2023] is native:
the ``H/K`` query heads that share a key/value head read its tiles together. Causal masking is aligned to the
bottom right (query ``i`` of ``Nq`` sees keys ``j <= i + Nk − Nq``), the rule of a KV cache and of
``Decoder``; it equals ``scaled_dot_product_attention(is_causal=True)`` when ``Nq == Nk``. A query that sees
no key at all returns zeros. Introduced in Chapter 8.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch

from .._validate import check_int

__all__ = [
    "TileTraffic",
    "flash_attention",
    "flash_attention_traffic",
    "flash_decoding",
    "merge_partials",
    "naive_attention",
    "online_softmax_update",
    "tile_schedule",
]


# ---- checks -----------------------------------------------------------------------------------------------
def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [batch, heads, tokens, head_dim], got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [batch, heads, tokens, head_dim], got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    B, H, Nq, d = q.shape
    Bk, K, Nk, dk = k.shape
    if (Bk, K, Nk) != tuple(v.shape[:3]):
        raise ValueError(f"k and v must agree on batch, heads and tokens: k {tuple(k.shape)}, v {tuple(v.shape)}")
    if Bk != B:
        raise ValueError(f"q has batch {B} but k has batch {Bk}")
    if dk != d:
        raise ValueError(f"q and k must have the same head_dim: q {d}, k {dk}")
    if K == 0 or H % K:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({K}) for grouped-query attention")
    return B, H, K, Nq, Nk, d, v.shape[-1]


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _visible(Nq: int, Nk: int, rows: range, cols: range, device) -> torch.Tensor:
    """Boolean ``[len(rows), len(cols)]``: which keys each query row sees under bottom-right causal masking."""
    r = torch.arange(rows.start, rows.stop, device=device)[:, None] + (Nk - Nq)
    return torch.arange(cols.start, cols.stop, device=device)[None, :] <= r


# ---- the naive reference ------------------------------------------------------------------------------------
def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """Attention as eager code writes it: repeat K/V per query head, scores, scale, mask, softmax, ``P V``.

    Every intermediate (the repeated K/V, ``S``, the scaled and masked ``S``, ``P``) is a full tensor in memory;
    this is the Θ(Nd + N²) traffic that FlashAttention removes [Dao et al. 2022]. Shapes as
    :func:`flash_attention`. Introduced in Chapter 8.
    """
    _, H, K, Nq, Nk, d, _ = _check_qkv(q, k, v)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if H != K:
        k = k.repeat_interleave(H // K, dim=1)
        v = v.repeat_interleave(H // K, dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~_visible(Nq, Nk, range(Nq), range(Nk), q.device), float("-inf"))
    p = torch.softmax(s, dim=-1)
    if causal and Nq > Nk:
        p = torch.nan_to_num(p, nan=0.0)  # the first Nq - Nk rows see no key: output zeros
    return p @ v


# ---- one step of the online softmax --------------------------------------------------------------------------
def online_softmax_update(m: torch.Tensor, denom: torch.Tensor, acc: torch.Tensor, s: torch.Tensor,
                          v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold one key tile into the running softmax state: returns the new ``(m, denom, acc)``.

    ``m`` ``[..., rows]`` is the running maximum of the scores seen so far, ``denom`` the running sum of
    ``exp(score − m)`` and ``acc`` ``[..., rows, dv]`` the running sum of ``exp(score − m) · v``; ``s``
    ``[..., rows, cols]`` holds the new tile's (scaled, masked: ``-inf``) scores and ``v`` ``[..., cols, dv]``
    its values. The new maximum is ``m' = max(m, rowmax(s))``; the old state is rescaled by
    ``exp(m − m')`` and the tile adds ``exp(s − m')``. A row that has seen only ``-inf`` keeps ``m = -inf`` and
    zeros (no NaN). After the last tile, ``acc / denom`` is the attention output and ``m + log denom`` the row's
    log-sum-exp [Milakov & Gimelshein 2018; Dao et al. 2022]. Introduced in Chapter 8.
    """
    m_new = torch.maximum(m, s.amax(dim=-1))
    # exp(-inf - (-inf)) is NaN: measure from 0 instead for rows that have seen no key yet (their terms are 0)
    m_ref = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.exp(m - m_ref)
    p = torch.exp(s - m_ref[..., None])
    denom = alpha * denom + p.sum(dim=-1)
    acc = alpha[..., None] * acc + p @ v
    return m_new, denom, acc


def _finish(m: torch.Tensor, denom: torch.Tensor, acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output ``acc / denom`` (zeros where a row saw no key) and log-sum-exp ``m + log denom`` (``-inf`` there)."""
    seen = denom > 0
    out = torch.where(seen[..., None], acc / torch.where(seen, denom, torch.ones_like(denom))[..., None],
                      torch.zeros_like(acc))
    lse = torch.where(seen, m + torch.log(torch.where(seen, denom, torch.ones_like(denom))), torch.full_like(m, -math.inf))
    return out, lse


# ---- the tile schedule (shared by the kernel and its traffic count) ------------------------------------------
def tile_schedule(q_len: int, k_len: int, block_q: int, block_k: int,
                  causal: bool) -> Iterator[tuple[range, list[tuple[range, bool]]]]:
    """The tiles FlashAttention-2's loop visits: for each query tile, the key tiles it needs.

    Yields ``(rows, [(cols, needs_mask), ...])``. With ``causal``, key tiles entirely above the diagonal are
    skipped (they would be fully masked) and ``needs_mask`` marks the tiles the diagonal crosses.
    Introduced in Chapter 8.
    """
    for i0 in range(0, q_len, block_q):
        rows = range(i0, min(i0 + block_q, q_len))
        last = _keys_needed(rows, q_len, k_len, causal)
        tiles = []
        for j0 in range(0, last, block_k):
            cols = range(j0, min(j0 + block_k, last))
            masked = causal and cols.stop - 1 > rows.start + k_len - q_len
            tiles.append((cols, masked))
        yield rows, tiles


def _keys_needed(rows: range, q_len: int, k_len: int, causal: bool) -> int:
    """How many leading keys a query tile needs: all of them, or up to its last row's diagonal when causal."""
    return k_len if not causal else max(0, min(k_len, rows.stop + k_len - q_len))


@dataclass
class TileTraffic:
    """Bytes a tiled attention kernel moves between device memory and its on-chip buffer.

    ``q_bytes``, ``k_bytes``, ``v_bytes`` are loads, ``out_bytes`` (and ``lse_bytes`` when the log-sum-exp is
    returned) stores; ``tiles`` counts the (query tile, key tile) pairs computed. Everything else (scores,
    probabilities, running statistics) lives on chip. Introduced in Chapter 8.
    """

    q_bytes: int = 0
    k_bytes: int = 0
    v_bytes: int = 0
    out_bytes: int = 0
    lse_bytes: int = 0
    tiles: int = 0

    @property
    def load_bytes(self) -> int:
        return self.q_bytes + self.k_bytes + self.v_bytes

    @property
    def store_bytes(self) -> int:
        return self.out_bytes + self.lse_bytes

    @property
    def total_bytes(self) -> int:
        return self.load_bytes + self.store_bytes

    def as_dict(self) -> dict[str, int]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["total_bytes"] = self.total_bytes
        return d


# ---- FlashAttention -----------------------------------------------------------------------------------------
def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    block_q: int = 64, block_k: int = 64, scale: float | None = None, return_lse: bool = False,
                    traffic: TileTraffic | None = None):
    """FlashAttention's forward pass: tiled, with the online softmax, never storing the score matrix.

    ``q`` is ``[B, H, Nq, d]``, ``k`` and ``v`` are ``[B, K, Nk, d]`` and ``[B, K, Nk, dv]`` with ``K`` dividing
    ``H`` (grouped-query attention: query head ``h`` uses key/value head ``h // (H/K)``). The outer loop runs
    over query tiles of ``block_q`` rows, the inner loop over key tiles of ``block_k`` columns
    (FlashAttention-2's order [Dao 2023]); each step is :func:`online_softmax_update`. Scores and
    accumulators are fp32 (fp64 for fp64 inputs); the output has ``q``'s dtype. ``causal`` masks bottom-right
    (see the module docstring) and skips the key tiles above the diagonal. ``return_lse=True`` also returns
    the log-sum-exp ``[B, H, Nq]`` of every row. Pass a :class:`TileTraffic` to have the kernel add up the
    bytes its tiles load and store. Exact: equal to softmax attention up to rounding for every block size
    [Dao et al. 2022]. Introduced in Chapter 8.
    """
    B, H, K, Nq, Nk, d, dv = _check_qkv(q, k, v)
    block_q = check_int("block_q", block_q, minimum=1)
    block_k = check_int("block_k", block_k, minimum=1)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    G = H // K
    acc_t = _acc_dtype(q)
    qg = q.reshape(B, K, G, Nq, d)  # the G query heads that share one key/value head, side by side
    out = q.new_empty(B, K, G, Nq, dv)
    lse = torch.empty(B, K, G, Nq, dtype=acc_t, device=q.device)
    for rows, key_tiles in tile_schedule(Nq, Nk, block_q, block_k, causal):
        q_tile = qg[:, :, :, rows.start:rows.stop].to(acc_t) * scale  # load one query tile
        n = len(rows)
        m = torch.full((B, K, G, n), -math.inf, dtype=acc_t, device=q.device)
        denom = torch.zeros((B, K, G, n), dtype=acc_t, device=q.device)
        acc = torch.zeros((B, K, G, n, dv), dtype=acc_t, device=q.device)
        for cols, needs_mask in key_tiles:
            k_tile = k[:, :, None, cols.start:cols.stop].to(acc_t)  # load one key tile for the G heads
            v_tile = v[:, :, None, cols.start:cols.stop].to(acc_t)  # and its value tile
            s = q_tile @ k_tile.transpose(-1, -2)  # [B, K, G, rows, cols], on chip
            if needs_mask:
                s = s.masked_fill(~_visible(Nq, Nk, rows, cols, q.device), -math.inf)
            m, denom, acc = online_softmax_update(m, denom, acc, s, v_tile)
            if traffic is not None:
                traffic.k_bytes += k_tile.numel() * k.element_size()
                traffic.v_bytes += v_tile.numel() * v.element_size()
                traffic.tiles += 1
        o_tile, lse_tile = _finish(m, denom, acc)
        out[:, :, :, rows.start:rows.stop] = o_tile  # store the output tile once
        lse[:, :, :, rows.start:rows.stop] = lse_tile
        if traffic is not None:
            traffic.q_bytes += B * H * n * d * q.element_size()
            traffic.out_bytes += B * H * n * dv * out.element_size()
            if return_lse:
                traffic.lse_bytes += B * H * n * lse.element_size()
    out = out.reshape(B, H, Nq, dv)
    return (out, lse.reshape(B, H, Nq)) if return_lse else out


def flash_attention_traffic(batch: int, num_heads: int, num_kv_heads: int, q_len: int, k_len: int, head_dim: int,
                            *, causal: bool = False, block_q: int = 64, block_k: int = 64, element_bytes: int = 2,
                            v_head_dim: int | None = None, lse_bytes: int = 0) -> TileTraffic:
    """The traffic :func:`flash_attention` reports, counted over the same tile schedule without computing.

    Lets the chapter count sequence lengths far beyond what a CPU would compute in a notebook; a test checks
    that it equals what the kernel records when it runs. ``lse_bytes`` is the size of a stored log-sum-exp
    element (0: not stored). Introduced in Chapter 8.
    """
    for name, val in (("batch", batch), ("num_heads", num_heads), ("num_kv_heads", num_kv_heads),
                      ("q_len", q_len), ("k_len", k_len), ("head_dim", head_dim), ("block_q", block_q),
                      ("block_k", block_k), ("element_bytes", element_bytes)):
        check_int(name, val, minimum=1)
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    dv = head_dim if v_head_dim is None else check_int("v_head_dim", v_head_dim, minimum=1)
    t = TileTraffic()
    B, H, K, d, e = batch, num_heads, num_kv_heads, head_dim, element_bytes
    for i0 in range(0, q_len, block_q):  # the query tiles of tile_schedule, key tiles summed in closed form
        rows = range(i0, min(i0 + block_q, q_len))
        cols = _keys_needed(rows, q_len, k_len, causal)
        t.k_bytes += B * K * cols * d * e
        t.v_bytes += B * K * cols * dv * e
        t.tiles += -(-cols // block_k)
        t.q_bytes += B * H * len(rows) * d * e
        t.out_bytes += B * H * len(rows) * dv * e
        t.lse_bytes += B * H * len(rows) * lse_bytes
    return t


# ---- Flash-Decoding -----------------------------------------------------------------------------------------
def merge_partials(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention results over disjoint key chunks: the log-sum-exp combination.

    ``outs`` ``[S, ..., dv]`` are the chunks' outputs, each normalised within its chunk, and ``lses``
    ``[S, ...]`` their log-sum-exps (``-inf`` for a chunk that saw no key). The merged log-sum-exp is
    ``lse = log Σ_s exp(lse_s)`` and the merged output ``Σ_s exp(lse_s − lse) · out_s``: exactly the
    attention over all keys [Dao et al. 2023, Flash-Decoding]. Returns ``(out, lse)``. Introduced in Chapter 8.
    """
    if outs.shape[:-1] != lses.shape:
        raise ValueError(f"outs {tuple(outs.shape)} must be lses {tuple(lses.shape)} plus a last dimension")
    lse = torch.logsumexp(lses, dim=0)
    ref = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    weights = torch.exp(lses - ref)  # 0 for empty chunks; all 0 when no chunk saw a key
    return (weights[..., None] * outs.to(weights.dtype)).sum(dim=0), lse


def flash_decoding(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *, splits: int = 4,
                   scale: float | None = None, return_lse: bool = False):
    """Split-K decode attention: each of ``splits`` key chunks attends on its own, then the chunks merge.

    ``q`` is ``[B, H, Nq, d]`` (``Nq`` = 1 in decode; every query sees every cached key), ``k_cache`` and
    ``v_cache`` ``[B, K, L, d]``. The cache is cut into ``splits`` contiguous chunks as equal as possible
    (more splits than keys leaves some empty); each chunk gives a partial output and log-sum-exp and
    :func:`merge_partials` combines them [Dao et al. 2023, Flash-Decoding]. On a GPU the chunks run on different
    streaming multiprocessors, which a batch-1 decode step would otherwise leave idle; the bytes read are the
    same as one pass. Introduced in Chapter 8.
    """
    B, H, _, Nq, L, _, dv = _check_qkv(q, k_cache, v_cache)
    splits = check_int("splits", splits, minimum=1)
    acc_t = _acc_dtype(q)
    outs, lses = [], []
    for chunk in torch.arange(L).tensor_split(splits):
        if chunk.numel() == 0:
            outs.append(torch.zeros(B, H, Nq, dv, dtype=acc_t, device=q.device))
            lses.append(torch.full((B, H, Nq), -math.inf, dtype=acc_t, device=q.device))
            continue
        lo, hi = int(chunk[0]), int(chunk[-1]) + 1
        o, s = flash_attention(q, k_cache[:, :, lo:hi], v_cache[:, :, lo:hi], causal=False, block_q=max(Nq, 1),
                               block_k=hi - lo, scale=scale, return_lse=True)
        outs.append(o.to(acc_t))
        lses.append(s)
    out, lse = merge_partials(torch.stack(outs), torch.stack(lses))
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out
