"""Fusion measured (unveiled.kernels.fusion), the compiler-friendly decode step and its profile
(unveiled.kernels.decode_step), FlashAttention's counted IO (unveiled.kernels.io) and the cached experiments.
Nothing here asserts a timing; compiling tests are marked slow."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unveiled.kernels import decode_step as ds
from unveiled.kernels import fusion
from unveiled.kernels.io import (
    attention_traffic,
    figure16_measured,
    naive_traffic,
    tile_for_buffer,
    traffic_sweep,
)
from unveiled.kernels.validation import analyzer_traffic, decoder_traffic
from unveiled.models import Decoder, DecoderConfig


def _model(kv_heads: int = 2, layers: int = 2) -> Decoder:
    cfg = DecoderConfig(vocab_size=97, hidden_size=64, num_layers=layers, num_heads=4, num_kv_heads=kv_heads,
                        intermediate_size=160, name="t")
    return Decoder(cfg, seed=1)


# ---- the static decode step --------------------------------------------------------------------------------
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_static_step_gives_the_decoders_logits(kv_heads):
    m = _model(kv_heads)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 97, (2, 20), generator=g)
    with torch.inference_mode():
        step = ds.StaticDecodeStep(m, 24, batch=2)
        step.prefill(tokens[:, :12])
        cache = m.new_cache()
        m(tokens[:, :12], cache=cache)
        for pos in range(12, 20):
            ref = m(tokens[:, pos:pos + 1], cache=cache)
            got = step(tokens[:, pos:pos + 1], torch.tensor([pos]))
            assert torch.allclose(got, ref, atol=1e-5), pos


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_generated_forms_compute_the_same_step(kv_heads):
    m = _model(kv_heads)  # widths 64, 32 and 160 split into blocks of 16; the 97-word head does not (plain form)
    tokens = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        steps = [ds.StaticDecodeStep(m, 12, gemv=g) for g in ds.StaticDecodeStep.GEMVS]
        for s in steps:
            s.prefill(tokens[:, :9])
        a, b, c = (s(tokens[:, 9:], torch.tensor([9])) for s in steps)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    with pytest.raises(ValueError, match="gemv"):
        ds.StaticDecodeStep(m, 12, gemv="blas")


def test_static_step_rejects_bad_input():
    m = _model()
    with pytest.raises(TypeError, match="Decoder"):
        ds.StaticDecodeStep(torch.nn.Linear(2, 2), 8)
    with pytest.raises(ValueError, match="max_len"):
        ds.StaticDecodeStep(m, 0)
    with pytest.raises(ValueError, match="no room"):
        ds.StaticDecodeStep(m, 4).prefill(torch.zeros(1, 4, dtype=torch.long))


def test_best_and_median_checks_arguments():
    best, median = ds.best_and_median(lambda: None, 3)
    assert 0 <= best <= median
    with pytest.raises(ValueError, match="clock"):
        ds.best_and_median(lambda: None, 3, clock="cpu")
    with pytest.raises(ValueError, match="repeats"):
        ds.best_and_median(lambda: None, 0)


def test_profile_rows_carry_the_counted_bytes():
    m = _model()
    prof = ds.profile_decode_step(m, "a6000", context=16, repeats=2, clock="thread")
    counted = decoder_traffic(m, stage="decode", seq_len=16)
    assert prof["bytes"].sum() == counted["bytes"].sum()
    assert {"q_proj", "lm_head", "fused_attention", "rope", "python"} <= set(prof["op"])
    assert (prof["time_s"] >= 0).all()
    linear = prof[prof["op"] == "down_proj"].iloc[0]
    assert linear["predicted_s"] > 0 and linear["achieved_bytes_s"] > 0
    assert ds.decode_step_bytes(m, 16) == analyzer_traffic(m, stage="decode", seq_len=16)["bytes"].sum()


# ---- compiling: support, fallback, and one real compile -----------------------------------------------------
def test_step_weights_are_what_one_decode_step_reads_whole():
    from unveiled.kernels.experiments import step_weights

    for tied in (True, False):
        cfg = DecoderConfig(vocab_size=97, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=160, tie_embeddings=tied)
        m = Decoder(cfg, seed=1)
        ws = step_weights(m)
        block = m.layers[0]
        assert [w.data_ptr() for w in ws[:7]] == [lin.weight.data_ptr() for lin in (
            block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj, block.self_attn.o_proj,
            block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj)]  # in the order the step reads them
        assert len(ws) == 7 * 2 + 1 and ws[-1].data_ptr() == m.lm_head.weight.data_ptr()
        assert m.embed_tokens.weight.data_ptr() not in {w.data_ptr() for w in ws[:-1]}  # looked up, not read
        assert sum(w.numel() for w in ws) == sum(p.numel() for p in m.parameters() if p.dim() == 2) - (
            0 if tied else m.embed_tokens.weight.numel())
    with pytest.raises(TypeError, match="Decoder"):
        step_weights(torch.nn.Linear(2, 2))


def test_decode_step_speed_interleaves_rounds_and_reports_the_read(monkeypatch):
    import pandas as pd

    from unveiled.kernels import experiments as kx

    calls = []

    def fake_bandwidth(repeats, clock):  # a triad of exactly 1e11 B/s, counted per round
        calls.append(clock)
        return pd.DataFrame({"benchmark": ["copy", "triad"], "bytes": [2e9, 3e9], "time_s": [1.0, 0.03]})

    monkeypatch.setattr(kx, "measure_bandwidth", fake_bandwidth)
    m = _model()
    table = kx.decode_step_speed(m, threads=(1,), clocks={1: ("wall", "thread")}, context=8, repeats=4, rounds=2,
                                 compile=False)
    assert calls == ["wall", "wall", "thread", "thread"]  # one triad per round and clock
    assert list(table.path) == ["eager Decoder", "eager static step"] * 2
    assert (table.bandwidth_bytes_s == 1e11).all()
    assert table.groupby("clock").read_bytes_s.nunique().eq(1).all() and (table.read_bytes_s > 0).all()
    assert np.allclose(table.fraction_of_read, table.achieved_bytes_s / table.read_bytes_s)
    assert np.allclose(table.fraction_of_roof, table.achieved_bytes_s / 1e11)
    assert (table.step_s <= table.step_median_s).all()
    with pytest.raises(ValueError, match="rounds"):
        kx.decode_step_speed(m, threads=(1,), rounds=0, compile=False)


def test_missing_compiler_is_reported_not_raised(monkeypatch):
    fusion.compiler_support.cache_clear()
    monkeypatch.setenv("CXX", "/nonexistent/c++-compiler")
    support = fusion.compiler_support()
    assert not support.available and "C++ compiler" in support.reason
    out = fusion.compile_function(lambda x: x * 2, torch.ones(3))
    assert not out.compiled and out.reason == support.reason
    cases = fusion.fusion_cases(tokens=8)
    table = fusion.measure_fusion(cases[:1], "a6000", repeats=1)
    assert not table["compiled"].iloc[0] and "C++" in table["note"].iloc[0]
    assert table["eager_bytes"].iloc[0] > table["compulsory_bytes"].iloc[0]
    fusion.compiler_support.cache_clear()


def test_fusion_cases_default_to_dram_sized_tensors():
    from unveiled.measure import default_array_bytes

    cases = fusion.fusion_cases()
    gate = cases[1].args[0]
    assert gate.numel() * 4 >= min(default_array_bytes(), 128 * 2**20) - 4 * gate.shape[1]
    assert [c.name for c in cases] == ["residual add + RMSNorm", "SwiGLU: SiLU(gate)·up", "linear + SiLU (Fig. 14)"]
    with pytest.raises(ValueError, match="tokens"):
        fusion.fusion_cases(tokens=0)


@pytest.mark.slow
def test_compiled_chain_is_one_kernel_at_compulsory_traffic():
    if not fusion.compiler_support().available:
        pytest.skip(fusion.compiler_support().reason)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 48, generator=g), torch.randn(64, 48, generator=g)
    out = fusion.compile_function(fusion._swiglu, a, b)
    assert out.compiled, out.reason
    assert len(out.kernels) == 1 and out.extern_calls == []
    assert out.fused_bytes == 3 * a.numel() * 4  # read gate and up, write the product: nothing in between
    assert torch.allclose(out.fn(a, b), fusion._swiglu(a, b), atol=1e-6)
    assert "kernel(" in fusion.kernel_excerpt(out.code)
    table = fusion.measure_fusion([fusion.FusionCase("swiglu", fusion._swiglu, (a, b), "")], "a6000", repeats=2)
    row = table.iloc[0]
    assert row["compiled"] and row["compiled_bytes"] == row["compulsory_bytes"] < row["eager_bytes"]
    assert row["eager_kernels"] == 2 and row["compiled_kernels"] == 1
    # Chapter 8's claim: in fp32 on a CPU the activation after a linear layer is not fused into the GEMM
    lin = fusion.fusion_cases(tokens=4, hidden=32, intermediate=48)[2]
    comp = fusion.compile_function(lin.fn, *lin.args)
    assert comp.compiled and len(comp.extern_calls) == 1 and len(comp.kernels) == 1


def test_largest_disagreement_separates_rounding_from_wrong_values():
    ref = torch.linspace(-3, 3, 100)
    assert fusion.largest_disagreement(ref, ref) == 0
    assert fusion.largest_disagreement(ref * (1 + 1e-6), ref) < fusion.AGREEMENT  # another summation order
    wrong = ref.clone()
    wrong[-8:] = 4.6e-41  # what uninitialised memory looked like
    assert fusion.largest_disagreement(wrong, ref) > fusion.AGREEMENT
    assert fusion.largest_disagreement((ref, ref[:3]), (ref, ref[:4])) == float("inf")
    assert fusion.largest_disagreement(torch.full((3,), float("nan")), torch.zeros(3)) == float("inf")


def test_a_compiled_function_that_disagrees_with_eager_is_not_timed(monkeypatch):
    if not fusion.compiler_support().available:
        pytest.skip(fusion.compiler_support().reason)
    import torch._inductor.utils as iu

    real = iu.run_and_get_code

    def corrupt(fn, *args):
        result, code = real(fn, *args)
        return result + 1.0, code  # as if the generated kernel were wrong

    monkeypatch.setattr(iu, "run_and_get_code", corrupt)
    out = fusion.compile_function(lambda x: x * 2, torch.ones(3))
    assert not out.compiled and "wrong values" in out.reason and out.code


@pytest.mark.slow
def test_compiled_code_is_right_with_the_cpu_capability_capped():
    """The book's AVX2-limited check caps ATen with ATEN_CPU_CAPABILITY; inductor then writes AVX2 kernels, which
    compiled with -march=native on an AVX-512 host returned wrong values (fixed by compiling for the chosen ISA
    only). Run in a fresh process, as the cap is read at start-up."""
    if not fusion.compiler_support().available:
        pytest.skip(fusion.compiler_support().reason)
    import os
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from unveiled.kernels import fusion\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for shape in ((64, 48), (10922, 1536)):\n"  # both were wrong, in different ways
        "    a, b = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)\n"
        "    out = fusion.compile_function(fusion._swiglu, a, b)\n"
        "    assert out.compiled, out.reason\n"
        "    assert torch.allclose(out.fn(a, b), fusion._swiglu(a, b), atol=1e-6)\n"
        "import torch._inductor.config as cfg\n"
        "assert cfg.cpp.march is None  # restored\n"
        "print(torch.backends.cpu.get_cpu_capability())\n"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    env.pop("TORCHINDUCTOR_CPP_MARCH", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("AVX2")


@pytest.mark.slow
def test_blocked_layout_is_folded_into_constants_when_compiled():
    """Frozen, the relayout of the weights runs once at compile time: the compiled step holds the blocks as
    constants of shape [out/16, in, 16] (unfrozen, inductor reads the stored weight with strides instead), and
    its kernels move no more bytes than the plain generated form's."""
    if not fusion.compiler_support().available:
        pytest.skip(fusion.compiler_support().reason)
    m = _model(2)
    tokens = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(1))
    token, position = tokens[:, 9:], torch.tensor([9])
    comps = {}
    for gemv in ("generated", "blocked"):
        step = ds.StaticDecodeStep(m, 12, gemv=gemv).eval()
        step.prefill(tokens[:, :9])
        comps[gemv] = fusion.compile_function(step, token, position)
        assert comps[gemv].compiled, comps[gemv].reason
    weight_bytes = sum(p.numel() * 4 for p in m.parameters())
    assert comps["blocked"].fused_bytes < comps["generated"].fused_bytes + weight_bytes / 2
    from unveiled.kernels.experiments import skip_guards

    with torch.no_grad():
        ref = ds.StaticDecodeStep(m, 12, gemv="library").eval()
        ref.prefill(tokens[:, :9])
        expected = ref(token, position)
        with skip_guards():  # how the experiments time it: the one graph, no guard checks
            assert torch.allclose(comps["blocked"].fn(token, position), expected, atol=1e-5)
    gate_blocks = "torch.float32 (10, 64, 16) (1024, 16, 1)"  # gate_proj, 160 x 64, in blocks of 16 outputs
    assert gate_blocks in comps["blocked"].code and gate_blocks not in comps["generated"].code
    step = ds.StaticDecodeStep(m, 12, gemv="blocked").eval()
    step.prefill(tokens[:, :9])
    assert gate_blocks not in fusion.compile_function(step, token, position, freezing=False).code


