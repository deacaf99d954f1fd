"""Measuring this machine: structure, units and sanity ranges that hold on any real machine (never speeds).

Sizes here are tiny so the tests run in seconds; what a test checks cannot depend on how loaded the machine
is: shapes, units, byte and FLOP counts (exact, from the library), and rates inside bounds no real machine
leaves (0.1 MB/s to 10 TB/s, 0.1 MFLOP/s to 1 PFLOP/s: loose on purpose, a tiny matmul on a busy
machine can be a thousand times slower than the peak, yet a GB/s-for-B/s slip of 1e9 still fails).
"""

from __future__ import annotations

import importlib

import pytest

import unveiled as uv

measure = importlib.import_module("unveiled.measure")
hw = importlib.import_module("unveiled.hardware")
probe = importlib.import_module("unveiled.matmul_probe")
torch = pytest.importorskip("torch")

SMALL = 4 * 2**20  # bytes per array


@pytest.fixture
def clean_registry():
    hw._load()
    registry, aliases = dict(hw._REGISTRY), dict(hw._ALIASES)
    cache = dict(measure._CACHE)
    yield
    hw._REGISTRY.clear()
    hw._REGISTRY.update(registry)
    hw._ALIASES.clear()
    hw._ALIASES.update(aliases)
    measure._CACHE.clear()
    measure._CACHE.update(cache)


def test_bandwidth_rows_and_byte_counts():
    raw = uv.measure_bandwidth(SMALL, repeats=3)
    assert list(raw.columns) == measure._RAW_COLUMNS
    assert len(raw) == 6 and set(raw["benchmark"]) == {"copy", "triad"}
    n = SMALL // 4
    copy, triad = raw[raw["benchmark"] == "copy"], raw[raw["benchmark"] == "triad"]
    assert (copy["bytes"] == 2 * n * 4).all() and (copy["flops"] == 0).all()
    assert (triad["bytes"] == 3 * n * 4).all() and (triad["flops"] == 2 * n).all()
    assert (raw["time_s"] > 0).all()
    assert raw["bytes_s"].between(1e5, 1e13).all()
    assert (raw["bytes_s"] == raw["bytes"] / raw["time_s"]).all()


def test_matmul_rows_and_flop_counts():
    raw = uv.measure_matmul(sizes=(64, 96), dtypes=("fp32", "bfloat16"), repeats=2)
    assert set(raw["benchmark"]) == {"matmul 64", "matmul 96"}
    assert set(raw["dtype"]) <= {"fp32", "bf16"} and "fp32" in set(raw["dtype"])
    row = raw[(raw["benchmark"] == "matmul 96") & (raw["dtype"] == "fp32")].iloc[0]
    assert row["flops"] == 2 * 96**3 and row["bytes"] == 3 * 96 * 96 * 4
    assert raw["flop_s"].between(1e5, 1e15).all()


def test_measure_machine_returns_a_cpu_device(clean_registry):
    m = uv.measure_machine(array_bytes=SMALL, matmul_sizes=(64,), repeats=2, progress=False, cache=False)
    dev = m.device
    assert isinstance(dev, uv.Device) and dev.name == "this-machine" and dev.kind == "cpu"
    assert "fp32" in dev.peaks and set(dev.peaks) <= {"fp32", "bf16"}
    assert 1e5 <= dev.bandwidth <= 1e13
    assert all(1e5 <= p <= 1e15 for p in dev.peaks.values())
    assert dev.bandwidth == m.summary.loc[m.summary["benchmark"] == "triad", "bytes_s_best"].iloc[0]
    assert dev.peak("fp32") == m.raw.loc[(m.raw["kind"] == "matmul") & (m.raw["dtype"] == "fp32"), "flop_s"].max()
    assert uv.get_device("this-machine") is dev  # registered
    assert dev.memory_bytes is None or dev.memory_bytes > 2**28
    assert m.description and "measured" in dev.display_name
    device, raw = m  # unpacks
    assert device is dev and raw is m.raw
    table = m.table()
    assert list(table.columns) == ["benchmark", "unit", "best", "median", "spread_pct", "repeats", "path"]
    assert set(table["path"]) <= {"-", "native", "emulated"} and m.path("fp32") == "native"
    assert m.isa["torch_cpu_capability"] == uv.environment.cpu_capability()
    assert set(m.paths["dtype"]) == {"fp32", "bf16"} and m.settings["budget_s"] > 0
    assert (table["best"] >= table["median"] * (1 - 1e-12)).all()  # best rate >= median rate
    assert (table["spread_pct"] >= 0).all()
    assert uv.roofline_time(1e9, 1e6, "this-machine", "fp32") > 0  # usable like any device


