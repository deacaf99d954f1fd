"""The traffic counter (unveiled.kernels.traffic.ByteCounter) on operators whose traffic is known from first
principles, on meta tensors, and against the tile traffic FlashAttention reports; then the analyzer's bytes
against the counter on real forward passes of the book's Decoder (unveiled.kernels.validation)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from unveiled.kernels import TileTraffic, flash_attention, naive_attention
from unveiled.kernels.traffic import ByteCounter, unique_bytes
from unveiled.kernels.validation import analyzer_traffic, compare_traffic, decoder_traffic
from unveiled.models import Decoder, DecoderConfig


def _count(fn, *args, **kwargs) -> ByteCounter:
    with torch.inference_mode(), ByteCounter() as bc:
        fn(*args, **kwargs)
    return bc


def test_unique_bytes_counts_broadcast_once():
    x = torch.zeros(3, 5)
    assert unique_bytes(x) == 60
    assert unique_bytes(x.t()) == 60
    assert unique_bytes(torch.zeros(5).expand(3, 5)) == 20
    assert unique_bytes(x[:, :2]) == 24
    assert unique_bytes(torch.zeros(0, 4)) == 0


def test_elementwise_and_inplace_traffic():
    n = 1000
    x, y = torch.randn(n), torch.randn(n)
    assert _count(torch.add, x, y).total_bytes == 3 * n * 4  # read two, write one
    z = x.clone()
    bc = _count(z.add_, y)
    assert (bc.read_bytes, bc.write_bytes) == (2 * n * 4, n * 4)  # read z and y, write z
    bc = _count(z.copy_, x)
    assert (bc.read_bytes, bc.write_bytes) == (n * 4, n * 4)  # copy_ does not read its destination
    bc = _count(z.zero_)
    assert (bc.read_bytes, bc.write_bytes) == (0, n * 4)
    bc = _count(torch.add, x.half(), y.half())
    assert bc.total_bytes == 3 * n * 2


def test_views_move_nothing_and_layout_copies_do():
    x = torch.randn(64, 32)
    bc = _count(lambda: (x.t(), x.view(32, 64), x[:, :4], x.unsqueeze(0).expand(3, 64, 32)))
    assert bc.total_bytes == 0 and bc.records == []
    assert _count(lambda: x.t().contiguous()).total_bytes == 2 * x.numel() * 4
    assert _count(lambda: x.t().reshape(-1)).total_bytes == 2 * x.numel() * 4  # reshape of a transpose copies


def test_matmul_and_linear_read_each_operand_once():
    m, k, n = 7, 50, 30
    a, w = torch.randn(m, k), torch.randn(n, k)
    expected = (m * k + n * k + m * n) * 4
    assert _count(torch.mm, a, w.t()).total_bytes == expected
    assert _count(F.linear, a, w).total_bytes == expected
    assert _count(F.linear, a.view(1, m, k), w).total_bytes == expected  # 3-D input: the same mm
    bc = _count(F.linear, a, w, torch.randn(n))
    assert bc.total_bytes == expected + n * 4  # addmm also reads the bias


def test_broadcast_operand_is_read_once():
    x, w = torch.randn(16, 100), torch.randn(100)
    assert _count(torch.mul, x, w).read_bytes == (16 * 100 + 100) * 4


def test_gathers_read_the_rows_they_fetch():
    table = torch.randn(1000, 64)
    ids = torch.tensor([[3, 7, 7]])
    bc = _count(F.embedding, ids, table)
    assert bc.read_bytes == 3 * 64 * 4 + 3 * 8 and bc.write_bytes == 3 * 64 * 4
    bc = _count(lambda: table[torch.tensor([1, 2])])
    assert bc.read_bytes == 2 * 64 * 4 + 2 * 8


def test_scatter_writes_only_the_slots_it_fills():
    buf = torch.zeros(2, 100, 8)
    src = torch.ones(2, 1, 8)
    bc = _count(buf.index_copy_, 1, torch.tensor([5]), src)
    assert bc.write_bytes == src.numel() * 4 and bc.read_bytes == src.numel() * 4 + 8
    bc = _count(lambda: buf.__setitem__((slice(None), slice(3, 4)), src))  # slice assignment: a copy_
    assert (bc.read_bytes, bc.write_bytes) == (src.numel() * 4, src.numel() * 4)


def test_cpu_flash_attention_kernel_reads_qkv_once():
    q, k, v = torch.randn(1, 4, 16, 8), torch.randn(1, 4, 30, 8), torch.randn(1, 4, 30, 8)
    bc = _count(F.scaled_dot_product_attention, q, k, v)
    assert [r.op for r in bc.records] == ["aten._scaled_dot_product_flash_attention_for_cpu"]
    assert bc.read_bytes == (q.numel() + k.numel() + v.numel()) * 4
    assert bc.write_bytes == (q.numel() + 4 * 16) * 4  # the output and one log-sum-exp per row


def test_meta_tensors_count_like_real_ones():
    shapes = ((1, 4, 33, 16), (1, 2, 33, 16), (1, 2, 33, 16))
    real = [torch.randn(s) for s in shapes]
    with torch.device("meta"):
        meta = [torch.empty(s) for s in shapes]
    for causal in (False, True):
        a = _count(naive_attention, *real, causal=causal)
        b = _count(naive_attention, *meta, causal=causal)
        assert [r.bytes for r in a.records] == [r.bytes for r in b.records]


def test_naive_attention_traffic_is_theta_nd_plus_n2():
    """Naive attention moves the N x N score matrix several times: scores, scale, softmax, P·V."""
    N, d = 512, 64
    with torch.device("meta"):
        q, k, v = (torch.empty(1, 1, N, d) for _ in range(3))
    bc = _count(naive_attention, q, k, v)
    n2, nd = N * N * 4, N * d * 4
    # bmm writes S; mul reads/writes S; softmax reads/writes S; bmm reads P: 6 N² plus Q, K, V read and O written
    assert bc.total_bytes == 6 * n2 + 4 * nd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_kernel_device_traffic_equals_its_tile_count(dtype, causal):
    """The counter sees what the tiled kernel reads from q, k, v and writes to its outputs: exactly the bytes
    the kernel itself reports (everything else is on-chip temporaries)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 45, 16, generator=g).to(dtype)
    k = torch.randn(2, 3, 50, 16, generator=g).to(dtype)
    v = torch.randn(2, 3, 50, 8, generator=g).to(dtype)
    for return_lse in (False, True):
        t = TileTraffic()
        with torch.inference_mode(), ByteCounter() as bc:
            res = flash_attention(q, k, v, causal=causal, block_q=16, block_k=12, traffic=t, return_lse=return_lse)
            outs = res if return_lse else (res,)
            seen = bc.bytes_touching(q, k, v, *outs)
        assert seen["read_bytes"] == t.load_bytes
        assert seen["write_bytes"] == t.store_bytes
        assert bc.total_bytes > 3 * t.total_bytes  # the temporaries (scores, probabilities, ...) dwarf it


