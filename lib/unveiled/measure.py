"""Measure this machine's roofline: memory bandwidth, matmul throughput, and where real kernels land.

Datasheet rooflines are promises; a measured roofline is what your machine delivers. This module times
STREAM-style array kernels [McCalpin 1995] for the memory roof and large matrix multiplications for the
compute roof, and returns a :class:`~unveiled.hardware.Device` named ``"this-machine"`` that the rest of the
library uses like any datasheet device (roofline times, decode-time predictions in later chapters).

Robustness to noise: every benchmark runs up to ``repeats`` times after a warm-up (:mod:`unveiled.timing`).
The **best** repeat estimates what the hardware can do (noise only ever slows a run down, so the fastest run is
the least disturbed one), and is what the measured :class:`Device` uses; the **median** and the spread
(``(slowest − fastest) / median``) say how noisy the machine was. Data are seeded. Arrays are sized to exceed the
last-level cache, so the bandwidth is the DRAM's, not a cache's.

Any CPU, within a budget: a data type is only as fast as the instructions this CPU has for it. Without native
bf16 (AVX512_BF16 or AMX) PyTorch emulates bf16 matrix products, about 40× slower than fp32, and fp16 likewise
without AVX512_FP16 or AMX-FP16. :func:`matmul_paths` finds out with a quick probe at a small size, and every
timing here runs within ``budget_s`` seconds: the probe decides which matrix sizes fit, a data type without a
fast kernel is measured at a size that fits (and reported as emulated), and repeats stop when the budget is spent.

Stable API (other chapters build on it)::

    m = uv.measure_machine()          # MachineMeasurement, cached per process and settings (~10 s budget)
    m.device                          # Device "this-machine": bandwidth (B/s), peaks {"fp32": ..., "bf16": ...}
    m.paths                           # per data type: probe rate, vs fp32, "native" or "emulated"
    m.raw                             # one row per timed repeat
    m.summary                         # one row per benchmark: best, median, spread
    dev, raw = uv.measure_machine()   # also unpacks
    uv.measure_kernels(m.device)      # GEMV, GEMMs and an elementwise op, timed and placed on the roofline

Introduced in Chapter 1.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._validate import check_int, check_positive
from .environment import cpu_capability, cpu_flags, cpu_name, isa_limits, machine_description
from .hardware import Device, canonical_dtype, get_device
from .matmul_probe import (
    EMULATED_BELOW,
    NATIVE_FLAGS,
    check_matmul_dtypes,
    matmul_operands,
    matmul_paths,
    plan_matmul_sizes,
)
from .roofline import bound, elementwise_cost, matmul_cost, roofline_time
from .session import progress_bar
from .timing import CLOCKS, Budget, clock, time_repeats

__all__ = [
    "CLOCKS",
    "EMULATED_BELOW",
    "MachineMeasurement",
    "default_array_bytes",
    "last_level_cache_bytes",
    "matmul_paths",
    "measure_bandwidth",
    "measure_kernels",
    "measure_machine",
    "measure_matmul",
    "plan_matmul_sizes",
]

_MiB = 2**20
_RAW_COLUMNS = ["benchmark", "kind", "dtype", "repeat", "flops", "bytes", "time_s", "flop_s", "bytes_s"]


def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache in bytes (from Linux sysfs), or None where it cannot be read."""
    sizes = []
    for f in pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        with contextlib.suppress(OSError, ValueError):
            text = f.read_text().strip().upper()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * mult)
    return max(sizes) if sizes else None


