"""Chapter 3's claims: every judging word of its Takeaways, Summary, captions and computed paragraphs, asserted
against the cached SmolLM2 and tiny-model tables or the library (tests/claims.py explains the registry)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import unveiled as uv
from claims import claim
from unveiled import quant as uq
from unveiled.analyzer import survey

PAGE = "chapters/03_quantization.ipynb"


@pytest.fixture(scope="module")
def rtn():
    return uv.results.cached("quant.smollm2_rtn").set_index("label").delta_pct


@pytest.fixture(scope="module")
def acts():
    return uv.results.cached("quant.smollm2_activations").set_index("label").delta_pct


@pytest.fixture(scope="module")
def recovered():
    table = uq.loss_recovered(uv.results.cached("quant.smollm2_methods"))
    return table.set_index(["method", "w_bits", "granularity"])


@pytest.fixture(scope="module")
def tiny():
    return uv.results.cached("quant.tiny_sweep").set_index(["model", "label"]).delta_pct


def test_loss_recovered_measures_the_share_of_the_reference_loss():
    table = pd.DataFrame({"method": ["none", "rtn", "gptq", "awq", "rtn", "gptq"],
                          "w_bits": [16, 4, 4, 4, 3, 3], "granularity": [""] + ["channel"] * 5,
                          "perplexity": [10.0, 20.0, 15.0, 25.0, 50.0, 10.0]})
    out = uq.loss_recovered(table).set_index(["method", "w_bits"]).recovered_pct
    assert out["gptq", 4] == pytest.approx(50) and out["awq", 4] == pytest.approx(-50)
    assert out["gptq", 3] == pytest.approx(100)
    with pytest.raises(ValueError, match="reference"):
        uq.loss_recovered(table, reference="smoothquant")
    with pytest.raises(ValueError, match="unquantized"):
        uq.loss_recovered(table[table.method != "none"])


@claim(PAGE, "its error is at most half a step", "round-to-nearest errs by at most half a step")
def test_round_to_nearest_errs_by_at_most_half_a_step():
    """(tests/test_quant.py checks the bound as a property over random shapes; here, the chapter's settings.)"""
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for groups, spec in ((1, uq.QuantSpec(4)), (8, uq.QuantSpec(3, granularity="group", group_size=32)),
                         (1, uq.QuantSpec(8, symmetric=True))):
        qt = uq.quantize(w, spec)
        err = (uq.dequantize(qt, torch.float64) - w).abs().reshape(64, groups, -1)
        assert (err <= qt.scale / 2 * (1 + 1e-9)).all(), spec
        assert err.max() > qt.scale.min() / 4  # the bound is attained in size, not vacuous


@claim(PAGE, "The INT8 roof doubles the attainable performance of compute-bound operators",
       "moves the ridge point from about 200 to about 400 operations per byte")
def test_the_a6000_int8_roof_doubles_fp16():
    a6000 = uv.get_device("a6000", preset="llm-viewer")
    assert a6000.peak("int8") == pytest.approx(2 * a6000.peak("fp16"), rel=1e-3)
    assert abs(a6000.ridge_point("fp16") - 200) < 10 and abs(a6000.ridge_point("int8") - 400) < 20


@claim(PAGE, "At 10k tokens the weights are most of the memory and W4KV4 nearly quarters it",
       "from 50k tokens on the KV cache is most of it")
def test_figure_11_weights_then_kv_cache():
    f = survey.figure11_data("exact")
    total = f.groupby(["seq_len", "setting"]).relative.sum()
    part = f.set_index(["seq_len", "setting", "part"]).relative
    assert part[10_000, "FP16", "Weight"] > 0.5
    assert 0.25 < total[10_000, "W4KV4"] < 0.3  # "nearly quarters"
    for tokens in (50_000, 200_000):
        assert part[tokens, "FP16", "KV cache"] > 0.5


@claim(PAGE, "On SmolLM2, 8-bit weights are free, 4-bit weights per channel are expensive, and groups of 32–64 win "
             "back more than half of that loss; below 4 bits round-to-nearest more than doubles perplexity",
       "8-bit weights are free and 4-bit per-channel RTN is costly; groups of 32–64 win back more than half of "
       "that loss")
def test_rtn_on_smollm2(rtn):
    table = uv.results.cached("quant.smollm2_rtn")
    int8 = table[table.w_bits == 8].delta_pct
    assert int8.abs().max() < 0.5  # "free": within the evaluation's resolution
    assert rtn["RTN int4 per-channel"] > 50  # "expensive", "costly"
    for g in ("g64", "g32"):  # "win back more than half of that loss"
        assert rtn[f"RTN int4 {g}"] < rtn["RTN int4 per-channel"] / 2
    assert (table[table.w_bits < 4].delta_pct > 100).all()  # "more than doubles perplexity, even in groups of 32"


@claim(PAGE, "winning back {} % and {} % of the loss")
def test_groups_win_back_part_of_the_4_bit_loss(rtn):
    assert 0 < rtn["RTN int4 g64"] < rtn["RTN int4 per-channel"]
    assert 0 < rtn["RTN int4 g32"] < rtn["RTN int4 per-channel"]


@claim(PAGE, "Measured against what round-to-nearest loses at the same setting, GPTQ recovers {}", "AWQ recovers {}")
def test_gptq_and_awq_recover_part_of_the_rtn_loss(recovered):
    assert (recovered.reference_loss > 0).all()  # RTN loses at every setting
    assert recovered.recovered_pct.between(0, 100).all()  # "recovers": a positive share, never all of it


@claim(PAGE, "on SmolLM2 they recover between a quarter and two thirds of what round-to-nearest loses at 3–4 bits, "
             "GPTQ more than AWQ in every setting",
       "GPTQ and AWQ recover between a quarter and two thirds of what RTN loses at 3–4 bits")
def test_gptq_and_awq_recover_a_quarter_to_two_thirds(recovered):
    share = recovered.recovered_pct
    assert share.between(25, 200 / 3).all(), share
    for (method, bits, g), pct in share.items():
        if method == "awq":
            assert share["gptq", bits, g] > pct


@claim(PAGE, "brings the per-tensor cost to {} %: it helps, but a per-tensor scale still hurts on SmolLM2",
       "Activation outliers make per-tensor and 4-bit activation quantization costly",
       "Activation outliers make W8A8 per-tensor and W4A4 costly: smoothing (SmoothQuant) and separating them "
       "(LLM.int8()) help at 8 bits")
def test_activation_outliers_on_smollm2(acts):
    assert acts["W8A8 per-token"] < 5 < 50 < acts["W8A8 per-tensor"]  # per-tensor scales are costly
    assert acts["W16A4 per-token"] > 100 * acts["W4A16 per-channel sym"] / 10 > 100  # 4-bit activations too
    assert acts["W4A4"] > 1000
    assert acts["SmoothQuant a=0.5 W8A8 per-tensor"] < acts["W8A8 per-tensor"]  # helps
    assert acts["SmoothQuant a=0.5 W8A8 per-tensor"] > 10 * acts["W8A8 per-token"]  # still hurts
    assert acts["LLM.int8() (threshold 6)"] < 5  # separating the outliers helps


@claim(PAGE, "The Hadamard rotation brings W16A4 to {} %: far less broken, not yet cheap",
       "rotating them (QuaRot) leaves 4-bit activations far less broken but not yet cheap")
def test_rotation_leaves_4_bit_activations_far_less_broken(acts):
    for plain, rotated in (("W16A4 per-token", "Rotated W16A4"), ("W4A4", "Rotated W4A4")):
        assert acts[rotated] < acts[plain] / 10, rotated  # "far less broken"
        assert acts[rotated] > 50, rotated  # "not yet cheap"
    assert 50 < acts["Rotated W4A4 + GPTQ"] < acts["Rotated W4A4"]


@claim(PAGE, "The tiny models lose little at 4 bits, SmolLM2 far more", "The tiny models lose little at 4 bits.")
def test_tiny_models_lose_little_at_4_bits(tiny, rtn):
    for model in ("tiny-s", "tiny-m"):
        for label in ("RTN int4 per-channel", "RTN int4 g32"):
            assert tiny[model, label] < 2, (model, label)
            assert rtn[label] > 10 * tiny[model, label]  # "SmolLM2 far more"


@claim(PAGE, "OmniQuant and INT-FP-QSim appear twice in it and once here")
def test_the_methods_map_lists_each_method_once():
    names = uq.quant_methods().method.tolist()
    for method in ("OmniQuant", "INT-FP-QSim"):
        assert names.count(method) == 1, method


@claim(PAGE, "win back {} % of what the 3-bit base lost and {} % of what the 2-bit base lost")
def test_qlora_adapters_win_back_part_of_the_quantization_loss():
    q = uv.results.cached("quant.tiny_qlora").set_index("base")
    fp = q.perplexity_before["FP"]
    for base in ("int3 g32", "int2 g32"):
        assert q.perplexity_before[base] > fp  # the base lost
        assert fp < q.perplexity_after[base] < q.perplexity_before[base]  # the adapters win part of it back
    assert abs(q.perplexity_after["FP"] / fp - 1) < 0.02  # "do not teach the model anything new"
