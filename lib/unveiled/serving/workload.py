"""Serving workloads: when requests arrive and how long their prompts and outputs are.

A serving system sees a stream of requests, each with an arrival time, a prompt of ``prompt_len`` tokens and an
output of ``output_len`` tokens (unknown to the server until the request stops). Benchmarks draw arrivals from
a Poisson process (exponential gaps at ``rate`` requests per second) or a burstier gamma process (vLLM's
``--burstiness``: gamma gaps with shape ``burstiness`` and the same mean; 1 is Poisson, smaller is burstier),
and lengths from fixed values, distributions or a production trace. The Azure LLM inference trace of
November 2023 [Patel et al. 2024] ships with the book (conversation and code services): real arrival times and
token counts. Requests may start with a shared prefix (a system prompt), which paged memory can store once.

A workload is a DataFrame with one row per request: ``request_id, arrival_s, prompt_len, output_len,
prefix_id, prefix_len`` (``prefix_id = -1``: no shared prefix), sorted by arrival. Introduced in Chapter 9.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._validate import check_choice, check_int, check_positive
from ..datafiles import data_file

__all__ = [
    "COLUMNS",
    "TRACES",
    "Lengths",
    "azure_trace",
    "bursty_workload",
    "check_workload",
    "exponential_lengths",
    "lognormal_lengths",
    "poisson_workload",
    "trace_workload",
    "uniform_lengths",
    "workload_from_requests",
]

#: Columns of a workload table, in order.
COLUMNS = ("request_id", "arrival_s", "prompt_len", "output_len", "prefix_id", "prefix_len")
#: The shipped traces: name -> data file (Azure LLM inference trace 2023, CC-BY 4.0).
TRACES = {"azure-conv": "azure_llm_trace_2023_conv.csv", "azure-code": "azure_llm_trace_2023_code.csv"}
#: SHA-256 of the shipped trace files (checked on every read; see data/README.md).
TRACE_SHA256 = {"azure_llm_trace_2023_conv.csv": "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
                "azure_llm_trace_2023_code.csv": "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6"}


@dataclass(frozen=True)
class Lengths:
    """A seeded distribution of token counts, clipped to ``[low, high]`` and rounded to ints.

    ``kind`` is ``"uniform"`` (``a``, ``b`` the bounds), ``"exponential"`` (``a`` the mean) or
    ``"lognormal"`` (``a`` the median, ``b`` the sigma of the log). Build one with :func:`uniform_lengths`,
    :func:`exponential_lengths` or :func:`lognormal_lengths`. Introduced in Chapter 9.
    """

    kind: str
    a: float
    b: float = 0.0
    low: int = 1
    high: int = 1 << 20

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ("uniform", "exponential", "lognormal"))
        check_int("low", self.low, minimum=0)
        check_int("high", self.high, minimum=self.low)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "uniform":
            x = rng.integers(int(self.a), int(self.b) + 1, n)
        elif self.kind == "exponential":
            x = np.rint(rng.exponential(self.a, n))
        else:
            x = np.rint(self.a * np.exp(self.b * rng.standard_normal(n)))
        return np.clip(x, self.low, self.high).astype(np.int64)


def uniform_lengths(low: int, high: int) -> Lengths:
    """Token counts drawn uniformly from ``low..high`` (inclusive). Introduced in Chapter 9."""
    low, high = check_int("low", low, minimum=0), check_int("high", high, minimum=0)
    if high < low:
        raise ValueError(f"high ({high}) must be >= low ({low})")
    return Lengths("uniform", low, high, low, high)


def exponential_lengths(mean: float, low: int = 1, high: int = 1 << 20) -> Lengths:
    """Exponentially distributed token counts (most short, a few long), clipped to ``[low, high]``.
    Introduced in Chapter 9."""
    return Lengths("exponential", check_positive("mean", mean), 0.0, low, high)


def lognormal_lengths(median: float, sigma: float = 1.0, low: int = 1, high: int = 1 << 20) -> Lengths:
    """Log-normally distributed token counts with this median and log-spread (production traces look like
    this), clipped to ``[low, high]``. Introduced in Chapter 9."""
    return Lengths("lognormal", check_positive("median", median), check_positive("sigma", sigma, allow_zero=True),
                   low, high)


LengthSpec = int | Lengths | Sequence[int] | np.ndarray | Callable[[np.random.Generator, int], Iterable[int]]


def _lengths(name: str, spec: LengthSpec, rng: np.random.Generator, n: int, minimum: int) -> np.ndarray:
    if isinstance(spec, (bool, float)):
        raise TypeError(f"{name} must be an int, a Lengths distribution, a sequence of ints to sample from or a "
                        f"callable (rng, n) -> ints; got {type(spec).__name__} {spec!r}")
    if isinstance(spec, (int, np.integer)):
        out = np.full(n, check_int(name, spec, minimum=minimum), dtype=np.int64)
    elif isinstance(spec, Lengths):
        out = spec.sample(rng, n)
    elif callable(spec):
        out = np.asarray(list(spec(rng, n)))
    elif isinstance(spec, (Sequence, np.ndarray)) and not isinstance(spec, str):
        pool = np.asarray(spec)
        if pool.size == 0:
            raise ValueError(f"{name}: an empty list of lengths to sample from")
        out = pool[rng.integers(0, pool.size, n)]
    else:
        raise TypeError(f"{name} must be an int, a Lengths distribution, a sequence of ints to sample from or a "
                        f"callable (rng, n) -> ints; got {type(spec).__name__}")
    if out.dtype.kind not in "iu" or out.shape != (n,):
        raise ValueError(f"{name}: expected {n} integer lengths, got {out.dtype} of shape {out.shape}")
    if np.any(out < minimum):
        raise ValueError(f"{name} must be >= {minimum} tokens, got {out[out < minimum][:3].tolist()}")
    return out.astype(np.int64)


def _frame(arrival, prompt, output, prefix_id=None, prefix_len=None) -> pd.DataFrame:
    n = len(arrival)
    df = pd.DataFrame({
        "request_id": np.arange(n, dtype=np.int64),
        "arrival_s": np.asarray(arrival, dtype=float),
        "prompt_len": np.asarray(prompt, dtype=np.int64),
        "output_len": np.asarray(output, dtype=np.int64),
        "prefix_id": np.full(n, -1, dtype=np.int64) if prefix_id is None else np.asarray(prefix_id, dtype=np.int64),
        "prefix_len": np.zeros(n, dtype=np.int64) if prefix_len is None else np.asarray(prefix_len, dtype=np.int64),
    })
    return check_workload(df)


def _arrivals(rng: np.random.Generator, n: int, rate: float, burstiness: float) -> np.ndarray:
    gaps = rng.gamma(burstiness, 1.0 / (rate * burstiness), n)
    return np.cumsum(gaps) - gaps[0]  # the first request arrives at t = 0


def _shared_prefix(rng, prompt: np.ndarray, shared_prefix: tuple[int, int, float] | None):
    if shared_prefix is None:
        return None, None
    if not (isinstance(shared_prefix, tuple) and len(shared_prefix) == 3):
        raise TypeError("shared_prefix must be a tuple (num_prefixes, prefix_len, fraction of requests using one), "
                        f"got {shared_prefix!r}")
    k, plen, frac = shared_prefix
    k, plen = check_int("number of shared prefixes", k), check_int("shared prefix length", plen)
    if not 0.0 <= float(frac) <= 1.0:
        raise ValueError(f"the fraction of requests with a shared prefix must be in [0, 1], got {frac}")
    uses = rng.random(len(prompt)) < float(frac)
    pid = np.where(uses, rng.integers(0, k, len(prompt)), -1)
    return pid, np.where(uses, plen, 0)


def _workload(n, rate, prompt_len, output_len, seed, burstiness, shared_prefix) -> pd.DataFrame:
    n = check_int("n", n)
    rate = check_positive("rate", rate)
    burstiness = check_positive("burstiness", burstiness)
    rng = np.random.default_rng(seed)
    arrival = _arrivals(rng, n, rate, burstiness)
    prompt = _lengths("prompt_len", prompt_len, rng, n, minimum=1)
    output = _lengths("output_len", output_len, rng, n, minimum=1)
    pid, plen = _shared_prefix(rng, prompt, shared_prefix)
    if plen is not None:
        prompt = prompt + plen  # the shared prefix comes before the request's own tokens
    return _frame(arrival, prompt, output, pid, plen)


def poisson_workload(n: int, rate: float, prompt_len: LengthSpec, output_len: LengthSpec, *, seed: int = 0,
                     shared_prefix: tuple[int, int, float] | None = None) -> pd.DataFrame:
    """``n`` requests arriving as a Poisson process of ``rate`` requests per second (the first at 0 s).

    ``prompt_len`` and ``output_len`` are each an int (every request the same), a :class:`Lengths`
    distribution, a sequence of ints to sample from (an empirical distribution, e.g. a trace's column) or a
    callable ``(rng, n) -> ints``. ``shared_prefix=(k, tokens, fraction)`` gives that fraction of requests one
    of ``k`` shared prefixes of ``tokens`` tokens in front of their own prompt (a system prompt). Seeded:
    the same arguments give the same table. Introduced in Chapter 9.
    """
    return _workload(n, rate, prompt_len, output_len, seed, 1.0, shared_prefix)


def bursty_workload(n: int, rate: float, prompt_len: LengthSpec, output_len: LengthSpec, *,
                    burstiness: float = 0.25, seed: int = 0,
                    shared_prefix: tuple[int, int, float] | None = None) -> pd.DataFrame:
    """Like :func:`poisson_workload` with gamma-distributed gaps of the same mean: ``burstiness`` is the
    gamma shape (vLLM's benchmark convention), 1 gives Poisson arrivals and smaller values clump requests
    into bursts (the gaps' coefficient of variation is ``1/sqrt(burstiness)``). Introduced in Chapter 9."""
    return _workload(n, rate, prompt_len, output_len, seed, burstiness, shared_prefix)


def workload_from_requests(requests: Iterable) -> pd.DataFrame:
    """A workload from a list: tuples ``(arrival_s, prompt_len, output_len)``, dicts with those keys (and
    optionally ``prefix_id``, ``prefix_len``), or a DataFrame with those columns. Sorted by arrival.
    Introduced in Chapter 9."""
    if isinstance(requests, pd.DataFrame):
        rows = requests
    else:
        items = list(requests)
        if not items:
            raise ValueError("an empty list of requests: a workload needs at least one request")
        if all(isinstance(r, dict) for r in items):
            rows = pd.DataFrame(items)
        elif all(isinstance(r, (tuple, list)) and len(r) == 3 for r in items):
            rows = pd.DataFrame(items, columns=["arrival_s", "prompt_len", "output_len"])
        else:
            raise TypeError("requests must be (arrival_s, prompt_len, output_len) tuples, dicts with those keys, "
                            "or a DataFrame")
    missing = [c for c in ("arrival_s", "prompt_len", "output_len") if c not in rows.columns]
    if missing:
        raise ValueError(f"requests lack the columns {missing}; need arrival_s, prompt_len, output_len "
                         f"(optional prefix_id, prefix_len); got {list(rows.columns)}")
    rows = rows.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    for col in ("prompt_len", "output_len", "prefix_id", "prefix_len"):
        if col in rows and rows[col].dtype.kind not in "iu":
            raise TypeError(f"{col} must hold integers, got {rows[col].dtype}")
    return _frame(rows["arrival_s"].to_numpy(dtype=float), rows["prompt_len"], rows["output_len"],
                  rows.get("prefix_id"), rows.get("prefix_len"))


def check_workload(df: pd.DataFrame, max_context: int | None = None) -> pd.DataFrame:
    """Validate a workload table and return it: the columns of :data:`COLUMNS`, at least one request,
    arrivals finite, non-negative and sorted, prompts and outputs of at least one token, shared prefixes no
    longer than their prompts, and (with ``max_context``) every request's prompt plus output within the
    model's context. Raises a ValueError saying which request is wrong. Introduced in Chapter 9."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"a workload is a DataFrame (see poisson_workload), got {type(df).__name__}")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"the workload lacks the columns {missing}; a workload has {list(COLUMNS)}")
    if len(df) == 0:
        raise ValueError("the workload is empty: it needs at least one request")
    arrival = df["arrival_s"].to_numpy(dtype=float)
    if not np.all(np.isfinite(arrival)) or np.any(arrival < 0):
        i = int(np.flatnonzero(~np.isfinite(arrival) | (arrival < 0))[0])
        raise ValueError(f"request {df['request_id'].iloc[i]} arrives at {arrival[i]} s; arrivals must be finite "
                         "and >= 0")
    if np.any(np.diff(arrival) < 0):
        raise ValueError("arrivals must be sorted (use workload_from_requests, which sorts them)")
    if df["request_id"].duplicated().any():
        raise ValueError("request ids must be unique")
    for col in ("prompt_len", "output_len"):
        v = df[col].to_numpy()
        if v.dtype.kind not in "iu":
            raise TypeError(f"{col} must hold integers, got {v.dtype}")
        if np.any(v < 1):
            i = int(np.flatnonzero(v < 1)[0])
            raise ValueError(f"request {df['request_id'].iloc[i]} has {col} = {v[i]}; every request needs at "
                             "least one prompt token and one output token")
    plen = df["prefix_len"].to_numpy()
    if np.any(plen < 0) or np.any(plen > df["prompt_len"].to_numpy()):
        raise ValueError("prefix_len must be between 0 and the request's prompt_len")
    if np.any((df["prefix_id"].to_numpy() < 0) & (plen > 0)):
        raise ValueError("a request with prefix_len > 0 needs a prefix_id >= 0")
    if max_context is not None:
        total = df["prompt_len"].to_numpy() + df["output_len"].to_numpy()
        if np.any(total > max_context):
            i = int(np.flatnonzero(total > max_context)[0])
            r = df.iloc[i]
            raise ValueError(
                f"request {r['request_id']} needs {r['prompt_len']} prompt + {r['output_len']} output tokens = "
                f"{total[i]}, more than the model's context of {max_context} tokens; drop or clip such requests "
                f"(trace_workload(..., max_total_len={max_context}))")
    return df


def _read_trace(source) -> pd.DataFrame:
    if isinstance(source, pd.DataFrame):
        return source
    if isinstance(source, str) and source in TRACES:
        raw = data_file(TRACES[source]).read_bytes()
        if hashlib.sha256(raw).hexdigest() != TRACE_SHA256[TRACES[source]]:
            raise ValueError(f"the shipped trace {TRACES[source]} does not match its SHA-256 (modified or truncated)")
        return pd.read_csv(io.BytesIO(raw))
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise ValueError(f"no trace file {os.fspath(source)!r} (shipped traces: {sorted(TRACES)})")
        return pd.read_csv(source)
    raise TypeError(f"a trace is a shipped name {sorted(TRACES)}, a CSV path or a DataFrame; got {type(source).__name__}")


def trace_workload(source, *, n: int | None = None, rate: float | None = None, seed: int = 0,
                   max_total_len: int | None = None, start: int = 0) -> pd.DataFrame:
    """A workload replayed from a trace: a shipped name (:data:`TRACES`), a CSV file or a DataFrame.

    The trace needs prompt and output token counts (columns ``prompt_len``/``output_len``, or the Azure
    trace's ``ContextTokens``/``GeneratedTokens``) and, unless ``rate`` is given, arrival times
    (``arrival_s`` in seconds, or the Azure ``TIMESTAMP``). With ``rate`` the trace's lengths are kept and
    arrivals are redrawn as a seeded Poisson process (to load the same mix harder or softer). ``start`` and
    ``n`` select consecutive requests; ``max_total_len`` drops requests whose prompt plus output exceed it
    (a model's context). Arrivals are shifted so that the first is at 0 s. Introduced in Chapter 9.
    """
    raw = _read_trace(source)
    cols = {c.lower(): c for c in raw.columns}
    prompt_col = cols.get("prompt_len") or cols.get("contexttokens")
    output_col = cols.get("output_len") or cols.get("generatedtokens")
    if prompt_col is None or output_col is None:
        raise ValueError(f"a trace needs prompt and output token columns (prompt_len/output_len or "
                         f"ContextTokens/GeneratedTokens); got {list(raw.columns)}")
    if len(raw) == 0:
        raise ValueError("the trace is empty: it needs at least one request")
    start = check_int("start", start, minimum=0)
    if rate is None:
        if "arrival_s" in cols:
            arrival = raw[cols["arrival_s"]].to_numpy(dtype=float)
        elif "timestamp" in cols:
            t = pd.to_datetime(raw[cols["timestamp"]])
            arrival = (t - t.min()).dt.total_seconds().to_numpy()
        else:
            raise ValueError("the trace has no arrival times (arrival_s or TIMESTAMP); pass rate= to draw them")
    else:
        arrival = np.zeros(len(raw))
    df = pd.DataFrame({"arrival_s": arrival, "prompt_len": raw[prompt_col].to_numpy(),
                       "output_len": raw[output_col].to_numpy()})
    df = df.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    if max_total_len is not None:
        max_total_len = check_int("max_total_len", max_total_len, minimum=2)
        df = df[df.prompt_len + df.output_len <= max_total_len]
    df = df.iloc[start:] if n is None else df.iloc[start:start + check_int("n", n)]
    if len(df) == 0:
        raise ValueError("no request of the trace is left after selecting start/n/max_total_len")
    if rate is not None:
        arr = _arrivals(np.random.default_rng(seed), len(df), check_positive("rate", rate), 1.0)
    else:
        arr = df.arrival_s.to_numpy() - df.arrival_s.iloc[0]
    return _frame(arr, df.prompt_len.to_numpy(), df.output_len.to_numpy())


def azure_trace(service: str = "conv") -> pd.DataFrame:
    """The Azure LLM inference trace of 2023 [Patel et al. 2024] as shipped: one row per request with
    ``arrival_s``, ``prompt_len`` and ``output_len``; ``service`` is ``"conv"`` (conversation) or ``"code"``.
    Introduced in Chapter 9."""
    check_choice("service", service, ("conv", "code"))
    return trace_workload(f"azure-{service}")
