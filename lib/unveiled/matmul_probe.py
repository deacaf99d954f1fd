"""Which data types does this CPU multiply fast? A quick probe, and the sizes a budget allows.

A data type is only as fast as the instructions the CPU has for it. bf16 matrix products run natively with
AVX512_BF16 or AMX (x86) or the BF16 extension (Arm); without them PyTorch converts and computes in software,
about 40× slower than fp32 (fp16 likewise without AVX512_FP16 or AMX-FP16). That changes the roofline: the
"halve the bytes" argument for 16-bit weights assumes a compute roof at least as high as fp32's. The probe
times a small product per data type (a fraction of a second even where a type is emulated) and the size
planner keeps a large benchmark from running for minutes on such a CPU. Introduced in Chapter 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._validate import check_int
from .environment import cpu_capability, cpu_flags
from .hardware import canonical_dtype
from .threads import torch_threads
from .timing import time_repeats

__all__ = ["EMULATED_BELOW", "NATIVE_FLAGS", "check_matmul_dtypes", "matmul_operands", "matmul_paths",
           "plan_matmul_sizes"]


def _torch():
    try:
        import torch

        return torch
    except ImportError:
        return None


def _torch_dtype(torch, dtype: str):
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


#: A data type whose small-matmul rate is below this fraction of fp32's has no fast kernel on this CPU: its
#: arithmetic is emulated (converted and computed in software), so its compute roof sits far below fp32's.
EMULATED_BELOW = 0.5
PROBE_SIZE = 256
_MATMUL_DTYPES = ("fp32", "bf16", "fp16")
#: The CPU flags that give each data type native matrix arithmetic on x86 (AVX-512 or AMX) and Arm.
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"),
                "fp16": ("avx512_fp16", "amx_fp16", "fphp", "asimdhp")}
_PATHS: dict[tuple, pd.DataFrame] = {}


def matmul_operands(torch, n: int, dtype: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn((n, n), generator=gen), torch.randn((n, n), generator=gen)
    return x.to(_torch_dtype(torch, dtype)), y.to(_torch_dtype(torch, dtype))


def check_matmul_dtypes(dtypes) -> tuple[str, ...]:
    dtypes = (dtypes,) if isinstance(dtypes, str) else tuple(dtypes)
    dtypes = tuple(canonical_dtype(d) for d in dtypes)
    bad = [d for d in dtypes if d not in _MATMUL_DTYPES]
    if bad:
        raise ValueError(f"matrix products are timed in fp32, bf16 and fp16 only, got {bad}")
    return dtypes


def matmul_paths(dtypes: tuple[str, ...] = _MATMUL_DTYPES, *, size: int = PROBE_SIZE, repeats: int = 20,
                 clock: str = "wall", cache: bool = True) -> pd.DataFrame:
    """Which data types have fast matrix products on this CPU: a quick probe, one row per data type.

    Times a ``size``³ product per data type, up to ``repeats`` times within a fifth of a second (a fast
    product gets many tries, so one disturbed run cannot make fp32 look slow), and compares its best rate with
    fp32's. The probe runs on one thread: a ratio is what it is after, and a tiny product on several threads of
    a busy machine mostly measures threads waiting for each other. Columns: ``dtype``, ``probe_size``,
    ``probe_flop_s`` (best one-thread rate),
    ``vs_fp32``, ``path`` (``"native"``, or ``"emulated"`` below :data:`EMULATED_BELOW` × fp32's rate, or
    ``"unsupported"`` where PyTorch has no kernel), ``cpu_flags`` (the CPU flags that would make it native).
    Cached per process, PyTorch CPU capability and thread count. Needs PyTorch. Introduced in Chapter 1.
    """
    torch = _torch()
    if torch is None:
        raise RuntimeError("matmul_paths needs PyTorch (pip install torch)")
    dtypes = check_matmul_dtypes(dtypes)
    size = check_int("size", size, minimum=16, maximum=4096)
    key = (dtypes, size, repeats, clock, cpu_capability(), torch.get_num_threads())
    if cache and key in _PATHS:
        return _PATHS[key].copy()
    flags = cpu_flags()
    rows = []
    for dtype in dict.fromkeys(("fp32", *dtypes)):  # fp32 first: the reference rate
        a, b = matmul_operands(torch, size, dtype)
        try:
            with torch_threads(1):
                best = min(time_repeats(lambda a=a, b=b: torch.mm(a, b), repeats, budget_s=0.2, clock_name=clock,
                                        min_repeats=min(3, repeats)))
            rate = 2.0 * size**3 / best
        except RuntimeError:  # no CPU kernel for this type in this build
            rate = float("nan")
        rows.append({"dtype": dtype, "probe_size": size, "probe_flop_s": rate,
                     "cpu_flags": ", ".join(f for f in NATIVE_FLAGS.get(dtype, ()) if f in flags) or "-"})
    out = pd.DataFrame(rows)
    out["vs_fp32"] = out["probe_flop_s"] / float(out["probe_flop_s"].iloc[0])
    out["path"] = np.where(out["probe_flop_s"].isna(), "unsupported",
                           np.where(out["vs_fp32"] < EMULATED_BELOW, "emulated", "native"))
    out = out[out["dtype"].isin(dtypes)].reset_index(drop=True)
    out = out[["dtype", "probe_size", "probe_flop_s", "vs_fp32", "path", "cpu_flags"]]
    if cache:
        _PATHS[key] = out.copy()
    return out


def plan_matmul_sizes(rate_flop_s: float, sizes: tuple[int, ...], budget_s: float | None,
                      min_runs: int = 3) -> tuple[tuple[int, ...], str]:
    """Which of ``sizes`` to time at an expected rate, so that ``min_runs`` runs of each fit in ``budget_s``.

    Returns ``(sizes_to_time, note)``. Sizes are kept, smallest first, while their estimated time fits what is
    left of the budget; if even the smallest does not fit, the largest power of two (>= 32) that does is used
    instead, and the note says so. A pure function (the policy :func:`measure_matmul` applies to its probe).
    """
    if budget_s is None or not np.isfinite(rate_flop_s) or rate_flop_s <= 0:
        return tuple(sizes), ""
    left, keep = float(budget_s), []
    for n in sorted(sizes):
        cost = min_runs * 2.0 * n**3 / rate_flop_s
        if cost <= left:
            keep.append(n)
            left -= cost
    if keep:
        skipped = [n for n in sizes if n not in keep]
        note = f"sizes {skipped} skipped: over the budget at {rate_flop_s / 1e9:.1f} GFLOP/s" if skipped else ""
        return tuple(n for n in sizes if n in keep), note
    n = 32
    while n * 2 <= max(sizes) and min_runs * 2.0 * (2 * n) ** 3 / rate_flop_s <= budget_s:
        n *= 2
    return (n,), f"measured at {n} instead of {list(sizes)}: {rate_flop_s / 1e9:.1f} GFLOP/s would overrun the budget"
