"""Operator fusion measured: eager PyTorch against ``torch.compile`` (inductor's C++ backend) on this CPU.

Eager PyTorch runs one kernel per operator, and each reads its inputs from memory and writes its output
back; a chain of elementwise operators moves the same tensor many times. A compiler that *fuses* the chain
into one kernel reads the inputs once and writes the outputs once, which is what the survey's Fig. 14 draws
for a linear layer followed by SiLU [Yuan et al. 2024, §5.1]; it pays off only where the chain is
memory-bound (Fig. 15). ``torch.compile`` with the inductor backend generates fused C++ (vectorised with the
CPU's instruction set) and compiles it with the system's C++ compiler [Ansel et al. 2024].

This module compiles a function, reports what the compiler produced (the fused kernels, the bytes *inductor*
counts its kernels read and write, the generated code) and times eager against compiled in one run.
The inductor settings are set here, in one place, and restored afterwards (:func:`inductor_session`):

* a fresh, temporary cache directory and no FX-graph cache, so a compile never depends on what an earlier
  run left on disk (a warm cache would hide the compile time a reader pays, and skip the byte count);
* inductor's metrics logger on, so its per-kernel byte count (``GraphLowering.count_bytes``) is recorded;
* ``freezing`` on for modules (weights become constants that the compiler may pre-pack), configurable;
* where ``ATEN_CPU_CAPABILITY`` caps PyTorch's vector instructions (as the book's AVX2-limited check does),
  C++ compiled for exactly the instruction set inductor generates code for, not ``-march=native``: inductor
  honours the cap when it writes the kernels, but the compiler, told to use every instruction of the host,
  built them against a wider vector type, and the kernels returned wrong values.

Every compile is checked against eager PyTorch on the same inputs; a compiled function that disagrees is
reported as not compiled (with the difference), so a chapter never times a wrong kernel.

Where no C++ compiler (or no inductor) is available, :func:`compiler_support` says why and the functions
here return results marked as not compiled, never an error, so a chapter can show cached numbers instead.
Introduced in Chapter 8.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from .._validate import check_int
from ..hardware import Device, get_device
from ..roofline import roofline_time
from .decode_step import best_and_median
from .traffic import ByteCounter, unique_bytes

__all__ = [
    "AGREEMENT",
    "CompiledFunction",
    "CompilerSupport",
    "FusionCase",
    "compile_function",
    "compiler_support",
    "figure14_phases",
    "fusion_cases",
    "inductor_session",
    "kernel_excerpt",
    "largest_disagreement",
    "measure_fusion",
]


# ---- can this machine compile? -----------------------------------------------------------------------------
@dataclass(frozen=True)
class CompilerSupport:
    """Whether ``torch.compile``'s inductor backend can generate and build C++ here, and why not if not."""

    available: bool
    compiler: str | None
    reason: str


@functools.cache
def compiler_support() -> CompilerSupport:
    """Check for inductor and a C++ compiler (``$CXX``, else ``g++``/``c++``/``clang++`` on the PATH).

    Does not compile anything (that takes seconds); a compile that still fails later is caught where it
    happens. Introduced in Chapter 8.
    """
    if not hasattr(torch, "compile"):
        return CompilerSupport(False, None, f"PyTorch {torch.__version__} has no torch.compile")
    try:
        import importlib

        importlib.import_module("torch._inductor.config")
    except Exception as exc:  # a broken or stripped install
        return CompilerSupport(False, None, f"inductor cannot be imported ({type(exc).__name__}: {exc})")
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for name in names:
        path = shutil.which(name)
        if path:
            return CompilerSupport(True, path, f"inductor compiles C++ with {path}")
    return CompilerSupport(False, None, "no C++ compiler found (looked for " + ", ".join(names) + "): "
                           "torch.compile's CPU backend needs one (e.g. apt install g++)")


def _drop_record(record: logging.LogRecord) -> bool:
    return False