def _available_memory_bytes() -> int | None:
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def _total_memory_bytes() -> int | None:
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def default_array_bytes() -> int:
    """Bytes per array for the bandwidth benchmark: eight times the last-level cache, between 256 and 512 MiB.

    Arrays that fit in a cache measure the cache. Twice the reported cache is not enough: a virtual machine may
    report less cache than its CPU holds (a 2-core cloud VM reporting 32 MiB measured a triad 14 % faster on
    64 MiB arrays than on 512 MiB ones, and within 2 % on 256 MiB ones), so the floor is generous. The cap keeps
    the two arrays (≤ 1 GiB) affordable, and the size never exceeds an eighth of the free memory.
    """
    llc = last_level_cache_bytes() or 32 * _MiB
    size = min(512 * _MiB, max(256 * _MiB, 8 * llc))
    free = _available_memory_bytes()
    if free:
        size = min(size, max(8 * _MiB, free // 8))
    return int(size // _MiB * _MiB)


def _torch():
    try:
        import torch

        return torch
    except ImportError:
        return None


def _repeats_for(repeats: int, flops: float, nbytes: float) -> int:
    """More repeats for cheap benchmarks (up to 4x): a run of a few ms is easily disturbed, and costs little.

    The rule depends only on the work (operations, and bytes weighted 16 ops each), never on a timing.
    """
    work = max(flops, 16.0 * nbytes)
    return repeats * int(min(4, max(1, round(8e9 / work))))


def _rows(name: str, kind: str, dtype: str, flops: float, nbytes: float, times: list[float]) -> list[dict]:
    return [
        {"benchmark": name, "kind": kind, "dtype": dtype, "repeat": i, "flops": flops, "bytes": nbytes,
         "time_s": t, "flop_s": flops / t, "bytes_s": nbytes / t}
        for i, t in enumerate(times)
    ]


@contextlib.contextmanager
def _progress(total: int, enabled: bool, desc: str) -> Iterator[Callable[[str], None]]:
    if not enabled:
        yield lambda label: None
        return
    bar = progress_bar(total=total, desc=desc, leave=True)

    def step(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    try:
        yield step
    finally:
        bar.close()


def measure_bandwidth(array_bytes: int | None = None, repeats: int = 7, *, seed: int = 0,
                      progress: bool = False, clock: str = "wall", budget_s: float | None = 10.0) -> pd.DataFrame:
    """Time STREAM-style copy and triad kernels on two large float32 arrays; one row per repeat.

    ``copy`` is ``a[:] = b`` (reads and writes one array: 2 words per element); ``triad`` is the in-place
    ``a += s·b`` (reads two arrays, writes one: 3 words and 2 operations per element, the traffic of
    STREAM's triad [McCalpin 1995] with one array fewer). Bytes are counted as STREAM does, without
    write-allocate traffic. Uses PyTorch (multi-threaded) when installed, else NumPy (single-threaded).
    ``array_bytes`` defaults to :func:`default_array_bytes`; at most ``repeats`` repeats per kernel run, fewer
    when ``budget_s`` seconds would be exceeded (at least two). Introduced in Chapter 1.
    """
    repeats = check_int("repeats", repeats)
    array_bytes = default_array_bytes() if array_bytes is None else check_int("array_bytes", array_bytes, minimum=4096)
    _check_clock(clock)
    budget = Budget(budget_s)
    n = array_bytes // 4
    torch = _torch()
    rng = np.random.default_rng(seed)
    scale = float(rng.uniform(0.5, 1.5))
    if torch is not None:
        a = torch.full((n,), 1.0, dtype=torch.float32)
        b = torch.full((n,), float(rng.uniform(0.5, 1.5)), dtype=torch.float32)
        copy = lambda: a.copy_(b)  # noqa: E731
        triad = lambda: a.add_(b, alpha=scale * 1e-6)  # noqa: E731 - tiny alpha keeps the values bounded
    else:
        a = np.full(n, 1.0, dtype=np.float32)
        b = np.full(n, rng.uniform(0.5, 1.5), dtype=np.float32)
        copy = lambda: np.copyto(a, b)  # noqa: E731
        # NumPy has no fused a += s*b without a temporary; a += b moves the same 3 words per element.
        triad = lambda: np.add(a, b, out=a)  # noqa: E731
    rows = []
    reps = min(repeats, 2)
    with _progress(2, progress, "bandwidth") as step:
        times = time_repeats(copy, repeats, budget_s=_finite(budget.share(2)), clock_name=clock, min_repeats=reps)
        rows += _rows("copy", "bandwidth", "fp32", 0.0, 2.0 * n * 4, times)
        step("copy")
        times = time_repeats(triad, repeats, budget_s=_finite(budget.share(1)), clock_name=clock, min_repeats=reps)
        rows += _rows("triad", "bandwidth", "fp32", 2.0 * n, 3.0 * n * 4, times)
        step("triad")
    return pd.DataFrame(rows, columns=_RAW_COLUMNS)


def _check_clock(name: str) -> None:
    """Validate a clock name early, before any array is allocated (raises ``ValueError``)."""
    clock(name)


def _finite(seconds: float) -> float | None:
    return None if np.isinf(seconds) else max(seconds, 1e-9)


def measure_matmul(sizes: int | tuple[int, ...] = (1024, 2048), dtypes: tuple[str, ...] = ("fp32", "bf16"),
                   repeats: int = 5, *, seed: int = 0, progress: bool = False, clock: str = "wall",
                   budget_s: float | None = 20.0) -> pd.DataFrame:
    """Time square ``n×n`` matrix multiplications per size and data type (PyTorch; NumPy for fp32 without it).

    A large GEMM has intensity ``2n / (3 × bytes per element)`` ops/byte (hundreds for ``n ≥ 1024``), far
    above any CPU's ridge point, so its rate estimates the compute roof. Two sizes guard against a size the
    math library happens to handle badly. With PyTorch a probe (:func:`matmul_paths`) first tells how fast each
    data type runs here, and :func:`plan_matmul_sizes` keeps the sizes that fit each type's share of
    ``budget_s`` (an emulated bf16 is measured at a smaller size instead of running for minutes). One row per
    repeat; ``.attrs["notes"]`` says what was skipped or shrunk and why, ``.attrs["paths"]`` holds the probe.
    Data types without a kernel are skipped. Introduced in Chapter 1.
    """
    sizes = (sizes,) if not isinstance(sizes, (tuple, list)) else tuple(sizes)
    if not sizes:
        raise ValueError("sizes must name at least one matrix size, e.g. (1024, 2048)")
    sizes = tuple(check_int("matrix size", n, minimum=16, maximum=16384) for n in sizes)
    repeats = check_int("repeats", repeats)
    dtypes = check_matmul_dtypes(dtypes)
    _check_clock(clock)
    budget = Budget(budget_s)
    torch = _torch()
    paths = matmul_paths(dtypes, clock=clock) if torch is not None else None
    rows, notes = [], []
    with _progress(len(dtypes), progress, "matmul") as step:
        for i, dtype in enumerate(dtypes):
            share = _finite(budget.share(len(dtypes) - i))
            if torch is None:
                if dtype != "fp32":
                    notes.append(f"{dtype}: skipped (needs PyTorch)")
                    step(f"{dtype} skipped")
                    continue
                rate = float("nan")
            else:
                probe = paths.set_index("dtype").loc[dtype]
                if probe["path"] == "unsupported":
                    notes.append(f"{dtype}: skipped (no CPU kernel in this PyTorch)")
                    step(f"{dtype} unsupported")
                    continue
                rate = float(probe["probe_flop_s"])
            chosen, note = plan_matmul_sizes(rate, sizes, share)
            if note:
                notes.append(f"{dtype}: {note}")
            for n in chosen:
                flops, nbytes = matmul_cost(n, n, n, dtype)
                if torch is not None:
                    a, b = matmul_operands(torch, n, dtype, seed)
                    fn = lambda a=a, b=b: torch.mm(a, b)  # noqa: E731
                else:
                    rng = np.random.default_rng(seed)
                    x, y = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
                    fn = lambda x=x, y=y: x @ y  # noqa: E731
                left = _finite(budget.share(len(dtypes) - i) / max(1, len(chosen) - chosen.index(n)))
                times = time_repeats(fn, _repeats_for(repeats, flops, nbytes), budget_s=left, clock_name=clock,
                                     min_repeats=min(2, repeats))
                rows += _rows(f"matmul {n}", "matmul", dtype, flops, nbytes, times)
            step(dtype)
    out = pd.DataFrame(rows, columns=_RAW_COLUMNS)
    out.attrs["notes"] = notes
    out.attrs["paths"] = paths
    return out


def _summarise(raw: pd.DataFrame) -> pd.DataFrame:
    g = raw.groupby(["benchmark", "kind", "dtype"], sort=False)
    out = g.agg(
        repeats=("time_s", "size"),
        flops=("flops", "first"),
        bytes=("bytes", "first"),
        time_best_s=("time_s", "min"),
        time_median_s=("time_s", "median"),
        time_worst_s=("time_s", "max"),
    ).reset_index()
    out["flop_s_best"] = out["flops"] / out["time_best_s"]
    out["flop_s_median"] = out["flops"] / out["time_median_s"]
    out["bytes_s_best"] = out["bytes"] / out["time_best_s"]
    out["bytes_s_median"] = out["bytes"] / out["time_median_s"]
    out["spread"] = (out["time_worst_s"] - out["time_best_s"]) / out["time_median_s"]
    return out


@dataclass
class MachineMeasurement:
    """The measured roofline of this machine (see :func:`measure_machine`).

    ``device`` is the measured :class:`Device`; ``raw`` has one row per timed repeat (columns ``benchmark``,
    ``kind``, ``dtype``, ``repeat``, ``flops``, ``bytes``, ``time_s``, ``flop_s``, ``bytes_s``); ``summary``
    one row per benchmark with best, median and spread; ``paths`` the probe of :func:`matmul_paths` (which
    data types run natively here); ``isa`` PyTorch's CPU capability and the CPU flags that matter;
    ``notes`` what the budget made the measurement skip or shrink; ``description`` names the machine and
    the date. Unpacks as ``device, raw = measurement``. Introduced in Chapter 1.
    """

    device: Device
    raw: pd.DataFrame
    summary: pd.DataFrame
    description: str
    settings: dict = field(default_factory=dict)
    paths: pd.DataFrame | None = None
    isa: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __iter__(self):
        yield self.device
        yield self.raw

    def path(self, dtype: str) -> str:
        """``"native"``, ``"emulated"`` or ``"unsupported"`` for ``dtype``'s matrix products on this machine."""
        dtype = canonical_dtype(dtype)
        if self.paths is None or dtype not in set(self.paths["dtype"]):
            return "native" if dtype == "fp32" else "unknown"
        return str(self.paths.set_index("dtype").loc[dtype, "path"])

    def paths_table(self) -> pd.DataFrame:
        """The probe as a reader's table: data type, one-thread rate of a small product, ratio to fp32, path."""
        if self.paths is None:
            raise RuntimeError("this measurement has no matmul probe (it was made without PyTorch)")
        p = self.paths
        return pd.DataFrame({"dtype": p["dtype"], f"GFLOP/s ({int(p['probe_size'].iloc[0])}³, 1 thread)":
                             (p["probe_flop_s"] / 1e9).round(1), "× fp32": p["vs_fp32"].round(3), "path": p["path"],
                             "CPU flags for it": p["cpu_flags"]})

    def dtype_lesson(self, dtype: str = "bf16", gemv: tuple[int, int] = (4096, 4096)) -> dict:
        """What this machine's roofline says about computing in ``dtype`` instead of fp32, as named numbers.

        The measured peaks of both types (``peak_fp32``, ``peak``, ``peak_ratio``), the ridge points
        (``ridge_fp32``, ``ridge``, ops/byte), and the roofline time of one token through a ``gemv`` = (in, out)
        linear layer in each type (``gemv_fp32_s``, ``gemv_s``, ``gemv_speedup``: fp32 time / ``dtype`` time,
        above 1 when halving the bytes pays) with which roof binds (``gemv_bound``), plus ``path``, the CPU
        ``capability`` and ``flags``. Introduced in Chapter 1.
        """
        dtype = canonical_dtype(dtype)
        dev = self.device
        if not dev.has(dtype):
            raise ValueError(f"{dtype} was not measured on this machine; measured: {dev.dtypes}")
        k, n = gemv
        f32 = matmul_cost(1, k, n, "fp32")
        low = matmul_cost(1, k, n, dtype)
        t32, t = roofline_time(*f32, dev, "fp32"), roofline_time(*low, dev, dtype)
        return {"dtype": dtype, "path": self.path(dtype), "capability": self.isa.get("torch_cpu_capability"),
                "flags": self.isa.get("cpu_flags", []), "limits": self.isa.get("limits", {}),
                "peak_fp32": dev.peak("fp32"), "peak": dev.peak(dtype), "peak_ratio": dev.peak(dtype) / dev.peak("fp32"),
                "ridge_fp32": dev.ridge_point("fp32"), "ridge": dev.ridge_point(dtype),
                "gemv": gemv, "gemv_fp32_s": t32, "gemv_s": t, "gemv_speedup": t32 / t,
                "gemv_bound": bound(low[0] / low[1], dev, dtype), "gemv_intensity": low[0] / low[1]}

    def table(self) -> pd.DataFrame:
        """A short readable summary: one row per benchmark in GB/s or GFLOP/s, best and median, spread, and
        for matrix products whether the data type runs natively here."""
        s = self.summary
        bw = s["kind"] == "bandwidth"
        return pd.DataFrame({
            "benchmark": s["benchmark"] + " (" + s["dtype"] + ")",
            "unit": np.where(bw, "GB/s", "GFLOP/s"),
            "best": np.where(bw, s["bytes_s_best"], s["flop_s_best"]) / 1e9,
            "median": np.where(bw, s["bytes_s_median"], s["flop_s_median"]) / 1e9,
            "spread_pct": 100 * s["spread"],
            "repeats": s["repeats"],
            "path": [("-" if b else self.path(d)) for b, d in zip(bw, s["dtype"], strict=True)],
        })


_CACHE: dict[tuple, MachineMeasurement] = {}


def _register_device(device: Device) -> None:
    from .hardware import _load, _register

    _load()
    _register(device, overwrite=True)


def measure_machine(*, array_bytes: int | None = None, matmul_sizes: tuple[int, ...] = (1024, 2048),
                    dtypes: tuple[str, ...] = ("fp32", "bf16"), repeats: int = 5, seed: int = 0,
                    register: bool = True, cache: bool = True, progress: bool = False,
                    clock: str = "wall", budget_s: float | None = 10.0) -> MachineMeasurement:
    """Measure this machine's memory bandwidth and matmul peaks and return them as a :class:`Device`.

    The device is named ``"this-machine"`` (kind ``"cpu"``); its ``bandwidth`` is the best triad rate and its
    ``peaks`` the best GEMM rate (over ``matmul_sizes`` and repeats) per data type in ``dtypes`` that ran:
    each data type gets its own measured roof, even where it is far slower than fp32 (an emulated bf16 is
    a real roof of this machine). Everything runs within about ``budget_s`` seconds on any CPU (a third for
    the bandwidth, the rest for the matrix products; see :func:`measure_matmul`). With ``register=True`` it
    becomes available as ``uv.get_device("this-machine")``. With ``cache=True`` a second call with the same
    settings returns the first result instead of measuring again. Data are seeded, so only the timings vary
    between runs. ``clock="thread"`` times the CPU time of the measuring thread instead of elapsed time
    (with one PyTorch thread), for measurements on a busy shared machine. Introduced in Chapter 1.
    """
    _check_clock(clock)
    if budget_s is not None:
        budget_s = float(check_positive("budget_s", budget_s))
    dtypes = check_matmul_dtypes(dtypes)
    matmul_sizes = (matmul_sizes,) if not isinstance(matmul_sizes, (tuple, list)) else tuple(matmul_sizes)
    torch = _torch()
    threads = torch.get_num_threads() if torch is not None else 1
    key = (array_bytes, matmul_sizes, dtypes, repeats, seed, clock, budget_s, threads, cpu_capability())
    if cache and key in _CACHE:
        result = _CACHE[key]
        if register:
            _register_device(result.device)
        return result
    array_bytes = default_array_bytes() if array_bytes is None else array_bytes
    budget = Budget(budget_s)
    with _progress(2, progress, "measuring this machine") as step:
        bw = measure_bandwidth(array_bytes, repeats, seed=seed, clock=clock,
                               budget_s=None if budget_s is None else budget_s / 3)
        step("bandwidth")
        mm = measure_matmul(matmul_sizes, dtypes, repeats, seed=seed, clock=clock, budget_s=_finite(budget.remaining()))
        step("matmul")
    raw = pd.concat([bw, mm], ignore_index=True)
    summary = _summarise(raw)
    triad = summary[summary["benchmark"] == "triad"].iloc[0]
    matmuls = summary[summary["kind"] == "matmul"]
    peaks = {d: float(g["flop_s_best"].max()) for d, g in matmuls.groupby("dtype", sort=False)}
    if not peaks:
        raise RuntimeError("no matrix multiplication could be timed on this machine (is PyTorch or NumPy broken?)")
    desc = machine_description()
    flags = sorted(f for f in cpu_flags() if f in {"avx2", "avx512f", *NATIVE_FLAGS["bf16"], *NATIVE_FLAGS["fp16"]})
    isa = {"torch_cpu_capability": cpu_capability(), "cpu_flags": flags, "limits": isa_limits()}
    settings = {"array_bytes": array_bytes, "matmul_sizes": matmul_sizes, "repeats": repeats, "seed": seed,
                "threads": threads, "backend": "torch" if torch is not None else "numpy", "budget_s": budget_s,
                "elapsed_s": round(budget.elapsed, 2)}
    sizes_used = sorted({int(b.split()[1]) for b in matmuls["benchmark"]})
    device = Device(
        name="this-machine",
        display_name=f"this machine ({cpu_name()}, measured)",
        vendor="measured",
        kind="cpu",
        bandwidth=float(triad.bytes_s_best),
        peaks=peaks,
        memory_bytes=_total_memory_bytes(),
        onchip_bytes=last_level_cache_bytes(),
        preset="datasheet",
        source_url="measured with unveiled.measure_machine()",
        notes=(f"Measured on {desc}: best of {int(triad.repeats)} in-place triads over {array_bytes / _MiB:.0f} MiB "
               f"arrays; best square GEMM of sizes {sizes_used} per data type; {threads} threads "
               f"({settings['backend']})."),
    )
    result = MachineMeasurement(device, raw, summary, desc, settings, mm.attrs.get("paths"), isa,
                                list(mm.attrs.get("notes", [])))
    if cache:
        _CACHE[key] = result
    if register:
        _register_device(device)
    return result


def measure_kernels(device: str | Device = "this-machine", *, array_bytes: int | None = None, repeats: int = 5,
                    seed: int = 0, progress: bool = False, budget_s: float | None = 10.0) -> pd.DataFrame:
    """Time a few real kernels and compare each with its roofline prediction on ``device``.

    The kernels span the intensity axis: an elementwise scale (1 op per 8 bytes), a GEMV ``y = W x`` over a
    weight matrix larger than the cache (a decode step of one linear layer), the same weights with 16 tokens
    (a small-batch GEMM), and square GEMMs in fp32 and (when the device has a bf16 peak) bf16, the bf16 one
    at a size that fits the budget where this CPU emulates bf16. FLOPs and bytes come from
    :func:`~unveiled.matmul_cost` and :func:`~unveiled.elementwise_cost`, not from the timings. Repeats stop
    when ``budget_s`` is spent (at least two per kernel). Columns: ``kernel``, ``shape``, ``dtype``, ``flops``,
    ``bytes``, ``intensity``, ``time_best_s``, ``time_median_s``, ``spread``, ``achieved_flop_s``,
    ``predicted_time_s``, ``fraction_of_roofline`` (predicted / best measured time: 1 means the kernel runs
    at its roof), ``bound``. Needs PyTorch. Introduced in Chapter 1.
    """
    torch = _torch()
    if torch is None:
        raise RuntimeError("measure_kernels needs PyTorch (pip install torch)")
    dev = get_device(device)
    repeats = check_int("repeats", repeats)
    array_bytes = default_array_bytes() if array_bytes is None else check_int("array_bytes", array_bytes,
                                                                              minimum=2**16)
    budget = Budget(budget_s)
    gen = torch.Generator().manual_seed(seed)
    k = 4096 if array_bytes >= 4096 * 4096 else 256
    rows_w = max(16, array_bytes // 4 // k)
    w = torch.full((rows_w, k), 0.5, dtype=torch.float32)  # values do not change the speed; filling is fast
    x1 = torch.rand((1, k), generator=gen)
    linear = torch.nn.functional.linear  # y = x Wᵀ, as a model's linear layer computes it
    x16 = torch.rand((16, k), generator=gen)
    n_sq = 1024 if array_bytes >= 2**24 else 128
    a32 = torch.rand((n_sq, n_sq), generator=gen)
    b32 = torch.rand((n_sq, n_sq), generator=gen)
    kernels = [  # (name, shape, dtype, function, (flops, bytes))
        ("scale", f"x *= s over {w.numel():,} values", "fp32", lambda: w.mul_(1.0000001),
         elementwise_cost(w.numel(), 1, dtype="fp32")),
        ("GEMV (1 token)", f"linear {k}→{rows_w}, 1 token", "fp32", lambda: linear(x1, w),
         matmul_cost(1, k, rows_w, "fp32")),
        ("GEMM (16 tokens)", f"linear {k}→{rows_w}, 16 tokens", "fp32", lambda: linear(x16, w),
         matmul_cost(16, k, rows_w, "fp32")),
        (f"GEMM {n_sq}³", f"{n_sq}×{n_sq} @ {n_sq}×{n_sq}", "fp32", lambda: torch.mm(a32, b32),
         matmul_cost(n_sq, n_sq, n_sq, "fp32")),
    ]
    if dev.has("bf16"):
        # Size the bf16 product from this device's bf16 roof: an emulated bf16 gets a smaller matrix.
        n16 = n_sq
        while n16 > 64 and 3 * 2.0 * n16**3 / dev.peak("bf16") > _finite(budget.remaining()) / (len(kernels) + 1):
            n16 //= 2
        a16, b16 = a32[:n16, :n16].to(torch.bfloat16), b32[:n16, :n16].to(torch.bfloat16)
        kernels.append((f"GEMM {n16}³", f"{n16}×{n16} @ {n16}×{n16}", "bf16", lambda: torch.mm(a16, b16),
                        matmul_cost(n16, n16, n16, "bf16")))
    rows = []
    with _progress(len(kernels), progress, "kernels") as step:
        for i, (name, shape, dtype, fn, (flops, nbytes)) in enumerate(kernels):
            times = np.array(time_repeats(fn, _repeats_for(repeats, flops, nbytes), min_repeats=min(2, repeats),
                                          budget_s=_finite(budget.share(len(kernels) - i))))
            peak_dtype = dtype if dev.has(dtype) else dev.dtypes[0]
            predicted = roofline_time(flops, nbytes, dev, peak_dtype)
            rows.append({
                "kernel": name, "shape": shape, "dtype": dtype, "flops": flops, "bytes": nbytes, "intensity": flops / nbytes,
                "time_best_s": times.min(), "time_median_s": float(np.median(times)),
                "spread": float((times.max() - times.min()) / np.median(times)),
                "achieved_flop_s": flops / times.min(), "predicted_time_s": predicted,
                "fraction_of_roofline": predicted / times.min(),
                "bound": bound(flops / nbytes, dev, peak_dtype),
            })
            step(name)
    out = pd.DataFrame(rows)
    out["device"] = dev.display_name
    return out
