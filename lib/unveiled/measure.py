"""Measure this machine's roofline: memory bandwidth, matmul throughput, and where real kernels land.

Datasheet rooflines are promises; a measured roofline is what your machine delivers. This module times
STREAM-style array kernels [McCalpin 1995] for the memory roof and large matrix multiplications for the
compute roof, and returns a :class:`~unveiled.hardware.Device` named ``"this-machine"`` that the rest of the
library uses like any datasheet device (roofline times, decode-time predictions in later chapters).

Robustness to noise: every benchmark runs ``repeats`` times after a warm-up. The **best** repeat estimates
what the hardware can do (noise only ever slows a run down, so the fastest run is the least disturbed one),
and is what the measured :class:`Device` uses; the **median** and the spread (``(slowest − fastest) /
median``) say how noisy the machine was. Sizes are fixed (no timing-dependent choices) and data are seeded.
Arrays are sized to exceed the last-level cache, so the bandwidth is the DRAM's, not a cache's.

Stable API (other chapters build on it)::

    m = uv.measure_machine()          # MachineMeasurement, cached per process and settings
    m.device                          # Device "this-machine": bandwidth (B/s), peaks {"fp32": ..., "bf16": ...}
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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._validate import check_int
from .environment import cpu_name, machine_description
from .hardware import Device, canonical_dtype, hardware
from .roofline import bound, elementwise_cost, matmul_cost, roofline_time
from .session import progress_bar

__all__ = [
    "MachineMeasurement",
    "default_array_bytes",
    "last_level_cache_bytes",
    "measure_bandwidth",
    "measure_kernels",
    "measure_machine",
    "measure_matmul",
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
    """Bytes per array for the bandwidth benchmark: twice the last-level cache, between 64 and 512 MiB.

    Arrays that fit in a cache measure the cache; twice its size forces DRAM traffic. The cap keeps the
    two arrays (≤ 1 GiB) affordable, and the size never exceeds an eighth of the free memory.
    """
    llc = last_level_cache_bytes() or 32 * _MiB
    size = min(512 * _MiB, max(64 * _MiB, 2 * llc))
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


CLOCKS = ("wall", "thread")


def _clock(clock: str) -> Callable[[], float]:
    """``"wall"``: elapsed time. ``"thread"``: CPU time of the calling thread, which leaves out the time spent
    waiting for other jobs on a busy shared machine (meaningful with one compute thread only)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    return time.perf_counter if clock == "wall" else time.thread_time


def _time_repeats(fn: Callable[[], object], repeats: int, clock: str = "wall") -> list[float]:
    now = _clock(clock)
    fn()  # warm-up: page faults, thread-pool start-up, kernel selection
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        times.append(now() - t0)
    return times


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
                      progress: bool = False, clock: str = "wall") -> pd.DataFrame:
    """Time STREAM-style copy and triad kernels on two large float32 arrays; one row per repeat.

    ``copy`` is ``a[:] = b`` (reads and writes one array: 2 words per element); ``triad`` is the in-place
    ``a += s·b`` (reads two arrays, writes one: 3 words and 2 operations per element, the traffic of
    STREAM's triad [McCalpin 1995] with one array fewer). Bytes are counted as STREAM does, without
    write-allocate traffic. Uses PyTorch (multi-threaded) when installed, else NumPy (single-threaded).
    ``array_bytes`` defaults to :func:`default_array_bytes`. Introduced in Chapter 1.
    """
    repeats = check_int("repeats", repeats)
    array_bytes = default_array_bytes() if array_bytes is None else check_int("array_bytes", array_bytes, minimum=4096)
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
    with _progress(2, progress, "bandwidth") as step:
        rows += _rows("copy", "bandwidth", "fp32", 0.0, 2.0 * n * 4, _time_repeats(copy, repeats, clock))
        step("copy")
        rows += _rows("triad", "bandwidth", "fp32", 2.0 * n, 3.0 * n * 4, _time_repeats(triad, repeats, clock))
        step("triad")
    return pd.DataFrame(rows, columns=_RAW_COLUMNS)