def test_measure_machine_is_cached_per_settings(clean_registry):
    kw = {"array_bytes": SMALL, "matmul_sizes": (64,), "repeats": 2, "progress": False}
    a = uv.measure_machine(**kw)
    b = uv.measure_machine(**kw)
    assert a is b
    c = uv.measure_machine(**kw, cache=False)
    assert c is not a


def test_measure_kernels_places_kernels_with_library_costs(clean_registry):
    m = uv.measure_machine(array_bytes=SMALL, matmul_sizes=(64,), repeats=2, progress=False, cache=False)
    k = uv.measure_kernels(m.device, array_bytes=2**20, repeats=2, progress=False)
    assert {"kernel", "shape", "dtype", "flops", "bytes", "intensity", "time_best_s", "time_median_s", "spread",
            "achieved_flop_s", "predicted_time_s", "fraction_of_roofline", "bound"} <= set(k.columns)
    assert len(k) >= 4
    gemv = k[k["kernel"] == "GEMV (1 token)"].iloc[0]
    rows = 2**20 // 4 // 256
    assert (gemv["flops"], gemv["bytes"]) == uv.matmul_cost(1, 256, rows, "fp32")
    assert (k["time_best_s"] <= k["time_median_s"]).all()
    assert (k["fraction_of_roofline"] > 0).all()
    for row in k.itertuples():
        dtype = row.dtype if m.device.has(row.dtype) else "fp32"
        assert row.predicted_time_s == pytest.approx(uv.roofline_time(row.flops, row.bytes, m.device, dtype))
        assert row.bound == uv.bound(row.intensity, m.device, dtype)


