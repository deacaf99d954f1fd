"""Precision: one value for the bit widths of a deployment, accepted wherever the flat keywords are."""

from __future__ import annotations

import pandas as pd
import pytest

import unveiled as uv
from unveiled.analyzer import Precision


@pytest.mark.parametrize(("text", "expected"), [
    ("W16A16", Precision()),
    ("W4A16", Precision(4, 16)),
    ("W8A8KV8", Precision(8, 8, kv_bits=8)),
    ("w4a16kv4g128", Precision(4, 16, kv_bits=4, group_size=128)),
    ("W4A16 H8", Precision(4, 16, head_bits=8)),
    ("W4-A16_KV8-H8-G64", Precision(4, 16, 8, 8, 64)),
])
def test_parse_reads_the_usual_names_and_prints_them_back(text, expected):
    p = Precision.parse(text)
    assert p == expected
    assert Precision.parse(str(p)) == p
    assert str(p) == text.upper().replace(" ", "").replace("-", "").replace("_", "")


def test_kv_follows_the_activations_unless_set():
    assert Precision(4, 8).kv == 8
    assert Precision(4, 8, kv_bits=4).kv == 4


@pytest.mark.parametrize(("bad", "error", "match"), [
    ("A16W4", ValueError, "W<bits>A<bits>"),
    ("W4", ValueError, "e.g. 'W16A16'"),
    ("W7A16", ValueError, "w_bits=7 is not a supported bit width"),
    ("W4A16KV7", ValueError, "kv_bits=7"),
    (4, TypeError, "'W4A16KV8'"),
])
def test_bad_names_say_what_is_accepted(bad, error, match):
    with pytest.raises(error, match=match):
        Precision.parse(bad)


def test_fields_are_checked():
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        Precision(4, 16, group_size=0)
    with pytest.raises(TypeError, match="a_bits must be an int"):
        Precision(4, 16.0)


@pytest.mark.parametrize("stage", ["prefill", "decode"])
def test_analyze_takes_a_precision_or_the_flat_keywords_alike(stage):
    flat = uv.analyze("llama-2-7b", "a6000", stage=stage, seq_len=512, w_bits=4, a_bits=16, kv_bits=8,
                      group_size=128, head_bits=8)
    for p in ("W4A16KV8H8G128", Precision(4, 16, 8, 8, 128)):
        one = uv.analyze("llama-2-7b", "a6000", stage=stage, seq_len=512, precision=p)
        assert (one.flops, one.bytes, one.time_s, one.memory) == (flat.flops, flat.bytes, flat.time_s, flat.memory)
        assert one.precision == flat.precision == Precision(4, 16, 8, 8, 128)
    default = uv.analyze("llama-2-7b", "a6000", stage=stage, seq_len=512)
    assert default.precision == Precision() and (default.w_bits, default.a_bits, default.kv_bits) == (16, 16, 16)


def test_precision_and_flat_keywords_do_not_mix():
    with pytest.raises(TypeError, match=r"either precision= or the keywords \['kv_bits'\]"):
        uv.analyze("llama-2-7b", "a6000", precision="W4A16", kv_bits=8)
    with pytest.raises(TypeError, match="either precision="):
        uv.sweep("llama-2-7b", "a6000", precision="W4A16", w_bits=[4, 8])


def test_estimate_generation_and_memory_helpers_take_a_precision():
    a = uv.estimate_generation("llama-2-7b", "a6000", prompt_len=256, gen_len=64, precision="W4A16KV8")
    b = uv.estimate_generation("llama-2-7b", "a6000", prompt_len=256, gen_len=64, w_bits=4, kv_bits=8)
    assert (a.ttft_s, a.decode_s, a.memory) == (b.ttft_s, b.decode_s, b.memory)
    assert uv.analyzer.max_batch("llama-2-7b", "a6000", precision="W4A16KV4") == uv.analyzer.max_batch(
        "llama-2-7b", "a6000", w_bits=4, kv_bits=4)
    assert uv.analyzer.max_seq_len("llama-2-7b", "a6000", batch=64, precision="W8A8") == uv.analyzer.max_seq_len(
        "llama-2-7b", "a6000", batch=64, w_bits=8, a_bits=8)


def test_sweep_over_a_list_of_precisions_equals_analyze():
    names = ["W16A16", "W4A16", "W8A8KV4", "W4A16H8G128"]
    df = uv.sweep("llama-2-7b", "a6000", stage="decode", batch=[1, 8], seq_len=1024, precision=names)
    assert list(df["precision"].unique()) == names
    for row in df.itertuples():
        a = uv.analyze("llama-2-7b", "a6000", stage="decode", batch=row.batch, seq_len=1024, precision=row.precision)
        assert (row.flops, row.bytes, row.time_s, row.memory_bytes) == pytest.approx(
            (a.flops, a.bytes, a.time_s, a.memory.total), rel=1e-12)
        assert (row.w_bits, row.a_bits, row.kv_bits) == (a.w_bits, a.a_bits, a.kv_bits)
    flat = uv.sweep("llama-2-7b", "a6000", stage="decode", batch=[1, 8], seq_len=1024, w_bits=4)
    assert "precision" not in flat.columns
    pd.testing.assert_series_equal(flat["time_s"], df.loc[df.precision == "W4A16", "time_s"].reset_index(drop=True))