def _torch_dtype(torch, dtype: str):
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def measure_matmul(sizes: int | tuple[int, ...] = (1024, 2048), dtypes: tuple[str, ...] = ("fp32", "bf16"),
                   repeats: int = 5, *, seed: int = 0, progress: bool = False,
                   clock: str = "wall") -> pd.DataFrame:
    """Time square ``n×n`` matrix multiplications per size and data type (PyTorch; NumPy for fp32 without it).

    A large GEMM has intensity ``2n / (3 × bytes per element)`` ops/byte (hundreds for ``n ≥ 1024``), far
    above any CPU's ridge point, so its rate estimates the compute roof. Two sizes guard against a size the
    math library happens to handle badly. Data types the machine cannot run are skipped. One row per repeat.
    Introduced in Chapter 1.
    """
    sizes = (sizes,) if not isinstance(sizes, (tuple, list)) else tuple(sizes)
    if not sizes:
        raise ValueError("sizes must name at least one matrix size, e.g. (1024, 2048)")
    sizes = tuple(check_int("matrix size", n, minimum=16, maximum=16384) for n in sizes)
    repeats = check_int("repeats", repeats)
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    dtypes = tuple(canonical_dtype(d) for d in dtypes)
    bad = [d for d in dtypes if d not in ("fp32", "bf16", "fp16")]
    if bad:
        raise ValueError(f"measure_matmul times fp32, bf16 and fp16 only, got {bad}")
    torch = _torch()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed) if torch is not None else None
    rows, operands = [], {}
    with _progress(len(dtypes) * len(sizes), progress, "matmul") as step:
        for n, dtype in ((n, d) for n in sizes for d in dtypes):
            if n not in operands:  # one pair of seeded fp32 matrices per size, cast per data type
                operands = {n: (torch.randn((n, n), generator=gen), torch.randn((n, n), generator=gen))
                            if torch is not None else (rng.standard_normal((n, n), dtype=np.float32),
                                                       rng.standard_normal((n, n), dtype=np.float32))}
            x, y = operands[n]
            flops, nbytes = matmul_cost(n, n, n, dtype)
            if torch is not None:
                td = _torch_dtype(torch, dtype)
                a, b = x.to(td), y.to(td)
                fn = lambda a=a, b=b: torch.mm(a, b)  # noqa: E731
            elif dtype == "fp32":
                fn = lambda x=x, y=y: x @ y  # noqa: E731
            else:
                step(f"{dtype} skipped")
                continue
            try:
                times = _time_repeats(fn, _repeats_for(repeats, flops, nbytes), clock)
            except RuntimeError:  # e.g. a dtype without a CPU kernel in this build
                step(f"{dtype} unsupported")
                continue
            rows += _rows(f"matmul {n}", "matmul", dtype, flops, nbytes, times)
            step(f"{n} {dtype}")
    return pd.DataFrame(rows, columns=_RAW_COLUMNS)


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
    one row per benchmark with best, median and spread; ``description`` names the machine and the date.
    Unpacks as ``device, raw = measurement``. Introduced in Chapter 1.
    """

    device: Device
    raw: pd.DataFrame
    summary: pd.DataFrame
    description: str
    settings: dict = field(default_factory=dict)

    def __iter__(self):
        yield self.device
        yield self.raw

    def table(self) -> pd.DataFrame:
        """A short readable summary: one row per benchmark in GB/s or GFLOP/s, best and median, and spread."""
        s = self.summary
        bw = s["kind"] == "bandwidth"
        return pd.DataFrame({
            "benchmark": s["benchmark"] + " (" + s["dtype"] + ")",
            "unit": np.where(bw, "GB/s", "GFLOP/s"),
            "best": np.where(bw, s["bytes_s_best"], s["flop_s_best"]) / 1e9,
            "median": np.where(bw, s["bytes_s_median"], s["flop_s_median"]) / 1e9,
            "spread_pct": 100 * s["spread"],
            "repeats": s["repeats"],
        })


_CACHE: dict[tuple, MachineMeasurement] = {}


def measure_machine(*, array_bytes: int | None = None, matmul_sizes: tuple[int, ...] = (1024, 2048),
                    dtypes: tuple[str, ...] = ("fp32", "bf16"), repeats: int = 5, seed: int = 0,
                    register: bool = True, cache: bool = True, progress: bool = True,
                    clock: str = "wall") -> MachineMeasurement:
    """Measure this machine's memory bandwidth and matmul peaks and return them as a :class:`Device`.

    The device is named ``"this-machine"`` (kind ``"cpu"``); its ``bandwidth`` is the best triad rate and its
    ``peaks`` the best GEMM rate (over ``matmul_sizes`` and repeats) per data type in ``dtypes`` that ran (each data type gets its own measured
    roof, even where it is slower than fp32). With ``register=True`` it becomes available as
    ``uv.hardware("this-machine")``. With ``cache=True`` a second call with the same settings returns the
    first result instead of measuring again. It takes a few seconds (tqdm bar); sizes are fixed and data
    seeded, so only the timings vary between runs. ``clock="thread"`` times the CPU time of the measuring
    thread instead of elapsed time (with one PyTorch thread), for measurements on a busy shared machine.
    Introduced in Chapter 1.
    """
    _clock(clock)
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    matmul_sizes = (matmul_sizes,) if not isinstance(matmul_sizes, (tuple, list)) else tuple(matmul_sizes)
    key = (array_bytes, matmul_sizes, dtypes, repeats, seed, clock)
    if cache and key in _CACHE:
        result = _CACHE[key]
        if register:
            from .hardware import _load, _register

            _load()
            _register(result.device, overwrite=True)
        return result
    array_bytes = default_array_bytes() if array_bytes is None else array_bytes
    with _progress(2, progress, "measuring this machine") as step:
        bw = measure_bandwidth(array_bytes, repeats, seed=seed, clock=clock)
        step("bandwidth")
        mm = measure_matmul(matmul_sizes, dtypes, repeats, seed=seed, clock=clock)
        step("matmul")
    raw = pd.concat([bw, mm], ignore_index=True)
    summary = _summarise(raw)
    triad = summary[summary["benchmark"] == "triad"].iloc[0]
    matmuls = summary[summary["kind"] == "matmul"]
    peaks = {d: float(g["flop_s_best"].max()) for d, g in matmuls.groupby("dtype", sort=False)}
    if not peaks:
        raise RuntimeError("no matrix multiplication could be timed on this machine (is PyTorch or NumPy broken?)")
    desc = machine_description()
    torch = _torch()
    threads = torch.get_num_threads() if torch is not None else 1
    settings = {"array_bytes": array_bytes, "matmul_sizes": matmul_sizes, "repeats": repeats, "seed": seed,
                "threads": threads, "backend": "torch" if torch is not None else "numpy"}
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
        notes=(f"Measured on {desc}: best of {repeats} in-place triads over {array_bytes / _MiB:.0f} MiB arrays; "
               f"best square GEMM of sizes {list(matmul_sizes)} per data type; {threads} threads ({settings['backend']})."),
    )
    result = MachineMeasurement(device, raw, summary, desc, settings)
    if cache:
        _CACHE[key] = result
    if register:
        from .hardware import _load, _register

        _load()
        _register(device, overwrite=True)
    return result


def measure_kernels(device: str | Device = "this-machine", *, array_bytes: int | None = None, repeats: int = 5,
                    seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Time a few real kernels and compare each with its roofline prediction on ``device``.

    The kernels span the intensity axis: an elementwise scale (1 op per 8 bytes), a GEMV ``y = W x`` over a
    weight matrix larger than the cache (a decode step of one linear layer), the same weights with 16 tokens
    (a small-batch GEMM), and square GEMMs in fp32 and (when the device has a bf16 peak) bf16. FLOPs and bytes
    come from :func:`~unveiled.matmul_cost` and :func:`~unveiled.elementwise_cost`, not from the timings.
    Columns: ``kernel``, ``shape``, ``dtype``, ``flops``, ``bytes``, ``intensity``, ``time_best_s``, ``time_median_s``,
    ``spread``, ``achieved_flop_s``, ``predicted_time_s``, ``fraction_of_roofline`` (predicted / best
    measured time: 1 means the kernel runs at its roof), ``bound``. Needs PyTorch. Introduced in Chapter 1.
    """
    torch = _torch()
    if torch is None:
        raise RuntimeError("measure_kernels needs PyTorch (pip install torch)")
    dev = hardware(device)
    repeats = check_int("repeats", repeats)
    array_bytes = default_array_bytes() if array_bytes is None else check_int("array_bytes", array_bytes,
                                                                              minimum=2**16)
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
        a16, b16 = a32.to(torch.bfloat16), b32.to(torch.bfloat16)
        kernels.append((f"GEMM {n_sq}³", f"{n_sq}×{n_sq} @ {n_sq}×{n_sq}", "bf16", lambda: torch.mm(a16, b16),
                        matmul_cost(n_sq, n_sq, n_sq, "bf16")))
    rows = []
    with _progress(len(kernels), progress, "kernels") as step:
        for name, shape, dtype, fn, (flops, nbytes) in kernels:
            times = np.array(_time_repeats(fn, _repeats_for(repeats, flops, nbytes)))
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