def test_default_array_size_exceeds_the_cache_within_limits():
    size = measure.default_array_bytes()
    assert 8 * 2**20 <= size <= 512 * 2**20 and size % 2**20 == 0
    llc = measure.last_level_cache_bytes()
    assert llc is None or llc > 0


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: uv.measure_bandwidth(SMALL, repeats=0), ValueError, "repeats must be >= 1"),
    (lambda: uv.measure_bandwidth(100), ValueError, "array_bytes must be >= 4096"),
    (lambda: uv.measure_bandwidth(2.5e6), TypeError, "array_bytes must be an int"),
    (lambda: uv.measure_matmul(sizes=(), repeats=1), ValueError, "at least one"),
    (lambda: uv.measure_matmul(sizes=8, repeats=1), ValueError, "matrix size must be >= 16"),
    (lambda: uv.measure_matmul(sizes=64, dtypes=("int8",), repeats=1), ValueError, "fp32, bf16 and fp16 only"),
    (lambda: uv.measure_matmul(sizes=64, dtypes=("fp12",), repeats=1), ValueError, "unknown data type"),
    (lambda: uv.measure_kernels("a600"), ValueError, "unknown device"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_thread_clock_and_bad_clock():
    from unveiled import measure

    rows = measure.measure_bandwidth(1 << 16, repeats=2, clock="thread")
    assert (rows["time_s"] >= 0).all()
    with pytest.raises(ValueError, match="clock must be one of"):
        measure.measure_bandwidth(1 << 16, repeats=2, clock="cpu")
    with pytest.raises(ValueError, match="clock must be one of"):
        measure.measure_machine(clock="sundial", cache=False, register=False, progress=False)


# --- measuring within a budget, on any CPU ---------------------------------------------------------------


def test_matmul_paths_compares_each_type_with_fp32():
    paths = probe.matmul_paths(("fp32", "bf16"), size=64, repeats=2, cache=False)
    assert list(paths.columns) == ["dtype", "probe_size", "probe_flop_s", "vs_fp32", "path", "cpu_flags"]
    fp32 = paths.set_index("dtype").loc["fp32"]
    assert fp32["vs_fp32"] == 1.0 and fp32["path"] == "native"
    bf16 = paths.set_index("dtype").loc["bf16"]
    assert bf16["path"] == ("emulated" if bf16["vs_fp32"] < probe.EMULATED_BELOW else "native")
    with pytest.raises(ValueError, match="fp32, bf16 and fp16 only"):
        probe.matmul_paths(("int8",))


@pytest.mark.parametrize(("rate", "budget", "expected", "note"), [
    (1e11, 10.0, (1024, 2048), ""),             # a fast roof: both sizes fit
    (1e11, 0.5, (1024,), "skipped"),            # 2048³ would overrun: dropped, 1024 kept
    (2e9, 2.0, (512,), "measured at 512"),      # an emulated bf16 (~2 GFLOP/s): a smaller size that fits
    (2e9, None, (1024, 2048), ""),              # no budget: as asked
    (1e3, 1.0, (32,), "measured at 32"),        # absurdly slow: the smallest size, never minutes
])
def test_plan_matmul_sizes_keeps_what_fits(rate, budget, expected, note):
    sizes, why = probe.plan_matmul_sizes(rate, (1024, 2048), budget)
    assert sizes == expected and note in why
    if budget is not None and expected[0] > 32:
        assert sum(3 * 2.0 * n**3 / rate for n in sizes) <= budget


def test_time_repeats_stops_when_the_budget_is_spent(monkeypatch):
    timing = importlib.import_module("unveiled.timing")
    ticks = iter(range(10_000))  # a fake clock: each reading advances one "second"
    monkeypatch.setattr(timing, "clock", lambda name="wall", single_thread=False: lambda: float(next(ticks)))
    calls = []
    times = timing.time_repeats(lambda: calls.append(1), 50, budget_s=6.5)
    # warm-up measured 1 s, so 5.5 s are left for runs of ~1 s: 5 timed runs after the warm-up.
    assert times == [1.0] * 5 and len(calls) == 6
    assert timing.time_repeats(lambda: None, 4, budget_s=0.5, min_repeats=2) == [1.0, 1.0]  # at least two
    assert len(timing.time_repeats(lambda: None, 4)) == 4  # no budget: all repeats
    assert timing.repeats_that_fit(0.1, 10, 0.35) == 3 and timing.repeats_that_fit(5.0, 10, 1.0, 2) == 2


@pytest.mark.slow
@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="x86 instruction-set limits")
def test_an_avx2_only_cpu_measures_bf16_as_emulated_at_a_small_size():
    """PyTorch and oneDNN capped at AVX2 behave as a CPU without native bf16: the probe must say so and the
    bf16 product must be shrunk to fit the budget, instead of timing 2048³ emulated products for minutes."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json, unveiled as uv; m = uv.measure_machine(budget_s=6, register=False, cache=False); "
            "print(json.dumps({'path': m.path('bf16'), 'cap': m.isa['torch_cpu_capability'], 'notes': m.notes, "
            "'sizes': sorted(set(m.raw[m.raw.dtype == 'bf16'].benchmark))}))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["cap"] == "AVX2" and result["path"] == "emulated"
    assert result["sizes"] and all(int(b.split()[1]) < 2048 for b in result["sizes"]), result
    assert any(n.startswith("bf16") for n in result["notes"]), result
