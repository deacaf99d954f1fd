"""uv.analyze(..., number_format=...): stored bytes with block scales, the format's compute roof where the device
executes it natively, the 16-bit roof where it only stores it, and the note that says which."""

from __future__ import annotations

import pytest

import unveiled as uv
from unveiled.analyzer import number_formats as nf
from unveiled.quant import formats as F


def test_storage_bits_agree_with_the_quantizer_library():
    for name in F.FORMAT_NAMES:
        element, stored = nf.NUMBER_FORMATS[name]
        assert element == F.get_format(name).bits
        assert stored == F.bits_per_element(name)  # per-tensor scales (NVFP4's FP32) are not counted
    assert nf.NUMBER_FORMATS["int4"] == (4, 4.0) and nf.NUMBER_FORMATS["int8"] == (8, 8.0)


def test_native_formats_use_their_peak_and_storage_formats_the_16_bit_one():
    b200 = uv.analyze("llama-2-7b", "b200", stage="prefill", batch=4, seq_len=2048, number_format="nvfp4")
    h100 = uv.analyze("llama-2-7b", "h100-sxm", stage="prefill", batch=4, seq_len=2048, number_format="nvfp4")
    q_b, q_h = b200.ops.set_index("op").loc["q_proj"], h100.ops.set_index("op").loc["q_proj"]
    assert q_b.compute_dtype == "fp4" and q_h.compute_dtype == "fp16"
    # compute-bound prefill GEMMs: time = FLOPs / the roof's peak
    assert q_b.bound == q_h.bound == "compute"
    assert q_b.time_s == pytest.approx(q_b.flops / uv.get_device("b200").peak("fp4"))
    assert q_h.time_s == pytest.approx(q_h.flops / uv.get_device("h100-sxm").peak("fp16"))
    # attention is not a weight GEMM: it keeps the 16-bit roof
    assert b200.ops.set_index("op").loc["qk_matmul", "compute_dtype"] == "fp16"
    assert b200.format_roof.native and "native" in b200.format_note
    assert "only a storage format" in h100.format_note and "FP16 peak" in h100.format_note
    assert "nvfp4 (storage: fp16 roof)" in repr(h100)
    assert h100.summary()["format_support"] == "storage"


def test_weight_bytes_count_block_scales_from_first_principles():
    h = uv.model_spec("llama-2-7b").hidden_size
    a = uv.analyze("llama-2-7b", "b200", stage="decode", batch=1, seq_len=1024, number_format="mxfp4")
    q = a.ops.set_index("op").loc["q_proj"]
    assert q.weight_bytes == pytest.approx(h * h * 4.25 / 8)
    plain = uv.analyze("llama-2-7b", "b200", stage="decode", batch=1, seq_len=1024, w_bits=4)
    params = uv.analyzer.configs.param_classes(uv.model_spec("llama-2-7b"))["linear"]
    assert a.memory.weights - plain.memory.weights == pytest.approx(params * 0.25 / 8)


def test_memory_bound_decode_gains_the_same_from_a_native_or_a_storage_format():
    """FP8 on the H100 at batch 1: the same bytes as W8A16, so the same time; prefill gains the FP8 roof."""
    kw = dict(stage="decode", batch=1, seq_len=1024)
    fmt = uv.analyze("llama-2-7b", "h100-sxm", number_format="fp8_e4m3", **kw)
    w8 = uv.analyze("llama-2-7b", "h100-sxm", w_bits=8, **kw)
    assert fmt.time_s == pytest.approx(w8.time_s, rel=1e-9)
    kw = dict(stage="prefill", batch=8, seq_len=2048)
    fmt = uv.analyze("llama-2-7b", "h100-sxm", number_format="fp8_e4m3", **kw).ops.set_index("op")
    w8 = uv.analyze("llama-2-7b", "h100-sxm", w_bits=8, **kw).ops.set_index("op")
    assert w8.loc["gate_proj", "time_s"] / fmt.loc["gate_proj", "time_s"] == pytest.approx(2.0, rel=0.01)


def test_int4_is_native_on_ampere_and_stored_on_hopper():
    kw = dict(stage="prefill", batch=4, seq_len=1024, number_format="int4")
    assert uv.analyze("llama-2-7b", "a100-80gb", **kw).ops.set_index("op").loc["up_proj", "compute_dtype"] == "int4"
    assert uv.analyze("llama-2-7b", "h100-sxm", **kw).ops.set_index("op").loc["up_proj", "compute_dtype"] == "fp16"


def test_bad_format_arguments_are_refused():
    with pytest.raises(ValueError, match="Did you mean 'nvfp4'"):
        uv.analyze("llama-2-7b", "b200", number_format="nvfp5")
    with pytest.raises(ValueError, match="conventions='exact'"):
        uv.analyze("llama-2-7b", "a6000", number_format="fp8_e4m3", conventions="paper")
    with pytest.raises(ValueError, match="leave w_bits out"):
        uv.analyze("llama-2-7b", "b200", number_format="nvfp4", w_bits=8)
    with pytest.raises(TypeError, match="number_format must be a name"):
        uv.analyze("llama-2-7b", "b200", number_format=4)
