"""Predicted versus measured: the roofline analyzer meets this CPU, and a five-number calibration.

The analyzer (Chapter 2) predicts a pass's time as the sum over operators of ``max(flops / peak, bytes /
bandwidth)`` [Williams et al. 2009; Yuan et al. 2024]. On a real machine each operator class reaches only a
fraction of its roof, and a framework adds a fixed cost per operator it dispatches and per pass. This module
measures real prefill and decode passes of the book's models (:class:`~unveiled.models.Decoder`), compares
them with the analyzer's prediction on the roofline measured by :func:`unveiled.measure_machine`, and fits

    time ≈ e_gemm · T_gemm + e_attention · T_attention + e_elementwise · T_elementwise + c_op · n_ops + c_pass

where ``T_class`` is the roofline time of the operators in that class, ``n_ops`` the number of operator
instances in the pass, and the five coefficients are non-negative. The fit minimises the *relative* error
(so a 2 ms step weighs as much as a 2 s prefill) by non-negative least squares [Lawson & Hanson 1974].
``1 / e_class`` is the fraction of the roof an operator class reaches; ``c_op`` is the dispatch overhead.

The measuring campaign runs offline (``python -m unveiled.calibration measure``) and its table is shipped
in ``data/measurements/`` with the machine, the versions and the measured roofline. Introduced in the
appendix "The models in this book".
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._validate import check_choice, check_int
from .datafiles import data_file
from .hardware import Device
from .session import progress_bar
from .timing import CLOCKS, Budget, clock

__all__ = [
    "CLASSES",
    "CLOCKS",
    "FEATURES",
    "CalibrationFit",
    "classify_op",
    "default_scenarios",
    "fit_calibration",
    "load_measurements",
    "measure_pass",
    "measure_scenarios",
    "predict_scenarios",
    "prediction_errors",
    "stored_device",
]

#: Operator classes of the calibration and the analyzer operators in each (everything else is elementwise).
CLASSES = ("gemm", "attention", "elementwise")
_GEMM = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "qkv_proj",
         "gate_up_proj"}
_ATTENTION = {"qk_matmul", "sv_matmul", "softmax", "fused_attention", "flash_attention"}
#: Columns used as regressors, in the order of the fitted coefficients.
FEATURES = ("gemm_s", "attention_s", "elementwise_s", "ops", "passes")
#: The analyzer names of the shipped models, by the names the calibration uses.
MODEL_NAMES = {"S": "tiny-s", "M": "tiny-m", "SmolLM2": "smollm2-135m"}
MEASUREMENTS = "measurements/cpu_passes"


def classify_op(name: str) -> str:
    """The calibration class of an analyzer operator: ``"gemm"``, ``"attention"`` or ``"elementwise"``."""
    if not isinstance(name, str):
        raise TypeError(f"operator name must be a str, got {type(name).__name__}")
    if name in _GEMM or name.endswith("_proj"):
        return "gemm"
    if name in _ATTENTION or "attention" in name:
        return "attention"
    return "elementwise"


@dataclass(frozen=True)
class Scenario:
    """One timed pass: a model, a stage, a batch and a sequence length (prompt, or KV cache in decode)."""

    model: str
    stage: str
    batch: int
    seq_len: int


def default_scenarios(models: Iterable[str] = ("S", "M", "SmolLM2")) -> list[Scenario]:
    """The campaign's grid: decode at batch 1/4/16 with 32 or 256 cached tokens, prefill at batch 1/4 of
    32 or 256 tokens, for each model."""
    out = []
    for m in models:
        check_choice("model", m, MODEL_NAMES)
        out += [Scenario(m, "decode", b, s) for b in (1, 4, 16) for s in (32, 256)]
        out += [Scenario(m, "prefill", b, s) for b in (1, 4) for s in (32, 256)]
    return out


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def _clock(name: str):
    """The clock of :mod:`unveiled.timing`; the thread clock needs one PyTorch thread (it sees only the
    calling thread's work)."""
    return clock(name, single_thread=True)


def measure_pass(model, stage: str, batch: int, seq_len: int, repeats: int = 5, seed: int = 0,
                 clock: str = "wall", budget_s: float | None = None) -> dict:
    """Time one prefill or decode pass of a :class:`~unveiled.models.Decoder` (best and median of ``repeats``).

    Prefill runs ``batch`` prompts of ``seq_len`` tokens through a fresh KV cache (logits for every position).
    Decode appends one token per sequence to a cache already holding ``seq_len - 1`` (random) keys and values,
    so the new token attends to ``seq_len`` keys, as the analyzer's decode stage assumes; the cache is cropped
    back between repeats. One warm-up pass precedes the timed ones. ``clock="thread"`` times CPU time instead of wall time
    (see :data:`CLOCKS`; single-threaded only). With ``budget_s``, repeats stop once that many seconds have
    passed (at least one is timed). Introduced in the appendix "The models in this book".
    """
    import torch

    check_choice("stage", stage, ("prefill", "decode"))
    batch, seq_len = check_int("batch", batch), check_int("seq_len", seq_len, minimum=2)
    repeats = check_int("repeats", repeats)
    now = _clock(clock)
    budget = Budget(budget_s)
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    times = []
    with torch.inference_mode():
        if stage == "prefill":
            tokens = torch.randint(0, vocab, (batch, seq_len), generator=gen)
            for i in range(repeats + 1):
                cache = model.new_cache()
                t0 = now()
                model(tokens, cache)
                if i:
                    times.append(now() - t0)
                    if budget.remaining() <= 0:
                        break
        else:
            new = torch.randint(0, vocab, (batch, 1), generator=gen)
            cache = model.new_cache()
            # The step's cost depends on how many keys are cached, not on their values: fill the cache with
            # random keys and values instead of paying for a prefill of batch x (seq_len - 1) tokens.
            cfg = model.config
            shape = (batch, cfg.num_kv_heads, seq_len - 1, cfg.head_dim)
            for layer in range(cfg.num_layers):
                cache.update(layer, torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
            for i in range(repeats + 1):
                t0 = now()
                model(new, cache)
                elapsed = now() - t0
                cache.crop(seq_len - 1)
                if i:
                    times.append(elapsed)
                    if budget.remaining() <= 0:
                        break
    return {"measured_s": float(np.min(times)), "measured_median_s": float(np.median(times)), "repeats": len(times)}


def _load_models(names: Iterable[str]) -> dict:
    from . import zoo
    from .smollm2 import load_smollm2

    out = {}
    for n in names:
        out[n] = load_smollm2(progress=False) if n == "SmolLM2" else zoo.load(n)
    return out


def measure_scenarios(scenarios: Iterable[Scenario], models: Mapping | None = None, repeats: int = 5,
                      progress: bool = True, clock: str = "wall", budget_s: float | None = None) -> pd.DataFrame:
    """Time every scenario; returns one row per scenario with ``measured_s`` (best) and ``measured_median_s``.

    With ``budget_s`` each scenario gets an even share of what is left (repeats stop when it is spent).

    ``models`` maps calibration names ("S", "M", "SmolLM2") to decoders; missing ones are loaded.
    Introduced in the appendix "The models in this book".
    """
    scenarios = list(scenarios)
    models = dict(models or {})
    missing = sorted({s.model for s in scenarios} - set(models))
    models.update(_load_models(missing))
    it = scenarios
    if progress:
        it = progress_bar(scenarios, desc="timing passes")
    rows = []
    budget = Budget(budget_s)
    for i, s in enumerate(it):
        share = budget.share(len(scenarios) - i)
        rows.append({"model": s.model, "stage": s.stage, "batch": s.batch, "seq_len": s.seq_len,
                     **measure_pass(models[s.model], s.stage, s.batch, s.seq_len, repeats=repeats, clock=clock,
                                    budget_s=None if budget_s is None else share)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Predicting
# --------------------------------------------------------------------------------------------------


def predict_scenarios(df: pd.DataFrame, device: Device) -> pd.DataFrame:
    """Add the analyzer's fp32 roofline prediction to a table of scenarios, split by operator class.

    New columns: ``roofline_s`` (the analyzer's time), ``gemm_s``, ``attention_s``, ``elementwise_s`` (their
    split), ``ops`` (operator instances per pass), ``passes`` (1) and ``flops``/``bytes``. Prefill predicts the
    logits of every position, as the measured forward computes them. Introduced in the appendix "The models in
    this book".
    """
    from .analyzer import analyze

    for col in ("model", "stage", "batch", "seq_len"):
        if col not in df.columns:
            raise ValueError(f"the scenario table needs a {col!r} column, has {list(df.columns)}")
    rows = []
    for r in df.itertuples(index=False):
        name = MODEL_NAMES.get(r.model, r.model)
        a = analyze(name, device, stage=r.stage, batch=int(r.batch), seq_len=int(r.seq_len), w_bits=32,
                    a_bits=32, kv_bits=32, logits="all" if r.stage == "prefill" else "last")
        ops = a.ops
        cls = ops["op"].map(classify_op)
        split = ops.groupby(cls)["total_time_s"].sum()
        rows.append({
            "roofline_s": a.time_s,
            **{f"{c}_s": float(split.get(c, 0.0)) for c in CLASSES},
            "ops": int(ops["count"].sum()),
            "passes": 1,
            "flops": a.flops,
            "bytes": a.bytes,
        })
    return pd.concat([df.reset_index(drop=True), pd.DataFrame(rows)], axis=1)


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationFit:
    """Fitted coefficients: ``e_gemm``, ``e_attention``, ``e_elementwise`` (multipliers of roofline time),
    ``c_op_s`` (seconds per operator instance) and ``c_pass_s`` (seconds per pass)."""

    e_gemm: float
    e_attention: float
    e_elementwise: float
    c_op_s: float
    c_pass_s: float
    points: int

    @property
    def coefficients(self) -> np.ndarray:
        return np.array([self.e_gemm, self.e_attention, self.e_elementwise, self.c_op_s, self.c_pass_s])

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Calibrated time in seconds for each row of a table with the :data:`FEATURES` columns."""
        return _features(df) @ self.coefficients

    def table(self) -> pd.DataFrame:
        """The coefficients with their meaning (fraction of roof reached, overheads in µs)."""
        rows = []
        for c in CLASSES:
            e = getattr(self, f"e_{c}")
            rows.append({"term": f"{c} operators", "coefficient": e, "unit": "× roofline time",
                         "meaning": f"reach {100 / e:.1f} % of their roof" if e > 0
                         else "fitted as 0: their roofline time is absorbed by the per-operator overhead"})
        rows.append({"term": "per operator", "coefficient": self.c_op_s * 1e6, "unit": "µs",
                     "meaning": "dispatch overhead per operator instance"})
        rows.append({"term": "per pass", "coefficient": self.c_pass_s * 1e6, "unit": "µs",
                     "meaning": "fixed cost of one forward pass"})
        return pd.DataFrame(rows)


def _features(df: pd.DataFrame) -> np.ndarray:
    missing = [f for f in FEATURES if f not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} missing: run predict_scenarios first")
    return df[list(FEATURES)].to_numpy(dtype=float)


def fit_calibration(df: pd.DataFrame, target: str = "measured_s") -> CalibrationFit:
    """Fit the five non-negative coefficients to measured times, minimising the squared relative error.

    ``df`` needs the :data:`FEATURES` columns (from :func:`predict_scenarios`) and ``target``. Each row is
    divided by its measured time, so every point counts in proportion to its relative error. Introduced in
    the appendix "The models in this book".
    """
    from scipy.optimize import nnls

    if target not in df.columns:
        raise ValueError(f"no {target!r} column to fit; columns: {list(df.columns)}")
    y = df[target].to_numpy(dtype=float)
    if len(y) < len(FEATURES):
        raise ValueError(f"need at least {len(FEATURES)} measurements to fit {len(FEATURES)} coefficients, got {len(y)}")
    if np.any(~np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("measured times must be positive and finite")
    x = _features(df)
    # Columns span 1e-7 s to 1e2 operators; scale them so NNLS is well conditioned, then unscale.
    a = x / y[:, None]
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, np.ones(len(y)))
    coef = coef / scale
    return CalibrationFit(*[float(c) for c in coef], points=len(y))


def prediction_errors(df: pd.DataFrame, fit: CalibrationFit | None = None, target: str = "measured_s",
                      loo: bool = True) -> pd.DataFrame:
    """Relative errors ``(predicted − measured) / measured`` of the plain roofline and of the calibration.

    Adds ``calibrated_s``, ``roofline_err``, ``calibrated_err`` and, with ``loo``, ``loo_err``: each point
    predicted by a fit to all the *other* points (leave-one-out), an honest out-of-sample error.
    Introduced in the appendix "The models in this book".
    """
    fit = fit or fit_calibration(df, target)
    out = df.copy()
    y = out[target].to_numpy(dtype=float)
    out["calibrated_s"] = fit.predict(out)
    out["roofline_err"] = out["roofline_s"] / y - 1
    out["calibrated_err"] = out["calibrated_s"] / y - 1
    if loo:
        errs = []
        for i in range(len(out)):
            rest = out.drop(index=out.index[i])
            f = fit_calibration(rest, target)
            errs.append(float(f.predict(out.iloc[[i]])[0] / y[i] - 1))
        out["loo_err"] = errs
    return out


def error_summary(errors: pd.DataFrame) -> pd.DataFrame:
    """Median and worst absolute relative error (%) of each predictor, overall and per model."""
    cols = [c for c in ("roofline_err", "calibrated_err", "loo_err") if c in errors.columns]
    names = {"roofline_err": "roofline (no fit)", "calibrated_err": "calibrated (in-sample)",
             "loo_err": "calibrated (leave-one-out)"}
    rows = []
    for group, g in [("all", errors), *list(errors.groupby("model", sort=False))]:
        for c in cols:
            e = 100 * g[c].abs()
            rows.append({"models": group, "predictor": names[c], "median_abs_err_pct": float(e.median()),
                         "max_abs_err_pct": float(e.max()), "points": len(g)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Stored measurements
# --------------------------------------------------------------------------------------------------


def load_measurements(name: str = MEASUREMENTS) -> pd.DataFrame:
    """The shipped measurement table; its provenance (machine, versions, measured roofline) is in
    ``df.attrs["provenance"]``. Introduced in the appendix "The models in this book"."""
    df = pd.read_csv(io.StringIO(data_file(f"{name}.csv").read_text()))
    df.attrs["provenance"] = json.loads(data_file(f"{name}.json").read_text())
    return df


def stored_device(provenance: Mapping) -> Device:
    """The measured roofline recorded with a measurement campaign, as a :class:`Device` (not registered)."""
    from .hardware import define_device

    roof = provenance["roofline"]
    return define_device(
        "measured-cpu-" + provenance["date"],
        bandwidth_gb_s=roof["bandwidth_b_s"] / 1e9,
        peaks_tflops={k: v / 1e12 for k, v in roof["peaks_flop_s"].items()},
        display_name=f"{provenance['machine']['cpu']} (measured {provenance['date']})",
        kind="cpu",
        register=False,
    )


def run_campaign(out: pathlib.Path, repeats: int = 5, threads: int = 2, clock: str = "wall",
                 budget_s: float | None = 600.0) -> pd.DataFrame:
    """Measure the roofline and every default scenario; write ``<out>.csv`` and ``<out>.json``.

    With ``clock="thread"`` (one thread only) both the scenarios and ``measure_machine``'s kernels are timed
    in CPU time of the measuring thread, so that a campaign on a busy shared machine approximates a quiet one.
    The scenarios share ``budget_s`` seconds (repeats stop early on a slow machine; at least one per scenario).
    """
    import os

    from . import measure
    from .environment import provenance_record
    from .threads import torch_threads

    with torch_threads(threads):
        _clock(clock)  # validates the clock (the thread clock needs one thread)
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        m = measure.measure_machine(cache=False, register=False, clock=clock)
        dev = m.device
        df = measure_scenarios(default_scenarios(), repeats=repeats, clock=clock, budget_s=budget_s)
        df["threads"] = threads
        df["clock"] = clock
        out.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(out.with_suffix(".csv"), index=False, float_format="%.6g")
        meta = provenance_record(
            "python -m unveiled.calibration measure",
            description="Best and median wall time of single prefill and decode passes of the tiny models S, M "
                        "and SmolLM2-135M (fp32, PyTorch eager, batch-1..16), with this machine's roofline "
                        "measured by unveiled.measure_machine() just before.",
            roofline={"bandwidth_b_s": dev.bandwidth, "peaks_flop_s": dict(dev.peaks), "notes": dev.notes,
                      "paths": None if m.paths is None else m.paths.to_dict("records")},
            repeats=repeats,
            clock=clock,
            clock_note=("CPU time of the single measuring thread (time.thread_time), for the passes and for "
                        "measure_machine's kernels: it excludes time spent waiting while other jobs ran, so it "
                        "approximates a quiet machine's wall time (memory-bandwidth contention still shows)")
            if clock == "thread" else "wall-clock time (time.perf_counter)",
            duration_s=round(time.perf_counter() - t0, 1),
            load_average_1_5_15min={"before": [round(x, 2) for x in load_before],
                                    "after": [round(x, 2) for x in os.getloadavg()]},
            process_niceness=os.nice(0),
        )
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
    return df


def main(argv: list[str] | None = None) -> int:
    """``python -m unveiled.calibration measure [--out data/measurements/cpu_passes]``."""
    parser = argparse.ArgumentParser(prog="python -m unveiled.calibration", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure", help="time prefill/decode passes of S, M and SmolLM2 and the roofline")
    p.add_argument("--out", default="data/measurements/cpu_passes", help="output path without extension")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="'thread': CPU time of the measuring thread (needs --threads 1; for busy machines)")
    p.add_argument("--budget", type=float, default=600.0, help="seconds the scenarios may take in all (default 600)")
    args = parser.parse_args(argv)
    df = run_campaign(pathlib.Path(args.out), repeats=args.repeats, threads=args.threads, clock=args.clock,
                      budget_s=args.budget)
    print(f"wrote {args.out}.csv ({len(df)} rows) and {args.out}.json")
    fit = fit_calibration(predict_scenarios(df, stored_device(json.loads(pathlib.Path(args.out + '.json').read_text()))))
    print(fit.table().to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

