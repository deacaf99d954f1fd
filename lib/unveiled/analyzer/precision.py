"""The precision of a deployment: how many bits weights, activations and the KV cache are stored in.

Quantized deployments are named by their bit widths: "W4A16" keeps 4-bit weights and 16-bit activations,
"W8A8" quantizes both, "W4A16KV8" also stores the KV cache in 8 bits (survey §3.1, Chapter 3). A
:class:`Precision` is that name as a value: parse it once, pass it to :func:`unveiled.analyze` (or to
:func:`unveiled.sweep`, :func:`unveiled.estimate_generation`), print it back. It also carries the two details
that change a quantized model's size: the group size of the weight quantizer (an fp16 scale and zero point
per group) and the bits of the embeddings and LM head, which quantized checkpoints usually keep in 16 bits.
Introduced in Chapter 2.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .._validate import check_int

__all__ = ["BITS", "Precision", "check_bits"]

#: Bit widths accepted for weights, activations and the KV cache.
BITS = (1, 2, 3, 4, 5, 6, 8, 16, 32)

_PATTERN = re.compile(r"W(\d+)A(\d+)(?:KV(\d+))?(?:H(\d+))?(?:G(\d+))?")


def check_bits(name: str, value) -> int:
    """Check one bit width (an int in :data:`BITS`)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, one of {BITS}, got {type(value).__name__} {value!r}")
    if int(value) not in BITS:
        raise ValueError(f"{name}={value} is not a supported bit width; accepted: {BITS}")
    return int(value)


@dataclass(frozen=True)
class Precision:
    """Bit widths of weights (``w_bits``), activations (``a_bits``) and the KV cache (``kv_bits``).

    ``kv_bits=None`` stores the cache like the activations; ``head_bits=None`` keeps the embeddings and LM
    head in 16 bits (or ``w_bits`` when wider); ``group_size`` adds an fp16 scale and zero point per group of
    that many quantized weights. Build one from its name with :meth:`parse` (``"W4A16KV8"``, ``"W4A16G128"``,
    ``"W8A8H8"``) and print it back with ``str()``. Introduced in Chapter 2.
    """

    w_bits: int = 16
    a_bits: int = 16
    kv_bits: int | None = None
    head_bits: int | None = None
    group_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "w_bits", check_bits("w_bits", self.w_bits))
        object.__setattr__(self, "a_bits", check_bits("a_bits", self.a_bits))
        for name in ("kv_bits", "head_bits"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_bits(name, getattr(self, name)))
        if self.group_size is not None:
            object.__setattr__(self, "group_size", check_int("group_size", self.group_size))

    @classmethod
    def parse(cls, text: str) -> Precision:
        """``"W4A16KV8"`` → ``Precision(w_bits=4, a_bits=16, kv_bits=8)``.

        The grammar is ``W<bits>A<bits>`` then, optionally and in this order, ``KV<bits>``, ``H<bits>`` (LM head
        and embeddings) and ``G<size>`` (weight group size); case, spaces, dashes and underscores are ignored.
        """
        if not isinstance(text, str):
            raise TypeError(f"a precision name must be a str such as 'W4A16KV8', got {type(text).__name__}")
        key = re.sub(r"[\s_\-]", "", text).upper()
        match = _PATTERN.fullmatch(key)
        if match is None:
            raise ValueError(
                f"cannot read the precision {text!r}: write W<bits>A<bits>[KV<bits>][H<bits>][G<group size>], "
                f"e.g. 'W16A16', 'W4A16', 'W8A8KV8', 'W4A16KV4G128'"
            )
        w, a, kv, head, group = (None if g is None else int(g) for g in match.groups())
        return cls(w, a, kv, head, group)

    @classmethod
    def of(cls, value: Precision | str) -> Precision:
        """``value`` as a :class:`Precision`: a Precision is returned unchanged, a str is parsed."""
        if isinstance(value, Precision):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        raise TypeError(f"precision must be a Precision or a name such as 'W4A16KV8', got {type(value).__name__}")

    @classmethod
    def resolve(cls, precision: Precision | str | None = None, *, w_bits: int | None = None,
                a_bits: int | None = None, kv_bits: int | None = None, head_bits: int | None = None,
                group_size: int | None = None) -> Precision:
        """One precision from either a ``precision`` (object or name) or the flat keywords, not both.

        This is how :func:`unveiled.analyze` accepts ``precision="W4A16KV8"`` and ``w_bits=4, kv_bits=8``
        alike; unset flat keywords take the defaults (16-bit weights and activations).
        """
        flat = {"w_bits": w_bits, "a_bits": a_bits, "kv_bits": kv_bits, "head_bits": head_bits,
                "group_size": group_size}
        given = [k for k, v in flat.items() if v is not None]
        if precision is not None:
            if given:
                raise TypeError(f"pass either precision= or the keywords {given}, not both "
                                f"(write the whole setting as one name, e.g. 'W4A16KV8G128')")
            return cls.of(precision)
        return cls(16 if w_bits is None else w_bits, 16 if a_bits is None else a_bits, kv_bits, head_bits,
                   group_size)

    @property
    def kv(self) -> int:
        """The KV cache's bits in force: ``kv_bits``, or ``a_bits`` when that is None."""
        return self.a_bits if self.kv_bits is None else self.kv_bits

    def keywords(self) -> dict:
        """The flat keywords of :func:`unveiled.analyze` this precision stands for."""
        return {"w_bits": self.w_bits, "a_bits": self.a_bits, "kv_bits": self.kv_bits,
                "head_bits": self.head_bits, "group_size": self.group_size}

    def __str__(self) -> str:
        out = f"W{self.w_bits}A{self.a_bits}"
        if self.kv_bits is not None:
            out += f"KV{self.kv_bits}"
        if self.head_bits is not None:
            out += f"H{self.head_bits}"
        if self.group_size is not None:
            out += f"G{self.group_size}"
        return out
