"""Chapter 1's claims, asserted with the library (tests/claims.py explains the registry)."""

from __future__ import annotations

import numpy as np
import pytest

import unveiled as uv
from claims import claim

PAGE = "chapters/01_roofline.ipynb"


@claim(PAGE, "An operation's time is set by the slower of moving its bytes and doing its arithmetic",
       "a decode step of a linear layer moves about one byte per operation",
       "A decode step of a linear layer does about one operation per byte")
def test_time_is_the_slower_phase_and_decode_moves_a_byte_per_operation():
    a6000 = uv.get_device("a6000", preset="llm-viewer")
    for m in (1, 16, 2048):
        op = uv.Operation.matmul(m, 4096, 4096, "fp16")
        assert op.time(a6000) == pytest.approx(max(op.flops / a6000.peak("fp16"), op.bytes / a6000.bandwidth))
    decode = uv.Operation.matmul(1, 4096, 4096, "fp16")
    assert 0.9 < decode.intensity < 1.1  # 2 operations per 2-byte weight
    assert 1.8 < uv.Operation.matmul(1, 4096, 4096, "fp16", weight_dtype="int8").intensity < 2.1  # 2 / bytes


@claim(PAGE, "only fewer bytes or faster memory help")
def test_below_the_ridge_only_bandwidth_helps():
    a6000 = uv.get_device("a6000", preset="llm-viewer")
    low = 0.2 * a6000.ridge_point("fp16")
    faster_memory = a6000.with_(name="x", bandwidth=2 * a6000.bandwidth)
    more_compute = a6000.with_(name="y", peaks={**a6000.peaks, "fp16": 2 * a6000.peak("fp16")})
    base = uv.attainable_performance(low, a6000)
    assert uv.attainable_performance(low, faster_memory) == pytest.approx(2 * base)
    assert uv.attainable_performance(low, more_compute) == pytest.approx(base)
    high = 5 * a6000.ridge_point("fp16")
    assert uv.attainable_performance(high, faster_memory) == pytest.approx(uv.attainable_performance(high, a6000))


@claim(PAGE, "halving the width doubles the rate")
def test_h100_peaks_double_from_tf32_to_bf16_to_fp8():
    h100 = uv.get_device("h100-sxm")
    assert h100.peak("bf16") == pytest.approx(2 * h100.peak("tf32"), rel=1e-3)
    assert h100.peak("fp8") == pytest.approx(2 * h100.peak("bf16"), rel=1e-3)


@claim(PAGE, "Each step of 4× in batch size moves the operation about 4× right")
def test_batching_moves_q_proj_about_4x_right_until_the_roof():
    a6000 = uv.get_device("a6000", preset="llm-viewer")
    ridge = a6000.ridge_point("fp16")
    batches = [1, 4, 16, 64, 256, 1024]
    intensity = np.array([uv.Operation.matmul(m, 4096, 4096, "fp16").intensity for m in batches])
    below = intensity[:-1] < ridge
    assert below[:4].all() and not below[-1]
    steps = intensity[1:] / intensity[:-1]
    assert ((steps[below] > 3.5) & (steps[below] < 4.05)).all(), steps


@claim(PAGE, "offloading makes a slower memory the roofline's slope")
def test_offloaded_weights_read_a_slower_memory():
    a6000, cpu = uv.get_device("a6000", preset="llm-viewer"), uv.get_device("i9-13900k", preset="llm-viewer")
    assert cpu.bandwidth < a6000.bandwidth / 5
    ddr = a6000.with_(name="a6000-ddr", bandwidth=cpu.bandwidth)
    assert ddr.ridge_point("fp16") > 5 * a6000.ridge_point("fp16")


@claim(PAGE, "a narrower data type pays only where the CPU computes it natively")
def test_bf16_pays_on_a_cpu_only_with_native_bf16_arithmetic():
    """The roofline of this book's measured CPU (appendix "The models in this book") with a native BF16 roof
    (its measured one) and an emulated one (FP32's peak over 40, the software path): one decode-sized product."""
    from unveiled import calibration
    from unveiled.roofline import matmul_cost, roofline_time

    measured = calibration.stored_device(calibration.load_measurements().attrs["provenance"])
    fp32 = measured.peak("fp32")
    f32, b16 = matmul_cost(1, 4096, 4096, "fp32"), matmul_cost(1, 4096, 4096, "bf16")
    for bf16_peak, pays in ((max(measured.peak("bf16"), fp32), True), (fp32 / 40, False)):
        dev = measured.with_(name="cpu", peaks={"fp32": fp32, "bf16": bf16_peak})
        assert (roofline_time(*b16, dev, "bf16") < roofline_time(*f32, dev, "fp32")) == pays
