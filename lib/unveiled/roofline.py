"""The roofline model: how fast can an operation run on a device, and what limits it?

An operation that performs ``F`` operations on ``Q`` bytes of off-chip memory traffic has arithmetic
intensity ``I = F / Q`` (ops/byte). On a device with memory bandwidth ``β`` (bytes/s) and peak throughput
``π`` (ops/s) its attainable performance is ``min(π, β·I)`` [Williams et al. 2009]. Below the ridge point
``I* = π/β`` it is **memory-bound** (faster memory helps, more compute does not); at or above it,
**compute-bound**. Its time is ``max(F/π, Q/β)``: loading, computing and storing overlap perfectly. The
survey uses this model throughout (§2.2, Figs. 4–6), and LLM-Viewer applies it operator by operator.

This module also describes operations as load–compute–store records (:class:`Operation`, survey Fig. 4),
fuses chains of them (:func:`fuse`, survey Figs. 14–15) and finds the batch size at which a matrix
multiplication turns compute-bound (:func:`critical_batch_size`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._validate import check_int, check_positive
from .hardware import DTYPES, Device, canonical_dtype, get_device

__all__ = [
    "Operation",
    "RooflinePoint",
    "attainable_performance",
    "bound",
    "critical_batch_size",
    "elementwise_cost",
    "fuse",
    "fusion_gain",
    "load_compute_store",
    "matmul_cost",
    "place",
    "ridge_point",
    "roofline_curve",
    "roofline_table",
    "roofline_time",
]


def _device(device: str | Device) -> Device:
    if isinstance(device, (str, Device)):
        return get_device(device)
    raise TypeError(f"device must be a Device or a device name such as 'a6000', got {type(device).__name__}")


def ridge_point(device: str | Device, dtype: str = "fp16") -> float:
    """Arithmetic intensity (ops/byte) where the memory roof meets the compute roof: ``peak / bandwidth``.

    For the survey's A6000 in FP16 (LLM-Viewer's numbers) it is 154.8e12 / 768e9 ≈ 201.6 ops/byte.
    Introduced in Chapter 1.
    """
    return _device(device).ridge_point(dtype)


def attainable_performance(intensity, device: str | Device, dtype: str = "fp16"):
    """Attainable ops/s at arithmetic ``intensity`` (ops/byte): ``min(peak, bandwidth × intensity)``.

    The roofline itself [Williams et al. 2009]: below the ridge point the memory bus caps the rate, above it
    the compute units do. ``intensity`` may be a number or an array (> 0); the result has the same shape.
    Introduced in Chapter 1.
    """
    return _device(device).attainable(intensity, dtype)


def bound(intensity, device: str | Device, dtype: str = "fp16"):
    """``"memory"`` below the ridge point, ``"compute"`` at or above it (arrays give arrays).

    The label tells which optimisation can help: less traffic (quantization, fusion, batching) for a
    memory-bound operation, more or cheaper compute for a compute-bound one (survey §2.2). Chapter 1.
    """
    dev = _device(device)
    ridge = dev.ridge_point(dtype)
    i = check_positive("intensity (ops/byte)", intensity, allow_array=True)
    out = np.where(np.asarray(i) < ridge, "memory", "compute")
    return str(out) if np.ndim(out) == 0 else out


def roofline_time(flops, bytes_, device: str | Device, dtype: str = "fp16"):
    """Time in seconds of an operation under the roofline: ``max(flops / peak, bytes / bandwidth)``.

    The max (not the sum) assumes loads, compute and stores overlap perfectly, as the roofline does; it is
    the same as ``flops / attainable_performance(flops / bytes)``. Either argument may be zero (a pure copy
    has no operations), not both; arrays broadcast. Introduced in Chapter 1.
    """
    return _device(device).time(flops, bytes_, dtype)


@dataclass(frozen=True)
class RooflinePoint:
    """An operation placed on a device's roofline (all SI units: ops, bytes, ops/byte, ops/s, seconds)."""

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
    dtype = canonical_dtype(dtype)
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

    By default the intensities span 1/100 to 100 times the ridge point on a log grid and include the ridge
    point exactly. A roofline is two straight segments on log–log axes, so ``n=2`` already draws it
    exactly (the corner is always added). Introduced in Chapter 1.
    """
    dev = _device(device)
    dtype = canonical_dtype(dtype)
    if intensities is None:
        n = check_int("n", n, minimum=2)
        r = dev.ridge_point(dtype)
        intensities = np.sort(np.append(np.geomspace(r / 100, r * 100, n), r))
    i = np.asarray(check_positive("intensities", intensities, allow_array=True), dtype=float).reshape(-1)
    return pd.DataFrame(
        {
            "intensity": i,
            "flop_s": attainable_performance(i, dev, dtype),
            "device": dev.display_name,
            "dtype": dtype,
        }
    )


def roofline_table(ops: Sequence[Operation], device: str | Device, dtype: str = "fp16") -> pd.DataFrame:
    """Place several operations on one roofline: one row each, in readable units.

    Columns: ``operation``, ``flops``, ``bytes``, ``intensity`` (ops/byte), ``attainable_TFLOP_s``,
    ``fraction_of_peak``, ``time_us``, ``bound``. Introduced in Chapter 1.
    """
    if isinstance(ops, Operation) or not isinstance(ops, Sequence):
        raise TypeError("roofline_table() takes a list of Operation objects")
    dev = _device(device)
    rows = []
    for op in ops:
        if not isinstance(op, Operation):
            raise TypeError(f"roofline_table() takes Operation objects, got {type(op).__name__}")
        p = op.place(dev, dtype)
        rows.append({"operation": op.name, "flops": p.flops, "bytes": p.bytes, "intensity": p.intensity,
                     "attainable_TFLOP_s": p.attainable_flop_s / 1e12,
                     "fraction_of_peak": p.attainable_flop_s / dev.peak(dtype), "time_us": p.time_s * 1e6,
                     "bound": p.bound})
    return pd.DataFrame(rows)


def _dtype_bytes(name: str, dtype: str) -> float:
    try:
        return DTYPES[canonical_dtype(dtype)]
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from None


def matmul_cost(m: int, k: int, n: int, a_dtype: str = "fp16", b_dtype: str | None = None,
                out_dtype: str | None = None) -> tuple[float, float]:
    """FLOPs and minimum bytes of ``(m×k) @ (k×n)``: ``2mkn`` ops; read A and B once, write C once.

    A multiply-accumulate counts as two operations (survey footnote 2). The byte count is the compulsory
    traffic (each operand crosses the memory bus once), which is what a well-tiled kernel achieves when the
    operands do not fit on chip. In a linear layer, ``m`` is the number of tokens (batch × sequence), A the
    activations and B the weights. Introduced in Chapter 1.
    """
    m, k, n = (check_int(name, v) for name, v in (("m", m), ("k", k), ("n", n)))
    a = _dtype_bytes("a_dtype", a_dtype)
    b = _dtype_bytes("b_dtype", b_dtype or a_dtype)
    o = _dtype_bytes("out_dtype", out_dtype or a_dtype)
    return 2.0 * m * k * n, m * k * a + k * n * b + m * n * o


def elementwise_cost(n_elements: int, ops_per_element: float = 1.0, *, n_inputs: int = 1, n_outputs: int = 1,
                     dtype: str = "fp16") -> tuple[float, float]:
    """FLOPs and bytes of an elementwise operation over ``n_elements`` (an activation, a residual add...).

    Each element costs ``ops_per_element`` operations (1 for an add, about 4 for SiLU = x·sigmoid(x), 5 per
    element for LLM-Viewer's softmax) and moves ``n_inputs + n_outputs`` values. With intensities far below
    1 op/byte, these operations are memory-bound on every device in the registry. Introduced in Chapter 1.
    """
    n_elements = check_int("n_elements", n_elements)
    ops = check_positive("ops_per_element", ops_per_element, allow_zero=True)
    n_in = check_int("n_inputs", n_inputs, minimum=0)
    n_out = check_int("n_outputs", n_outputs, minimum=0)
    if n_in + n_out == 0:
        raise ValueError("an elementwise operation reads or writes something: n_inputs + n_outputs must be >= 1")
    return ops * n_elements, (n_in + n_out) * n_elements * _dtype_bytes("dtype", dtype)


@dataclass(frozen=True)
class Operation:
    """One operation as the hardware executes it: load operands, compute, store results (survey Fig. 4).

    ``load_bytes`` and ``store_bytes`` are off-chip traffic; ``flops`` counts operations (a multiply-add is
    2). Build one from a cost with :meth:`matmul` or :meth:`elementwise`, chain several with :func:`fuse`.
    Introduced in Chapter 1.
    """

    name: str
    flops: float
    load_bytes: float
    store_bytes: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        for attr in ("flops", "load_bytes", "store_bytes"):
            object.__setattr__(self, attr, check_positive(attr, getattr(self, attr), allow_zero=True))
        if self.flops == 0 and self.bytes == 0:
            raise ValueError(f"operation {self.name!r} has neither flops nor bytes")

    @property
    def bytes(self) -> float:
        """Total off-chip traffic, loads plus stores."""
        return self.load_bytes + self.store_bytes

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in ops/byte (infinite for an operation that moves no data)."""
        return self.flops / self.bytes if self.bytes else math.inf

    def time(self, device: str | Device, dtype: str = "fp16") -> float:
        """Roofline time in seconds on ``device``."""
        return roofline_time(self.flops, self.bytes, device, dtype)

    def place(self, device: str | Device, dtype: str = "fp16") -> RooflinePoint:
        """This operation on ``device``'s roofline (see :func:`place`)."""
        return place(self.flops, self.bytes, device, dtype)

    @classmethod
    def matmul(cls, m: int, k: int, n: int, dtype: str = "fp16", *, weight_dtype: str | None = None,
               name: str = "matmul") -> Operation:
        """``(m×k) @ (k×n)``: load both operands, store the ``m×n`` result (see :func:`matmul_cost`)."""
        flops, _ = matmul_cost(m, k, n, dtype, weight_dtype or dtype, dtype)
        a, w = _dtype_bytes("dtype", dtype), _dtype_bytes("weight_dtype", weight_dtype or dtype)
        return cls(name, flops, m * k * a + k * n * w, m * n * a)

    @classmethod
    def elementwise(cls, n_elements: int, ops_per_element: float = 1.0, *, n_inputs: int = 1, n_outputs: int = 1,
                    dtype: str = "fp16", name: str = "elementwise") -> Operation:
        """An elementwise operation (see :func:`elementwise_cost`)."""
        flops, _ = elementwise_cost(n_elements, ops_per_element, n_inputs=n_inputs, n_outputs=n_outputs,
                                    dtype=dtype)
        b = _dtype_bytes("dtype", dtype)
        return cls(name, flops, n_inputs * n_elements * b, n_outputs * n_elements * b)


def fuse(ops: Sequence[Operation], name: str | None = None) -> Operation:
    """Fuse a chain of operations where each one consumes the previous one's output (survey Figs. 14–15).

    The fused operation does all the work (the FLOPs add up) but the intermediate results never leave the
    chip: operation ``i`` no longer stores its output and operation ``i+1`` no longer loads it back. So the
    fused traffic is ``Σ bytes − 2 × Σ intermediate bytes``, the intensity rises, and a memory-bound chain
    gets faster while a compute-bound one does not [Yuan et al. 2024, §5.1]. Each operation must load at
    least the bytes its predecessor stored. Introduced in Chapter 1.
    """
    if isinstance(ops, Operation) or not isinstance(ops, Sequence):
        raise TypeError("fuse() takes a list of Operation objects, e.g. fuse([linear, silu])")
    ops = list(ops)
    if len(ops) < 2:
        raise ValueError(f"fusion needs at least two operations, got {len(ops)}")
    for op in ops:
        if not isinstance(op, Operation):
            raise TypeError(f"fuse() takes Operation objects, got {type(op).__name__}")
    load = ops[0].load_bytes
    for prev, op in itertools.pairwise(ops):
        if op.load_bytes < prev.store_bytes:
            raise ValueError(
                f"{op.name!r} loads {op.load_bytes:g} B but {prev.name!r} stores {prev.store_bytes:g} B: in a "
                f"chain each operation reads its predecessor's whole output (plus its own operands)"
            )
        load += op.load_bytes - prev.store_bytes
    return Operation(name or "+".join(op.name for op in ops), sum(op.flops for op in ops), load,
                     ops[-1].store_bytes)


def fusion_gain(ops: Sequence[Operation], device: str | Device, dtype: str = "fp16") -> pd.Series:
    """What fusing a chain of operations buys on ``device``: intensities, times and speed-up, before and after.

    Two views of "before" are returned. The survey's (Fig. 15) treats the unfused chain as one operation
    with all its traffic: ``time_before_aggregate_s = max(F/π, Q/β)``, so a chain that is compute-bound as a
    whole gains nothing. Real unfused kernels run one after another, each at its own roof
    (``time_before_s = Σ tᵢ``, as LLM-Viewer sums operators): then a memory-bound epilogue (an activation
    after a compute-bound GEMM) costs its full memory time, and fusion saves it. Fields end in their unit.
    Introduced in Chapter 1.
    """
    fused = fuse(ops)
    dev = _device(device)
    flops = sum(op.flops for op in ops)
    bytes_before = sum(op.bytes for op in ops)
    t_seq = sum(op.time(dev, dtype) for op in ops)
    t_agg = roofline_time(flops, bytes_before, dev, dtype)
    t_fused = fused.time(dev, dtype)
    return pd.Series({
        "operation": fused.name,
        "flops": flops,
        "bytes_before": bytes_before,
        "bytes_after": fused.bytes,
        "intensity_before": flops / bytes_before,
        "intensity_after": fused.intensity,
        "bound_before": bound(flops / bytes_before, dev, dtype),
        "bound_after": bound(fused.intensity, dev, dtype),
        "time_before_s": t_seq,
        "time_before_aggregate_s": t_agg,
        "time_after_s": t_fused,
        "speedup": t_seq / t_fused,
        "speedup_aggregate": t_agg / t_fused,
        "device": dev.display_name,
        "dtype": canonical_dtype(dtype),
    })


def load_compute_store(op: Operation, device: str | Device, dtype: str = "fp16") -> pd.DataFrame:
    """The three phases of an operation (survey Fig. 4) as a timeline, serial and overlapped.

    Returns one row per phase and schedule with ``start_s``, ``end_s`` and ``duration_s``. In the ``serial``
    schedule the unit loads, then computes, then stores; in the ``overlapped`` one (what the roofline assumes,
    and what pipelined kernels approach) the three run concurrently, so the operation takes as long as its
    slowest phase. Introduced in Chapter 1.
    """
    if not isinstance(op, Operation):
        raise TypeError(f"op must be an Operation, got {type(op).__name__}")
    dev = _device(device)
    durations = {
        "load": op.load_bytes / dev.bandwidth,
        "compute": op.flops / dev.peak(dtype),
        "store": op.store_bytes / dev.bandwidth,
    }
    rows, t = [], 0.0
    for phase, d in durations.items():
        rows.append(("serial", phase, t, t + d))
        t += d
    # Overlapped: loads and stores share the memory bus, compute runs alongside.
    memory = durations["load"] + durations["store"]
    rows += [
        ("overlapped", "load", 0.0, durations["load"]),
        ("overlapped", "compute", 0.0, durations["compute"]),
        ("overlapped", "store", durations["load"], memory),
    ]
    df = pd.DataFrame(rows, columns=["schedule", "phase", "start_s", "end_s"])
    df["duration_s"] = df["end_s"] - df["start_s"]
    df["operation"], df["device"], df["dtype"] = op.name, dev.display_name, canonical_dtype(dtype)
    return df


def critical_batch_size(device: str | Device, dtype: str = "fp16", k: int = 4096, n: int = 4096, *,
                        weight_dtype: str | None = None) -> int | None:
    """Smallest number of tokens ``m`` for which ``(m×k) @ (k×n)`` is compute-bound on ``device``, or None.

    The matmul's intensity ``2mkn / (m·k·a + k·n·w + m·n·a)`` grows with ``m`` (more tokens share each weight
    load) towards ``2kn / ((k + n)·a)``; it crosses the ridge point ``π/β`` at
    ``m* = ⌈ I*·k·n·w / (2kn − I*·(k + n)·a) ⌉``. For large ``k, n`` this is ``≈ I*·w/2``: about the ridge
    point itself for 16-bit weights. ``a`` and ``w`` are bytes per activation and weight (``weight_dtype``
    for weight-only quantization; the compute runs at ``dtype``'s peak). Returns None when no ``m`` gets
    there. Introduced in Chapter 1.
    """
    dev = _device(device)
    k, n = check_int("k", k), check_int("n", n)
    ridge = dev.ridge_point(dtype)
    a = _dtype_bytes("dtype", dtype)
    w = _dtype_bytes("weight_dtype", weight_dtype or dtype)
    denom = 2.0 * k * n - ridge * (k + n) * a
    if denom <= 0:
        return None
    m = max(1, math.ceil(ridge * k * n * w / denom - 1e-9))
    # Guard the ceiling against floating-point error with the exact intensity test.
    while m > 1 and _matmul_intensity(m - 1, k, n, a, w) >= ridge:
        m -= 1
    while _matmul_intensity(m, k, n, a, w) < ridge:
        m += 1
    return m


def _matmul_intensity(m: int, k: int, n: int, a: float, w: float) -> float:
    return 2.0 * m * k * n / (m * k * a + k * n * w + m * n * a)
