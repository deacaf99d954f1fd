"""Chapter 10's cached results and the words the chapter reads from them: provenance, the live reruns within the
measured spread, and every interpretive claim of the text (takeaways and summary included)."""

from __future__ import annotations

import math

import pytest
import torch

import unveiled as uv
import unveiled.quant as uq
from unveiled import accelerators as acc
from unveiled import zoo
from unveiled.analyzer import survey
from unveiled.quant import format_choice as fc
from unveiled.quant import format_experiments as fe
from unveiled.quant import formats as F

NAMES = ("quant.smollm2_formats", "quant.smollm2_formats_wa", "quant.tiny_formats", "quant.smollm2_format_layers",
         "quant.smollm2_format_mix")


@pytest.fixture(scope="module")
def tables():
    return {n: uv.results.cached(n) for n in NAMES}


def test_cached_tables_have_provenance_and_the_recipes_of_the_code(tables):
    for name, t in tables.items():
        p = t.attrs["provenance"]
        assert p["command"] == f"python -m unveiled.results run {name}" and p["git"]["commit"], name
        assert not p["git"]["dirty"], f"{name} was produced from a dirty tree"
    w, wa = tables["quant.smollm2_formats"], tables["quant.smollm2_formats_wa"]
    assert list(w["label"]) == [r.label for r in fe.format_weight_recipes("smollm2")]
    assert list(wa["label"]) == [r.label for r in fe.format_wa_recipes("smollm2")]
    tiny = tables["quant.tiny_formats"]
    assert set(tiny["label"]) == {r.label for r in fe.format_weight_recipes("tiny") + fe.format_wa_recipes("tiny")}
    layers = tables["quant.smollm2_format_layers"]
    assert layers["layer"].nunique() == 210 and set(layers["format"]) == set(fe.LAYER_CANDIDATES)
    # the stored bits of each weight format, as the library counts them
    assert w.set_index("label").loc["MXFP4", "linear_bits"] == F.bits_per_element("mxfp4")


def test_the_cached_per_layer_choice_is_what_choose_formats_gives(tables):
    errors, mix = tables["quant.smollm2_format_layers"], tables["quant.smollm2_format_mix"]
    assert tuple(mix["budget"]) == fc.BUDGETS
    for row in mix.itertuples():
        summary = fc.choice_summary(fc.choose_formats(errors, row.budget))
        assert row.bits_per_weight == pytest.approx(summary.attrs["bits_per_weight"])


def test_live_reruns_match_the_cache():
    """Measured spread of these two reruns against the cache: below 5e-9 relative, with PyTorch's default kernels
    and with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 (the tolerance leaves a factor of 200)."""
    tiny = uv.results.cached("quant.tiny_formats").set_index(["model", "mode", "label"])["perplexity_live"]
    s = zoo.load("S")
    mx = uq.live_perplexity(uq.quantize_model(s, F.get_format("mxfp4")), "tiny")
    nv = uq.live_perplexity(uq.quantize_model(s, F.get_format("nvfp4"), F.get_format("nvfp4")), "tiny")
    assert mx == pytest.approx(tiny[("tiny-s", "weights", "MXFP4")], rel=1e-6)
    assert nv == pytest.approx(tiny[("tiny-s", "weights+activations", "W NVFP4 · A NVFP4")], rel=1e-6)


# --- §10.4: which format wins where ----------------------------------------------------------------------------