def test_module_attribution_and_regions():
    lin = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    x = torch.randn(2, 8)
    with torch.inference_mode(), ByteCounter(lin) as bc, bc.region("mine"):
        lin(x)
    t = bc.table()
    assert list(t["module"]) == ["0", "1"] and set(t["region"]) == {"mine"}
    assert bc.by_op()["calls"].sum() == 2
    with pytest.raises(TypeError):
        ByteCounter("model")
    with pytest.raises(TypeError):
        bc.bytes_touching([1])


# ---- the analyzer against the counter on the book's Decoder ----------------------------------------------------
def _model(kv_heads: int) -> Decoder:
    cfg = DecoderConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=kv_heads,
                        intermediate_size=160, name=f"kv{kv_heads}")
    return Decoder(cfg, seed=0)


EXACT = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "kv_store",
         "attn_add", "mlp_add"]


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("stage", ["decode", "prefill"])
@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_analyzer_bytes_match_the_counter(kv_heads, stage, attention):
    t = compare_traffic(_model(kv_heads), stage=stage, batch=2, seq_len=24, attention=attention).set_index("op")
    # projections, the KV-cache append, residual adds and the head: the analyzer's bytes exactly
    assert (t.loc[EXACT, "ratio"] == 1.0).all(), t.loc[EXACT]
    # the unfused elementwise operators: eager runs several kernels where the analyzer charges one
    for op in ("attn_norm", "mlp_norm", "final_norm", "rope", "mlp_act"):
        assert t.loc[op, "ratio"] > 1.5 and t.loc[op, "note"]
    if attention == "explicit":
        # against the analyzer's "eager" convention every attention kernel matches exactly...
        ops = ["qk_matmul", "attn_scale", "softmax", "sv_matmul"] + (["repeat_kv"] if kv_heads < 4 else [])
        ops += ["attn_layout"] if stage == "prefill" else []
        assert (t.loc[ops, "ratio"] == 1.0).all(), t.loc[ops]
        if stage == "prefill":  # ...and the mask pass too, plus the few bytes of building the mask
            B, T = 2, 24
            built = 2 * T * 8 + 2 * T * 8 + (2 * T * 8 + T * T) + 2 * T * T  # aranges, add, le, bitwise_not
            extra = t.loc["attn_mask", "counted_bytes"] - t.loc["attn_mask", "analyzer_bytes"]
            assert extra == 2 * built  # two layers
        else:
            assert "attn_mask" not in t.index
    else:
        # the fused kernel: the analyzer's bytes plus one fp32 log-sum-exp per query row (and repeated K/V for GQA)
        B, T = 2, (24 if stage == "prefill" else 1)
        extra = 2 * B * 4 * T * 4
        if kv_heads == 4:
            assert t.loc["fused_attention", "counted_bytes"] == t.loc["fused_attention", "analyzer_bytes"] + extra
        else:
            assert t.loc["fused_attention", "counted_bytes"] > t.loc["fused_attention", "analyzer_bytes"] + extra
            assert pd.isna(t.loc["repeat_kv", "analyzer_bytes"]) and t.loc["repeat_kv", "note"]
    assert ("repeat_kv" in t.index) == (kv_heads < 4)