@contextlib.contextmanager
def inductor_session(*, freezing: bool = True) -> Iterator[None]:
    """Inductor configured for honest measurements (see the module docstring); everything restored on exit."""
    import torch._inductor.config as cfg

    saved = {k: getattr(cfg, k) for k in ("fx_graph_cache", "autotune_local_cache", "freezing")}
    saved_march = cfg.cpp.march
    saved_env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="unveiled-inductor-") as tmp:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tmp
        cfg.fx_graph_cache = False
        cfg.autotune_local_cache = False
        cfg.freezing = freezing
        if os.environ.get("ATEN_CPU_CAPABILITY") and saved_march is None:
            cfg.cpp.march = ""  # no -march=native: only the flags of the vector ISA inductor picked
        torch._logging.set_logs(inductor_metrics=True)  # inductor counts bytes only when this log is on
        metrics_log = logging.getLogger("torch._inductor.compile_fx.__inductor_metrics")
        metrics_log.addFilter(_drop_record)  # enabled (so inductor counts) but printed nowhere
        try:
            yield
        finally:
            metrics_log.removeFilter(_drop_record)
            torch._logging.set_logs()
            for k, v in saved.items():
                setattr(cfg, k, v)
            cfg.cpp.march = saved_march
            if saved_env is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved_env


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# ---- compiling and inspecting ------------------------------------------------------------------------------
@dataclass
class CompiledFunction:
    """What ``torch.compile`` made of a function: the compiled callable (None if compiling failed), the
    compile time (wall seconds and CPU seconds of this process and the compiler it ran), the fused kernels'
    names, the operators left to library kernels (``extern``: matrix products), inductor's count of the bytes
    its kernels read and write, the generated code, and ``reason`` when it did not compile."""

    fn: Callable | None
    compile_s: float = float("nan")
    compile_cpu_s: float = float("nan")
    kernels: list[str] = field(default_factory=list)
    extern_calls: list[str] = field(default_factory=list)
    fused_bytes: int = 0
    code: str = ""
    reason: str = ""

    @property
    def compiled(self) -> bool:
        return self.fn is not None


_KERNEL = re.compile(r"^(cpp_fused_\w+) = async_compile", re.M)
_EXTERN = re.compile(r"(extern_kernels\.\w+|torch\.ops\.\w+\.\w+(?:\.\w+)?)\(")


def largest_disagreement(result, reference) -> float:
    """How far ``result`` is from ``reference`` (tensors or tuples of them), relative to the reference's scale:
    ``max |result - reference| / max(1, max |reference|)``, infinite where shapes differ or only one side is
    NaN. A compiled kernel with a different summation order lands near float32's rounding (about 1e-6); a wrong
    one lands near 1 or far beyond. Introduced in Chapter 8."""
    outs, refs = _outputs(result), _outputs(reference)
    if len(outs) != len(refs):
        return float("inf")
    worst = 0.0
    for out, ref in zip(outs, refs, strict=True):
        if out.shape != ref.shape:
            return float("inf")
        out, ref = out.detach().double(), ref.detach().double()
        if not torch.equal(out.isnan(), ref.isnan()):
            return float("inf")
        keep = ~ref.isnan()
        if keep.any():
            scale = max(1.0, float(ref[keep].abs().max()))
            worst = max(worst, float((out[keep] - ref[keep]).abs().max()) / scale)
    return worst


#: Largest :func:`largest_disagreement` a compiled function may show against eager and still be timed.
AGREEMENT = 1e-3


