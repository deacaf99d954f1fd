"""The roofline model: how fast can an operation run on a device, and what limits it?

An operation that performs ``F`` operations on ``Q`` bytes of off-chip memory traffic has arithmetic
intensity ``I = F / Q`` (ops/byte). On a device with memory bandwidth ``β`` (bytes/s) and peak throughput
``π`` (ops/s) its attainable performance is ``min(π, β·I)`` [Williams et al. 2009]. Below the ridge point
``I* = π/β`` it is **memory-bound** (faster memory helps, more compute does not); above it, **compute-bound**.
Its time is ``max(F/π, Q/β)``. The survey uses this model throughout (§2.2, Fig. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._validate import check_positive
from .hardware import DTYPES, Device, hardware

__all__ = [
    "RooflinePoint",
    "attainable_performance",
    "bound",
    "matmul_cost",
    "place",
    "ridge_point",
    "roofline_curve",
    "roofline_time",
]


def _device(device: str | Device) -> Device:
    return hardware(device) if isinstance(device, str) else _check_device(device)


def _check_device(device: object) -> Device:
    if not isinstance(device, Device):
        raise TypeError(f"device must be a Device or a device name such as 'a6000', got {type(device).__name__}")
    return device


def ridge_point(device: str | Device, dtype: str = "fp16") -> float:
    """Arithmetic intensity (ops/byte) where the memory roof meets the compute roof (Chapter 1)."""
    return _device(device).ridge_point(dtype)


def attainable_performance(intensity, device: str | Device, dtype: str = "fp16"):
    """Attainable ops/s at arithmetic ``intensity`` (ops/byte): ``min(peak, bandwidth × intensity)``.

    ``intensity`` may be a number or an array; the result has the same shape. Introduced in Chapter 1.
    """
    dev = _device(device)
    i = check_positive("intensity (ops/byte)", intensity, allow_array=True)
    return np.minimum(dev.peak(dtype), dev.bandwidth * i)


def bound(intensity, device: str | Device, dtype: str = "fp16"):
    """``"memory"`` below the ridge point, ``"compute"`` at or above it (arrays give arrays). Chapter 1."""
    dev = _device(device)
    i = check_positive("intensity (ops/byte)", intensity, allow_array=True)
    out = np.where(np.asarray(i) < dev.ridge_point(dtype), "memory", "compute")
    return str(out) if np.ndim(out) == 0 else out


def roofline_time(flops, bytes_, device: str | Device, dtype: str = "fp16"):
    """Time in seconds of an operation under the roofline: ``max(flops / peak, bytes / bandwidth)``.

    Either argument may be zero (a pure copy has no operations), not both. Introduced in Chapter 1.
    """
    dev = _device(device)
    f = check_positive("flops", flops, allow_array=True, allow_zero=True)
    q = check_positive("bytes", bytes_, allow_array=True, allow_zero=True)
    if np.any((np.asarray(f) == 0) & (np.asarray(q) == 0)):
        raise ValueError("an operation needs flops > 0 or bytes > 0 (both are zero)")
    t = np.maximum(np.asarray(f) / dev.peak(dtype), np.asarray(q) / dev.bandwidth)
    return float(t) if t.ndim == 0 else t


@dataclass(frozen=True)
class RooflinePoint:
    """An operation placed on a device's roofline (all SI units)."""

    flops: float
    bytes: float
    intensity: float
    attainable_flop_s: float
    time_s: float
    bound: str
    device: str
    dtype: str


def place(flops: float, bytes_: float, device: str | Device, dtype: str = "fp16") -> RooflinePoint:
    """Place one operation (its op count and memory traffic) on a device's roofline. Introduced in Chapter 1."""
    dev = _device(device)
    f = check_positive("flops", flops)
    q = check_positive("bytes", bytes_)
    i = f / q
    return RooflinePoint(
        flops=f,
        bytes=q,
        intensity=i,
        attainable_flop_s=float(attainable_performance(i, dev, dtype)),
        time_s=float(roofline_time(f, q, dev, dtype)),
        bound=bound(i, dev, dtype),
        device=dev.name,
        dtype=dtype,
    )


def roofline_curve(device: str | Device, dtype: str = "fp16", intensities=None, n: int = 200) -> pd.DataFrame:
    """Points of a roofline for plotting: columns ``intensity``, ``flop_s``, ``device``, ``dtype``.

    By default the intensities span 1/100 to 100 times the ridge point on a log grid. Introduced in Chapter 1.
    """
    dev = _device(device)
    if intensities is None:
        r = dev.ridge_point(dtype)
        intensities = np.geomspace(r / 100, r * 100, n)
        intensities = np.sort(np.append(intensities, r))  # include the corner exactly
    i = check_positive("intensities", intensities, allow_array=True)
    return pd.DataFrame(
        {
            "intensity": i,
            "flop_s": attainable_performance(i, dev, dtype),
            "device": dev.display_name,
            "dtype": dtype,
        }
    )


def matmul_cost(m: int, k: int, n: int, a_dtype: str = "fp16", b_dtype: str | None = None,
                out_dtype: str | None = None) -> tuple[float, float]:
    """FLOPs and minimum bytes of ``(m×k) @ (k×n)``: ``2mkn`` ops; read A and B once, write C once.

    The byte count is the compulsory traffic (each operand crosses the memory bus once), which is what a
    well-tiled kernel achieves when the operands do not fit on chip. Introduced in Chapter 1.
    """
    from ._validate import check_int

    m, k, n = (check_int(name, v) for name, v in (("m", m), ("k", k), ("n", n)))
    b_dtype = b_dtype or a_dtype
    out_dtype = out_dtype or a_dtype
    for name, d in (("a_dtype", a_dtype), ("b_dtype", b_dtype), ("out_dtype", out_dtype)):
        if d not in DTYPES:
            raise ValueError(f"{name} must be one of {list(DTYPES)}, got {d!r}")
    flops = 2.0 * m * k * n
    bytes_ = m * k * DTYPES[a_dtype] + k * n * DTYPES[b_dtype] + m * n * DTYPES[out_dtype]
    return flops, bytes_
