"""The cached experiments of Chapter 8: SmolLM2-135M's decode step eager against compiled, and where it goes.

Compiling SmolLM2's whole decode step costs more than a chapter's time budget (inductor generates C++ kernels
and the system compiler builds each); these experiments run it once and the chapter shows the tables,
re-running small cases (elementwise chains, the tiny model's step) live. Each is
registered with :func:`unveiled.results.experiment`::

    python -m unveiled.results run kernels.experiments.smollm2_decode

:func:`decode_step_speed` is also what ``benchmarks/kernels.py`` runs: the decode step of a model as the book's
``Decoder`` runs it, as :class:`~unveiled.kernels.decode_step.StaticDecodeStep` runs it eagerly, and compiled,
timed in one run next to this machine's memory bandwidth measured with the same threads and clock.
Introduced in Chapter 8.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
import torch

from .._validate import check_int
from ..measure import measure_bandwidth, measure_machine
from ..models import Decoder
from ..results import experiment
from ..threads import torch_threads
from ..timing import time_repeats
from .decode_step import StaticDecodeStep, decode_step_bytes, profile_decode_step
from .fusion import compile_function, fusion_cases, measure_fusion

__all__ = ["PATHS", "REPEATS", "ROOF_GOAL", "ROUNDS", "decode_step_speed", "fusion_chains", "memory_streams",
           "skip_guards", "smollm2_decode", "smollm2_profile", "step_weights", "stream_rates", "tiny_decode",
           "weights_read"]

#: The ways of running a decode step that :func:`decode_step_speed` times: the book's Decoder, the static step
#: run eagerly, and the static step compiled with its projections left to the matrix library or written as
#: multiply-and-reduce loops that inductor generates itself, over the weights as stored or laid out in blocks
#: of output rows (see :class:`StaticDecodeStep`).
PATHS = ("eager Decoder", "eager static step", "compiled, library GEMV", "compiled, generated GEMV",
         "compiled, blocked GEMV")
CONTEXT = 64  # tokens the measured step attends to
#: Steps timed per path, and the rounds they are spread over, in :func:`decode_step_speed` by default.
REPEATS, ROUNDS = 12, 3
#: The book's performance goal for a compiled decode step (``benchmarks/kernels.py``, Chapter 8): the step's
#: bytes per second as a share of the triad bandwidth measured in the same run with the same threads and clock.
ROOF_GOAL = 0.60


def decode_step_speed(model: Decoder, *, threads: tuple[int, ...] = (1, 2), clocks: dict | None = None,
                      context: int = CONTEXT, repeats: int = REPEATS, rounds: int = ROUNDS, compile: bool = True,
                      seed: int = 0, budget_s: float | None = None,
                      gemvs: tuple[str, ...] = StaticDecodeStep.GEMVS) -> pd.DataFrame:
    """Time one decode step in each of the ways of :data:`PATHS`, per thread count, next to two memory rates.

    For each thread count (and each clock in ``clocks[threads]``, default ``"wall"``), in ``rounds`` rounds: the
    triad bandwidth (best of 7, :func:`~unveiled.measure.measure_bandwidth`), a plain read of the step's weights
    (:func:`weights_read`: ``sum`` over every weight the step reads, tensor by tensor, in its order), then
    ``repeats / rounds`` steps of each path. Each rate is the best over all rounds: interleaving gives every
    measurement the same chances of a quiet moment on a shared machine, so the ratios between them hold.
    ``bytes`` is the analyzer's count for the step (fp32), ``achieved_bytes_s = bytes / step_s``,
    ``fraction_of_roof = achieved / bandwidth`` (the book's goal, :data:`ROOF_GOAL`), and
    ``fraction_of_read = achieved / read_bytes_s``: the step against a plain read of the same weights, in the
    same pieces, on the same machine at the same time. The compiled paths are compiled once per thread count (inductor sizes its parallel loops
    for the threads it sees), with the weights frozen as constants, and timed without dynamo's guard checks
    (:func:`skip_guards`): the static step's inputs never change, so its one graph always applies and checking
    costs only Python time; ``compile_s`` is its wall time, ``compile_cpu_s`` the CPU time of this process and
    the C++ compiler. Where torch.compile is unavailable the compiled rows are missing and ``note`` says why.
    ``budget_s`` caps the timing of each path in each round (compiling excluded); ``gemvs`` picks the compiled
    variants. Introduced in Chapter 8.
    """
    clocks = clocks or {}
    rounds = check_int("rounds", rounds, minimum=1)
    per_round = max(1, -(-check_int("repeats", repeats, minimum=1) // rounds))
    nbytes = decode_step_bytes(model, context)
    weights = step_weights(model)
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, context), generator=gen)
    token, position = prompt[:, -1:], torch.tensor([context - 1])
    rows, note = [], ""
    for n in threads:
        with torch_threads(n), torch.no_grad():
            step = StaticDecodeStep(model, context).eval()
            step.prefill(prompt[:, :-1])
            cache = model.new_cache()
            model(prompt[:, :-1], cache=cache)

            def decoder_step(cache=cache) -> None:
                model(token, cache=cache)
                cache.crop(-1)

            runners = {"eager Decoder": decoder_step, "eager static step": lambda s=step: s(token, position)}
            compiled = {}
            for gemv in gemvs if compile else ():
                variant = StaticDecodeStep(model, context, gemv=gemv).eval()
                variant.prefill(prompt[:, :-1])
                comp = compile_function(variant, token, position)
                if comp.compiled:
                    compiled[f"compiled, {gemv} GEMV"] = comp
                    runners[f"compiled, {gemv} GEMV"] = lambda f=comp.fn: f(token, position)
                else:
                    note = comp.reason
            for clock in clocks.get(n, ("wall",)):
                triad, read, times = 0.0, 0.0, {path: [] for path in runners}
                for _ in range(rounds):
                    bw = measure_bandwidth(repeats=7, clock=clock)
                    t = bw[bw.benchmark == "triad"]
                    triad = max(triad, float((t["bytes"] / t["time_s"]).max()))
                    read = max(read, weight_bytes / min(time_repeats(lambda: weights_read(weights), 7,
                                                                     clock_name=clock)))
                    for path, fn in runners.items():
                        with skip_guards() if path in compiled else contextlib.nullcontext():
                            times[path] += time_repeats(fn, per_round, budget_s=budget_s, clock_name=clock)
                for path, ts in times.items():
                    comp, best = compiled.get(path), min(ts)
                    rows.append({"threads": n, "clock": clock, "path": path, "step_s": best,
                                 "step_median_s": float(np.median(ts)), "tokens_per_s": 1 / best, "bytes": nbytes,
                                 "achieved_bytes_s": nbytes / best, "bandwidth_bytes_s": triad,
                                 "fraction_of_roof": nbytes / best / triad, "read_bytes_s": read,
                                 "fraction_of_read": nbytes / best / read,
                                 "compile_s": comp.compile_s if comp else float("nan"),
                                 "compile_cpu_s": comp.compile_cpu_s if comp else float("nan"),
                                 "kernels": len(comp.kernels) if comp else float("nan"),
                                 "library_calls": len(comp.extern_calls) if comp else float("nan"), "note": note})
    return pd.DataFrame(rows)


def step_weights(model: Decoder) -> list[torch.Tensor]:
    """The weights one decode step reads whole, in the order it reads them: every projection of every layer,
    then the head (the embedding table is only looked up, one row per token). Chapter 8."""
    if not isinstance(model, Decoder):
        raise TypeError(f"model must be an unveiled Decoder, got {type(model).__name__}")
    linears = [m for layer in model.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    return [m.weight.detach() for m in [*linears, model.lm_head]]


def weights_read(weights: list[torch.Tensor]) -> None:
    """A plain read of ``weights``, tensor by tensor (``sum``: one pass, nothing written but a number): the
    bytes a decode step streams, in the same pieces, with no arithmetic to speak of. Chapter 8."""
    for w in weights:
        w.sum()


def skip_guards() -> contextlib.AbstractContextManager:
    """Run compiled functions without dynamo's guard checks (``torch.compiler.set_stance`` with
    ``skip_guard_eval_unsafe``, PyTorch 2.6 and later; elsewhere a no-op).

    Before each call of a compiled function, dynamo checks in Python that the inputs still match what the graph
    was compiled for (shapes, dtypes, every frozen module attribute): for a model's decode step, hundreds of
    checks per token. A serving loop whose inputs never change can skip them; this is only safe there, as a call
    that no longer matches would run the wrong graph. Introduced in Chapter 8.
    """
    stance = getattr(torch.compiler, "set_stance", None)
    if stance is None:
        return contextlib.nullcontext()
    try:
        return stance("default", skip_guard_eval_unsafe=True)
    except TypeError:  # a PyTorch whose set_stance predates the flag
        return contextlib.nullcontext()


@experiment("smollm2_decode", "SmolLM2-135M decode step (64 keys): eager Decoder, eager static step, compiled "
            "with library, generated or blocked GEMVs, 1 and 2 threads, vs the triad bandwidth")
def smollm2_decode() -> pd.DataFrame:
    """:func:`decode_step_speed` for SmolLM2-135M (fp32), one thread (wall and CPU-time clocks) and two (wall).
    Chapter 8."""
    from ..smollm2 import load_smollm2

    return decode_step_speed(load_smollm2(progress=False), threads=(1, 2), clocks={1: ("wall", "thread")})


@experiment("smollm2_profile", "SmolLM2-135M decode step per operator: counted bytes and measured time on one "
            "thread, next to the analyzer's roofline prediction on this machine")
def smollm2_profile() -> pd.DataFrame:
    """:func:`~unveiled.kernels.decode_step.profile_decode_step` on one thread, CPU-time clock, against this
    machine measured with the same thread count and clock. Chapter 8."""
    from ..smollm2 import load_smollm2

    model = load_smollm2(progress=False)
    with torch_threads(1):
        dev = measure_machine(progress=False, matmul_sizes=(1024,), dtypes=("fp32",), register=False,
                              cache=False, clock="thread").device
        out = profile_decode_step(model, dev, context=CONTEXT, repeats=7, clock="thread")
    out["bandwidth_bytes_s"] = dev.bandwidth
    out["peak_flop_s"] = dev.peak("fp32")
    return out


@experiment("fusion_chains", "Elementwise chains and linear + SiLU, eager vs torch.compile, one thread")
def fusion_chains() -> pd.DataFrame:
    """:func:`~unveiled.kernels.fusion.measure_fusion` on :func:`~unveiled.kernels.fusion.fusion_cases` (one
    thread, CPU-time clock), against this machine measured the same way; shown where no compiler is available.
    Chapter 8."""
    with torch_threads(1):
        dev = measure_machine(progress=False, matmul_sizes=(1024,), dtypes=("fp32",), register=False,
                              cache=False, clock="thread").device
        out = measure_fusion(fusion_cases(), dev, repeats=5, clock="thread")
    out["bandwidth_bytes_s"] = dev.bandwidth
    return out


@experiment("tiny_decode", "Tiny model M decode step: eager Decoder, eager static step, compiled with library "
            "or generated GEMVs, one thread")
def tiny_decode() -> pd.DataFrame:
    """:func:`decode_step_speed` for the tiny model M on one thread (CPU-time clock): the case the chapter compiles
    live, cached for machines without a compiler. Chapter 8."""
    from ..zoo import load

    return decode_step_speed(load("M"), threads=(1,), clocks={1: ("thread",)}, repeats=20)



def stream_rates(threads: int = 1, clock: str = "wall", *, array_bytes: int | None = None, repeats: int = 9,
                 seed: int = 0) -> pd.DataFrame:
    """How fast different kernels stream memory on this machine, in one run: the triad and copy of the memory
    roof, a pure read (``sum``), and matrix-vector products over a weight as large as the arrays, stored
    ``[out, in]`` (``nn.Linear``'s layout) and ``[in, out]``. Columns: ``kernel``, ``bytes``, ``time_s`` (best),
    ``bytes_s``, ``fraction_of_triad``. Evidence for how close a weight-streaming decode step can get to the
    roof with the library's kernels. Introduced in Chapter 8.
    """
    from ..measure import default_array_bytes

    n = (array_bytes or default_array_bytes()) // 4
    side = int(n ** 0.5)
    gen = torch.Generator().manual_seed(seed)
    a, b = torch.full((n,), 1.0), torch.full((n,), 0.5)
    w = torch.rand(side, side, generator=gen)
    w_t = w.t().contiguous()
    x = torch.rand(1, side, generator=gen)
    kernels = {
        "triad a += s·b": (lambda: a.add_(b, alpha=1e-6), 3 * n * 4),
        "copy a = b": (lambda: a.copy_(b), 2 * n * 4),
        "read: sum(a)": (lambda: a.sum(), n * 4),
        "GEMV, weight [out, in] (nn.Linear)": (lambda: torch.nn.functional.linear(x, w), side * side * 4),
        "GEMV, weight [in, out]": (lambda: x @ w_t, side * side * 4),
    }
    rows = []
    with torch_threads(threads), torch.no_grad():
        for name, (fn, nbytes) in kernels.items():
            best = min(time_repeats(fn, repeats, clock_name=clock))
            rows.append({"kernel": name, "threads": threads, "clock": clock, "bytes": nbytes, "time_s": best,
                         "bytes_s": nbytes / best})
    out = pd.DataFrame(rows)
    out["fraction_of_triad"] = out["bytes_s"] / out["bytes_s"].iloc[0]
    return out


@experiment("memory_streams", "Triad, copy, read and GEMV (two weight layouts) streaming rates, 1 thread "
            "(wall and CPU time) and 2 threads")
def memory_streams() -> pd.DataFrame:
    """:func:`stream_rates` on one thread (wall and CPU-time clocks) and two (wall). Chapter 8."""
    return pd.concat([stream_rates(1, "wall"), stream_rates(1, "thread"), stream_rates(2, "wall")],
                     ignore_index=True)
