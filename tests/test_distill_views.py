"""Distillation's roofline view, tables, charts and explorer: right numbers, small pages, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import unveiled as uv
from unveiled import distill as d
from unveiled.models import Decoder, DecoderConfig
from unveiled.plots import distill as charts


@pytest.fixture(scope="module")
def costs():
    return d.teacher_student_costs(devices=("a6000", "l4"), batches=(1, 8, 64), seq_lens=(1024, 2048))


@pytest.fixture(scope="module")
def limits():
    return d.teacher_student_limits(devices=("a6000", "l4"), seq_lens=(1024, 2048))


def spec_size(chart) -> int:
    return len(json.dumps(chart.to_dict(), separators=(",", ":")))


def test_teacher_student_costs_equal_the_analyzer(costs):
    row = costs.query("model == 'llama-2-7b' and device == 'a6000' and batch == 8 and seq_len == 2048").iloc[0]
    gen = uv.estimate_generation("llama-2-7b", "a6000", batch=8, prompt_len=2048, gen_len=2)
    dec = uv.analyze("llama-2-7b", "a6000", stage="decode", batch=8, seq_len=2048)
    assert row.tpot_s == pytest.approx(dec.time_s, rel=1e-12)
    assert row.ttft_s == pytest.approx(gen.ttft_s, rel=1e-12)
    assert row.memory_bytes == pytest.approx(dec.memory.total, rel=1e-12)
    assert set(costs.role) == {"teacher", "student"} and set(costs.pair) == set(d.PAIRS)


def test_students_are_faster_smaller_and_fit_larger_batches(costs, limits):
    wide = costs.pivot_table(index=["pair", "device", "batch", "seq_len"], columns="role", values="tpot_s")
    assert (wide.student < wide.teacher).all()
    lim = limits.pivot_table(index=["pair", "device", "seq_len"], columns="role", values=["max_batch", "weights_bytes"])
    assert (lim["max_batch"].student >= lim["max_batch"].teacher).all()
    assert (lim["weights_bytes"].student < lim["weights_bytes"].teacher).all()
    # memory-bound decode at batch 1: the speedup is close to the ratio of bytes read
    one = costs.query("batch == 1 and device == 'a6000' and seq_len == 1024").set_index(["pair", "role"])
    for pair in d.PAIRS:
        speed = one.tpot_s[(pair, "teacher")] / one.tpot_s[(pair, "student")]
        bytes_ratio = one.memory_bytes[(pair, "teacher")] / one.memory_bytes[(pair, "student")]
        assert speed == pytest.approx(bytes_ratio, rel=0.25), pair


def test_max_batch_is_the_analyzer_s(limits):
    row = limits.query("model == 'llama-2-13b' and device == 'a6000' and seq_len == 2048").iloc[0]
    assert row.max_batch == uv.max_batch("llama-2-13b", "a6000", seq_len=2048)


def test_pairs_accept_names_tuples_and_reject_typos():
    df = d.teacher_student_costs(pairs=[("qwen2.5-7b", "qwen2.5-0.5b")], devices=("a6000",), batches=(1,),
                                 seq_lens=(512,))
    assert list(df.pair.unique()) == ["qwen2.5-7b → qwen2.5-0.5b"]
    with pytest.raises(ValueError, match="Did you mean"):
        d.teacher_student_costs(pairs=["Llama-2 13B → 7"], devices=("a6000",))


def test_static_explorer_and_speedup_charts_stay_small(costs, limits):
    chart = charts.teacher_student_explorer_chart(costs, limits)
    spec = chart.to_dict()
    names = {p["name"] for p in spec["params"]}
    assert {"pair", "device", "ctx"} <= names
    assert spec_size(chart) < 60_000
    full = charts.teacher_student_explorer_chart(d.teacher_student_costs(), d.teacher_student_limits())
    assert spec_size(full) < 250_000  # the chapter's page must stay under 1 MB
    assert spec_size(charts.speedup_chart(costs, "a6000", 2048)) < 30_000


def test_divergence_chart_has_a_beta_slider_and_is_small():
    fits = d.bimodal_fit(("forward_kl", "reverse_kl", "jsd"), betas=(0.0, 0.5, 1.0), separation=8.0, steps=30)
    chart = charts.divergence_fit_chart(fits)
    spec = chart.to_dict()
    assert any(p.get("name") == "beta" for p in spec.get("params", []))
    assert spec_size(chart) < 40_000


def test_cost_points_place_runs_by_measured_ratios():
    curves = pd.DataFrame([
        {"run": r, "step": s.settings.steps, "val_loss": 2.0 - 0.01 * i}
        for i, (r, s) in enumerate(d.TINY_RUNS.items())])
    costs = pd.DataFrame({"mode": ["plain", "live teacher", "cached top-k", "teacher pass (cache build)"],
                          "ratio_to_plain": [1.0, 2.5, 1.1, 1.2]})
    pts = d.cost_points(curves, costs, shared_by=4).set_index("run")
    assert pts.cost_plain_steps["data-400"] == 1.0 and pts.cost_plain_steps["data-800"] == 2.0
    assert pts.cost_plain_steps["fkl-online"] == pytest.approx(2.5)
    assert pts.cost_plain_steps["fkl (cache: own)"] == pytest.approx(1.1 + 1.2)
    assert pts.cost_plain_steps["fkl (cache: shared)"] == pytest.approx(1.1 + 0.3)
    assert "seqkd" not in pts.index and "gkd (cache: own)" not in pts.index
    # data-400 (cost 1, loss 2.0) and data-800 (cost 2, loss 1.99): the frontier in between is linear
    assert pts.data_frontier["fkl (cache: shared)"] == pytest.approx(2.0 - 0.01 * 0.4)
    assert np.isnan(pts.data_frontier["fkl-online"])
    chart = charts.cost_quality_chart(pts.reset_index())
    assert spec_size(chart) < 20_000


def tiny(layers, name):
    cfg = DecoderConfig(vocab_size=11, hidden_size=16, num_layers=layers, num_heads=2, num_kv_heads=1,
                        intermediate_size=32, max_seq_len=64, name=name)
    return Decoder(cfg, seed=0)


def test_model_table_counts_bytes():
    t = d.model_table({"a": tiny(1, "a"), "b": tiny(2, "b")}).set_index("model")
    assert t.loc["b", "weights_bytes_fp16"] == 2 * tiny(2, "b").num_parameters()
    assert t.loc["b", "kv_bytes_per_token_fp16"] == 2 * 2 * 2 * 1 * 8


def test_next_token_table_lists_top_tokens():
    from unveiled.text import CharTokenizer

    tok = CharTokenizer("abcdefghijk")
    table = d.next_token_table({"m": tiny(1, "m")}, tok, "abc", k=3)
    assert table.shape == (3, 1) and all(cell.startswith("'") for cell in table.m)


def test_decode_on_this_machine_puts_measurement_next_to_prediction():
    dev = uv.define_device("test-cpu", bandwidth_gb_s=50.0, peaks_tflops={"fp32": 1.0}, kind="cpu", register=False)
    out = d.decode_on_this_machine({"one": tiny(1, "one")}, dev, context=8, new_tokens=4, repeats=1)
    row = out.iloc[0]
    assert row.measured_tpot_s > 0 and row.predicted_tpot_s > 0
    assert row.overhead_factor == pytest.approx(row.measured_tpot_s / row.predicted_tpot_s)


def test_live_explorer_builds_and_updates():
    from unveiled.explorers.distill import teacher_student_explorer, teacher_student_table

    html = teacher_student_table("llama-2-13b", "llama-2-7b", "a6000", batch=1, context=2048)
    assert "llama-2-7b" in html and "faster per step" in html
    box = teacher_student_explorer()
    preset = box.children[0].children[0].children[0].children[1]
    preset.value = "Qwen3 8B → 0.6B"
    assert "qwen3-0.6b" in box.children[1].value
    with pytest.raises(ValueError, match="Did you mean"):
        teacher_student_explorer(teacher="llama-2-13")


def test_acceptance_chart_and_curves_chart_render():
    report = pd.DataFrame({"student": ["a", "b", "teacher"], "method": ["data only", "forward KL", "teacher"],
                           "acceptance_samples": [0.6, 0.7, 1.0]})
    assert spec_size(charts.acceptance_chart(report)) < 10_000
    curves = pd.DataFrame({"run": ["data-400"] * 2, "step": [100, 200], "val_loss_16k": [2.5, np.nan]})
    assert spec_size(charts.curves_chart(curves, {"data-400": "data only"})) < 10_000
