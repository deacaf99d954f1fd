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


def test_chapter_charts_build():
    wall = kv.memory_wall(["llama-2-7b", "llama-3-8b"], [1024, 8192], batch=1)
    caps = {"H100": uv.hardware("h100-sxm").memory_bytes}
    kvplots.memory_wall_chart(pd.concat([wall, wall.assign(batch=8)]), caps).to_dict()
    traffic = kv.decode_traffic("llama-2-7b", seq_lens=[1024, 4096]).assign(label="MHA")
    kvplots.decode_traffic_chart(traffic).to_dict()
    sweep = kv.block_size_sweep(kv.request_stream(50), 20_000, block_sizes=(4, 16))
    kvplots.block_size_chart(sweep).to_dict()
    curves = pd.DataFrame({"policy": ["a", "a", "b", "b"], "position": [1, 2, 1, 2], "nll": [1.0, 1.1, 1.2, 1.3]})
    kvplots.eviction_chart(curves, limit=2).to_dict()
    stats = pd.DataFrame({"layer": 0, "head": [0, 0], "channel": [0, 1], "key_mean_abs": [1.0, 9.0],
                          "value_mean_abs": [1.0, 1.1], "key_outlier_ratio": [1.0, 9.0],
                          "value_outlier_ratio": [1.0, 1.1]})
    kvplots.key_outliers_chart(stats, 0).to_dict()
    quant = pd.DataFrame({"scheme": ["full precision", "x", "x"], "kv_bits": [16, 4, 2],
                          "perplexity": [10.0, 10.5, 14.0]})
    kvplots.kv_quant_chart(quant).to_dict()
