"""unveiled.quant beyond the quantizers: the roofline use case, the methods map, real kernels, Q-PEFT, charts,
explorers, and the cached experiments against a live rerun."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

import unveiled as uv
from unveiled import quant as uq
from unveiled.models import Decoder, DecoderConfig
from unveiled.plots import quant as qplots

TINY = DecoderConfig(vocab_size=65, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=352, name="test-tiny")


# ---------------------------------------------------------------------------------------------------
# The roofline use case (survey §3.1.1)
# ---------------------------------------------------------------------------------------------------


def test_compute_roof_only_for_all_low_bit_operands():
    t = uq.compute_roof_table("llama-2-13b", "a6000", conventions="paper").set_index(["stage", "setting"])
    assert t.loc[("prefill", "W8"), "gemm_dtype"] == "fp16"
    assert t.loc[("prefill", "W8A8"), "gemm_dtype"] == "int8"
    # compute-bound prefill: weight-only bits change nothing, INT8 compute doubles the speed (310 vs 155 TOP/s)
    assert t.loc[("prefill", "W8"), "speedup_vs_fp16"] == pytest.approx(1.0, abs=0.01)
    assert t.loc[("prefill", "W8A8"), "speedup_vs_fp16"] == pytest.approx(2.0, abs=0.02)
    # memory-bound decode: every byte saved counts, whatever the compute unit
    assert 1.8 < t.loc[("decode", "W8"), "speedup_vs_fp16"] <= 2.0
    assert t.loc[("decode", "W4"), "speedup_vs_fp16"] > t.loc[("decode", "W8"), "speedup_vs_fp16"]


def test_three_memory_access_cases():
    c = uq.memory_access_cases("llama-2-13b", "a6000", op="q_proj", conventions="paper")
    by = {case: g.set_index("w_bits") for case, g in c.groupby("case")}
    one, two, three = (by[k] for k in sorted(by))
    assert list(one["bound"]) == ["memory", "memory"] and one.loc[4, "speedup"] > 3.5
    assert list(two["bound"]) == ["memory", "compute"] and 1.0 < two.loc[4, "speedup"] < one.loc[4, "speedup"]
    assert list(three["bound"]) == ["compute", "compute"]
    assert three.loc[4, "speedup"] == pytest.approx(1.0, abs=1e-9)
    assert (c.groupby("case")["intensity"].apply(lambda s: s.iloc[1] > s.iloc[0])).all()


def test_w4a16_speedup_decays_to_one_as_the_batch_grows():
    sp = uq.w4a16_speedup_vs_batch("llama-2-13b", "a6000", seq_len=1024)
    assert sp.speedup.iloc[0] > 3
    assert np.all(np.diff(sp.speedup.to_numpy()) <= 1e-9)
    assert sp.speedup.iloc[-1] == pytest.approx(1.0, abs=1e-6)


def test_weights_of_a_70b_model_at_w4_g128_match_the_quantizers_storage():
    m = uv.model_spec("llama-2-70b")
    w4 = uv.analyze(m, "a6000", stage="decode", seq_len=1, w_bits=4, group_size=128).memory.weights
    spec = uq.QuantSpec(4, granularity="group", group_size=128, zero_point="float")  # fp16 scale and zero
    parts = m.param_breakdown()
    lin = parts[parts.storage == "linear"]
    h = m.hidden_size
    expected = sum(int(r.count) * uq.storage_bytes((int(r.params) // h, h), spec) for r in lin.itertuples())
    expected += 2 * int(parts[parts.storage != "linear"].total.sum())  # embedding, head and norms in fp16
    assert w4 == pytest.approx(expected, rel=1e-12)
    assert uq.bits_per_weight(spec) == 4.25


def test_operator_bounds_grid_and_decode_prediction():
    ob = uq.operator_bounds("tiny-s", "a6000", batches=(1,), seq_lens=(64,), w_bits=(16,), a_bits=(16,),
                            kv_bits=(16,))
    assert set(ob.stage) == {"prefill", "decode"}
    assert (ob[ob.stage == "decode"].bound == "memory").all()
    t16 = uq.predicted_decode_time("smollm2-135m", "a6000", w_bits=16)
    t4 = uq.predicted_decode_time("smollm2-135m", "a6000", w_bits=4, head_bits=4)
    assert t4 < t16 / 2


# ---------------------------------------------------------------------------------------------------
# The survey's map of methods (Fig. 10)
# ---------------------------------------------------------------------------------------------------


def _bib_keys() -> set[str]:
    from conftest import ROOT

    return set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "references.bib").read_text(), flags=re.M))


def test_methods_map_is_complete_and_every_method_is_cited():
    df = uq.quant_methods()
    assert len(df) == 43 and df.method.is_unique
    assert set(df.figure_class) == {"PTQ", "QAT", "Q-PEFT"}
    assert sorted(df.loc[df.boxed, "method"]) == ["AWQ", "GPTQ", "LLM.int8()"]
    assert set(df.loc[df.figure_class == "Q-PEFT", "method"]) == {"QLoRA", "QA-LoRA", "QFT", "LoftQ", "LQ-LoRA"}
    assert set(df.loc[df.figure_class == "QAT", "method"]) == {"LLM-QAT", "TSLD", "PB-LLM"}
    assert df.date.min() == pd.Timestamp("2022-07-01") and df.date.max() == pd.Timestamp("2024-01-01")
    missing = set(df.cite_key) - _bib_keys()
    assert not missing, f"methods without a references.bib entry: {missing}"
    assert df.arxiv.str.fullmatch(r"\d{4}\.\d{5}").all()
    with pytest.raises(ValueError, match="figure_class must be one of"):
        uq.quant_methods("QAT-ish")


def test_chapter_cites_every_method_of_the_map():
    from conftest import ROOT, cell_source, load_nb

    nb = load_nb(ROOT / "chapters" / "03_quantization.ipynb")
    text = "\n".join(cell_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    cited = set(re.findall(r"\{cite\}`([^`]+)`", text))
    cited = {k.strip() for group in cited for k in group.split(",")}
    assert set(uq.quant_methods().cite_key) <= cited
    assert cited <= _bib_keys()


# ---------------------------------------------------------------------------------------------------
# Real low-bit kernels
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [uq.Int8WeightOnlyLinear, uq.Int4WeightOnlyLinear])
def test_lowbit_kernels_agree_with_their_reference_and_the_weights(cls):
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(256, 96, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 256, generator=gen) * 0.05)
    x = torch.randn(3, 5, 256, generator=gen)
    fast, ref = cls(lin), cls(lin, use_kernel=False)
    assert not ref.use_kernel
    y_fast, y_ref = fast(x), ref(x)
    assert y_fast.shape == (3, 5, 96) and y_fast.dtype == x.dtype
    scale = float(y_ref.abs().max())
    assert (y_fast - y_ref).abs().max() <= 0.02 * scale  # both round to bf16, in a different order
    exact = lin(x).detach()
    tol = 0.02 if cls is uq.Int8WeightOnlyLinear else 0.15  # 8-bit vs 4-bit weights
    assert (y_ref - exact).abs().max() <= tol * float(exact.abs().max())
    fp16_bytes = 2 * lin.weight.numel()
    assert fast.nbytes < fp16_bytes * (0.52 if cls is uq.Int8WeightOnlyLinear else 0.3)


def test_int4_kernel_layout_matches_the_library_quantizer():
    lin = torch.nn.Linear(128, 64, bias=False)
    m = uq.Int4WeightOnlyLinear(lin, group_size=32, use_kernel=False)
    expect = uq.fake_quantize(lin.weight.detach(), uq.QuantSpec(4, granularity="group", group_size=32))
    assert torch.allclose(m.dequantized(torch.float32), expect, atol=2e-2 * float(expect.abs().max()))
    with pytest.raises(ValueError, match="group_size must be one of"):
        uq.Int4WeightOnlyLinear(lin, group_size=48)


def test_lowbit_model_decodes_the_same_text_as_bf16_with_int8_weights():
    model = Decoder(TINY, seed=3).eval()
    prompt = torch.randint(0, 65, (12,), generator=torch.Generator().manual_seed(0))
    bf16 = uq.lowbit_model(model, "bf16")
    int8 = uq.lowbit_model(model, "int8")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    assert isinstance(int8.lm_head, uq.Int8WeightOnlyLinear)
    with torch.inference_mode():
        a, b = bf16(prompt[None]).float(), int8(prompt[None]).float()
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    speed = uq.decode_speed(int8, prompt, new_tokens=3, warmup=1)
    assert speed["time_per_token_s"] > 0 and speed["tokens_per_s"] > 0
    with pytest.raises(ValueError, match="kind must be one of"):
        uq.lowbit_model(model, "int3")


# ---------------------------------------------------------------------------------------------------
# Q-PEFT
# ---------------------------------------------------------------------------------------------------


def test_lora_starts_at_the_base_model_trains_only_adapters_and_lowers_the_loss():
    model = Decoder(TINY, seed=3)
    q = uq.quantize_model(model, uq.QuantSpec(3, granularity="group", group_size=32))
    tok = torch.randint(0, 65, (1, 32))
    before = q(tok)
    names = uq.add_lora(q, rank=4)
    assert len(names) == 14
    assert torch.allclose(q(tok), before, atol=1e-6)  # B = 0: the adapters start as the identity
    trainable = [n for n, p in q.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    frozen = {n: p.detach().clone() for n, p in q.named_parameters() if not p.requires_grad}
    text = torch.arange(2000) % 13  # a periodic sequence an adapter can learn
    log = uq.lora_finetune(q, text, steps=40, batch_size=4, seq_len=32, lr=1e-2)
    assert log.loss.iloc[-5:].mean() < log.loss.iloc[:5].mean()
    assert all(torch.equal(p, frozen[n]) for n, p in q.named_parameters() if n in frozen)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        uq.lora_finetune(Decoder(TINY, seed=1), text, steps=1)


# ---------------------------------------------------------------------------------------------------
# Recipes, charts and explorers
# ---------------------------------------------------------------------------------------------------


def test_recipes_validate_and_describe_themselves():
    with pytest.raises(ValueError, match="method must be one of"):
        uq.Recipe("x", "gptq2", uq.QuantSpec(4))
    with pytest.raises(ValueError, match="needs a weights"):
        uq.Recipe("x", "rtn")
    r = uq.Recipe("W4A4", "rtn", uq.QuantSpec(4, symmetric=True), uq.QuantSpec(4, symmetric=True,
                                                                                granularity="token"), rotate=True)
    d = r.describe()
    assert (d["w_bits"], d["a_bits"], d["act_granularity"], d["rotate"]) == (4, 4, "token", True)
    with pytest.raises(ValueError, match="needs calibration"):
        uq.Recipe("g", "gptq", uq.QuantSpec(4)).apply(Decoder(TINY, seed=0))


def test_run_recipes_on_a_small_model():
    model = Decoder(TINY, seed=2).eval()
    tokens = uq.eval_tokens("tiny", 600)
    recipes = [uq.Recipe("FP", "none"), uq.Recipe("int8", "rtn", uq.QuantSpec(8)),
               uq.Recipe("int2", "rtn", uq.QuantSpec(2))]
    df = uq.run_recipes(model, recipes, tokens, 256, progress=False)
    assert list(df.label) == ["FP", "int8", "int2"]
    assert df.delta_pct.iloc[0] == 0
    assert df.size_bytes.iloc[2] < df.size_bytes.iloc[1] < df.size_bytes.iloc[0]
    assert abs(df.delta_pct.iloc[1]) < abs(df.delta_pct.iloc[2])
    live = uq.perplexities(model, tokens, 256)
    assert live["perplexity"] == pytest.approx(df.perplexity.iloc[0], rel=1e-9)


def test_tradeoff_grid_matches_analyze_and_the_chart_stays_small():
    grid, ops = qplots.tradeoff_grid("llama-2-13b", ("a6000",), batches=(1, 64), seq_lens=(512,),
                                             w_bits=(16, 4), a_bits=(16, 8), kv_bits=(16,))
    assert len(grid) == 2 * 2 * 2 * 2
    for r in grid.sample(5, random_state=0).itertuples():
        a = uv.analyze("llama-2-13b", "a6000", stage={"p": "prefill", "d": "decode"}[r.st], batch=int(r.b),
                       seq_len=int(r.s), w_bits=int(r.w), a_bits=int(r.a), kv_bits=int(r.kv))
        assert r.ms == pytest.approx(1e3 * a.time_s, rel=1e-3)
        assert r.bound == "".join(b[0] for b in a.ops.set_index("op").loc[ops, "bound"])
    full = qplots.tradeoff_grid("llama-2-13b", ("a6000", "h100-sxm"))
    chart = qplots.tradeoff_explorer_chart(full, ("a6000", "h100-sxm"))
    import json

    assert len(json.dumps(chart.to_dict(), separators=(",", ":"))) < 300_000  # keeps the page light


def test_charts_build_from_library_tables():
    qp = qplots
    errors = uq.error_table(torch.randn(8, 64), [uq.QuantSpec(b) for b in (2, 4, 8)])
    assert errors.mse.is_monotonic_decreasing
    qp.error_vs_bits_chart(errors).to_dict()
    qp.methods_timeline_chart(uq.quant_methods()).to_dict()
    qp.decode_speed_chart(pd.DataFrame({"kind": ["fp32", "int8"], "measured_s": [0.02, 0.01],
                                        "predicted_s": [0.015, 0.004]})).to_dict()


def test_live_explorer_recomputes():
    from unveiled.explorers.quant import quant_explorer

    box = quant_explorer("llama-2-7b", "a6000", w_bits=4)
    controls = box.children[0]
    table = box.children[1]

    def decode_speedup(w_bits: int) -> str:
        fp16 = uv.analyze("llama-2-7b", "a6000", stage="decode", seq_len=1024)
        low = uv.analyze("llama-2-7b", "a6000", stage="decode", seq_len=1024, w_bits=w_bits)
        return f"<b>{fp16.time_s / low.time_s:.2f}×</b>"

    assert decode_speedup(4) in table.value
    controls.children[1].children[1].value = 8  # weight bits
    assert decode_speedup(8) in table.value and decode_speedup(4) not in table.value
    assert "speedup" in table.value


# ---------------------------------------------------------------------------------------------------
# The cached experiments, rerun live for a small setting
# ---------------------------------------------------------------------------------------------------


def test_cached_tables_have_their_provenance():
    for name in ("quant.smollm2_rtn", "quant.smollm2_methods", "quant.smollm2_activations",
                 "quant.smollm2_gptq_layers", "quant.tiny_sweep", "quant.tiny_qlora"):
        df = uv.results.cached(name)
        prov = df.attrs["provenance"]
        assert prov["command"] == f"python -m unveiled.results run {name}" and prov["rows"] == len(df)


def test_cached_smollm2_row_matches_a_live_rerun():
    # Same windows, same code: only the batching of windows differs (8 per forward in the sweep, 2 live),
    # which changes fp32 rounding of the logits by ~1e-6 relative; 1e-4 on the perplexity is far above that.
    smol = uv.smollm2.load_smollm2(progress=False)
    rtn = uv.results.cached("quant.smollm2_rtn").set_index("label")
    assert uq.live_perplexity(smol) == pytest.approx(rtn.loc["FP (Q4_1 dequantized)", "perplexity_live"], rel=1e-4)
    q = uq.quantize_model(smol, uq.QuantSpec(4))
    assert uq.live_perplexity(q) == pytest.approx(rtn.loc["RTN int4 per-channel", "perplexity_live"], rel=1e-4)


def test_cached_tiny_row_matches_a_live_rerun():
    s = uv.zoo.load("S")
    tiny = uv.results.cached("quant.tiny_sweep").set_index(["model", "label"])
    assert uq.live_perplexity(s, "tiny") == pytest.approx(tiny.loc[("tiny-s", "FP"), "perplexity_live"], rel=1e-4)
    q = uq.quantize_model(s, uq.QuantSpec(3))
    assert uq.live_perplexity(q, "tiny") == pytest.approx(tiny.loc[("tiny-s", "RTN int3 per-channel"),
                                                                   "perplexity_live"], rel=1e-4)


def test_cached_results_say_what_the_chapter_says():
    rtn = uv.results.cached("quant.smollm2_rtn").set_index("label")
    fp = rtn.loc["FP (Q4_1 dequantized)", "perplexity"]
    assert abs(rtn.loc["RTN int4 g32, float minimum (Q4_1 grid)", "delta_pct"]) < 1e-6  # the shipped grid
    assert abs(rtn.loc["RTN int8 per-channel", "delta_pct"]) < 3
    assert 1.4 < rtn.loc["RTN int4 per-channel", "perplexity"] / fp < 3.0  # "roughly doubles"
    assert rtn.loc["RTN int4 g32", "perplexity"] < rtn.loc["RTN int4 per-channel", "perplexity"]
    layers = uv.results.cached("quant.smollm2_gptq_layers")
    assert len(layers) == 210 and layers.gptq_error.sum() < layers.rtn_error.sum()
    methods = uv.results.cached("quant.smollm2_methods").set_index("label")
    for gran in ("per-channel", "g64"):
        assert methods.loc[f"GPTQ int3 {gran}", "perplexity"] < methods.loc[f"RTN int3 {gran}", "perplexity"]
    # Section 3.5's computed paragraph compares these; the comparisons it words as facts must hold
    acts = uv.results.cached("quant.smollm2_activations").set_index("label").perplexity
    assert acts["W8A8 per-token"] / acts["FP (Q4_1 dequantized)"] < 1.1 < acts["W8A8 per-tensor"] / acts["FP (Q4_1 dequantized)"]
    assert acts["SmoothQuant a=0.5 W8A8 per-tensor"] < acts["W8A8 per-tensor"]
    assert acts["W16A4 per-token"] > 10 * acts["W4A16 per-channel sym"]
    assert acts["Rotated W16A4"] < acts["W16A4 per-token"] / 10
    assert acts["Rotated W4A4 + GPTQ"] < acts["Rotated W4A4"] < acts["W4A4"]
    assert acts["Rotated W4A16"] > acts["W4A16 per-channel sym"]
    assert acts["Rotated FP"] == pytest.approx(acts["FP (Q4_1 dequantized)"], rel=1e-5)
    # Section 3.8: LoRA on a frozen low-bit base repairs part of the quantization loss, not the FP model
    qlora = uv.results.cached("quant.tiny_qlora").set_index("base")
    for base in ("int3 g32", "int2 g32"):
        assert qlora.perplexity_before["FP"] < qlora.perplexity_after[base] < qlora.perplexity_before[base]
    assert qlora.perplexity_after["FP"] > 0.99 * qlora.perplexity_before["FP"]


def test_outlier_profiles_transform_only_the_blocks_before_the_layer():
    # The profile of block 0's input must not depend on the blocks after it: the first-blocks view that
    # outlier_profiles transforms gives the same input statistics as the whole model, and the model is untouched.
    from unveiled.quant.experiments import _first_blocks
    from unveiled.quant.layers import collect_input_stats

    model = uv.zoo.load("S")
    tokens = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    view = _first_blocks(model, 1)
    assert len(view.layers) == view.config.num_layers == 1 < len(model.layers) == model.config.num_layers
    name = "layers.0.self_attn.q_proj"
    full = collect_input_stats(model, tokens, [name])[name]["absmax"]
    assert torch.equal(collect_input_stats(view, tokens, [name])[name]["absmax"], full)
    profiles = uq.outlier_profiles(model, tokens, layer=name)
    assert set(profiles["transform"]) == {"as is", "SmoothQuant (α = 0.5)", "Hadamard rotation"}
    assert torch.equal(torch.as_tensor(profiles[profiles["transform"] == "as is"].absmax.to_numpy().copy()),
                       torch.sort(full, descending=True).values)
    with pytest.raises(ValueError, match="blocks"):
        uq.outlier_profiles(model, tokens, layer=f"layers.{model.config.num_layers}.self_attn.q_proj")