@pytest.mark.parametrize("stage", ["decode", "prefill"])
def test_eager_layout_copies_follow_the_batch(stage):
    """With one sequence the batched product reads Q through a view; with several it copies Q first."""
    for batch in (1, 3):
        t = compare_traffic(_model(2), stage=stage, batch=batch, seq_len=16, attention="explicit").set_index("op")
        if stage == "prefill":
            assert t.loc["attn_layout", "ratio"] == 1.0, batch
        else:
            assert "attn_layout" not in t.index


@pytest.mark.parametrize("stage", ["decode", "prefill"])
def test_unfused_convention_reads_kv_once_per_group(stage):
    """The analyzer's default unfused convention charges GQA's K/V once per key/value head: against eager code
    (which repeats them) the products differ by the repeat factor on the K/V part, and the copy is missing."""
    t = compare_traffic(_model(2), stage=stage, batch=2, seq_len=24, attention="explicit", against="unfused")
    t = t.set_index("op")
    assert t.loc["qk_matmul", "ratio"] > 1 and t.loc["qk_matmul", "note"]
    assert pd.isna(t.loc["repeat_kv", "analyzer_bytes"])
    eager = analyzer_traffic(_model(2), stage=stage, batch=2, seq_len=24, attention="eager").set_index("op")
    unfused = analyzer_traffic(_model(2), stage=stage, batch=2, seq_len=24, attention="unfused").set_index("op")
    kv = 2 * 2 * 24 * 16 * 4  # layers x batch x keys x head_dim x bytes: one K (or V) head's share
    # the eager products read 4 query heads' copies instead of 2 key/value heads
    assert eager.loc["qk_matmul", "bytes"] - unfused.loc["qk_matmul", "bytes"] == (4 - 2) * kv


