"""Argument checking shared by the whole library.

Every public function of :mod:`unveiled` rejects bad input with a :class:`ValueError` or :class:`TypeError`
whose message says what was wrong and what is accepted. These helpers keep those messages consistent.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Iterable

import numpy as np

__all__ = [
    "check_choice",
    "check_int",
    "check_number",
    "check_positive",
    "suggest",
    "unknown_name",
]


def suggest(name: str, choices: Iterable[str], n: int = 4) -> list[str]:
    """Return up to ``n`` entries of ``choices`` that look like ``name`` (for "did you mean" messages)."""
    choices = list(choices)
    low = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(str(name).lower(), list(low), n=n, cutoff=0.5)
    # Substring matches catch "h100" -> "h100-sxm", which difflib's ratio can miss.
    subs = [c for c in low if str(name).lower() in c and c not in hits]
    return [low[h] for h in hits + subs][:n]


def unknown_name(kind: str, name: object, choices: Iterable[str]) -> ValueError:
    """Build the error for an unknown registry key, listing close matches and where to see all names."""
    choices = sorted(choices)
    close = suggest(str(name), choices)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return ValueError(f"unknown {kind} {name!r}.{hint} Known {kind}s: {shown}")


def check_choice(name: str, value: object, choices: Iterable[object]) -> object:
    """Check that ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(name: str, value: object, *, allow_array: bool = False) -> float | np.ndarray:
    """Check that ``value`` is a finite real number (or, with ``allow_array``, an array of them: a list, a
    NumPy array, or anything NumPy can read as one, such as a pandas Series)."""
    if allow_array and (isinstance(value, (np.ndarray, list, tuple))
                        or (hasattr(value, "__array__") and not np.isscalar(value))):
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be numeric, got an array of dtype {arr.dtype}")
        arr = arr.astype(float)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite, got {arr[~np.isfinite(arr)][:3]}")
        return arr
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_positive(name: str, value: object, *, allow_array: bool = False, allow_zero: bool = False):
    """Check that ``value`` is a finite number > 0 (>= 0 with ``allow_zero``); arrays are checked elementwise."""
    value = check_number(name, value, allow_array=allow_array)
    bad = np.any(np.asarray(value) < 0) if allow_zero else np.any(np.asarray(value) <= 0)
    if bad:
        need = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {need}, got {value}")
    return value


def check_int(name: str, value: object, *, minimum: int | None = 1, maximum: int | None = None) -> int:
    """Check that ``value`` is an integer within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        if isinstance(value, float) and value.is_integer():
            raise TypeError(f"{name} must be an int, got the float {value!r} (write {int(value)})")
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value