# ---- FlashAttention's IO, counted -----------------------------------------------------------------------------
def test_tile_for_buffer_is_the_largest_that_fits():
    for M, d in ((1e5, 128), (2.28e5, 64), (1e3, 64), (4e6, 128)):
        b = tile_for_buffer(M, d)
        def need(t, d=d):
            return t * d * (3 * 2 + 4) + 4 * t * t

        assert b == 1 or need(b) <= M
        assert need(b + 1) > M
    with pytest.raises(ValueError, match="buffer_bytes"):
        tile_for_buffer(0, 64)


def test_flash_traffic_follows_n2d2_over_m_and_naive_n2():
    d = 64
    rows = [attention_traffic(N, d, M) for N in (2048, 4096) for M in (8e3, 32e3)]
    small, big = {r["seq_len"]: r for r in rows if r["buffer_bytes"] == 8e3}, {r["seq_len"]: r for r in rows if r["buffer_bytes"] == 32e3}
    for table in (small, big):
        assert 3.8 < table[4096]["flash_bytes"] / table[2048]["flash_bytes"] < 4.2  # N²
        assert 3.8 < table[4096]["naive_bytes"] / table[2048]["naive_bytes"] < 4.2
    # four times the buffer: tiles four times longer, K/V re-read a quarter as often
    assert 3.3 < small[4096]["flash_bytes"] / big[4096]["flash_bytes"] < 4.2
    for r in rows:
        assert r["compulsory_bytes"] < r["flash_bytes"] < r["naive_bytes"]
        assert r["flash_bytes"] >= r["bound_bytes"]  # no exact algorithm beats Θ(N²d²/M) (here constant 1)
    whole = attention_traffic(256, d, 1e9)  # everything fits on chip: only the compulsory traffic is left
    assert whole["flash_bytes"] == whole["compulsory_bytes"]


