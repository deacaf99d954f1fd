"""Analyse a grid of configurations at once (batch × sequence length × bits × device), vectorised.

The operator formulas of :mod:`.costs` are NumPy expressions, so a whole grid is evaluated in one pass per
(model, device, stage): ten thousand configurations take milliseconds, where calling :func:`analyze` in a
loop takes seconds. The memory helpers :func:`max_batch` and :func:`max_seq_len` use the same machinery.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .._search import first_true
from .._validate import check_choice
from ..hardware import Device
from .analysis import check_setting, evaluate, memory_arrays, resolve_device, setting
from .configs import ModelSpec, model_spec
from .costs import CONVENTIONS, LOGITS, STAGES, Setting
from .precision import BITS, Precision

__all__ = ["max_batch", "max_seq_len", "sweep"]


def _as_list(name: str, value, scalar_types) -> list:
    if isinstance(value, (str, ModelSpec, Device)) or not isinstance(value, Iterable):
        value = [value]
    out = list(value)
    if not out:
        raise ValueError(f"{name} must not be empty")
    for v in out:
        if scalar_types and not isinstance(v, scalar_types):
            raise TypeError(f"{name} must hold {scalar_types}, got {type(v).__name__} {v!r}")
    return out


def _int_array(name: str, values, minimum: int = 1) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(arr == np.round(arr)):
            raise TypeError(f"{name} must be integers, got floats {arr[:3]} (write them as ints)")
        raise TypeError(f"{name} must be integers, got {arr.dtype}")
    if np.any(arr < minimum):
        raise ValueError(f"{name} must be >= {minimum}, got {arr[arr < minimum][:3]}")
    return arr.astype(float)


def _bits_array(name: str, values) -> np.ndarray:
    arr = _int_array(name, values)
    bad = ~np.isin(arr, BITS)
    if np.any(bad):
        raise ValueError(f"{name}: {arr[bad][:3].astype(int).tolist()} not supported; accepted: {BITS}")
    return arr


def sweep(models, devices, *, stage="decode", batch=1, seq_len=1024, precision=None, w_bits=None, a_bits=None,
          kv_bits=None, flash_attention=False, conventions: str = "exact", logits: str = "last",
          check_context: bool | None = None, group_size: int | None = None,
          head_bits: int | None = None) -> pd.DataFrame:
    """Analyse every combination of the given values, one row per configuration (vectorised).

    ``models``, ``devices``, ``stage``, ``batch``, ``seq_len``, ``w_bits``, ``a_bits``, ``kv_bits`` and
    ``flash_attention`` each take one value or a list; the grid is their Cartesian product (``w_bits`` and
    ``a_bits`` default to 16, ``kv_bits=None`` follows ``a_bits``). Instead of the bit lists, ``precision``
    takes one :class:`Precision` (or name) or a list of them, each a point of the grid, and adds a
    ``precision`` column. Columns: the configuration, then ``flops``, ``bytes``, ``time_s`` and
    ``tokens_per_s`` of the pass, ``weights_bytes``, ``kv_cache_bytes``, ``activation_bytes``,
    ``memory_bytes``, ``fits`` and ``memory_bound_share`` (time share of memory-bound operators). The
    numbers equal :func:`analyze`'s for the same configuration. Introduced in Chapter 2.
    """
    check_choice("conventions", conventions, CONVENTIONS)
    check_choice("logits", logits, LOGITS)
    specs = [model_spec(x) for x in _as_list("models", models, (str, ModelSpec))]
    devs = [resolve_device(x, conventions) for x in _as_list("devices", devices, (str, Device))]
    stages = [check_choice("stage", s, STAGES) for s in _as_list("stage", stage, str)]
    fas = _as_list("flash_attention", flash_attention, (bool, np.bool_))
    B = _int_array("batch", _as_list("batch", batch, None))
    S = _int_array("seq_len", _as_list("seq_len", seq_len, None))
    groups = _precision_groups(precision, w_bits, a_bits, kv_bits, group_size, head_bits)
    frames = []
    for label, (W, A, KV, gs, hb) in groups:
        grids = np.meshgrid(*([B, S, W, A] + ([] if KV is None else [KV])), indexing="ij")
        b, s, w, a = (g.ravel() for g in grids[:4])
        kv = a if KV is None else grids[4].ravel()
        for spec, dev, stg, fa in itertools.product(specs, devs, stages, fas):
            # scalar checks (context, ...) on the extreme values
            check_setting(spec, stage=stg, batch=int(b.max()), seq_len=int(s.max()), flash_attention=bool(fa),
                          conventions=conventions, logits=logits, check_context=check_context)
            st = Setting(stg, b, s, w, a, kv, bool(fa), conventions, logits, gs, hb)
            frame = _grid_frame(spec, dev, st)
            if label is not None:
                frame.insert(frame.columns.get_loc("w_bits"), "precision", label)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _precision_groups(precision, w_bits, a_bits, kv_bits, group_size, head_bits) -> list[tuple]:
    """The bit-width axes of a sweep: ``[(label, (W, A, KV, group_size, head_bits)), ...]``.

    The flat keywords give one group whose W, A (and KV) lists form a Cartesian product; ``precision`` gives
    one group per precision (its name is the label).
    """
    if precision is None:
        Precision.resolve(None, group_size=group_size, head_bits=head_bits)  # check them
        W = _bits_array("w_bits", _as_list("w_bits", 16 if w_bits is None else w_bits, None))
        A = _bits_array("a_bits", _as_list("a_bits", 16 if a_bits is None else a_bits, None))
        KV = None if kv_bits is None else _bits_array("kv_bits", _as_list("kv_bits", kv_bits, None))
        return [(None, (W, A, KV, group_size, head_bits))]
    given = [k for k, v in {"w_bits": w_bits, "a_bits": a_bits, "kv_bits": kv_bits, "group_size": group_size,
                            "head_bits": head_bits}.items() if v is not None]
    if given:
        raise TypeError(f"pass either precision= or the keywords {given}, not both")
    out = []
    for p in _as_list("precision", precision, (str, Precision)):
        p = Precision.of(p)
        out.append((str(p), (np.array([p.w_bits], float), np.array([p.a_bits], float),
                             np.array([p.kv], float), p.group_size, p.head_bits)))
    return out


def _grid_frame(spec: ModelSpec, dev: Device, st: Setting) -> pd.DataFrame:
    """One (model, device, stage, FlashAttention) slice of a sweep: totals and memory per grid point."""
    b, s = st.batch, st.seq_len
    ev = evaluate(spec, dev, st)
    counts = ev.counts.reshape(-1, 1)
    weighted_t = counts * ev.time
    time_s = weighted_t.sum(axis=0)
    weights, kvc, act = memory_arrays(spec, st, ev)
    weights, kvc, act = (np.broadcast_to(x, b.shape) for x in (weights, kvc, act))
    total = weights + kvc + act
    tokens = b * (s if st.stage == "prefill" else 1.0)
    return pd.DataFrame({
        "model": spec.name, "device": dev.name, "stage": st.stage, "batch": b.astype(int), "seq_len": s.astype(int),
        "w_bits": st.w_bits.astype(int), "a_bits": st.a_bits.astype(int), "kv_bits": st.kv_bits.astype(int),
        "flash_attention": st.flash_attention, "conventions": st.conventions,
        "flops": (counts * ev.flops).sum(axis=0), "bytes": (counts * ev.bytes).sum(axis=0), "time_s": time_s,
        "tokens_per_s": tokens / time_s, "weights_bytes": weights, "kv_cache_bytes": kvc,
        "activation_bytes": act, "memory_bytes": total,
        "fits": (total <= dev.memory_bytes) if dev.memory_bytes else np.full(b.shape, None),
        "memory_bound_share": (weighted_t * ~ev.compute_bound).sum(axis=0) / time_s,
    })


def _largest_fitting(fits_fn, hi: int) -> int:
    """Largest n in [1, hi] with fits_fn(n) True, for a monotone predicate (0 if none)."""
    if not fits_fn(1):
        return 0
    if fits_fn(hi):
        return hi
    return first_true(lambda n: not fits_fn(n), 1, hi) - 1


def _memory_total(spec, dev, stage, batch, seq_len, precision: Precision, fa, conventions) -> float:
    st = setting(stage, batch, seq_len, precision, fa, conventions)
    ev = evaluate(spec, dev, st)
    w, kv, act = memory_arrays(spec, st, ev)
    return float(w + kv + act)


def max_batch(m, hw, *, seq_len: int = 1024, stage: str = "decode", precision: Precision | str | None = None,
              w_bits: int | None = None, a_bits: int | None = None, kv_bits: int | None = None,
              flash_attention: bool = False, conventions: str = "exact", limit: int = 1 << 20) -> int:
    """The largest batch whose memory footprint (weights + KV cache + activations) fits the device.

    Returns 0 when even one sequence does not fit. The footprint grows with the batch, so a bisection over
    :func:`analyze`'s memory model finds the answer. The precision is given as in :func:`analyze`.
    Introduced in Chapter 2.
    """
    spec = model_spec(m)
    dev = resolve_device(hw, conventions)
    if not dev.memory_bytes:
        raise ValueError(f"{dev.display_name} has no memory capacity in the hardware table")
    p = Precision.resolve(precision, w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits)
    _, seq_len, fa, _ = check_setting(spec, stage=stage, batch=1, seq_len=seq_len, flash_attention=flash_attention,
                                      conventions=conventions, logits="last", check_context=None)
    return _largest_fitting(lambda b: _memory_total(spec, dev, stage, b, seq_len, p, fa, conventions)
                            <= dev.memory_bytes, limit)


def max_seq_len(m, hw, *, batch: int = 1, stage: str = "decode", precision: Precision | str | None = None,
                w_bits: int | None = None, a_bits: int | None = None, kv_bits: int | None = None,
                flash_attention: bool = False, conventions: str = "exact", within_context: bool = True) -> int:
    """The longest sequence (KV-cache length) whose memory footprint fits the device at this batch.

    With ``within_context`` (default) the answer is capped at the model's context length. Returns 0 when
    nothing fits. The precision is given as in :func:`analyze`. Introduced in Chapter 2.
    """
    spec = model_spec(m)
    dev = resolve_device(hw, conventions)
    if not dev.memory_bytes:
        raise ValueError(f"{dev.display_name} has no memory capacity in the hardware table")
    p = Precision.resolve(precision, w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits)
    batch, _, fa, _ = check_setting(spec, stage=stage, batch=batch, seq_len=1, flash_attention=flash_attention,
                                    conventions=conventions, logits="last", check_context=False)
    cap = spec.max_context if within_context else 1 << 26
    return _largest_fitting(lambda n: _memory_total(spec, dev, stage, batch, n, p, fa, conventions)
                            <= dev.memory_bytes, cap)