def test_weight_only_claims(tables):
    fx = fe.format_findings(tables["quant.smollm2_formats"], tables["quant.smollm2_formats_wa"])
    d = fx["delta"]
    assert abs(d["INT8 ch"]) < 2 and abs(d["FP8 E4M3 ch"]) < 2  # "nearly free"
    assert d["FP8 E5M2 ch"] > d["FP8 E4M3 ch"] + 5  # E5M2's missing mantissa bit costs
    assert d["FP6 E3M2 ch"] > d["FP6 E2M3 ch"] + 5  # "the same trade" at 6 bits
    assert d["FP8 E4M3 unscaled"] < 5  # low casting effort
    assert d["MXFP8 (ceil scale)"] < d["MXFP8"] and d["MXFP4 (ceil scale)"] < d["MXFP4"]
    assert fx["best"]["4.5"] == "NVFP4"  # NVFP4's shorter blocks matter more than the grid
    assert abs(d["INT4 g32"] - d["FP4 E2M1 g32"]) < abs(d["NVFP4"] - d["INT4 g32"])
    assert d["MXFP4"] > d["INT4 g64"]  # power-of-two scales and clipping cost more than the grid
    assert d["FP4 E2M1 ch"] < d["INT4 ch"]  # one scale per row: the float grid's range matters


def test_activation_claims(tables):
    fx = fe.format_findings(tables["quant.smollm2_formats"], tables["quant.smollm2_formats_wa"])
    b = fx["delta_wa"]
    assert fx["fp8_minus_int8_wa"] < 0  # FP8 E4M3 beats INT8 on SmolLM2's activations
    assert b["W FP8 E5M2 ch · A FP8 E5M2 token"] > b["W FP8 E4M3 ch · A FP8 E4M3 token"]
    assert fx["mx_ceil_gain_wa"] > 0
    four = {k: v for k, v in b.items() if k.startswith("W INT4") or "FP4" in k}
    assert min(four, key=four.get) == "W NVFP4 · A NVFP4"
    assert b["W INT4 ch · A INT4 token"] > 1000 and b["W FP4 E2M1 ch · A FP4 E2M1 token"] > 1000  # "breaks"
    assert fx["nvfp4_over_mxfp4_wa"] < fx["nvfp4_over_mxfp4"] < 1  # the gap widens with activations
    tiny = tables["quant.tiny_formats"]
    tb = tiny[tiny["mode"] == "weights+activations"].pivot_table(index="label", columns="model", values="delta_pct")
    assert tb.loc["W INT8 ch · A INT8 token"].max() <= tb.loc["W FP8 E4M3 ch · A FP8 E4M3 token"].max()


def test_table3_measurements_against_the_survey():
    g = uv.smollm2.read_gguf()
    w = next(t for t in g.tensors if t.name == "blk.10.ffn_down.weight")
    t3 = fe.table3_measurements(torch.from_numpy(uv.smollm2.dequantize(w))).set_index("aspect")
    better = list(t3["better"])
    assert better == ["uniform", "floating point", "floating point", "floating point", "uniform"]
    assert list(t3["survey"]) == ["good / bad", "good / bad", "good / bad", "good / bad", "bad / good"]
    for d in ("h100-sxm", "b200"):
        assert uv.get_device(d).peak("fp8") == uv.get_device(d).peak("int8")


# --- §10.1, §10.2, §10.5, §10.6 and the summary ------------------------------------------------------------


def test_bandwidth_and_spatial_claims():
    need = acc.bandwidth_for_speed("llama-2-70b", 300, seq_len=4096)
    assert 35e12 < need["bandwidth_B_s"] < 45e12  # "about forty terabytes per second"
    assert need["flop_s"] < uv.get_device("h100-sxm").peak("fp16")  # "a fraction of one GPU's peak"
    r = acc.aggregate_requirements("llama-2-70b", 300, ["h100-sxm", "b200", "groq-lpu"]).set_index("device")
    groq = r.loc["Groq LPU (GroqChip 1)"]
    assert 300 < groq.tokens_per_s_pipeline < groq.tokens_per_s_parallel  # the survey's 300 is below both bounds
    assert groq.chips_for_capacity > 100  # "hundreds of chips"
    assert (r.loc[["NVIDIA H100 SXM", "NVIDIA B200 (HGX)"], "tokens_per_s_parallel"] < 300).all()
    f20 = survey.figure20_data(conventions="paper")
    ratio = f20.time_s.iloc[0] / f20.time_s.iloc[-1]
    assert ratio == pytest.approx(f20.bandwidth_GB_s.iloc[-1] / f20.bandwidth_GB_s.iloc[0], rel=0.01)


