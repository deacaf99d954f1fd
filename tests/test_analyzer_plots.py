"""Charts and the live explorer of Chapter 2: they build, carry the analyzer's numbers and stay small."""

from __future__ import annotations

import json
from html import escape as html_escape

import ipywidgets as w
import pandas as pd
import pytest

import unveiled as uv
from unveiled.analyzer import survey
from unveiled.explorers.analyzer import analyzer_explorer, operator_graph_html, operator_roofline_svg
from unveiled.plots import inference as ip


def spec_size(chart) -> int:
    return len(json.dumps(chart.to_dict()))


@pytest.fixture(scope="module")
def prefill():
    return uv.analyze("llama-2-7b", "a6000", stage="prefill", seq_len=2048)


def test_operator_roofline_chart_draws_every_operator_with_arithmetic(prefill):
    pts = ip._ops_points(prefill)
    drawn = {op for ops in pts.op for op in ops.split(", ")}
    with_flops = set(prefill.ops.op[prefill.ops.flops > 0])
    assert drawn == with_flops
    assert pts.time_share_pct.sum() <= 100 + 1e-9
    assert spec_size(ip.operator_roofline_chart(prefill)) < 20_000


def test_static_explorer_grid_and_chart():
    ops, cfgs = ip.operator_grid("llama-2-7b", devices=("a6000",), batches=(1, 16), seq_lens=(512,),
                                 bits=("W16A16", "W4A16"))
    assert len(cfgs) == 1 * 2 * 2 * 1 * 2 and set(ops.c) == set(cfgs.c)
    row = cfgs.iloc[0]
    a = uv.analyze("llama-2-7b", "a6000", stage=row.stage, batch=int(row.batch), seq_len=int(row.seq_len))
    assert row.ms == pytest.approx(a.time_s * 1e3, abs=1e-4)
    chart = ip.operator_roofline_explorer_chart((ops, cfgs))
    spec = chart.to_dict()
    assert {p["name"] for p in spec["params"]} == {"dev", "stage", "batch", "seq", "bits"}
    full = ip.operator_grid()
    assert spec_size(ip.operator_roofline_explorer_chart(full)) < 150_000  # the page budget is 1 MB


def test_figure_charts_build_and_stay_small():
    charts = [
        ip.memory_bars_chart(survey.figure7_data()),
        ip.memory_bars_chart(survey.figure11_data()),
        ip.time_lines_chart(survey.figure8_data(), "batch"),
        ip.time_lines_chart(survey.figure9_data(), "seq_len", log_x=True),
        ip.serving_chart(survey.figure19_data()),
        ip.serving_chart(survey.figure19_data(("a6000", "h100-sxm"), conventions="exact").query("batch % 8 == 1")),
        ip.bandwidth_chart(survey.figure20_data(), ip.devices_decode_table("llama-2-13b", ["a6000"], seq_len=1024)),
        ip.decode_intensity_chart(survey.decode_intensity_table(), ridge=201.6),
        ip.flash_attention_chart(pd.concat([survey.figure16_data(c).assign(conventions=c) for c in ("paper", "exact")])),
    ]
    for c in charts:
        assert spec_size(c) < 100_000


def test_conventions_chart_and_diff(prefill):
    paper = uv.analyze("llama-2-7b", "a6000", stage="prefill", seq_len=2048, conventions="paper")
    assert spec_size(ip.conventions_chart(prefill, paper)) < 20_000
    diff = survey.conventions_diff("llama-2-7b", "a6000", stage="prefill", seq_len=2048)
    total = diff.set_index("op").loc["total"]
    assert total.time_s_exact == pytest.approx(prefill.time_s) and total.time_s_paper == pytest.approx(paper.time_s)
    assert (diff.why != "").sum() >= len(diff) - 1


def test_errata_rows_are_computed():
    e = survey.errata()
    assert len(e) >= 12 and (e["paper"] > 0).all() and (e["exact"] > 0).all()
    row = e.set_index("item").loc["SwiGLU width"]
    assert row["exact / paper"] == pytest.approx(11008 / 4096)


def widgets_of(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from widgets_of(child)


def test_live_explorer_recomputes_on_every_change():
    ex = analyzer_explorer("llama-2-7b", "a6000", stage="decode", batch=1, seq_len=2048)
    dropdowns = [x for x in widgets_of(ex) if isinstance(x, w.Dropdown)]
    by_value = {d.value: d for d in dropdowns}
    model, stage, conventions = by_value["llama-2-7b"], by_value["decode"], by_value["exact"]
    summary = ex.children[1]
    assert "llama-2-7b" in summary.value and "decode" in summary.value
    model.value = "mixtral-8x7b"
    assert "mixtral-8x7b" in summary.value
    stage.value = "prefill"
    assert "prefill" in summary.value
    conventions.value = "paper"
    assert "paper convention" in summary.value
    model.value = "deepseek-v3"  # LLM-Viewer has no MLA: the error is shown, not raised
    assert "multi-head latent attention" in summary.value


def test_live_explorer_avoids_widget_labels_that_need_mathjax_2():
    # the static page's widget manager typesets descriptions, buttons and slider labels with MathJax 2
    for x in widgets_of(analyzer_explorer()):
        assert not isinstance(x, (w.ToggleButtons, w.RadioButtons, w.Checkbox, w.SelectionSlider, w.Label))
        assert not getattr(x, "description", "")


def test_explorer_html_and_svg(prefill):
    html = operator_graph_html(prefill)
    assert all(op in html for op in prefill.ops.op)
    svg = operator_roofline_svg(prefill)
    points = ip._ops_points(prefill)  # operators at the same point share a circle
    assert svg.startswith("<svg") and svg.count("<circle") == len(points)
    assert all(html_escape(op) in svg for op in points.op)
