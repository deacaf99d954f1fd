"""New hardware on the roofline: the survey's Table 2 as data, the PIM and spatial registry rows (sources,
published vs derived numbers), the format-support table, PIM placement and the bandwidth a target speed needs."""

from __future__ import annotations

import csv
import importlib
import io
import math
import re

import numpy as np
import pytest

import unveiled as uv
from unveiled import accelerators as ac

hw = importlib.import_module("unveiled.hardware")

NEW_DEVICES = ("hbm-pim-cube", "aim-gddr6", "groq-lpu", "cerebras-wse-3")


def _rows(name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(uv.data_file(name).read_text(encoding="utf-8"))))


def _printed(text: str) -> float:
    """'80.4 GB/s per DIMM' -> 80.4 (GB/s), '2 TB/s per cube' -> 2000, '1.2 TFLOPS' -> 1200 (GOP/s)."""
    value, unit = re.match(r"([\d.]+)\s*(GB/s|TB/s|GOP/s|TFLOPS)", text).groups()
    return float(value) * {"GB/s": 1, "TB/s": 1000, "GOP/s": 1, "TFLOPS": 1000}[unit]


def test_survey_table2_numbers_are_the_printed_ones_and_match_the_registry():
    t = ac.survey_table2()
    assert list(t["product"]) == ["PIM-DIMM", "HBM-PIM", "AiM"]
    for r in t.itertuples():
        assert _printed(r.peak_bandwidth_printed) == r.peak_bandwidth_gb_s
        assert _printed(r.peak_throughput_printed) == r.peak_throughput_gop_s
        assert r.primary_source_url.startswith("https://")
        if r.registry_device:
            dev = uv.get_device(r.registry_device)
            assert dev.bandwidth == pytest.approx(r.peak_bandwidth_gb_s * 1e9)
            assert max(dev.peaks.values()) == pytest.approx(r.peak_throughput_gop_s * 1e9)


def test_new_registry_rows_are_sourced_and_say_what_is_published_and_what_derived():
    rows = {r["name"]: r for r in _rows("hardware.csv") if r["name"] in NEW_DEVICES}
    assert set(rows) == set(NEW_DEVICES)
    for name, r in rows.items():
        assert r["source_url"].startswith("https://"), name
        assert "ublished" in r["notes"] or "as published" in r["notes"] or "announced" in r["notes"], name
    # derived numbers, recomputed: HBM2 interface 1024 pins x 2.4 Gb/s = 307.2 GB/s (the survey prints 307 GB/s)
    assert pytest.approx(307.2) == ac.HBM2_INTERFACE_GB_S and round(ac.HBM2_INTERFACE_GB_S) == 307
    assert "307.2 GB/s" in rows["hbm-pim-cube"]["notes"]
    # AiM: 8 Gb per chip = 1 GiB; x16 at 16 Gb/s per pin = 32 GB/s
    assert uv.get_device("aim-gddr6").memory_bytes == 8 * 2**30 / 8 and 16 * 16 / 8 == 32
    # Groq: 220 MiB (ISCA 2020) is the 230 MB of the product brief
    assert pytest.approx(230, rel=0.005) == 220 * 2**20 / 1e6
    assert uv.get_device("groq-lpu").memory_bytes == pytest.approx(230e6)
    assert {uv.get_device(n).kind for n in NEW_DEVICES} == {"pim", "spatial"}


def test_device_features_are_sourced_and_consistent_with_the_hardware_table():
    table = hw.device_features()
    formats = table[table["feature"] != "sparse_2_4"]
    assert len(formats) > 100
    assert formats["source_url"].str.startswith("https://").all()
    assert not formats.duplicated(["device", "feature"]).any()
    for r in formats.itertuples():
        dev = uv.get_device(r.device)
        if r.support == "native":  # a native format needs a published peak for its compute type
            assert hw.FEATURE_DTYPES[r.feature] in dev.peaks, (r.device, r.feature)
    # facts the chapter relies on
    assert hw.supports("h100-sxm", "fp8_e4m3") == "native" and hw.supports("h100-sxm", "nvfp4") == "storage"
    assert hw.supports("b200", "nvfp4") == "native" and hw.supports("b200", "mxfp4") == "native"
    assert hw.supports("a100-80gb", "fp8_e4m3") == "storage" and hw.supports("mi300x", "mxfp4") == "none"


def test_feature_compute_dtype_uses_the_format_roof_only_where_native():
    assert hw.feature_compute_dtype("b200", "nvfp4") == ("fp4", "native")
    assert hw.feature_compute_dtype("b200", "mxfp6") == ("fp8", "native")
    assert hw.feature_compute_dtype("h100-sxm", "nvfp4") == ("fp16", "storage")
    assert hw.feature_compute_dtype("tpu-v5e", "fp8_e4m3") == ("bf16", "none")
    assert hw.feature_compute_dtype("groq-lpu", "mxfp4") == ("fp16", None)  # no source: converted, unknown
    with pytest.raises(ValueError, match=r"Did you mean .*'mxfp4'"):
        hw.feature_compute_dtype("b200", "mxfp5")