def test_eager_convention_in_the_analyzer():
    from unveiled.analyzer import analyze
    from unveiled.analyzer.costs import attention_cost

    a = analyze("smollm2-135m", "a6000", stage="decode", seq_len=1024, attention="eager")
    u = analyze("smollm2-135m", "a6000", stage="decode", seq_len=1024)
    f = analyze("smollm2-135m", "a6000", stage="decode", seq_len=1024, attention="fused")
    assert (a.attention, u.attention, f.attention) == ("eager", "unfused", "fused")
    assert a.bytes > u.bytes > f.bytes
    assert f.bytes == analyze("smollm2-135m", "a6000", stage="decode", seq_len=1024, flash_attention=True).bytes
    ops = set(a.ops["op"])
    assert {"repeat_kv", "attn_scale"} <= ops and "attn_mask" not in ops  # one query: nothing to mask
    p = set(analyze("smollm2-135m", "a6000", stage="prefill", seq_len=256, attention="eager").ops["op"])
    assert {"attn_mask", "attn_layout"} <= p
    mha = analyze("llama-2-7b", "a6000", stage="decode", seq_len=512, attention="eager")
    assert "repeat_kv" not in set(mha.ops["op"])  # nothing to repeat without grouped heads
    with pytest.raises(ValueError, match="contradicts"):
        analyze("smollm2-135m", "a6000", flash_attention=True, attention="eager")
    with pytest.raises(ValueError, match="exact"):
        analyze("smollm2-135m", "a6000", attention="eager", conventions="paper")
    with pytest.raises(ValueError, match="attention"):
        analyze("smollm2-135m", "a6000", attention="flash")
    with pytest.raises(ValueError, match="latent"):
        analyze("deepseek-v2-lite", "a6000", attention="eager")
    with pytest.raises(ValueError, match="flash=True"):
        attention_cost(1, 1, 8, 4, 2, 16, flash=True, eager=True)
    cost = attention_cost(1, 1, 8, 4, 2, 16, eager=True)
    assert set(cost) == {"repeat_kv", "qk_matmul", "attn_scale", "softmax", "sv_matmul"}


def test_decoder_traffic_rows_and_totals():
    m = _model(2)
    d = decoder_traffic(m, stage="decode", seq_len=10)
    assert {"q_proj", "rope", "kv_store", "fused_attention", "repeat_kv", "mlp_act", "lm_head"} <= set(d["op"])
    assert (d["bytes"] == d["read_bytes"] + d["write_bytes"]).all()
    assert d.set_index("op").loc["q_proj", "calls"] == 2  # one mm per layer
    with pytest.raises(ValueError, match="stage"):
        decoder_traffic(m, stage="train")
    with pytest.raises(ValueError, match="attention"):
        decoder_traffic(m, attention="flash")
    with pytest.raises(TypeError, match="Decoder"):
        decoder_traffic(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("N", "tile", "H", "K"), [(1000, 128, 8, 8), (4096, 64, 32, 8), (77, 16, 9, 3), (5, 128, 4, 1)])
def test_analyzer_fused_attention_bytes_equal_the_kernels_tile_count(causal, N, tile, H, K):
    """The analyzer's fused-attention bytes (closed form over query tiles) against the tile schedule of the
    chapter's kernel: K/V re-read once per query tile, up to the diagonal when causal."""
    from unveiled.analyzer.costs import attention_cost
    from unveiled.kernels import flash_attention_traffic

    _, analyzer = attention_cost(1, N, N, H, K, 128, act_bytes=2.0, kv_bytes=2.0, flash=True, causal=causal,
                                 tile=tile)["fused_attention"]
    counted = flash_attention_traffic(1, H, K, N, N, 128, causal=causal, block_q=tile, block_k=tile, element_bytes=2)
    assert analyzer == counted.total_bytes