def test_naive_traffic_counts_the_score_passes():
    t = naive_traffic(1, 1, 1, 512, 512, 64, causal=False)
    n2, nd = 512 * 512 * 2, 512 * 64 * 2
    assert t["bytes"] == 6 * n2 + 4 * nd and t["kernels"] == 4
    causal = naive_traffic(1, 1, 1, 512, 512, 64, causal=True)
    assert causal["bytes"] > t["bytes"]  # the mask is one more pass over the scores
    with pytest.raises(ValueError, match="element_bytes"):
        naive_traffic(1, 1, 1, 8, 8, 8, element_bytes=8)


def test_traffic_sweep_grid():
    s = traffic_sweep(seq_lens=(256, 1024), head_dims=(64,), buffers_kb=(16, 100))
    assert len(s) == 4 and {"naive_s", "flash_s", "tile", "buffer_kb"} <= set(s.columns)
    assert (s["flash_s"] <= s["naive_s"]).all()


def test_figure16_measured_against_the_analyzer():
    from unveiled.analyzer import survey

    ours = figure16_measured()
    exact = survey.figure16_data("exact")
    decode, prefill = ours[ours.stage == "decode"], ours[ours.stage == "prefill"]
    assert (decode["memory_access_reduction_pct"] < 5).all()  # one query row per head: little to save
    long = prefill.set_index("seq_len").loc[[1024, 10_240, 102_400]]
    long = long[long.batch == 1]["memory_access_reduction_pct"].to_numpy()
    assert np.all(np.diff(long) > 0)
    # eager attention scales and masks in extra passes: counted savings exceed the analyzer's three-kernel model
    merged = ours.merge(exact, on=["stage", "batch", "seq_len"], suffixes=("", "_analyzer"))
    assert (merged["memory_access_reduction_pct"] >= merged["memory_access_reduction_pct_analyzer"]).all()
    assert (ours["time_reduction_pct"] <= ours["memory_access_reduction_pct"] + 1e-9).all()
    assert math.isclose(ours.iloc[0]["unfused_bytes"] / ours.iloc[0]["fused_bytes"], 1, rel_tol=0.01)


def test_figure14_phases_remove_the_intermediate_only():
    from unveiled.plots import kernels as kp

    p = fusion.figure14_phases("a6000", tokens=32, hidden=64, intermediate=96)
    sep, fused = p[p.schedule == "separate kernels"], p[p.schedule == "fused"]
    intermediate = 32 * 96 * 4
    assert sep["bytes"].sum() - fused["bytes"].sum() == 2 * intermediate  # its store and its reload
    assert fused.end_s.max() < sep.end_s.max()
    assert list(sep.kernel.unique()) == ["linear", "SiLU"] and list(fused.kernel.unique()) == ["linear + SiLU"]
    assert (p.end_s >= p.start_s).all()
    assert kp.figure14_chart(p, title="fig 14").to_dict()["title"] == "fig 14"