def test_pim_gqa_claim():
    qk16 = acc.pim_decode_table("llama-2-7b", batch=16, seq_len=2048).set_index("op").loc["qk_matmul"]
    qkg = acc.pim_decode_table("llama-3-8b", batch=16, seq_len=2048).set_index("op").loc["qk_matmul"]
    assert qkg.intensity > 3 * qk16.intensity and qkg.speedup < 1.1 < qk16.speedup


def test_native_versus_storage_claims():
    kw = dict(stage="prefill", batch=8, seq_len=2048)
    nv = uv.analyze("llama-2-70b", "h100-sxm", number_format="nvfp4", **kw)
    bf = uv.analyze("llama-2-70b", "h100-sxm", **kw)
    assert nv.time_s == pytest.approx(bf.time_s, rel=1e-3)  # "speeds up nothing in prefill" on the H100
    b2 = uv.analyze("llama-2-70b", "b200", number_format="nvfp4", **kw)
    assert b2.time_s < nv.time_s / 2


def test_per_layer_choice_claims(tables):
    errors, mix = tables["quant.smollm2_format_layers"], tables["quant.smollm2_format_mix"]
    wa = tables["quant.smollm2_formats_wa"].set_index("label")
    choice = fc.choose_formats(errors, 0.01)
    priced = fc.choice_roofline_table(choice, "smollm2-135m", ["h100-sxm", "b200"],
                                      settings=[("decode", 1, 1024), ("prefill", 32, 256)]).set_index(["device",
                                                                                                       "stage"])
    dec = priced.xs("decode", level="stage")["speedup"]
    pre = priced.xs("prefill", level="stage")["speedup"]
    assert dec.iloc[0] == pytest.approx(dec.iloc[1], rel=1e-3) and dec.min() > 1.5  # "bytes are bytes"
    assert pre.max() < 1.1 and pre["NVIDIA B200 (HGX)"] > pre["NVIDIA H100 SXM"]  # small, larger where native
    a = uv.analyze("smollm2-135m", "b200", stage="prefill", batch=32, seq_len=256).ops
    linear = a[a.op.str.endswith("_proj")]["total_time_s"].sum()
    assert linear / a["total_time_s"].sum() < 0.5  # prefill time is not in the matrix products
    # budgets compound: the loosest budget ends worse than one NVFP4 for every layer, at fewer bits
    assert mix.perplexity.iloc[-1] > wa.loc["W NVFP4 · A NVFP4", "perplexity"]
    assert mix.bits_per_weight.iloc[-1] < wa.loc["W NVFP4 · A NVFP4", "linear_bits"]
    assert list(mix.perplexity) == sorted(mix.perplexity) and list(mix.bits_per_weight) == sorted(
        mix.bits_per_weight, reverse=True)
    for budget in (0.002, 0.01):  # takeaway: most parameters in 4-6 bits, some layers keep 8 or 16
        s = fc.choice_summary(fc.choose_formats(errors, budget)).set_index("format")["params_share"]
        low = s[[f for f in s.index if f in ("MXFP4", "NVFP4", "MXFP6")]].sum()
        high = s[[f for f in s.index if f in ("FP8 E4M3", "MXFP8", "BF16")]].sum()
        assert low > 0.5 and high > 0


def test_summary_claims():
    assert math.isclose(F.bits_per_element("mxfp4") - 4, 0.25) and math.isclose(F.bits_per_element("nvfp4") - 4, 0.5)
    s1 = acc.pim_step_summary(acc.pim_decode_table("llama-2-7b", batch=1, seq_len=2048))
    s16 = acc.pim_step_summary(acc.pim_decode_table("llama-2-7b", batch=16, seq_len=2048))
    assert s1.all_pim_speedup > 3 > s16.hybrid_speedup > 1
