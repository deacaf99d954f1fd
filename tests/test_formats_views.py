"""Chapter 10's charts and explorers: they build, carry titles, fit the page, and show the library's numbers."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import unveiled as uv
from unveiled import accelerators as acc
from unveiled.plots import accelerators as aplots
from unveiled.plots import formats as fplots


def _spec(chart) -> dict:
    return chart.to_dict()


def test_format_grid_chart_draws_every_positive_value():
    spec = _spec(fplots.format_grid_chart(("fp4_e2m1",), (4,), title="grids"))
    values = spec["datasets"][next(iter(spec["datasets"]))]
    fp4 = sorted(v["value"] for v in values if v["format"] == "FP4 E2M1")
    assert fp4 == [v / 6 for v in (0.5, 1, 1.5, 2, 3, 4, 6)]
    assert sum(v["format"] == "INT4" for v in values) == 7
    assert spec["width"] == "container" and spec["title"] == "grids"


def test_bits_quality_chart_and_layer_choice_chart_build():
    df = pd.DataFrame({"label": ["a", "b"], "family": ["integer", "block FP (MX/NVFP4)"], "linear_bits": [4.5, 4.25],
                       "perplexity": [10.0, 12.0]})
    spec = _spec(fplots.bits_quality_chart(df, baseline=9.0, title="q"))
    assert spec["title"] == "q" and len(spec["layer"]) == 2
    choice = pd.DataFrame({"block": [0, 0, 1], "kind": ["q_proj", "down_proj", "q_proj"],
                           "format": ["MXFP4", "BF16", "NVFP4"], "rel_error": [0.01, 0.0, 0.002]})
    assert _spec(fplots.layer_choice_chart(choice, title="c"))["title"] == "c"


def test_figure20_left_and_pim_charts_build_with_the_points():
    spec = json.dumps(_spec(aplots.figure20_left_chart(title="f")))
    assert "38.4 TFLOP/s" in spec and "115.2 TFLOP/s" in spec
    t = acc.pim_decode_table("llama-2-7b", batch=16, seq_len=2048)
    spec = _spec(aplots.pim_chart(t, title="p"))
    assert spec["title"] == "p" and spec["width"] == "container"


def test_format_decode_grid_and_its_explorer():
    grid = acc.format_decode_grid("llama-2-7b", ["h100-sxm", "b200"], ["bf16", "nvfp4"], batches=[1, 64],
                                  seq_lens=[1024])
    assert len(grid) == 2 * 2 * 2 * 1 * 2
    one = grid[(grid.device == "b200") & (grid.format == "nvfp4") & (grid.batch == 64)]
    a = uv.analyze("llama-2-7b", "b200", stage="decode", batch=64, seq_len=1024, number_format="nvfp4")
    assert one["time_ms"].sum() == pytest.approx(a.time_s * 1e3)
    assert set(one["compute_dtype"]) == {"fp4"} and set(one["support"]) == {"native"}
    h = grid[(grid.device == "h100-sxm") & (grid.format == "nvfp4")]
    assert set(h["support"]) == {"storage"} and set(h["compute_dtype"]) == {"fp16"}
    spec = _spec(aplots.decode_explorer_chart(grid, device="b200", fmt="nvfp4", title="e"))
    params = {p["name"] for p in spec["params"]}
    assert {"device", "fmt", "batch", "seq"} <= params
    assert all("bind" in p for p in spec["params"] if p["name"] in {"device", "fmt", "batch", "seq"})


def test_live_format_explorer_builds():
    pytest.importorskip("ipywidgets")
    from unveiled.explorers import hardware as hx

    box = hx.format_explorer("llama-2-7b", "h100-sxm", number_format="nvfp4", batch=1, seq_len=1024)
    html = box.children[1].value
    assert "only a storage format" in html and "speed-up" in html
    runs = {s: uv.analyze("llama-2-7b", "b200", stage=s, number_format="fp8_e4m3", seq_len=1024)
            for s in ("prefill", "decode")}
    base = {s: uv.analyze("llama-2-7b", "b200", stage=s, seq_len=1024) for s in ("prefill", "decode")}
    assert "native" in hx.format_html(runs, base)
