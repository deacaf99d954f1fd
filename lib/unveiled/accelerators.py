"""New hardware on the roofline: processing in memory, SRAM-heavy spatial designs, and what a target speed needs.

The survey's hardware level (§6.1–6.2) argues from the roofline: decode is memory-bound, so hardware that moves
more bytes per second per operation wins it [Yuan et al. 2024]. Two families do that differently:

* **Processing in memory (PIM)** puts simple arithmetic units inside the DRAM, next to the banks: they see the
  banks' internal bandwidth (2 TB/s in a Samsung HBM-PIM cube) instead of the interface's (307 GB/s), but they
  compute slowly (1.2 TFLOPS per cube). :func:`pim_decode_table` places every operator of a real decode step on
  both rooflines: operators below the PIM's ridge point of about one operation per byte (GEMV at batch 1,
  attention over the KV cache) run several times faster in memory; batched GEMMs do not [Kwon et al. 2021;
  Lee et al. 2022; Gómez-Luna et al. 2022].
* **Spatial architectures** spread many processing elements over a chip or a wafer, each next to its own SRAM
  (Groq's LPU, Cerebras' wafer-scale engine): enormous aggregate bandwidth, little capacity per chip, so a
  large model is split over hundreds of chips. :func:`bandwidth_for_speed` computes what a target speed per
  user needs in bandwidth and capacity, and :func:`aggregate_requirements` how many of a device that takes.

All times come from :func:`unveiled.analyze` (exact convention) and :func:`unveiled.roofline_time`; the survey's
Table 2 is ``data/survey_table2.csv`` (:func:`survey_table2`). Introduced in Chapter 10.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from ._validate import check_int, check_positive
from .analyzer import analyze
from .datafiles import data_file
from .hardware import Device, get_device

__all__ = [
    "HBM2_INTERFACE_GB_S",
    "aggregate_device",
    "aggregate_requirements",
    "bandwidth_for_speed",
    "figure20_left_data",
    "format_decode_grid",
    "pim_decode_table",
    "pim_speedup",
    "pim_step_summary",
    "survey_table2",
]

#: What a host reads from one HBM2 cube: 1024 data pins at 2.4 Gb/s each (Samsung's Aquabolt), in GB/s.
HBM2_INTERFACE_GB_S = 1024 * 2.4 / 8


def survey_table2() -> pd.DataFrame:
    """The survey's Table 2 (commodity DRAM near-memory products) as data: the printed strings next to the
    parsed numbers (``peak_bandwidth_gb_s``, ``peak_throughput_gop_s``), the registry device each maps to, and
    the primary source. Introduced in Chapter 10."""
    return pd.read_csv(io.StringIO(data_file("survey_table2.csv").read_text(encoding="utf-8")),
                       keep_default_na=False)


def aggregate_device(device: str | Device, n: int, *, name: str | None = None) -> Device:
    """``n`` copies of ``device`` seen as one ideal device: ``n`` times the bandwidth, peaks and capacity.

    This is the roofline's view of tensor or pipeline parallelism with free communication, an upper bound
    (the chips' links are not modelled). Introduced in Chapter 10."""
    dev = get_device(device)
    n = check_int("n", n)
    return Device(name=name or f"{n}x {dev.name}", display_name=f"{n} × {dev.display_name}",
                  bandwidth=n * dev.bandwidth, peaks={k: n * v for k, v in dev.peaks.items()},
                  memory_bytes=None if dev.memory_bytes is None else n * dev.memory_bytes, kind=dev.kind,
                  vendor=dev.vendor, source_url=dev.source_url, notes=f"{n} ideal copies of {dev.name}")


# --------------------------------------------------------------------------------------------------
# Processing in memory
# --------------------------------------------------------------------------------------------------

def pim_decode_table(model: str, pim: str | Device = "hbm-pim-cube", *, batch: int = 1, seq_len: int = 2048,
                     interface_gb_s: float = HBM2_INTERFACE_GB_S, w_bits: int = 16, kv_bits: int = 16,
                     dtype: str = "fp16") -> pd.DataFrame:
    """Every operator of one decode step on two rooflines: a host reading PIM memory through its interface, and
    the PIM units computing inside it.

    The model's weights and KV cache are spread over as many PIM devices (cubes, chips) as their capacity
    needs. The host side is memory-bound at the devices' interface bandwidth (its compute is taken as unbounded:
    a GPU has far more compute per memory stack, so this favours the host); the PIM side is
    ``max(flops / peak, bytes / internal bandwidth)``. Columns: ``op``, ``count``, ``intensity`` (FLOP/byte),
    ``host_time_s``, ``pim_time_s`` (all instances), ``speedup`` (host / PIM) and ``placement`` (where the
    operator runs faster). ``df.attrs`` holds the number of devices and the memory. Introduced in Chapter 10.
    """
    dev = get_device(pim)
    if dev.memory_bytes is None:
        raise ValueError(f"{dev.display_name} has no memory capacity in the registry")
    a = analyze(model, dev, stage="decode", batch=batch, seq_len=seq_len, w_bits=w_bits, a_bits=16,
                kv_bits=kv_bits, check_context=False)
    n = max(1, math.ceil(a.memory.total / dev.memory_bytes))
    peak = n * dev.peak(dtype)
    internal = n * dev.bandwidth
    external = n * check_positive("interface_gb_s", interface_gb_s) * 1e9
    ops = a.ops
    flops, nbytes, count = ops["flops"].to_numpy(), ops["bytes"].to_numpy(), ops["count"].to_numpy()
    host = count * nbytes / external
    inside = count * np.maximum(flops / peak, nbytes / internal)
    df = pd.DataFrame({"op": ops["op"], "count": ops["count"], "intensity": ops["intensity"],
                       "host_time_s": host, "pim_time_s": inside, "speedup": host / inside})
    df["placement"] = np.where(df["speedup"] > 1, "PIM", "host")
    df.attrs.update({"model": a.model.name, "pim": dev.name, "devices": n, "memory_bytes": a.memory.total,
                     "batch": batch, "seq_len": seq_len, "ridge_point": dev.peak(dtype) / dev.bandwidth,
                     "interface_gb_s": interface_gb_s})
    return df


def pim_speedup(intensity, pim: str | Device = "hbm-pim-cube", *, interface_gb_s: float = HBM2_INTERFACE_GB_S,
                dtype: str = "fp16"):
    """How much faster an operator of ``intensity`` FLOP/byte runs inside PIM memory than on a host reading it
    through the interface: ``(1 / interface) / max(intensity / peak, 1 / internal)``. Equal to internal over
    interface bandwidth below the PIM's ridge point, then falling as ``peak / (interface · intensity)``: it
    crosses 1 at ``peak / interface`` FLOP/byte. Arrays broadcast. Introduced in Chapter 10."""
    dev = get_device(pim)
    i = np.asarray(check_positive("intensity", intensity, allow_array=True, allow_zero=True), dtype=float)
    ext = check_positive("interface_gb_s", interface_gb_s) * 1e9
    out = (1.0 / ext) / np.maximum(i / dev.peak(dtype), 1.0 / dev.bandwidth)
    return float(out) if out.ndim == 0 else out


def pim_step_summary(table: pd.DataFrame) -> pd.Series:
    """One decode step three ways: all on the host, all in memory, and each operator where it is faster.

    ``hybrid_speedup`` is the host time over the best placement's; ``pim_share`` the fraction of the host's
    time that moves into memory. Introduced in Chapter 10."""
    host = float(table["host_time_s"].sum())
    inside = float(table["pim_time_s"].sum())
    best = float(np.minimum(table["host_time_s"], table["pim_time_s"]).sum())
    moved = float(table.loc[table["placement"] == "PIM", "host_time_s"].sum())
    return pd.Series({"host_time_s": host, "pim_time_s": inside, "hybrid_time_s": best,
                      "all_pim_speedup": host / inside, "hybrid_speedup": host / best, "pim_share": moved / host})


# --------------------------------------------------------------------------------------------------
# Bandwidth and capacity for a target speed
# --------------------------------------------------------------------------------------------------

def bandwidth_for_speed(model: str, tokens_per_s: float, *, seq_len: int = 4096, batch: int = 1, w_bits: int = 16,
                        kv_bits: int = 16, peak_tflops: float = 1e6) -> pd.Series:
    """The memory bandwidth a device needs so that one decode step of ``model`` takes at most
    ``1 / tokens_per_s`` (per user, at ``batch``), found by bisection on the analyzer's decode time.

    ``peak_tflops`` is the device's FP16 peak (default: so large that only bandwidth binds). Returns the
    bandwidth (``bandwidth_B_s``), the bytes one step reads (``step_bytes``), the memory to hold weights and
    KV cache (``memory_bytes``) and the FLOP/s the speed implies (``flop_s``). ``inf`` bandwidth means the
    compute peak alone is too slow. Introduced in Chapter 10.
    """
    target = 1.0 / check_positive("tokens_per_s", tokens_per_s)
    peak = check_positive("peak_tflops", peak_tflops) * 1e12

    def step(bw: float):
        dev = Device(name="what-if", bandwidth=bw, peaks={"fp16": peak, "int8": 2 * peak, "int4": 4 * peak})
        return analyze(model, dev, stage="decode", batch=batch, seq_len=seq_len, w_bits=w_bits, a_bits=16,
                       kv_bits=kv_bits, check_context=False)

    fast = step(1e18)
    if fast.time_s > target:
        bw = math.inf
    else:
        lo, hi = 1e9, 1e18
        for _ in range(200):  # bisection on a log scale: relative precision ~1e-12
            mid = math.sqrt(lo * hi)
            lo, hi = (mid, hi) if step(mid).time_s > target else (lo, mid)
            if hi / lo < 1 + 1e-9:
                break
        bw = hi
    return pd.Series({"model": fast.model.name, "tokens_per_s": tokens_per_s, "batch": batch, "seq_len": seq_len,
                      "w_bits": w_bits, "bandwidth_B_s": bw, "step_bytes": fast.bytes,
                      "memory_bytes": fast.memory.total, "weights_bytes": fast.memory.weights,
                      "flop_s": fast.flops * tokens_per_s / batch})


def _decode_tokens_per_s(model: str, dev: Device, batch: int, seq_len: int, w_bits: int, kv_bits: int) -> float:
    a = analyze(model, dev, stage="decode", batch=batch, seq_len=seq_len, w_bits=w_bits, a_bits=16,
                kv_bits=kv_bits, check_context=False)
    return batch / a.time_s


def aggregate_requirements(model: str, tokens_per_s: float, devices, *, seq_len: int = 4096, batch: int = 1,
                           w_bits: int = 16, kv_bits: int = 16) -> pd.DataFrame:
    """For each device: how many chips hold the model, and the decode speed per user such a system reaches.

    Two bounds bracket a real system. **Tensor-parallel, free links** (:func:`aggregate_device`): every chip
    reads its share of each layer at the same time, so the chips' bandwidths add up; ``chips_for_speed`` is the
    smallest count that reaches ``tokens_per_s`` this way. **Pipeline, one chip at a time**: the layers are
    split over the chips and a token passes through them in turn, so a step takes as long as one chip reading
    everything (``tokens_per_s_pipeline``). Links and synchronisation, which the roofline does not model, cost
    real systems more than either bound. Columns: ``device``, ``bandwidth_TB_s``, ``memory_GB``,
    ``chips_for_capacity``, ``chips_for_speed``, ``tokens_per_s_parallel`` (at capacity) and
    ``tokens_per_s_pipeline``. Introduced in Chapter 10.
    """
    need = bandwidth_for_speed(model, tokens_per_s, seq_len=seq_len, batch=batch, w_bits=w_bits, kv_bits=kv_bits)
    rows = []
    for d in devices:
        dev = get_device(d)
        if dev.memory_bytes is None:
            raise ValueError(f"{dev.display_name} has no memory capacity in the registry")
        n_cap = max(1, math.ceil(need["memory_bytes"] / dev.memory_bytes))
        n = max(n_cap, math.ceil(need["bandwidth_B_s"] / dev.bandwidth))
        while (_decode_tokens_per_s(model, aggregate_device(dev, n), batch, seq_len, w_bits, kv_bits) < tokens_per_s
               and n < 1_000_000):  # compute may bind too: add chips until it does not
            n = math.ceil(n * 1.05) + 1
        rows.append({"device": dev.display_name, "bandwidth_TB_s": dev.bandwidth / 1e12,
                     "memory_GB": dev.memory_bytes / 1e9, "chips_for_capacity": n_cap, "chips_for_speed": n,
                     "tokens_per_s_parallel": _decode_tokens_per_s(model, aggregate_device(dev, n_cap), batch,
                                                                   seq_len, w_bits, kv_bits),
                     "tokens_per_s_pipeline": _decode_tokens_per_s(model, dev, batch, seq_len, w_bits, kv_bits)})
    df = pd.DataFrame(rows)
    df.attrs["requirement"] = need.to_dict()
    return df


def figure20_left_data(device: str = "a6000", factor: float = 3.0, intensity: float = 50.0,
                       preset: str = "llm-viewer") -> tuple[list[tuple[Device, str, str]], pd.DataFrame]:
    """The survey's Fig. 20 (left): a device's FP16 roofline at its bandwidth and at ``factor`` times it, with an
    operator of ``intensity`` ops/byte placed on both. Returns the roofline specs and the points for
    :func:`unveiled.plots.roofline.roofline_chart`. Introduced in Chapter 10."""
    low = get_device(device, preset)
    high = low.with_(bandwidth=factor * low.bandwidth, name=f"{low.name}-x{factor:g}")
    lines, rows = [], []
    for dev, what in ((low, "low"), (high, "high")):
        label = f"{what} bandwidth ({dev.bandwidth / 1e9:,.0f} GB/s)"
        lines.append((dev, "fp16", label))
        perf = float(dev.attainable(intensity, "fp16"))
        rows.append({"intensity": intensity, "flop_s": perf, "label": f"{perf / 1e12:.1f} TFLOP/s",
                     "bandwidth": what})
    return lines, pd.DataFrame(rows)


def format_decode_grid(model: str, devices, formats, *, batches=(1, 16, 64, 256), seq_lens=(1024, 4096)) -> pd.DataFrame:
    """Decode-step time of ``model`` for every (device, number format, batch, sequence length), split by the roof
    that binds each operator: the data of the static explorer (:func:`unveiled.plots.accelerators.
    decode_explorer_chart`). ``formats`` are names of :data:`~unveiled.analyzer.number_formats.NUMBER_FORMATS`
    or ``"bf16"`` (16-bit weights). Columns: ``device``, ``format``, ``batch``, ``seq_len``, ``bound``,
    ``time_ms``, ``total_ms``, ``tokens_per_s``, ``compute_dtype`` and ``support`` of the linear layers.
    Introduced in Chapter 10."""
    rows = []
    for d in devices:
        dev = get_device(d)
        for fmt in formats:
            for b in batches:
                for s in seq_lens:
                    a = analyze(model, dev, stage="decode", batch=b, seq_len=s, check_context=False,
                                number_format=None if fmt == "bf16" else fmt)
                    ops = a.ops
                    roof = a.format_roof
                    dtype = ops.set_index("op").loc["o_proj", "compute_dtype"] if roof is None else roof.compute_dtype
                    for bound in ("memory", "compute"):
                        rows.append({"device": dev.name, "format": fmt, "batch": b, "seq_len": s, "bound": bound,
                                     "time_ms": 1e3 * float(ops.loc[ops["bound"] == bound, "total_time_s"].sum()),
                                     "total_ms": 1e3 * a.time_s, "tokens_per_s": a.tokens_per_s,
                                     "compute_dtype": dtype,
                                     "support": "16-bit" if roof is None else (roof.support or "unknown")})
    return pd.DataFrame(rows)
