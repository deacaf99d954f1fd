"""The roofline model: properties, the survey's numbers, operations and fusion, charts, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unveiled as uv
from unveiled.plots import roofline as rplots

DEVICES = ["a6000", "h100-sxm", "l4", "b200", "mi300x", "tpu-v6e", "i9-13900k", "jetson-agx-orin"]
PAIRS = [(d, dt) for d in DEVICES for dt in uv.get_device(d).dtypes]
intensities = st.floats(min_value=1e-4, max_value=1e6, allow_nan=False, allow_infinity=False)
pairs = st.sampled_from(PAIRS)
positive = st.floats(min_value=1e-3, max_value=1e15, allow_nan=False, allow_infinity=False)


# --- properties of the roofline -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(pair=pairs, a=intensities, b=intensities)
def test_attainable_is_monotone_non_decreasing(pair, a, b):
    lo, hi = sorted((a, b))
    assert uv.attainable_performance(lo, *pair) <= uv.attainable_performance(hi, *pair)


@settings(max_examples=200, deadline=None)
@given(pair=pairs, i=intensities)
def test_attainable_never_exceeds_the_peak_and_follows_the_memory_roof(pair, i):
    dev, dtype = uv.get_device(pair[0]), pair[1]
    perf = uv.attainable_performance(i, dev, dtype)
    assert 0 < perf <= dev.peak(dtype)
    assert perf <= dev.bandwidth * i * (1 + 1e-12)
    if i < dev.ridge_point(dtype):
        assert perf == pytest.approx(dev.bandwidth * i, rel=1e-12)
        assert uv.bound(i, dev, dtype) == "memory"
    else:
        assert perf == dev.peak(dtype)
        assert uv.bound(i, dev, dtype) == "compute"


@pytest.mark.parametrize("pair", PAIRS)
def test_continuous_at_the_ridge(pair):
    dev, dtype = uv.get_device(pair[0]), pair[1]
    r = dev.ridge_point(dtype)
    for eps in (1e-6, 1e-9):
        left = uv.attainable_performance(r * (1 - eps), dev, dtype)
        right = uv.attainable_performance(r * (1 + eps), dev, dtype)
        assert left == pytest.approx(dev.peak(dtype), rel=2 * eps)
        assert right == dev.peak(dtype)
    assert uv.attainable_performance(r, dev, dtype) == pytest.approx(dev.peak(dtype), rel=1e-12)
    assert uv.bound(r, dev, dtype) == "compute"


@settings(max_examples=200, deadline=None)
@given(pair=pairs, flops=positive, nbytes=positive)
def test_time_is_the_max_and_agrees_with_attainable(pair, flops, nbytes):
    dev, dtype = uv.get_device(pair[0]), pair[1]
    t = uv.roofline_time(flops, nbytes, dev, dtype)
    assert t == pytest.approx(max(flops / dev.peak(dtype), nbytes / dev.bandwidth), rel=1e-12)
    assert t == pytest.approx(flops / uv.attainable_performance(flops / nbytes, dev, dtype), rel=1e-9)
    assert t >= flops / dev.peak(dtype) and t >= nbytes / dev.bandwidth
    p = uv.place(flops, nbytes, dev, dtype)
    assert p.time_s == pytest.approx(t, rel=1e-12) and p.intensity == pytest.approx(flops / nbytes)
    assert p.bound == uv.bound(flops / nbytes, dev, dtype)
    assert p.attainable_flop_s * p.time_s == pytest.approx(flops, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(pair=pairs, flops=positive, nbytes=positive, scale=st.floats(1.01, 100))
def test_more_bandwidth_never_slows_an_operation(pair, flops, nbytes, scale):
    dev, dtype = uv.get_device(pair[0]), pair[1]
    faster = dev.with_(bandwidth=dev.bandwidth * scale)
    assert uv.roofline_time(flops, nbytes, faster, dtype) <= uv.roofline_time(flops, nbytes, dev, dtype)


def test_arrays_in_arrays_out():
    i = np.geomspace(0.1, 1e4, 50)
    perf = uv.attainable_performance(i, "a6000")
    assert perf.shape == i.shape and np.all(np.diff(perf) >= 0)
    assert list(uv.bound(np.array([1.0, 1000.0]), "a6000")) == ["memory", "compute"]
    assert uv.attainable_performance(pd.Series([1.0, 2.0]), "a6000").shape == (2,)
    t = uv.roofline_time(np.array([1e9, 0.0]), np.array([0.0, 1e9]), "a6000")
    assert t[0] == pytest.approx(1e9 / 154.8e12) and t[1] == pytest.approx(1e9 / 768e9)
    assert isinstance(uv.attainable_performance(10.0, "a6000"), float)


# --- the survey's numbers -------------------------------------------------------------------------------


def test_survey_turning_points():
    lv = uv.get_device("a6000", preset="llm-viewer")
    assert uv.ridge_point(lv, "fp16") == pytest.approx(201.6, abs=0.05)  # Fig. 5
    assert uv.ridge_point(lv, "int8") == pytest.approx(403, abs=0.5)  # Fig. 6
    ddr = lv.with_(name="a6000-ddr", bandwidth=89.6e9)  # Fig. 18: weights in DDR, GPU compute
    assert uv.ridge_point(ddr, "fp16") == pytest.approx(1728, abs=0.5)
    cpu = uv.get_device("i9-13900k", preset="llm-viewer")
    assert cpu.peak("fp16") == pytest.approx(1.3824e12)
    assert uv.ridge_point(cpu, "fp16") == pytest.approx(15.43, abs=0.01)
    assert uv.attainable_performance(50, lv) == pytest.approx(38.4e12)  # Fig. 15: AI 50 -> 38.4 T
    assert uv.attainable_performance(180, lv) == pytest.approx(138.24e12)  # -> ~138 T


def test_table1_decode_projection():
    # Table 1 of the survey (decode, Llama-2-7b, A6000): q_proj moves 34M bytes for 34M ops, AI ≈ 1, 768 G.
    flops, nbytes = uv.matmul_cost(1, 4096, 4096, "fp16")
    assert flops == pytest.approx(33.55e6, rel=1e-3) and nbytes == pytest.approx(33.57e6, rel=1e-3)
    p = uv.place(flops, nbytes, uv.get_device("a6000", "llm-viewer"))
    assert p.bound == "memory" and p.attainable_flop_s == pytest.approx(768e9, rel=1e-3)


# --- costs, operations and fusion --------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(m=st.integers(1, 10_000), k=st.integers(1, 10_000), n=st.integers(1, 10_000),
       dtype=st.sampled_from(list(uv.DTYPES)))
def test_matmul_cost(m, k, n, dtype):
    flops, nbytes = uv.matmul_cost(m, k, n, dtype)
    b = uv.DTYPES[dtype]
    assert flops == 2 * m * k * n
    assert nbytes == pytest.approx((m * k + k * n + m * n) * b)
    op = uv.Operation.matmul(m, k, n, dtype)
    assert op.flops == flops and op.bytes == pytest.approx(nbytes)


def test_gemv_intensity_is_about_one_for_16_bit():
    flops, nbytes = uv.matmul_cost(1, 8192, 8192, "bf16")
    assert flops / nbytes == pytest.approx(1.0, abs=1e-3)
    w4 = uv.Operation.matmul(1, 8192, 8192, "fp16", weight_dtype="int4")
    assert w4.intensity == pytest.approx(4.0, rel=1e-2)  # 4-bit weights: 4x the intensity


def test_elementwise_cost():
    assert uv.elementwise_cost(1000, 1, n_inputs=2, n_outputs=1, dtype="fp16") == (1000.0, 6000.0)
    op = uv.Operation.elementwise(1000, 4, dtype="fp32", name="silu")
    assert op.flops == 4000 and op.load_bytes == 4000 and op.store_bytes == 4000 and op.intensity == 0.5


@settings(max_examples=100, deadline=None)
@given(m=st.integers(1, 4096), k=st.integers(1, 4096), n=st.integers(1, 4096))
def test_fusion_removes_exactly_the_intermediate_traffic(m, k, n):
    lin = uv.Operation.matmul(m, k, n, "fp16", name="linear")
    act = uv.Operation.elementwise(m * n, 4, dtype="fp16", name="silu")
    fused = uv.fuse([lin, act])
    assert fused.flops == lin.flops + act.flops
    assert fused.bytes == pytest.approx(lin.bytes + act.bytes - 2 * lin.store_bytes)
    assert fused.intensity > (lin.flops + act.flops) / (lin.bytes + act.bytes)
    for dev in ("a6000", "h100"):
        g = uv.fusion_gain([lin, act], dev)
        assert g["time_after_s"] <= g["time_before_s"] * (1 + 1e-12)
        assert g["time_after_s"] <= g["time_before_aggregate_s"] * (1 + 1e-12)
        assert g["time_before_aggregate_s"] <= g["time_before_s"] * (1 + 1e-12)


def test_fusion_in_the_memory_and_compute_bound_cases():
    dev = uv.get_device("a6000", "llm-viewer")
    chain = [uv.Operation.matmul(2000, 1000, 2000, name="linear"), uv.Operation.elementwise(2000 * 2000, 4)]
    g = uv.fusion_gain(chain, dev)  # the survey's compute-bound case: AI 250 -> 500
    assert g["intensity_before"] == pytest.approx(250.5) and g["intensity_after"] == pytest.approx(501.0)
    assert g["bound_before"] == g["bound_after"] == "compute" and g["speedup_aggregate"] == pytest.approx(1.0)
    assert g["speedup"] > 1.3  # run one after another, the activation's memory time is real
    small = [uv.Operation.matmul(2048, 192, 2048, name="linear"), uv.Operation.elementwise(2048 * 2048, 4)]
    g = uv.fusion_gain(small, dev)  # memory-bound before and after: time falls with the bytes
    assert g["bound_before"] == g["bound_after"] == "memory"
    assert g["speedup"] == pytest.approx(g["bytes_before"] / g["bytes_after"], rel=1e-9)


def test_three_operation_chain():
    a = uv.Operation("a", 10, 100, 40)
    b = uv.Operation("b", 10, 50, 40)  # reads a's 40 bytes plus 10 of its own
    c = uv.Operation("c", 10, 40, 8)
    f = uv.fuse([a, b, c])
    assert (f.flops, f.load_bytes, f.store_bytes, f.name) == (30, 110, 8, "a+b+c")


def test_fusion_rejects_bad_chains():
    a = uv.Operation("a", 10, 100, 40)
    with pytest.raises(ValueError, match="at least two"):
        uv.fuse([a])
    with pytest.raises(ValueError, match="loads 10 B but 'a' stores 40 B"):
        uv.fuse([a, uv.Operation("b", 1, 10, 1)])
    with pytest.raises(TypeError, match="list of Operation"):
        uv.fuse(a)
    with pytest.raises(TypeError, match="Operation objects"):
        uv.fuse([a, (1, 2, 3)])


def test_operation_rejects_bad_input():
    with pytest.raises(ValueError, match="neither flops nor bytes"):
        uv.Operation("empty", 0, 0, 0)
    with pytest.raises(ValueError, match="load_bytes must be >= 0"):
        uv.Operation("neg", 1, -1, 0)
    with pytest.raises(TypeError, match="name must be a str"):
        uv.Operation(3, 1, 1, 1)
    assert uv.Operation("pure compute", 10, 0, 0).intensity == math.inf


def test_load_compute_store_schedules():
    op = uv.Operation.matmul(2048, 4096, 4096, name="prefill q_proj")
    df = uv.load_compute_store(op, "a6000")
    serial = df[df["schedule"] == "serial"]
    overlapped = df[df["schedule"] == "overlapped"]
    dev = uv.get_device("a6000")
    assert serial["end_s"].max() == pytest.approx(op.load_bytes / dev.bandwidth + op.flops / dev.peak("fp16")
                                                  + op.store_bytes / dev.bandwidth)
    assert overlapped["end_s"].max() == pytest.approx(op.time("a6000"))  # the roofline's assumption
    assert (df["duration_s"] >= 0).all() and set(df["phase"]) == {"load", "compute", "store"}
    with pytest.raises(TypeError, match="Operation"):
        uv.load_compute_store((1, 2), "a6000")


# --- the critical batch size -----------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(pair=st.sampled_from([p for p in PAIRS if p[1] in ("fp16", "bf16", "fp32", "int8")]),
       k=st.integers(64, 32768), n=st.integers(64, 32768))
def test_critical_batch_size_is_the_first_compute_bound_size(pair, k, n):
    dev, dtype = uv.get_device(pair[0]), pair[1]
    m = uv.critical_batch_size(dev, dtype, k, n)
    ridge = dev.ridge_point(dtype)
    ceiling = 2 * k * n / ((k + n) * uv.DTYPES[dtype])  # intensity as m -> infinity
    if m is None:
        assert ceiling <= ridge * (1 + 1e-9)
        return
    f, q = uv.matmul_cost(m, k, n, dtype)
    assert uv.bound(f / q, dev, dtype) == "compute"
    if m > 1:
        f, q = uv.matmul_cost(m - 1, k, n, dtype)
        assert uv.bound(f / q, dev, dtype) == "memory"


def test_critical_batch_size_examples():
    h100 = uv.get_device("h100-sxm")
    m = uv.critical_batch_size(h100, "bf16", 8192, 8192)
    assert h100.ridge_point("bf16") < m < 1.2 * h100.ridge_point("bf16")  # ≈ the ridge for 16-bit weights
    w4 = uv.critical_batch_size(h100, "bf16", 8192, 8192, weight_dtype="int4")
    assert w4 < m / 3  # 4-bit weights need ~4x fewer tokens
    assert uv.critical_batch_size("a6000", "fp16", 64, 64) is None


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), [1.0, -2.0], [0.0]])
def test_intensity_must_be_positive_and_finite(bad):
    with pytest.raises(ValueError, match="intensity"):
        uv.attainable_performance(bad, "a6000")
    with pytest.raises(ValueError, match="intensity"):
        uv.bound(bad, "a6000")


@pytest.mark.parametrize("bad", ["10", None, {"i": 1}, True])
def test_intensity_must_be_a_number(bad):
    with pytest.raises(TypeError, match="intensity"):
        uv.attainable_performance(bad, "a6000")


def test_bad_devices_and_dtypes():
    with pytest.raises(ValueError, match="Did you mean 'a6000'"):
        uv.attainable_performance(10, "a600")
    with pytest.raises(TypeError, match="device must be a Device"):
        uv.roofline_time(1, 1, 6000)
    with pytest.raises(ValueError, match="no fp8 peak"):
        uv.ridge_point("a6000", "fp8")
    with pytest.raises(ValueError, match="unknown data type"):
        uv.place(1e9, 1e6, "a6000", "fp9")
    with pytest.raises(ValueError, match="unknown data type"):
        uv.matmul_cost(1, 2, 3, "fp9")


def test_bad_flops_and_bytes():
    with pytest.raises(ValueError, match="both are zero"):
        uv.roofline_time(0, 0, "a6000")
    with pytest.raises(ValueError, match="bytes must be >= 0"):
        uv.roofline_time(1e9, -5, "a6000")
    with pytest.raises(ValueError, match="flops must be > 0"):
        uv.place(0, 10, "a6000")
    with pytest.raises(TypeError, match="m must be an int"):
        uv.matmul_cost(1.5, 2, 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        uv.matmul_cost(1, 0, 3)
    with pytest.raises(ValueError, match="n_inputs"):
        uv.elementwise_cost(10, 1, n_inputs=0, n_outputs=0)


def test_roofline_curve():
    df = uv.roofline_curve("a6000", "fp16", n=2)
    r = uv.ridge_point("a6000")
    assert r in set(df["intensity"]) and len(df) == 3
    assert df["flop_s"].max() == uv.get_device("a6000").peak("fp16")
    with pytest.raises(ValueError, match="n must be >= 2"):
        uv.roofline_curve("a6000", n=1)


# --- charts and the explorer ----------------------------------------------------------------------


def spec(chart) -> dict:
    return chart.to_dict()


def test_charts_build_and_render_as_svg():
    lv = uv.get_device("a6000", "llm-viewer")
    charts = [
        rplots.roofline_chart([(lv, "fp16")], log=False, shade=True),
        rplots.roofline_chart([(lv, "fp16"), (lv, "int8")], color="dtype",
                              points=pd.DataFrame({"intensity": [1.0], "flop_s": [768e9]})),
        rplots.timeline_chart(uv.load_compute_store(uv.Operation.matmul(1, 64, 64), lv)),
        rplots.memory_hierarchy_chart(["a6000", "i9-13900k"]),
        rplots.interactive_roofline_chart(),
    ]
    for c in charts:
        d = spec(c)
        assert d["usermeta"]["embedOptions"]["renderer"] == "svg"
        assert len(json.dumps(d)) < 150_000, "keep chart data small (pages stay under 1 MB)"


def test_roofline_lines_use_the_library():
    df = rplots.roofline_lines([("a6000", "fp16")], x_domain=[1, 1000])
    assert list(df["intensity"]) == [1, pytest.approx(uv.ridge_point("a6000")), 1000]
    assert list(df["flop_s"]) == [768e9, pytest.approx(154.8e12), 154.8e12]


def test_interactive_chart_has_a_slider_and_dropdowns():
    d = spec(rplots.interactive_roofline_chart(device="a6000", dtype="fp16", intensity=10))
    binds = {p["name"]: p.get("bind", {}) for p in d["params"]}
    assert binds["log_intensity"]["input"] == "range"
    assert binds["device"]["input"] == "select" and "a6000" in binds["device"]["options"]
    assert binds["dtype"]["input"] == "select"
    with pytest.raises(ValueError, match="not among the devices"):
        rplots.interactive_roofline_chart(["a6000"], device="h100")


def test_bad_chart_input():
    with pytest.raises(ValueError, match="at least one roofline"):
        rplots.roofline_chart([])
    with pytest.raises(ValueError, match="color must be"):
        rplots.roofline_chart(["a6000"], color="rainbow")
    with pytest.raises(ValueError, match="points need"):
        rplots.roofline_chart(["a6000"], points=pd.DataFrame({"x": [1]}))
    with pytest.raises(TypeError, match="a roofline is"):
        rplots.roofline_chart([42])


def test_memory_hierarchy_table_is_the_survey_figure():
    t = rplots.memory_hierarchy_table()
    gpu = t[t["level"] == "GPU ↔ GDDR/HBM"].iloc[0]
    assert (gpu["min"], gpu["max"]) == (400, 2000)
    assert (t["min"] <= t["max"]).all() and t["source"].str.contains("Fig. 17").all()


def test_explorer_recomputes_on_change():
    pytest.importorskip("ipywidgets")
    ex = uv.roofline_explorer(["a6000", "h100"], dtype="fp16", intensity=1.0)
    controls, chart, table = ex.children
    assert "memory-bound" in table.value and "<svg" in chart.value
    slider = controls.children[1].children[1].children[1]
    slider.value = 5000.0
    assert "compute-bound" in table.value and "memory-bound" not in table.value
    controls.children[1].children[0].children[1].value = "fp8"  # the A6000 has no FP8 units
    assert "no fp8 peak" in table.value
    with pytest.raises(ValueError, match="intensity must be"):
        uv.roofline_explorer(intensity=0)


def test_roofline_table():
    ops = [uv.Operation.matmul(1, 4096, 4096, name="decode"), uv.Operation.matmul(2048, 4096, 4096, name="prefill")]
    t = uv.roofline_table(ops, "a6000")
    assert list(t["operation"]) == ["decode", "prefill"] and list(t["bound"]) == ["memory", "compute"]
    for op, row in zip(ops, t.itertuples(), strict=True):
        assert row.time_us == pytest.approx(op.time("a6000") * 1e6)
        assert row.attainable_TFLOP_s * 1e12 == pytest.approx(uv.attainable_performance(op.intensity, "a6000"))
    assert t["fraction_of_peak"].iloc[1] == 1.0
    with pytest.raises(TypeError, match="list of Operation"):
        uv.roofline_table(ops[0], "a6000")
    with pytest.raises(TypeError, match="Operation objects"):
        uv.roofline_table([1.0], "a6000")
