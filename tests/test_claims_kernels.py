"""Chapter 8's claims, asserted against the ByteCounter on known operators, the book's tiny model, the analyzer,
the attention traffic model and the cached SmolLM2 decode table (tests/claims.py explains the registry)."""

from __future__ import annotations

import pytest
import torch

import unveiled as uv
from claims import claim
from unveiled import results
from unveiled.analyzer import survey
from unveiled.kernels import io, naive_attention, validation
from unveiled.kernels.traffic import ByteCounter

PAGE = "chapters/08_kernels.ipynb"
SEVERAL = 3  # "several times": at least three times
ATTENTION_ROWS = ["repeat_kv", "qk_matmul", "attn_scale", "attn_mask", "softmax", "sv_matmul", "attn_layout"]


def _counted(fn) -> int:
    with torch.inference_mode(), ByteCounter() as bc:
        fn()
    return bc.total_bytes


def _score_passes(seq_len: int, head_dim: int = 128) -> float:
    """How many times eager causal attention moves the N² fp16 score matrix, beyond Q, K, V and the output."""
    with torch.device("meta"):
        q, k, v = (torch.empty(1, 1, seq_len, head_dim, dtype=torch.float16) for _ in range(3))
    with ByteCounter() as bc:
        naive_attention(q, k, v, causal=True)
    return (bc.total_bytes - 4 * seq_len * head_dim * 2) / (seq_len * seq_len * 2)


@claim(PAGE, "It matches first principles on known operators, and it shows that eager code moves several times the "
       "bytes a fused kernel needs: several kernels for one RMSNorm, and the score matrix several times over",
       "It agrees with first principles on known operators")
def test_the_counter_matches_first_principles_and_eager_code_moves_several_times_the_fused_bytes():
    n = 1 << 16
    x, y, w, t8 = torch.randn(n), torch.randn(n), torch.randn(256, 1024), torch.randn(8, 1024)
    assert _counted(lambda: x + y) == 3 * n * 4
    assert _counted(lambda: x.clone().add_(y)) - 2 * n * 4 == 3 * n * 4  # in place, less the clone
    assert _counted(lambda: w.t().contiguous()) == 2 * w.numel() * 4
    assert _counted(lambda: w.view(1024, 256)) == 0
    assert _counted(lambda: torch.nn.functional.linear(t8, w)) == (t8.numel() + w.numel() + 8 * 256) * 4
    # RMSNorm as the chapter runs it: several kernels, several times the fused bytes
    norm, h = uv.models.RMSNorm(576), torch.randn(64, 576)
    with torch.inference_mode(), ByteCounter() as bc:
        norm(h)
    fused = (2 * h.numel() + 576) * 4  # read the input and the weight, write the output
    assert len(bc.records) >= SEVERAL
    assert bc.total_bytes >= SEVERAL * fused
    assert _score_passes(4096) >= SEVERAL


@claim(PAGE, "while the naive kernels move the N² scores several times")
def test_naive_attention_moves_the_scores_several_times_at_every_length():
    for seq_len in (256, 1024, 4096, 16384):
        assert _score_passes(seq_len) >= SEVERAL, seq_len


@pytest.fixture(scope="module")
def tiny():
    return uv.zoo.load("M")


@claim(PAGE, "counts those copies and matches the counter on every attention kernel but the mask pass",
       "and matches the counter on every attention kernel but the mask pass")
def test_the_eager_convention_matches_every_attention_kernel_but_the_mask_pass(tiny):
    prefill = validation.compare_traffic(tiny, stage="prefill", seq_len=64, attention="explicit").set_index("op")
    rows = [op for op in ATTENTION_ROWS if op in prefill.index]
    assert set(rows) == set(ATTENTION_ROWS)  # the tiny model has grouped heads: repeat_kv is there
    assert (prefill.loc[[op for op in rows if op != "attn_mask"], "ratio"] == 1.0).all(), prefill.loc[rows]
    assert 1.0 < prefill.loc["attn_mask", "ratio"] < 1.1  # the mask pass plus the few bytes of building the mask
    decode = validation.compare_traffic(tiny, stage="decode", seq_len=64, attention="explicit").set_index("op")
    rows = [op for op in ATTENTION_ROWS if op in decode.index]
    assert "attn_mask" not in rows and (decode.loc[rows, "ratio"] == 1.0).all(), decode.loc[rows]


def _compiled_decode_runs():
    decode = results.cached("kernels.experiments.smollm2_decode")
    runs = decode[decode.path.str.startswith("compiled")].pivot_table(
        index=["threads", "clock"], columns="path", values="achieved_bytes_s")
    assert len(runs) >= 3 and runs.shape[1] == 3, runs  # 1 and 2 threads; library, generated and blocked
    return runs


@claim(PAGE, "and the three ways stream them at nearly the same rate")
def test_the_three_compiled_decode_paths_stream_the_weights_at_nearly_the_same_rate():
    runs = _compiled_decode_runs()
    # "nearly the same": within 12 % in every run, about the spread of repeated runs of one path on this VM
    assert (runs.max(axis=1) / runs.min(axis=1) < 1.12).all(), runs


@claim(PAGE, "on one core, nearly as fast as a plain read of the same weights")
def test_on_one_core_the_compiled_step_streams_nearly_as_fast_as_a_plain_read_of_its_weights():
    decode = results.cached("kernels.experiments.smollm2_decode")
    one = decode[(decode.threads == 1) & decode.path.str.startswith("compiled")]
    assert set(one.clock) == {"wall", "thread"}
    # "nearly as fast": every compiled path, on both clocks, at least 85 % of the read timed in the same rounds
    assert (one.fraction_of_read >= 0.85).all(), one[["clock", "path", "fraction_of_read"]]
    assert one.fraction_of_read.to_numpy() == pytest.approx((one.achieved_bytes_s / one.read_bytes_s).to_numpy())


@claim(PAGE, "FlashAttention saves little in decode and most of the bytes in long prefills")
def test_flash_attention_saves_little_in_decode_and_most_bytes_in_long_prefills():
    ours = io.figure16_measured("a6000")
    decode, prefill = ours[ours.stage == "decode"], ours[(ours.stage == "prefill") & (ours.batch == 1)]
    assert (decode.memory_access_reduction_pct < 5).all()  # "little": under 5 % in every case
    longest = prefill.set_index("seq_len").sort_index()
    assert longest.memory_access_reduction_pct.iloc[-1] > 50  # "most of the bytes" at 100k tokens
    # the rest of the takeaway: the saving grows with the length and the buffer, and is larger against eager code
    assert longest.memory_access_reduction_pct.is_monotonic_increasing
    saved = [1 - t["flash_bytes"] / t["naive_bytes"] for t in (io.attention_traffic(16384, 128, kb * 1e3)
                                                                  for kb in (16, 100, 228))]
    assert saved == sorted(saved) and saved[0] < saved[-1]
    merged = ours.merge(survey.figure16_data("exact"), on=["stage", "batch", "seq_len"], suffixes=("", "_analyzer"))
    prefills = merged[merged.stage == "prefill"]
    assert (prefills.memory_access_reduction_pct > prefills.memory_access_reduction_pct_analyzer).all()