def test_pim_speedup_from_first_principles():
    pim = uv.get_device("hbm-pim-cube")
    ext = ac.HBM2_INTERFACE_GB_S * 1e9
    # below the PIM ridge (0.6 FLOP/byte) the gain is the bandwidth ratio 2000 / 307.2
    assert ac.pim_speedup(0.1) == pytest.approx(2000 / 307.2)
    # above it, peak / (interface x intensity): 1 FLOP/byte -> 3.9x, 2 -> 1.95x (the survey's "1-2 Ops/Byte")
    assert ac.pim_speedup(1.0) == pytest.approx(pim.peak("fp16") / ext)
    assert ac.pim_speedup(2.0) == pytest.approx(pim.peak("fp16") / ext / 2)
    crossover = pim.peak("fp16") / ext
    assert ac.pim_speedup(crossover * 0.99) > 1 > ac.pim_speedup(crossover * 1.01)
    assert np.allclose(ac.pim_speedup(np.array([0.1, 1.0])), [2000 / 307.2, crossover])


def test_pim_decode_table_places_gemv_and_attention_in_memory_and_batched_gemms_on_the_host():
    t1 = ac.pim_decode_table("llama-2-7b", batch=1, seq_len=2048)
    by = t1.set_index("op")
    # Llama-2-7B q_proj at batch 1: 2 h^2 FLOPs over about 2 h^2 bytes of fp16 weights -> intensity ~ 1
    assert by.loc["q_proj", "intensity"] == pytest.approx(1.0, rel=0.01)
    assert by.loc["q_proj", "speedup"] == pytest.approx(ac.pim_speedup(by.loc["q_proj", "intensity"]))
    assert (t1["placement"] == "PIM").all()
    assert t1.attrs["devices"] == math.ceil(t1.attrs["memory_bytes"] / uv.get_device("hbm-pim-cube").memory_bytes)
    t16 = ac.pim_decode_table("llama-2-7b", batch=16, seq_len=2048).set_index("op")
    assert t16.loc["down_proj", "placement"] == "host" and t16.loc["qk_matmul", "placement"] == "PIM"
    s = ac.pim_step_summary(t16.reset_index())
    assert s["hybrid_speedup"] >= max(1.0, s["all_pim_speedup"])


def test_bandwidth_for_300_tokens_per_s_on_llama_2_70b_from_first_principles():
    need = ac.bandwidth_for_speed("llama-2-70b", 300, seq_len=4096)
    spec = uv.model_spec("llama-2-70b")
    # fp16 weights (all parameters) + the KV cache of 4096 tokens (80 layers, 8 KV heads of 128, K and V, 2 bytes)
    params = 68_976_648_192
    kv = 4096 * 80 * 2 * 8 * 128 * 2
    assert spec.num_layers == 80 and spec.num_kv_heads == 8
    assert need["step_bytes"] == pytest.approx(2 * params + kv, rel=0.01)
    assert need["bandwidth_B_s"] == pytest.approx(300 * need["step_bytes"], rel=1e-6)  # memory-bound
    # 2 FLOPs per parameter except the embedding look-up, plus attention over the cache (QK and SV: 4 n H d L)
    flops = 2 * (params - spec.vocab_size * spec.hidden_size) + 4 * 80 * 64 * 128 * 4096
    assert need["flop_s"] == pytest.approx(300 * flops, rel=0.01)
    table = ac.aggregate_requirements("llama-2-70b", 300, ["h100-sxm", "groq-lpu"])
    h100, groq = table.itertuples()
    assert h100.chips_for_speed == math.ceil(need["bandwidth_B_s"] / uv.get_device("h100-sxm").bandwidth)
    assert groq.chips_for_capacity == math.ceil(need["memory_bytes"] / 230e6)
    # one chip at a time: at most its bandwidth over the step's bytes (GQA attention is compute-bound on an LPU,
    # whose ridge is 188 / 80 = 2.35 FLOP/byte, so a little less)
    assert 0.95 * 80e12 / need["step_bytes"] < groq.tokens_per_s_pipeline <= 80e12 / need["step_bytes"]


def test_figure20_left_marks_the_survey_points():
    lines, points = ac.figure20_left_data()
    assert [round(p / 1e12, 1) for p in points["flop_s"]] == [38.4, 115.2]  # the survey's ≈38.4 vs ≈115 TOPS
    assert lines[1][0].bandwidth == 3 * lines[0][0].bandwidth