def compile_function(fn: Callable, *args, freezing: bool = True) -> CompiledFunction:
    """Compile ``fn`` for ``args`` with inductor (one graph, static shapes) and report what it generated.

    The first call compiles and runs; its wall time is the compile time a reader waits for. Its result is
    compared with eager ``fn(*args)`` (so ``fn`` must give the same result when called twice on ``args``): a
    disagreement beyond :data:`AGREEMENT` means the compiled code is wrong on this machine, and it is reported
    as not compiled. Never raises for a missing compiler or a failed compile: the result then has ``fn=None``
    and a ``reason``. Introduced in Chapter 8.
    """
    support = compiler_support()
    if not support.available:
        return CompiledFunction(None, reason=support.reason)
    from torch._inductor import metrics
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    with inductor_session(freezing=freezing), torch.no_grad():
        metrics.reset()
        compiled = torch.compile(fn, fullgraph=True, dynamic=False)
        c0, t0 = _cpu_seconds(), time.perf_counter()
        try:
            result, codes = run_and_get_code(compiled, *args)
        except Exception as exc:  # compiler errors surface as many exception types
            return CompiledFunction(None, reason=f"torch.compile failed: {type(exc).__name__}: {str(exc)[:300]}")
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        fused = int(metrics.num_bytes_accessed)
        off = largest_disagreement(result, fn(*args))
    code = "\n".join(codes)
    if not off <= AGREEMENT:
        return CompiledFunction(None, wall, cpu, code=code,
                                reason=f"torch.compile's code gave wrong values on this machine (off by {off:.3g} "
                                       f"of the result's scale against eager PyTorch), so it is not timed")
    kernels = _KERNEL.findall(code)
    call = code[code.find("def call("):] if "def call(" in code else code
    externs = [e for e in _EXTERN.findall(call) if not e.startswith("torch.ops.inductor")]
    # Called with gradients on, the compiled function would fail its grad-mode guard and be compiled again,
    # outside this session's settings; keep every call on the graph compiled (and checked) here.
    return CompiledFunction(torch.no_grad()(compiled), wall, cpu, kernels, externs, fused, code)


def kernel_excerpt(code: str, kernel: str | None = None, lines: int = 14) -> str:
    """The first ``lines`` lines of the body of a generated C++ kernel (the first one by default)."""
    names = _KERNEL.findall(code)
    if not names:
        return ""
    name = kernel or names[0]
    start = code.find(f"{name} = async_compile")
    body = code[start:].split("'''")[1] if start >= 0 else ""
    keep = [ln for ln in body.splitlines() if ln.strip() and "#include" not in ln
            and "integer_div_error" not in ln]
    return "\n".join(keep[:lines])


# ---- cases and measurements --------------------------------------------------------------------------------
@dataclass(frozen=True)
class FusionCase:
    """A function to fuse, its inputs and a one-line description."""

    name: str
    fn: Callable
    args: tuple
    description: str


def _add_rmsnorm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor):
    h = x + residual
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * weight, h


def _swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.silu(gate) * up


