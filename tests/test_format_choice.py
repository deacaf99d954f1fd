"""Format sweeps and the per-layer (Transformer-Engine-style) format choice: recipes at equal stored bits, the
runner, per-layer errors against a direct computation, the choice's rules, and applying it to a model."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import unveiled.quant as uq
from unveiled import zoo
from unveiled.quant import format_choice as fc
from unveiled.quant import format_experiments as fe
from unveiled.quant import formats as F


@pytest.fixture(scope="module")
def tiny():
    return zoo.load("S")


def test_labels_name_formats_briefly():
    assert fe.format_label(None) == "FP16"
    assert fe.format_label(uq.QuantSpec(4, symmetric=True, granularity="group", group_size=32)) == "INT4 g32"
    assert fe.format_label(uq.QuantSpec(8, symmetric=True, granularity="token")) == "INT8 token"
    assert fe.format_label(F.get_format("nvfp4")) == "NVFP4"
    assert fe.format_label(F.FormatSpec("fp8_e4m3", "channel", scale="fp16")) == "FP8 E4M3 ch"
    assert fe.format_label(F.get_format("mxfp6_e3m2")) == "MXFP6 E3M2"
    assert fe.format_label(fe._ceil("mxfp4")) == "MXFP4 (ceil scale)"


def test_recipes_compare_formats_at_equal_stored_bits():
    """On SmolLM2's shapes, INT4 g32, FP4 g32 and NVFP4 all store 4.5 bits per weight; MXFP4 4.25 like INT4 g64.
    Every recipe's groups divide SmolLM2's widths (576, 1536)."""
    shape = (576, 1536)
    n = math.prod(shape)
    by = {r.label: r for r in fe.format_weight_recipes("smollm2")}
    bits = {k: 8 * uq.storage_bytes(shape, r.weights) / n for k, r in by.items() if r.weights is not None}
    assert bits["INT4 g32"] == bits["FP4 E2M1 g32"] == 4.5
    assert bits["NVFP4"] == pytest.approx(4.5, abs=1e-4) and bits["MXFP4"] == bits["INT4 g64"] == 4.25
    for r in fe.format_weight_recipes("smollm2") + fe.format_wa_recipes("smollm2"):
        for spec in (r.weights, r.activations):
            if spec is not None and spec.granularity == "group":
                assert 576 % spec.group_size == 0 and 1536 % spec.group_size == 0, r.label
    assert bits["INT8 ch"] == bits["FP8 E4M3 ch"] == pytest.approx(bits["FP6 E2M3 ch"] + 2)
    assert {r.label for r in fe.format_weight_recipes("tiny")}.isdisjoint({"INT4 g64", "INT8 g64"})
    for r in fe.format_weight_recipes("tiny") + fe.format_wa_recipes("tiny"):
        for spec in (r.weights, r.activations):
            if spec is not None and spec.granularity == "group":
                assert all(w % spec.group_size == 0 for w in (128, 192, 352, 512)), r.label
    wa = fe.format_wa_recipes()
    assert all(r.activations is not None for r in wa[1:]) and wa[0].method == "none"


def test_runner_measures_the_bits_it_stores(tiny):
    recipes = [r for r in fe.format_weight_recipes("tiny") if r.label in ("FP16", "MXFP4", "NVFP4", "INT4 g32")]
    tokens = uq.eval_tokens("tiny", 512)
    df = fe.run_format_recipes(tiny, recipes, tokens, 256).set_index("label")
    assert df.loc["FP16", "delta_pct"] == 0 and df.loc["FP16", "linear_bits"] == 16
    assert df.loc["MXFP4", "linear_bits"] == 4.25 and df.loc["INT4 g32", "linear_bits"] == 4.5
    assert df.loc["NVFP4", "linear_bits"] == pytest.approx(4.5, abs=0.01)  # + one fp32 scale per matrix
    assert (df.loc[["MXFP4", "NVFP4"], "family"] == "block FP (MX/NVFP4)").all()
    live = uq.live_perplexity(uq.quantize_model(tiny, F.get_format("mxfp4")), "tiny")
    assert df.loc["MXFP4", "perplexity"] > 0 and live > 0


def test_layer_errors_match_a_direct_computation(tiny):
    calib = uq.calibration_batch("tiny", num_sequences=2, seq_len=64)
    cands = {"MXFP4": F.get_format("mxfp4"), "BF16": None}
    errors = fe.layer_format_errors(tiny, calib, cands)
    assert len(errors) == 2 * 14 and set(errors["format"]) == {"MXFP4", "BF16"}
    assert (errors.loc[errors["format"] == "BF16", "rel_error"] == 0).all()
    name = "layers.1.mlp.down_proj"
    seen = {}
    layer = tiny.get_submodule(name)
    h = layer.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].reshape(-1, a[0].shape[-1])))
    try:
        tiny.hidden_states(calib)
    finally:
        h.remove()
    xx, w = seen["x"].detach().float(), layer.weight.detach().float()
    y = xx @ w.T
    yq = F.quantize_dequantize(xx, "mxfp4") @ F.quantize_dequantize(w, "mxfp4").T
    want = float((yq - y).pow(2).sum() / y.pow(2).sum())
    got = errors[(errors["layer"] == name) & (errors["format"] == "MXFP4")]["rel_error"].item()
    assert got == pytest.approx(want, rel=1e-5)


def _errors() -> pd.DataFrame:
    rows = []
    for i, (layer, errs) in enumerate({"a": (0.05, 0.02, 0.001), "b": (0.2, 0.1, 0.05), "c": (0.01, 0.03, 0.0)}.items()):
        for fmt, bits, e in zip(("MXFP4", "NVFP4", "MXFP8"), (4.25, 4.5, 8.25), errs, strict=True):
            rows.append({"layer": layer, "block": i, "kind": "q_proj", "format": fmt, "bits_per_weight": bits,
                         "rel_error": e, "params": 100})
    return pd.DataFrame(rows)


def test_choose_formats_takes_the_fewest_bits_within_the_budget():
    e = _errors()
    c = fc.choose_formats(e, 0.02)
    assert list(c["format"]) == ["NVFP4", "BF16", "MXFP4"]  # b: nothing fits -> BF16
    assert list(c["layer"]) == ["a", "b", "c"] and c.loc[1, "bits_per_weight"] == 16.0
    assert list(fc.choose_formats(e, 0.05)["format"]) == ["MXFP4", "MXFP8", "MXFP4"]  # <= budget
    assert list(fc.choose_formats(e, 1.0, candidates=["MXFP8"])["format"]) == ["MXFP8"] * 3
    s = fc.choice_summary(c)
    assert s.attrs["bits_per_weight"] == pytest.approx((4.5 + 16 + 4.25) / 3)
    assert s.set_index("format")["params_share"].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no errors measured"):
        fc.choose_formats(e, 0.1, candidates=["FP6"])
    with pytest.raises(ValueError, match=">= 0"):
        fc.choose_formats(e, -1)
    with pytest.raises(ValueError, match="lacks the columns"):
        fc.choose_formats(e.drop(columns="rel_error"), 0.1)


def test_apply_format_choice_quantizes_weights_and_inputs_per_layer(tiny):
    names = [n for n, m in tiny.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    choice = pd.DataFrame({"layer": names, "format": ["MXFP4" if "mlp" in n else "BF16" for n in names]})
    q = fc.apply_format_choice(tiny, choice)
    down = q.get_submodule("layers.0.mlp.down_proj")
    assert isinstance(down, uq.QuantLinear) and down.act_spec.label == "mxfp4"
    assert isinstance(q.get_submodule("layers.0.self_attn.q_proj"), torch.nn.Linear)
    assert isinstance(tiny.get_submodule("layers.0.mlp.down_proj"), torch.nn.Linear)  # a copy
    with pytest.raises(ValueError, match="no spec"):
        fc.apply_format_choice(tiny, choice.assign(format="FP5"))
