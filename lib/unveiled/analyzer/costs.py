"""Operator inventory and cost formulas: the FLOPs and bytes of every operator of one forward pass.

Two accounting conventions share this module. ``"exact"`` counts from first principles (2 FLOPs per
multiply-accumulate, GQA everywhere, SwiGLU on the intermediate width, residual adds reading both operands,
FlashAttention never writing the score matrix, ...). ``"paper"`` follows the rules of LLM-Viewer at commit
472f71f (July 2024), the tool behind the survey's tables and figures [Yuan et al. 2024], quirks included, so
that the survey's numbers are reproduced exactly; ``"paper-2024-03"`` is the same with the March 2024
FlashAttention formula that under-counted K/V loads (it produced the survey's Fig. 16).

Attention is counted under one of three named kernel conventions (``ATTENTION_KERNELS``, exact convention):

* ``"fused"`` (``flash_attention=True``): one FlashAttention kernel that never writes the score matrix and
  reads each key/value head once per query tile [Dao et al. 2022; Dao 2023];
* ``"unfused"`` (the default): three kernels (``qk_matmul``, ``softmax``, ``sv_matmul``) that write and read
  the scores, with each key/value head read once for its whole group of query heads, as a GQA-aware batched
  product does (query heads grouped as rows of one matrix). This is *not* what eager PyTorch code moves;
* ``"eager"``: the unfused formula as eager PyTorch runs it (Hugging Face's ``eager`` attention, the book's
  explicit path): K and V copied once per query head (``repeat_kv``), the products reading those copies,
  the scale (and, with causal masking, the mask) applied in passes of their own, and layout copies of the
  output (and of Q, when the batch holds several sequences) when several tokens are processed. Checked against
  counted traffic in Chapter 8.

Every formula is written with NumPy operations, so the same code evaluates one configuration (scalars) or a
whole grid (broadcast arrays) in one pass: that is what makes :func:`unveiled.sweep` fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._validate import check_choice
from ..hardware import Device
from .configs import ModelSpec
from .precision import BITS, check_bits

__all__ = [
    "ATTENTION_KERNELS",
    "BITS",
    "CONVENTIONS",
    "STAGES",
    "Op",
    "Setting",
    "attention_cost",
    "check_bits",
    "flash_tile",
    "linear_cost",
]

CONVENTIONS = ("exact", "paper", "paper-2024-03")
ATTENTION_KERNELS = ("fused", "unfused", "eager")
STAGES = ("prefill", "decode")
LOGITS = ("last", "all")

#: Operations per element of the elementwise operators (exact convention).
ACT_OPS = {"silu": 4, "gelu": 8, "relu": 1}  # silu: neg, exp, add, div; gelu (tanh form): ~8
NORM_OPS = {"rms": 4, "layer": 7}  # rms: square, sum, scale, weight; layer: + mean, subtract, bias
SOFTMAX_OPS = 5  # max, subtract, exp, sum, divide
ROPE_OPS = 3  # x·cos + rotate(x)·sin
LOGIT_BYTES = 4  # samplers read fp32 logits


@dataclass
class Setting:
    """One configuration (or a broadcast grid of them) to evaluate. Bits and sizes may be NumPy arrays."""

    stage: str
    batch: object
    seq_len: object
    w_bits: object
    a_bits: object
    kv_bits: object
    flash_attention: bool = False
    conventions: str = "exact"
    logits: str = "last"
    group_size: int | None = None
    head_bits: int | None = None
    new_tokens: int = 1  # tokens each sequence feeds to a decode step (k + 1 when verifying k drafts)
    eager_attention: bool = False  # attention as eager PyTorch runs it (repeat_kv copies, separate passes)


@dataclass
class Op:
    """One operator kind: per-instance FLOPs and bytes (split by tensor class), and how often it runs.

    ``kind`` selects the compute peak: ``"gemm"`` (weights × activations), ``"attention"`` (activations ×
    KV) or ``"elementwise"``; ``bits`` are the operand bit widths that decide the data type it runs in.
    """

    name: str
    count: int
    flops: object
    load_weight: object = 0.0
    load_act: object = 0.0
    store_act: object = 0.0
    load_kv: object = 0.0
    store_kv: object = 0.0
    kind: str = "elementwise"
    bits: tuple = (16, 16)

    @property
    def bytes(self):
        return self.load_weight + self.load_act + self.store_act + self.load_kv + self.store_kv


# ---- building blocks (public ones are used by the chapter's lab) --------------------------------------
def linear_cost(tokens, in_features, out_features, w_bytes=2.0, a_bytes=2.0, bias: bool = False) -> tuple:
    """FLOPs and bytes of a linear layer applied to ``tokens`` rows: ``(flops, bytes)``.

    ``2·tokens·in·out`` FLOPs (a multiply-accumulate is 2 operations); bytes read the weight once, read the
    input and write the output (compulsory traffic). A bias adds ``tokens·out`` FLOPs and ``out`` 16-bit
    values. Introduced in Chapter 2.
    """
    op = _linear("linear", 1, tokens, in_features, out_features, w_bytes, a_bytes, bias, 2.0, (16, 16))
    return op.flops, op.bytes


def _linear(name, count, N, fin, fout, wb, ab, bias, hp_bytes, bits, out_kv_bytes=None, kind="gemm") -> Op:
    flops = 2.0 * N * fin * fout
    lw = fin * fout * wb
    if bias:
        flops = flops + N * fout
        lw = lw + fout * hp_bytes
    op = Op(name, count, flops, load_weight=lw, load_act=N * fin * ab, kind=kind, bits=bits)
    if out_kv_bytes is None:
        op.store_act = N * fout * ab
    else:
        op.store_kv = N * fout * out_kv_bytes
    return op


def _elementwise(name, count, elements, ops_per_element, ab, reads=1, writes=1, weight=0.0) -> Op:
    return Op(name, count, ops_per_element * elements, load_weight=weight, load_act=reads * elements * ab,
              store_act=writes * elements * ab)


def flash_tile(device: Device | None, head_dim: int, a_bytes: float = 2.0, kv_bytes: float = 2.0) -> int:
    """Query/key tile size of a FlashAttention kernel on ``device`` [Dao 2023].

    The kernel keeps one query tile and one key and one value tile in the shared memory of a streaming
    multiprocessor, so ``tile·d·(a_bytes + 2·kv_bytes)`` must fit in it; the tile is the largest power of two
    that fits, between 16 and 128 (FlashAttention-2's largest). Without a per-SM figure it is 128.
    Introduced in Chapter 2.
    """
    smem = getattr(device, "smem_per_sm_bytes", None) if device is not None else None
    if not smem:
        return 128
    fit = smem / (head_dim * (a_bytes + 2 * kv_bytes))
    tile = 16
    while tile * 2 <= min(fit, 128):
        tile *= 2
    return tile


def _causal_tiles(s, tile: int, window: int | None):
    """Key columns loaded (summed over query tiles) and score elements computed by causal tiled attention.

    Query tile i (rows i·b .. i·b+b-1) needs key tiles from its window start to itself: min(i, c) + 1 of
    them with c = ceil((W-1)/b) (c = ∞ without a window). Summed in closed form so that ``s`` may be an array.
    """
    s = np.asarray(s, dtype=float)
    b = float(tile)
    m = np.ceil(s / b)
    r_last = s - (m - 1) * b
    n = m - 1  # full query tiles
    if window is None:
        f = n * (n - 1) / 2
        blocks_last = m
    else:
        c = math.ceil((window - 1) / b)
        f = np.where(n <= c + 1, n * (n - 1) / 2, c * (c + 1) / 2 + c * (n - 1 - c))
        blocks_last = np.minimum(m - 1, c) + 1
    cols_last = (blocks_last - 1) * b + r_last
    cols = b * (n + f) + cols_last
    elements = b * b * (n + f) + r_last * cols_last
    return cols, elements


def attention_cost(batch, query_len, key_len, num_heads, num_kv_heads, head_dim, v_head_dim=None,
                   act_bytes=2.0, kv_bytes=2.0, flash: bool = False, causal: bool = False, tile: int = 128,
                   window: int | None = None, shared_kv: bool = False, eager: bool = False) -> dict[str, tuple]:
    """FLOPs and bytes of attention, per operator: ``{"qk_matmul": (flops, bytes), "softmax": ..., ...}``.

    Unfused attention (``flash=False``, the "unfused" convention of the module docstring) is three operators
    that materialise the ``query_len × key_len`` score matrix of every head: ``qk_matmul`` reads Q (query
    heads) and K (key/value heads, so GQA reads K/V once per group) and writes the scores; ``softmax`` reads
    and writes them; ``sv_matmul`` reads them and V and writes the output. ``eager=True`` counts it as eager
    PyTorch runs it: a ``repeat_kv`` copy of K and V per query head (when there are fewer key/value heads),
    products that read the copies, an ``attn_scale`` pass over the scores, an ``attn_mask`` pass when
    ``causal`` with several queries, and ``attn_layout`` copies of the output (and of Q when ``batch > 1``)
    when ``query_len > 1``.
    ``flash=True`` gives one ``fused_attention``
    operator that never writes the scores, writes the output once, re-reads K/V once per query tile and,
    when ``causal``, skips the tiles above the diagonal (and outside a sliding ``window``)
    [Dao et al. 2022; Dao 2023]. ``kv_bytes`` is the size of the K/V elements it reads (the cache's in decode,
    the activations' in prefill). Introduced in Chapter 2.
    """
    if flash and eager:
        raise ValueError("eager=True describes unfused attention; it cannot be combined with flash=True")
    ops = _attention_ops(1, batch, query_len, key_len, num_heads, num_kv_heads, head_dim,
                         v_head_dim or head_dim, act_bytes, kv_bytes, flash, causal, tile, window, shared_kv,
                         (16, 16), eager)
    return {op.name: (op.flops, op.bytes) for op in ops}


def _eager_attention_ops(count, B, q, k, H, K, d, dv, ab, kvb, causal, bits) -> list[Op]:
    """Unfused attention as eager PyTorch runs it (see the module docstring, convention "eager")."""
    scores = B * H * q * k
    ops = []
    if np.any(np.asarray(K) != np.asarray(H)):
        ops.append(Op("repeat_kv", count, 0.0, load_kv=B * K * k * (d + dv) * kvb, store_act=B * H * k * (d + dv) * kvb))
    ops += [
        Op("qk_matmul", count, 2.0 * scores * d, load_act=B * H * q * d * ab + B * H * k * d * kvb,
           store_act=scores * ab, kind="attention", bits=bits),
        Op("attn_scale", count, scores, load_act=scores * ab, store_act=scores * ab),
    ]
    many = bool(np.any(np.asarray(q) > 1))  # one query per sequence (decode) needs no mask and no layout copy
    if causal and many:
        # one pass over the scores, reading a [q, k] boolean mask shared by every head
        ops.append(Op("attn_mask", count, scores, load_act=scores * ab + q * k, store_act=scores * ab))
    ops += [
        Op("softmax", count, SOFTMAX_OPS * scores, load_act=scores * ab, store_act=scores * ab),
        Op("sv_matmul", count, 2.0 * scores * dv, load_act=scores * ab + B * H * k * dv * kvb,
           store_act=B * H * q * dv * ab, kind="attention", bits=bits),
    ]
    if many:
        # the output, a transposed view, is copied into the layout o_proj reads; so is Q (after RoPE) for the
        # batched product when the batch has several sequences (with one, a view of it suffices)
        layout = B * H * q * dv * ab + np.where(np.asarray(B) > 1, B * H * q * d * ab, 0.0)
        ops.append(Op("attn_layout", count, 0.0, load_act=layout, store_act=layout))
    return ops


def _attention_ops(count, B, q, k, H, K, d, dv, ab, kvb, flash, causal, tile, window, shared_kv, bits,
                   eager=False):
    if eager and not flash:
        return _eager_attention_ops(count, B, q, k, H, K, d, dv, ab, kvb, causal, bits)
    if flash:
        cols, elements = _flash_extent(q, k, causal, tile, window)
        kv_width = d if shared_kv else d + dv
        return [Op("fused_attention", count, B * H * elements * (2 * d + 2 * dv + SOFTMAX_OPS),
                   load_act=B * H * q * d * ab, store_act=B * H * q * dv * ab,
                   load_kv=B * K * cols * kv_width * kvb, kind="attention", bits=bits)]
    scores = B * H * q * k
    return [
        Op("qk_matmul", count, 2.0 * scores * d, load_act=B * H * q * d * ab, store_act=scores * ab,
           load_kv=B * K * k * d * kvb, kind="attention", bits=bits),
        Op("softmax", count, SOFTMAX_OPS * scores, load_act=scores * ab, store_act=scores * ab),
        Op("sv_matmul", count, 2.0 * scores * dv, load_act=scores * ab, store_act=B * H * q * dv * ab,
           load_kv=B * K * k * (0 if shared_kv else dv) * kvb, kind="attention", bits=bits),
    ]


def _flash_extent(q, k, causal, tile, window):
    """Key columns a tiled attention kernel loads (summed over query tiles) and score elements it computes.

    ``causal=False``: every query tile reads all ``k`` keys. ``True``: the prompt attends to itself
    (``q = k``) and the tiles above the diagonal are skipped (:func:`_causal_tiles`). ``"suffix"``: ``q`` new
    queries are the last of ``k`` positions (a decode step scoring several tokens), and each query tile reads
    the keys up to its last query (:func:`_suffix_tiles`).
    """
    if not causal:
        # every query tile streams all keys: once in total only when the queries fit one tile (a decode step)
        return np.ceil(np.asarray(q, dtype=float) / tile) * k, q * k
    if causal == "suffix":
        return _suffix_tiles(int(q), k, tile, window)
    return _causal_tiles(q, tile, window)


def _suffix_tiles(q: int, k, tile: int, window: int | None):
    """Causal tiled attention of ``q`` new queries at the last ``q`` of ``k`` positions (a decode step).

    Query tile i holds r = min(b, q − i·b) rows at positions p .. p + r − 1 with p = k − q + i·b; it loads the
    keys from its window start max(0, p − W + 1) (0 without a window) to p + r − 1 and computes r scores per
    key it loads. With one query that is min(k, W) keys, as a plain decode step reads.
    """
    k = np.asarray(k, dtype=float)
    cols = np.zeros_like(k)
    elements = np.zeros_like(k)
    for start in range(0, q, tile):
        rows = min(tile, q - start)
        first = k - q + start
        lo = 0.0 if window is None else np.maximum(0.0, first - window + 1)
        loaded = first + rows - lo
        cols = cols + loaded
        elements = elements + rows * loaded
    return cols, elements


def distinct_experts(num_experts, top_k, tokens):
    """Expected distinct experts ``tokens`` tokens touch in one MoE layer: ``E·(1 − (1 − k/E)^N)``.

    Each token picks its ``k`` experts uniformly at random (no load imbalance), so one expert escapes all
    ``N`` tokens with probability ``(1 − k/E)^N``. It is ``k`` at ``N = 1`` and tends to ``E`` as the batch
    grows, which is why a batched MoE decode step reads more weights than its active parameters (Chapters 2
    and 7). Arguments broadcast and are not checked (:func:`unveiled.decoding.expected_distinct_experts`
    is the checked version).
    """
    return num_experts * (1.0 - np.power(1.0 - top_k / num_experts, tokens))


# ---- exact convention ----------------------------------------------------------------------------------
@dataclass
class _Widths:
    """Bytes per element of each class of tensor in one setting (arrays in a sweep), and the operand bit
    pairs that choose the compute data type of a matrix product."""

    weight: object  # quantized weight matrices (with the group quantizer's scales and zero points)
    act: object  # activations
    kv: object  # the KV cache
    high: object  # norms, biases, routers: 16 bits, or the weights' bits when wider
    head: object  # embedding tables and lm_head
    gemm_bits: tuple  # (weight bits, activation bits) of a linear layer
    high_bits: tuple  # (16, activation bits) of a 16-bit linear layer (routers, gates)
    head_bits: tuple  # (lm_head bits, activation bits)


def _widths(st: Setting) -> _Widths:
    w_bits, a_bits = st.w_bits, st.a_bits
    weight = w_bits / 8.0
    if st.group_size:
        # an fp16 scale and an fp16 zero point per group of quantized weights
        weight = np.where(np.asarray(w_bits) < 16, weight + 4.0 / st.group_size, weight)
    high = np.maximum(w_bits, 16) / 8.0
    head = high if st.head_bits is None else st.head_bits / 8.0
    head_bits = np.maximum(w_bits, 16) if st.head_bits is None else st.head_bits
    return _Widths(weight, a_bits / 8.0, st.kv_bits / 8.0, high, head, (w_bits, a_bits), (16, a_bits),
                   (head_bits, a_bits))


def exact_ops(spec: ModelSpec, st: Setting, device: Device | None) -> list[Op]:
    """The operators of one forward pass under the ``exact`` convention (see the module docstring).

    A pass reads like the model: embeddings; per layer a normalised attention block and a normalised MLP
    block, each added to the residual stream; the final norm and the LM head. ``N = batch × tokens`` rows of
    activations flow through them (tokens: the prompt in prefill, the new tokens in decode).
    """
    w = _widths(st)
    N = st.batch * (st.seq_len if st.stage == "prefill" else st.new_tokens)
    n, h = spec.num_layers, spec.hidden_size
    norm_ops = NORM_OPS[spec.norm] + (1 if spec.embed_scale else 0)  # Gemma scales by (1 + weight)
    norm_w = (2 if spec.norm == "layer" else 1) * h * w.high
    ops = _embedding_ops(spec, N, w)
    ops.append(_elementwise("attn_norm", n, N * h, norm_ops, w.act, weight=norm_w))
    ops += _attention_block(spec, st, device, N, w)
    ops.append(_elementwise("attn_add", n, N * h, 1, w.act, reads=2))
    ops.append(_elementwise("mlp_norm", n, N * h, norm_ops, w.act, weight=norm_w))
    ops += _mlp_block(spec, N, w)
    ops.append(_elementwise("mlp_add", n, N * h, 1, w.act, reads=2))
    if spec.final_norm:
        ops.append(_elementwise("final_norm", 1, N * h, norm_ops, w.act, weight=norm_w))
    return ops + _head_ops(spec, st, N, w)


def _embedding_ops(spec: ModelSpec, N, w: _Widths) -> list[Op]:
    """Token embeddings (a table lookup, scaled for Gemma), OPT-350m's projection, learned positions."""
    h = spec.hidden_size
    emb_w = spec.embed_proj_dim or h
    ops = [Op("embed_tokens", 1, N * emb_w if spec.embed_scale else 0.0, load_weight=N * emb_w * w.head,
              store_act=N * emb_w * w.act)]
    if spec.embed_proj_dim:
        ops.append(_linear("project_in", 1, N, emb_w, h, w.weight, w.act, False, w.high, w.gemm_bits))
    if spec.positions == "learned":
        ops.append(Op("embed_positions", 1, N * h, load_weight=N * h * w.head, load_act=N * h * w.act,
                      store_act=N * h * w.act))
    return ops


def _attention_shape(spec: ModelSpec, st: Setting):
    """Queries per sequence, the keys they attend to, and whether causality skips work, for this stage.

    Prefill: the prompt attends to itself, causally. Decode: the new tokens' keys and values are appended
    first, so they attend to the cache of ``seq_len`` tokens (at most the window plus the other new tokens);
    one new token sees every cached key, several see the keys up to their own position. The third value is
    the causal mode of :func:`_flash_extent`.
    """
    if st.stage == "prefill":
        return st.seq_len, st.seq_len, True
    T = st.new_tokens
    keys = st.seq_len if spec.sliding_window is None else np.minimum(st.seq_len, spec.sliding_window + T - 1)
    return T, keys, ("suffix" if T > 1 else False)


def _attention_block(spec: ModelSpec, st: Setting, device: Device | None, N, w: _Widths) -> list[Op]:
    """Query/key/value projections, positions, the cache write, attention itself and the output projection."""
    prefill = st.stage == "prefill"
    q_len, k_len, causal = _attention_shape(spec, st)
    # K/V are read as activations in prefill and from the cache in decode; the tile size matters where a pass
    # has many query tiles (MLA prefill attends with decompressed heads of width qk_nope + qk_rope, its head_dim)
    kv_read = w.act if prefill else w.kv
    tile = flash_tile(device, spec.head_dim, float(np.max(w.act)), float(np.max(kv_read)))
    attn_bits = (st.a_bits, st.a_bits if prefill else st.kv_bits)
    if spec.is_mla:
        if st.eager_attention:
            raise ValueError(f"{spec.name} uses multi-head latent attention; the eager attention convention models "
                             "grouped-query attention only: use attention='unfused' or 'fused'")
        return _mla_ops(spec, st, N, q_len, k_len, causal, w, attn_bits, kv_read, tile)
    n, h = spec.num_layers, spec.hidden_size
    H, K, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    qo, kvw = H * d, K * d
    ops = [_linear(name, n, N, h, width, w.weight, w.act, spec.qkv_bias, w.high, w.gemm_bits)
           for name, width in (("q_proj", qo), ("k_proj", kvw), ("v_proj", kvw))]
    if spec.qk_norm:
        ops.append(_elementwise("qk_norm", n, N * (H + K) * d, NORM_OPS["rms"], w.act, weight=2 * d * w.high))
    if spec.positions == "rope":
        ops.append(_rope(n, N, H + K, d, w.act))
    ops.append(Op("kv_store", n, 0.0, load_act=N * 2 * kvw * w.act, store_kv=N * 2 * kvw * w.kv))
    ops += _attention_ops(n, st.batch, q_len, k_len, H, K, d, d, w.act, kv_read, st.flash_attention, causal,
                          tile, spec.sliding_window, False, attn_bits, st.eager_attention)
    ops.append(_linear("o_proj", n, N, qo, h, w.weight, w.act, spec.o_bias, w.high, w.gemm_bits))
    return ops


def _rope(count, N, heads, width, ab) -> Op:
    """Rotary positions on ``heads`` heads of ``width`` rotated elements: x·cos + rotate(x)·sin."""
    op = _elementwise("rope", count, N * heads * width, ROPE_OPS, ab)
    op.load_act = op.load_act + 2 * N * width * ab  # the cos and sin tables
    return op


def _mlp_block(spec: ModelSpec, N, w: _Widths) -> list[Op]:
    """The MLP of the dense layers (gated: SwiGLU/GeGLU; plain: fc1, activation, fc2) and of the MoE layers."""
    h, nd = spec.hidden_size, spec.num_dense_layers
    act_ops = ACT_OPS.get(spec.activation, ACT_OPS["gelu"])
    ops: list[Op] = []
    if nd:
        inter, bias = spec.intermediate_size, spec.mlp_bias
        if spec.mlp == "gated":
            ops.append(_linear("gate_proj", nd, N, h, inter, w.weight, w.act, bias, w.high, w.gemm_bits))
            ops.append(_linear("up_proj", nd, N, h, inter, w.weight, w.act, bias, w.high, w.gemm_bits))
            ops.append(_elementwise("mlp_act", nd, N * inter, act_ops + 1, w.act, reads=2))
            ops.append(_linear("down_proj", nd, N, inter, h, w.weight, w.act, bias, w.high, w.gemm_bits))
        else:
            ops.append(_linear("fc1", nd, N, h, inter, w.weight, w.act, bias, w.high, w.gemm_bits))
            ops.append(_elementwise("mlp_act", nd, N * inter, act_ops, w.act))
            ops.append(_linear("fc2", nd, N, inter, h, w.weight, w.act, bias, w.high, w.gemm_bits))
    if spec.num_moe_layers:
        ops += _moe_ops(spec, N, w, act_ops)
    return ops


def _head_ops(spec: ModelSpec, st: Setting, N, w: _Widths) -> list[Op]:
    """OPT-350m's output projection and the LM head, writing fp32 logits where they are needed: the last
    prompt token in prefill (every token with ``logits="all"``), every new token in decode."""
    h = spec.hidden_size
    emb_w = spec.embed_proj_dim or h
    ops = []
    if spec.embed_proj_dim:
        ops.append(_linear("project_out", 1, N, h, emb_w, w.weight, w.act, False, w.high, w.gemm_bits))
    P = st.batch if (st.stage == "prefill" and st.logits == "last") else N
    lm = _linear("lm_head", 1, P, emb_w, spec.vocab_size, w.head, w.act, False, w.high, w.head_bits)
    lm.store_act = P * spec.vocab_size * LOGIT_BYTES
    ops.append(lm)
    return ops


def _moe_ops(spec: ModelSpec, N, w: _Widths, act_ops) -> list[Op]:
    """Router, routed experts (reading only the experts the batch touches), shared expert, weighted combine."""
    h, E, k, Ie = spec.hidden_size, spec.num_experts, spec.experts_per_token, spec.expert_intermediate_size
    nm = spec.num_moe_layers
    wb, ab, hp = w.weight, w.act, w.high
    P = N * k  # token-expert pairs
    touched = distinct_experts(E, k, N)
    ops = [_linear("router", nm, N, h, E, hp, ab, spec.router_bias, hp, w.high_bits)]
    for name in ("experts.gate_proj", "experts.up_proj"):
        ops.append(Op(name, nm, 2.0 * P * h * Ie, load_weight=touched * h * Ie * wb, load_act=P * h * ab,
                      store_act=P * Ie * ab, kind="gemm", bits=w.gemm_bits))
    ops.append(_elementwise("experts.act", nm, P * Ie, act_ops + 1, ab, reads=2))
    ops.append(Op("experts.down_proj", nm, 2.0 * P * Ie * h, load_weight=touched * Ie * h * wb,
                  load_act=P * Ie * ab, store_act=P * h * ab, kind="gemm", bits=w.gemm_bits))
    combine_flops, combine_reads = 2.0 * P * h, P * h * ab
    Is = spec.shared_expert_intermediate_size
    if Is:
        ops.append(_linear("shared_expert.gate_proj", nm, N, h, Is, wb, ab, False, hp, w.gemm_bits))
        ops.append(_linear("shared_expert.up_proj", nm, N, h, Is, wb, ab, False, hp, w.gemm_bits))
        ops.append(_elementwise("shared_expert.act", nm, N * Is, act_ops + 1, ab, reads=2))
        ops.append(_linear("shared_expert.down_proj", nm, N, Is, h, wb, ab, False, hp, w.gemm_bits))
        combine_flops = combine_flops + N * h
        combine_reads = combine_reads + N * h * ab
        if spec.shared_expert_gate:
            ops.append(_linear("shared_expert_gate", nm, N, h, 1, hp, ab, False, hp, w.high_bits))
            combine_flops = combine_flops + N * h
    ops.append(Op("moe_combine", nm, combine_flops, load_act=combine_reads, store_act=N * h * ab))
    return ops


def _mla_ops(spec, st, N, q_len, k_len, causal, w: _Widths, attn_bits, kv_read, tile) -> list[Op]:
    """Multi-head latent attention [DeepSeek-AI 2024]: prefill decompresses K/V; decode absorbs the
    up-projections into the query and the output and attends over the latent cache (as FlashMLA does)."""
    h, n, H, B = spec.hidden_size, spec.num_layers, spec.num_heads, st.batch
    dn, dr, dv, r, rq = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim, spec.kv_lora_rank, spec.q_lora_rank
    wb, ab, hp, bits = w.weight, w.act, w.high, w.gemm_bits
    bias = spec.qkv_bias
    ops: list[Op] = []
    if rq:
        ops.append(_linear("q_a_proj", n, N, h, rq, wb, ab, bias, hp, bits))
        ops.append(_linear("q_b_proj", n, N, rq, H * (dn + dr), wb, ab, False, hp, bits))
    else:
        ops.append(_linear("q_proj", n, N, h, H * (dn + dr), wb, ab, False, hp, bits))
    ops.append(_linear("kv_a_proj_with_mqa", n, N, h, r + dr, wb, ab, bias, hp, bits))
    ops.append(_elementwise("latent_norm", n, N * (r + (rq or 0)), NORM_OPS["rms"], ab, weight=(r + (rq or 0)) * hp))
    ops.append(_rope(n, N, H + 1, dr, ab))
    ops.append(Op("kv_store", n, 0.0, load_act=N * (r + dr) * ab, store_kv=N * (r + dr) * w.kv))
    if st.stage == "prefill":
        ops.append(_linear("kv_b_proj", n, N, r, H * (dn + dv), wb, ab, False, hp, bits))
        ops += _attention_ops(n, B, q_len, k_len, H, H, dn + dr, dv, ab, kv_read, st.flash_attention,
                              causal, tile, None, False, attn_bits)
    else:
        # W_UK absorbed into the query (per head dn → r) and W_UV into the output (per head r → dv)
        ops.append(Op("q_absorb", n, 2.0 * N * H * dn * r, load_weight=H * dn * r * wb, load_act=N * H * dn * ab,
                      store_act=N * H * r * ab, kind="gemm", bits=bits))
        ops += _attention_ops(n, B, q_len, k_len, H, 1, r + dr, r, ab, kv_read, st.flash_attention,
                              causal, tile, None, True, attn_bits)
        ops.append(Op("o_absorb", n, 2.0 * N * H * r * dv, load_weight=H * r * dv * wb, load_act=N * H * r * ab,
                      store_act=N * H * dv * ab, kind="gemm", bits=bits))
    ops.append(_linear("o_proj", n, N, H * dv, h, wb, ab, spec.o_bias, hp, bits))
    return ops


# ---- paper convention (LLM-Viewer) ---------------------------------------------------------------------
def paper_ops(spec: ModelSpec, st: Setting, device: Device | None) -> list[Op]:
    """The operators of LLM-Viewer's ``analyze`` for one stage (commit 472f71f; ``paper-2024-03``: 94ab17b).

    Faithful to the tool: linear shapes from h, I and K/H (a plain MLP still gets a ``gate_proj``, experts are
    ignored), head size h/H, residual adds reading one operand, ``mlp_act`` sized with h, norms at 7 ops per
    element without their weight, and an ``lm_head`` of B·h·V operations (no factor 2) on a single position.
    """
    if spec.is_mla:
        raise ValueError(
            f"{spec.name} uses multi-head latent attention, which LLM-Viewer does not model; "
            "use conventions='exact'"
        )
    B, L = st.batch, st.seq_len
    wb, ab, kvb = st.w_bits / 8.0, st.a_bits / 8.0, st.kv_bits / 8.0
    h, H, K, n, inter, V = (spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.num_layers,
                        spec.intermediate_size, spec.vocab_size)
    kvw = h * K / H
    d = h // H
    prefill = st.stage == "prefill"
    T = L if prefill else 1
    ops: list[Op] = []
    for name, ic, oc in (("q_proj", h, h), ("k_proj", h, kvw), ("v_proj", h, kvw), ("o_proj", h, h),
                         ("gate_proj", h, inter), ("up_proj", h, inter), ("down_proj", inter, h)):
        is_kv = name in ("k_proj", "v_proj")
        ops.append(Op(name, n, 2.0 * ic * oc * B * T, load_weight=ic * oc * wb, load_act=ic * B * T * ab,
                      store_act=0.0 if is_kv else oc * B * T * ab, store_kv=oc * B * T * kvb if is_kv else 0.0,
                      kind="gemm"))
    q = L if prefill else 1
    qk = 2.0 * q * L * d * H * B
    sv = 2.0 * q * L * d * H * B
    sm = 5.0 * B * H * q * L
    if st.flash_attention:
        onchip = getattr(device, "onchip_bytes", None)
        block = d if not onchip else min(math.ceil(onchip / (float(np.max(kvb)) * d)), d)
        n_blocks = np.ceil(L / block) if prefill else 1.0
        kv_factor = 1.0 if st.conventions == "paper-2024-03" else 2.0
        ops.append(Op("fused_attention", n, qk + sv + sm, load_act=q * d * B * H * ab,
                      store_act=2.0 * q * L * B * H * ab, load_kv=n_blocks * L * d * B * H * kvb * kv_factor,
                      kind="attention"))
    elif prefill:
        ops += [
            Op("qk_matmul", n, qk, load_act=L * d * B * K * ab, store_act=L * L * B * H * ab,
               load_kv=L * d * B * K * kvb, kind="attention"),
            Op("sv_matmul", n, sv, load_act=L * L * B * H * ab, store_act=L * d * B * H * ab,
               load_kv=L * d * B * K * kvb, kind="attention"),
            Op("softmax", n, sm, load_act=B * H * L * L * ab, store_act=B * H * L * L * ab),
        ]
    else:
        ops += [
            Op("qk_matmul", n, qk, load_act=d * B * H * ab, store_act=L * B * H * ab,
               load_kv=L * d * B * K * kvb, kind="attention"),
            Op("sv_matmul", n, sv, load_act=L * B * H * ab, store_act=d * B * H * ab,
               load_kv=L * d * B * K * kvb, kind="attention"),
            Op("softmax", n, sm, load_act=B * H * L * ab, store_act=B * H * L * ab),
        ]
    Nh = B * h * T
    for name in ("attn_norm", "mlp_norm"):
        ops.append(Op(name, n, 7.0 * Nh, load_act=Nh * ab, store_act=Nh * ab))
    for name in ("attn_add", "mlp_add"):
        ops.append(Op(name, n, 1.0 * Nh, load_act=Nh * ab, store_act=Nh * ab))
    ops.append(Op("mlp_act", n, 2.0 * Nh, load_act=2.0 * Nh * ab, store_act=Nh * ab))
    ops.append(Op("lm_head", 1, 1.0 * B * h * V, load_weight=h * V * wb, load_act=h * ab, store_act=V * ab,
                  kind="gemm"))
    return ops


def build_ops(spec: ModelSpec, st: Setting, device: Device | None) -> list[Op]:
    """Dispatch on the convention."""
    check_choice("conventions", st.conventions, CONVENTIONS)
    if st.conventions == "exact":
        return exact_ops(spec, st, device)
    return paper_ops(spec, st, device)
