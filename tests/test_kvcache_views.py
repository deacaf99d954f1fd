"""Chapter 6's charts and explorers: they build from library data, stay light, and the live explorer reacts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import unveiled as uv
from unveiled import kvcache as kv
from unveiled.explorers import kvcache as kvx
from unveiled.plots import kvcache as kvplots


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    return kvx.explorer_grid()


def test_explorer_grid_matches_the_analyzer(grid):
    assert set(grid.model) == set(kvx.explorer_models())
    assert (grid.fits == (grid.memory_GB <= grid.capacity_GB)).all()
    row = grid[(grid.model == "Llama-3-8B (GQA-8)") & (grid.device == "h100-sxm") & (grid.batch == 8)
               & (grid.seq_len == 32768) & (grid.kv_bits == 4)].iloc[0]
    a = uv.analyze("llama-3-8b", "h100-sxm", stage="decode", batch=8, seq_len=32768, kv_bits=4, check_context=False)
    assert row.memory_GB == pytest.approx(a.memory.total / 1e9)
    assert row.time_ms == pytest.approx(a.time_s * 1e3)
    assert row.kv_pct == pytest.approx(100 * a.memory.kv_cache / a.memory.total)


def test_explorer_chart_is_interactive_and_light(grid):
    spec = kvplots.explorer_chart(grid).to_dict()
    names = {p["name"] for p in spec["params"]}
    assert {"kv_model", "kv_device", "kv_batch"} <= names
    size = len(json.dumps(spec, separators=(",", ":")))
    assert size < 300_000, f"the static explorer embeds {size:,} bytes"


def test_live_explorer_reacts():
    box = kvx.kv_explorer("llama-2-7b", "h100-sxm")
    out = box.children[-1]
    first = out.value
    assert "fits" in first and "llama-2-7b" in first
    design = box.children[0].children[1]
    design.value = "MQA"
    assert out.value != first and "MQA" in out.value
    kv_bits = box.children[3]
    kv_bits.value = 2
    assert "KV2" in out.value


def test_summary_says_when_it_does_not_fit():
    html = kvx.kv_summary_html("llama-3-70b", "rtx-4090", 4096, 1, 16)
    assert "does NOT fit" in html


def _datasets(chart) -> tuple[dict, list[pd.DataFrame]]:
    spec = chart.to_dict()
    return spec, [pd.DataFrame(rows) for rows in spec.get("datasets", {}).values()]


def _frame_with(frames: list[pd.DataFrame], *cols: str) -> pd.DataFrame:
    hits = [f for f in frames if set(cols) <= set(f.columns)]
    assert len(hits) == 1, f"expected one dataset with {cols}, got {[list(f.columns) for f in frames]}"
    return hits[0]


def test_memory_wall_and_traffic_charts_draw_the_librarys_numbers():
    wall = kv.memory_wall(["llama-2-7b", "llama-3-8b"], [1024, 8192], batch=1)
    caps = {"H100": uv.get_device("h100-sxm").memory_bytes}
    spec, frames = _datasets(kvplots.memory_wall_chart(pd.concat([wall, wall.assign(batch=8)]), caps, title="wall"))
    assert spec["title"] == "wall"
    lines = _frame_with(frames, "total_GB", "kv_GB").query("batch == 1").set_index(["model", "seq_len"])
    for row in wall.itertuples():
        assert lines.total_GB[(row.model, row.seq_len)] == pytest.approx(row.total_bytes / 1e9, rel=1e-3)
        assert lines.kv_GB[(row.model, row.seq_len)] == pytest.approx(row.kv_bytes / 1e9, rel=1e-3)
    assert (lines.total_GB > 0).all()  # a log axis: no zero
    assert _frame_with(frames, "device", "GB").GB.tolist() == pytest.approx([caps["H100"] / 1e9])

    traffic = kv.decode_traffic("llama-2-7b", seq_lens=[1024, 4096]).assign(label="MHA")
    _, frames = _datasets(kvplots.decode_traffic_chart(traffic))
    drawn = _frame_with(frames, "kv_pct", "time_ms").set_index("seq_len")
    for row in traffic.itertuples():
        assert drawn.kv_pct[row.seq_len] == pytest.approx(100 * row.kv_share, rel=1e-3)
        assert drawn.time_ms[row.seq_len] == pytest.approx(1e3 * row.time_s, rel=1e-3)
    assert drawn.kv_pct.is_monotonic_increasing  # a longer context reads more cache


def test_block_size_chart_draws_the_sweep():
    sweep = kv.block_size_sweep(kv.request_stream(50), 20_000, block_sizes=(4, 16))
    _, frames = _datasets(kvplots.block_size_chart(sweep, title="blocks"))
    bars = _frame_with(frames, "block_size", "sequences").set_index("block_size")
    paged = sweep[sweep.layout == "paged"].set_index("block_size")
    assert bars.sequences.to_dict() == {int(b): int(n) for b, n in paged.sequences.items()}
    assert bars.waste_pct.tolist() == pytest.approx((100 * paged.waste_fraction).tolist(), rel=2e-3)  # 4 digits
    rules = _frame_with(frames, "layout", "sequences").set_index("layout").sequences
    contiguous = sweep[sweep.layout != "paged"].set_index("layout").sequences
    assert rules.to_dict() == contiguous.to_dict()


def test_small_charts_keep_their_data_and_titles():
    curves = pd.DataFrame({"policy": ["a", "a", "b", "b"], "position": [1, 2, 1, 2], "nll": [1.0, 1.1, 1.2, 1.3]})
    spec = kvplots.eviction_chart(curves, limit=2, title="eviction").to_dict()
    assert spec["title"] == "eviction"
    layers = spec["layer"]
    assert any(layer.get("mark", {}).get("type") == "rule" for layer in layers)  # the limit is drawn
    stats = pd.DataFrame({"layer": 0, "head": [0, 0], "channel": [0, 1], "key_mean_abs": [1.0, 9.0],
                          "value_mean_abs": [1.0, 1.1], "key_outlier_ratio": [1.0, 9.0],
                          "value_outlier_ratio": [1.0, 1.1]})
    _, frames = _datasets(kvplots.key_outliers_chart(stats, 0))
    drawn = _frame_with(frames, "mean_abs")
    assert sorted(drawn.mean_abs.tolist()) == sorted([1.0, 9.0, 1.0, 1.1])
    quant = pd.DataFrame({"scheme": ["full precision", "x", "x"], "kv_bits": [16, 4, 2],
                          "perplexity": [10.0, 10.5, 14.0]})
    spec, frames = _datasets(kvplots.kv_quant_chart(quant))
    y = spec["layer"][0]["encoding"]["y"]["scale"]
    assert y["type"] == "log" and y["domain"][0] > 0  # a log axis never includes zero
    assert y["domain"][0] <= 10.0 and y["domain"][1] >= 14.0
    assert set(_frame_with(frames, "perplexity", "kv_bits").perplexity) >= {10.5, 14.0}