def fusion_cases(tokens: int | None = None, *, hidden: int = 576, intermediate: int = 1536,
                 seed: int = 0, max_tensor_bytes: int = 128 * 2**20) -> list[FusionCase]:
    """The elementwise chains of a LLaMA block and the survey's Fig. 14 example, on ``tokens`` rows.

    ``tokens`` defaults to enough rows that each SwiGLU input is as large as the bandwidth benchmark's arrays
    (:func:`unveiled.measure.default_array_bytes`, well beyond the caches, so the traffic goes to DRAM as in a
    real model), at most ``max_tensor_bytes`` (which keeps the chapter's memory and time in bounds). The cases:
    residual add + RMSNorm, SwiGLU's SiLU(gate)·up, and a linear layer followed by SiLU (on one token, as
    in decode, whose weight is ``intermediate × hidden``). Widths default to SmolLM2-135M's.
    Introduced in Chapter 8.
    """
    from ..measure import default_array_bytes

    hidden = check_int("hidden", hidden, minimum=1)
    intermediate = check_int("intermediate", intermediate, minimum=1)
    if tokens is None:
        tokens = max(1, min(default_array_bytes(), max_tensor_bytes) // (4 * intermediate))
    tokens = check_int("tokens", tokens, minimum=1)
    g = torch.Generator().manual_seed(seed)
    x, r = torch.randn(tokens, hidden, generator=g), torch.randn(tokens, hidden, generator=g)
    w = torch.randn(hidden, generator=g)
    gate, up = torch.randn(tokens, intermediate, generator=g), torch.randn(tokens, intermediate, generator=g)
    linear = torch.nn.Linear(hidden, intermediate, bias=False).eval()
    torch.nn.init.normal_(linear.weight, std=0.02, generator=g)
    linear_silu = torch.nn.Sequential(linear, torch.nn.SiLU()).eval()
    return [
        FusionCase("residual add + RMSNorm", _add_rmsnorm, (x, r, w),
                   f"h = x + r; h·rsqrt(mean(h²) + ε)·w over {tokens:,} × {hidden} fp32"),
        FusionCase("SwiGLU: SiLU(gate)·up", _swiglu, (gate, up),
                   f"silu(gate)·up over {tokens:,} × {intermediate} fp32"),
        FusionCase("linear + SiLU (Fig. 14)", linear_silu, (torch.randn(1, hidden, generator=g),),
                   f"silu(x Wᵀ), one token, W {intermediate} × {hidden} fp32"),
    ]


def _outputs(result) -> list[torch.Tensor]:
    return [t for t in (result if isinstance(result, (tuple, list)) else (result,)) if isinstance(t, torch.Tensor)]


def _eager_counts(fn: Callable, args: tuple) -> tuple[int, int, float, int]:
    with torch.inference_mode():
        with ByteCounter() as bc, FlopCounterMode(display=False) as fc:
            result = fn(*args)
        compulsory = sum(unique_bytes(a) for a in args if isinstance(a, torch.Tensor))
        compulsory += sum(unique_bytes(p) for p in getattr(fn, "parameters", lambda: [])())
        compulsory += sum(unique_bytes(o) for o in _outputs(result))
    return bc.total_bytes, len(bc.records), float(fc.get_total_flops()), compulsory


def measure_fusion(cases: list[FusionCase], device: str | Device, *, repeats: int = 5,
                   clock: str = "wall", freezing: bool = False, budget_s: float | None = None) -> pd.DataFrame:
    """Eager against compiled for each case, measured in one run, next to the roofline's prediction.

    Columns: ``case``, ``eager_kernels`` (ATen kernels that move data) and ``compiled_kernels`` (fused C++
    kernels plus library calls), ``eager_bytes`` (counted by :class:`~unveiled.kernels.traffic.ByteCounter`),
    ``compiled_bytes`` (inductor's own count over its kernels, plus the weights when ``freezing`` turns them
    into constants, which that count leaves out) and ``compulsory_bytes`` (inputs, weights
    and outputs read or written once), ``flops`` (matrix products, by ``FlopCounterMode``), best times
    ``eager_s`` and ``compiled_s``, ``speedup``, the roofline times ``predicted_eager_s`` and
    ``predicted_compiled_s`` on ``device`` (``max(flops/peak, bytes/bandwidth)`` with the counted bytes),
    ``compile_s`` and ``compiled`` (False where no compiler: compiled columns then empty, ``note`` says why).
    ``budget_s`` caps the timing of each function (eager or compiled; compiling is not included): on a slow
    CPU fewer repeats run (see :mod:`unveiled.timing`). The generated code of each compiled case is in
    ``table.attrs["code"]`` (case name -> source). Introduced in Chapter 8.
    """
    dev = get_device(device)
    dtype = "fp32" if dev.has("fp32") else dev.dtypes[0]
    rows, codes = [], {}
    for case in cases:
        eager_bytes, eager_kernels, flops, compulsory = _eager_counts(case.fn, case.args)
        with torch.inference_mode():
            eager_s, _ = best_and_median(lambda c=case: c.fn(*c.args), repeats, clock, budget_s)
        comp = compile_function(case.fn, *case.args, freezing=freezing)
        if comp.compiled and freezing:  # frozen weights are constants, which inductor's byte count leaves out
            comp.fused_bytes += sum(unique_bytes(p) for p in getattr(case.fn, "parameters", lambda: [])())
        row = {"case": case.name, "eager_kernels": eager_kernels, "eager_bytes": eager_bytes,
               "compulsory_bytes": compulsory, "flops": flops, "eager_s": eager_s,
               "predicted_eager_s": float(roofline_time(flops, eager_bytes, dev, dtype)),
               "compiled": comp.compiled, "note": comp.reason}
        if comp.compiled:
            codes[case.name] = comp.code
            with torch.no_grad():
                compiled_s, _ = best_and_median(lambda c=case, f=comp.fn: f(*c.args), repeats, clock, budget_s)
            row |= {"compiled_kernels": len(comp.kernels) + len(comp.extern_calls), "compiled_bytes": comp.fused_bytes,
                    "compiled_s": compiled_s, "speedup": eager_s / compiled_s,
                    "predicted_compiled_s": float(roofline_time(flops, comp.fused_bytes, dev, dtype)),
                    "compile_s": comp.compile_s}
        rows.append(row)
    cols = ["case", "eager_kernels", "compiled_kernels", "eager_bytes", "compiled_bytes", "compulsory_bytes", "flops",
            "eager_s", "compiled_s", "speedup", "predicted_eager_s", "predicted_compiled_s", "compile_s", "compiled",
            "note"]
    out = pd.DataFrame(rows).reindex(columns=cols)
    out.attrs["code"] = codes
    return out


def figure14_phases(device: str | Device, *, tokens: int = 256, hidden: int = 576, intermediate: int = 1536,
                    seed: int = 0) -> pd.DataFrame:
    """The survey's Fig. 14 from a real example: a linear layer then SiLU, as separate kernels and fused.

    The eager kernels run under a :class:`~unveiled.kernels.traffic.ByteCounter` (``mm`` reads the input and
    the weight and stores its output; ``silu`` loads it back and stores the result); the fused kernel loads
    the input and the weight and stores only the result. Each kernel's phases are timed on ``device``'s
    roofline, one after the other: load = bytes read / bandwidth, compute = FLOPs / peak (SiLU at 4 operations
    per element), store = bytes written / bandwidth. Columns: ``schedule`` ("separate kernels", "fused"),
    ``kernel``, ``phase``, ``start_s``, ``end_s``, ``bytes``. fp32, at SmolLM2's widths by default.
    Introduced in Chapter 8.
    """
    dev = get_device(device)
    dtype = "fp32" if dev.has("fp32") else dev.dtypes[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    w = torch.randn(intermediate, hidden, generator=g)
    with torch.inference_mode(), ByteCounter() as bc:
        torch.nn.functional.silu(torch.nn.functional.linear(x, w))
    mm, act = bc.records
    flops = {"linear": 2.0 * tokens * hidden * intermediate, "SiLU": 4.0 * tokens * intermediate}
    kernels = {"separate kernels": [("linear", mm.read_bytes, flops["linear"], mm.write_bytes),
                                    ("SiLU", act.read_bytes, flops["SiLU"], act.write_bytes)],
               "fused": [("linear + SiLU", mm.read_bytes, flops["linear"] + flops["SiLU"], act.write_bytes)]}
    rows = []
    for schedule, ks in kernels.items():
        t = 0.0
        for name, load, work, store in ks:
            for phase, seconds, nbytes in (("load", load / dev.bandwidth, load), ("compute", work / dev.peak(dtype), 0),
                                           ("store", store / dev.bandwidth, store)):
                rows.append({"schedule": schedule, "kernel": name, "phase": phase, "start_s": t, "end_s": t + seconds,
                             "bytes": nbytes})
                t += seconds
    return pd.DataFrame(rows)
