"""Minifloats: the FP8, FP6 and FP4 element formats, rounded, encoded and decoded bit for bit.

A *minifloat* ``EeMm`` stores a sign, ``e`` exponent bits and ``m`` mantissa bits: a normal value is
``(1 + f/2^m)·2^(E − bias)``, a subnormal (exponent field 0) ``(f/2^m)·2^(1 − bias)``. So its grid is
logarithmic: every binade ``[2^k, 2^(k+1))`` holds ``2^m`` equally spaced values. More exponent bits buy range,
more mantissa bits buy precision, at the same total width (survey §6.3, Table 3). The element formats here:

* FP8 **E4M3** and **E5M2** as NVIDIA, Arm and Intel proposed them [Micikevicius et al. 2022] and the OCP 8-bit
  floating point specification (OFP8) fixed them: E5M2 follows IEEE 754 (infinities, NaNs); E4M3 gives up the
  infinities and all NaNs but one pattern per sign (``S.1111.111``) to reach 448 instead of 240. PyTorch's
  ``float8_e4m3fn`` and ``float8_e5m2`` are these. The *fnuz* variants (Graphcore and AMD: bias one larger,
  a single NaN ``0x80``, no negative zero, no infinity [Noune et al. 2022]) are PyTorch's
  ``float8_e4m3fnuz``/``float8_e5m2fnuz``, the FP8 of the AMD MI300.
* FP6 **E3M2** and **E2M3** and FP4 **E2M1**, the element types of the OCP Microscaling (MX) specification
  [Rouhani et al. 2023]: no infinity, no NaN, every code a number (FP4's magnitudes: 0, 0.5, 1, 1.5, 2, 3, 4, 6).
* **E8M0**, MX's scale type: an exponent alone, ``2^(code − 127)``.

Rounding is to nearest, ties to even, in the *unbounded* exponent range; a result beyond the largest finite
value either **saturates** to ±max (``saturate=True``, the OFP8 "saturation" mode, what Transformer Engine and
the MX reference do) or overflows to ±inf (E5M2) or NaN (E4M3, fnuz). PyTorch's ``float8_e4m3fn`` cast saturates
and its ``float8_e5m2`` cast does not; :func:`round_to_element` reproduces both bit for bit. Scaled and block
formats built on these elements are in :mod:`unveiled.quant.formats`. Introduced in Chapter 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import unknown_name

__all__ = [
    "ELEMENTS",
    "ElementFormat",
    "decode_e8m0",
    "decode_element",
    "element_format",
    "encode_e8m0",
    "encode_element",
    "floor_log2",
    "pow2",
    "round_to_element",
]


@dataclass(frozen=True)
class ElementFormat:
    """A minifloat element type: sign, ``exp_bits`` exponent bits with ``bias``, ``man_bits`` mantissa bits.

    ``specials`` says which codes are not numbers: ``"none"`` (FP6/FP4: all are), ``"nan"`` (OFP8 E4M3: only
    ``S.1111.111`` is NaN, no infinity), ``"ieee"`` (E5M2: the top exponent holds ±inf and NaNs) or ``"fnuz"``
    (one NaN ``0x80``, no negative zero, no infinity). ``max_finite`` is the largest finite value; ``torch_dtype``
    names PyTorch's matching dtype, if any. Introduced in Chapter 10.
    """

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    max_finite: float
    specials: str
    torch_dtype: str | None = None

    @property
    def bits(self) -> int:
        """Total width: sign + exponent + mantissa."""
        return 1 + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value (the subnormals share its step)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest normal value, ``⌊log2 max_finite⌋`` (MX's ``emax_elem``)."""
        return math.frexp(self.max_finite)[1] - 1

    @property
    def min_normal(self) -> float:
        return 2.0**self.emin

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.man_bits)

    def values(self) -> torch.Tensor:
        """The value of every code ``0 … 2^bits − 1`` (float64; NaN and ±inf where the format has them)."""
        return _code_values(self)

    def grid(self) -> torch.Tensor:
        """The sorted distinct finite values (negative and positive; one zero)."""
        v = self.values()
        return torch.unique(v[torch.isfinite(v)])


#: The element formats: the five of the issue's named formats plus the fnuz FP8 variants.
ELEMENTS: dict[str, ElementFormat] = {e.name: e for e in (
    ElementFormat("fp8_e4m3", 4, 3, 7, 448.0, "nan", "float8_e4m3fn"),
    ElementFormat("fp8_e5m2", 5, 2, 15, 57344.0, "ieee", "float8_e5m2"),
    ElementFormat("fp8_e4m3fnuz", 4, 3, 8, 240.0, "fnuz", "float8_e4m3fnuz"),
    ElementFormat("fp8_e5m2fnuz", 5, 2, 16, 57344.0, "fnuz", "float8_e5m2fnuz"),
    ElementFormat("fp6_e3m2", 3, 2, 3, 28.0, "none"),
    ElementFormat("fp6_e2m3", 2, 3, 1, 7.5, "none"),
    ElementFormat("fp4_e2m1", 2, 1, 1, 6.0, "none"),
)}


def element_format(name: str | ElementFormat) -> ElementFormat:
    """Look up an element format by name (``"fp8_e4m3"``, ``"fp4_e2m1"``, ...). Introduced in Chapter 10."""
    if isinstance(name, ElementFormat):
        return name
    if not isinstance(name, str):
        raise TypeError(f"element format must be a name such as 'fp8_e4m3', got {type(name).__name__}")
    if name not in ELEMENTS:
        raise unknown_name("element format", name, ELEMENTS)
    return ELEMENTS[name]


# --------------------------------------------------------------------------------------------------
# Exact arithmetic helpers
# --------------------------------------------------------------------------------------------------

def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def pow2(k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Exactly ``2^k`` for integer tensors ``k`` in the normal range of ``dtype``, built from its bits."""
    if dtype == torch.float64:
        return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)
    return ((k.to(torch.int32) + 127) << 23).view(torch.float32)


def floor_log2(a: torch.Tensor) -> torch.Tensor:
    """``⌊log2 a⌋`` for a > 0, read from the exponent field of ``a``'s bits (exact for normal numbers; zero and
    subnormals give the smallest normal exponent minus one, −127 or −1023, below every format's range)."""
    if a.dtype == torch.float64:
        return ((a.view(torch.int64) >> 52) & 0x7FF).to(torch.int32) - 1023
    return ((a.to(torch.float32).view(torch.int32) >> 23) & 0xFF) - 127


# --------------------------------------------------------------------------------------------------
# Element formats: rounding, encoding, decoding
# --------------------------------------------------------------------------------------------------

def round_to_element(x: torch.Tensor, fmt: str | ElementFormat, saturate: bool = True) -> torch.Tensor:
    """Round every value of ``x`` to the nearest value of the element format (ties to even): fake quantization.

    The step inside the binade of ``|x|`` is ``2^(⌊log2|x|⌋ − m)``, and never smaller than the subnormals'
    ``2^(emin − m)``; dividing by it is exact (a power of two), so ``torch.round`` (ties to even) decides
    exactly as the hardware's conversion does. Beyond ``max_finite`` the result is ±max with ``saturate``,
    else ±inf (E5M2) or NaN (E4M3, fnuz). Works in float32 (float64 for float64 input) and returns that
    dtype. Introduced in Chapter 10.
    """
    fmt = element_format(fmt)
    work = _work_dtype(x)
    xw = x.to(work)
    a = xw.abs()
    step = (floor_log2(a).clamp_(min=fmt.emin) - fmt.man_bits)
    q = torch.round(a * pow2(-step, work)).mul_(pow2(step, work))
    over = q > fmt.max_finite
    if saturate:
        q = torch.where(over, torch.full_like(q, fmt.max_finite), q)
    elif bool(over.any()):
        q = torch.where(over, torch.full_like(q, math.inf if fmt.specials == "ieee" else math.nan), q)
    out = torch.copysign(q, xw)
    if fmt.specials == "fnuz":  # no negative zero
        out = torch.where(q == 0, torch.zeros_like(q), out)
    return out


def encode_element(values: torch.Tensor, fmt: str | ElementFormat) -> torch.Tensor:
    """The bit pattern (``uint8`` code) of each value, which must already lie on the format's grid.

    Use :func:`round_to_element` first. Codes follow the standard layout ``sign | exponent | mantissa``;
    NaN is ``0x7F``/``0xFF`` (E4M3, E5M2) or ``0x80`` (fnuz), ±inf ``0x7C``/``0xFC`` (E5M2). Values off the grid
    raise a ValueError. Introduced in Chapter 10.
    """
    fmt = element_format(fmt)
    v = values.to(torch.float64)
    a = v.abs()
    finite = torch.isfinite(v)
    af = torch.where(finite, a, torch.zeros_like(a))
    e = floor_log2(af).clamp(min=fmt.emin)
    normal = af >= fmt.min_normal
    sig = af * pow2(fmt.man_bits - e, torch.float64)  # 2^m + f for normals, f for subnormals
    man = torch.where(normal, sig - 2**fmt.man_bits, sig)
    if not torch.equal(man, torch.round(man)) or bool((af > fmt.max_finite).any()):
        raise ValueError(f"values are not on the {fmt.name} grid; round them with round_to_element first")
    exp_field = torch.where(normal, e + fmt.bias, torch.zeros_like(e))
    code = (exp_field.to(torch.int32) << fmt.man_bits) | man.to(torch.int32)
    sign = torch.signbit(v).to(torch.int32) << (fmt.bits - 1)
    if fmt.specials == "fnuz":
        sign = torch.where(af == 0, torch.zeros_like(sign), sign)
    code = code | sign
    if not bool(finite.all()):
        if fmt.specials == "none":
            raise ValueError(f"{fmt.name} has no NaN or infinity")
        nan = torch.full_like(code, 0x80) if fmt.specials == "fnuz" else sign | 0x7F  # S.1111.111 / S.11111.11
        code = torch.where(torch.isnan(v), nan, code)
        if fmt.specials == "ieee":
            inf = ((1 << fmt.exp_bits) - 1) << fmt.man_bits
            code = torch.where(torch.isinf(v), (inf | sign), code)
        elif bool(torch.isinf(v).any()):
            raise ValueError(f"{fmt.name} has no infinity (it saturates or becomes NaN)")
    return code.to(torch.uint8)


def _code_values(fmt: ElementFormat) -> torch.Tensor:
    c = torch.arange(2**fmt.bits, dtype=torch.int64)
    sign = (c >> (fmt.bits - 1)) & 1
    ef = (c >> fmt.man_bits) & ((1 << fmt.exp_bits) - 1)
    mf = (c & ((1 << fmt.man_bits) - 1)).to(torch.float64)
    sub = mf * fmt.min_subnormal
    norm = (mf + 2**fmt.man_bits) * pow2(ef - fmt.bias - fmt.man_bits, torch.float64)
    mag = torch.where(ef == 0, sub, norm)
    out = torch.where(sign == 1, -mag, mag)
    top_exp = ef == (1 << fmt.exp_bits) - 1
    if fmt.specials == "nan":
        out[top_exp & (mf == 2**fmt.man_bits - 1)] = math.nan
    elif fmt.specials == "ieee":
        out = torch.where(top_exp & (mf == 0), torch.copysign(torch.full_like(out, math.inf), out), out)
        out[top_exp & (mf != 0)] = math.nan
    elif fmt.specials == "fnuz":
        out[0x80] = math.nan
    return out


def decode_element(codes: torch.Tensor, fmt: str | ElementFormat, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The values of ``uint8`` codes: a table look-up in :meth:`ElementFormat.values`. Introduced in Chapter 10."""
    fmt = element_format(fmt)
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        raise TypeError(f"codes must be a uint8 tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if codes.numel() and int(codes.max()) >= 2**fmt.bits:
        raise ValueError(f"{fmt.name} codes are {fmt.bits}-bit (0–{2**fmt.bits - 1}), got {int(codes.max())}")
    return fmt.values().to(dtype)[codes.long()]


def encode_e8m0(exponent: torch.Tensor) -> torch.Tensor:
    """E8M0 code of the scale ``2^k``: ``k + 127`` (k in −127…127; ``0xFF`` is NaN). Introduced in Chapter 10."""
    k = exponent.to(torch.int32)
    if k.numel() and (int(k.min()) < -127 or int(k.max()) > 127):
        raise ValueError(f"E8M0 exponents lie in [-127, 127], got [{int(k.min())}, {int(k.max())}]")
    return (k + 127).to(torch.uint8)


def decode_e8m0(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The power of two ``2^(code − 127)`` of E8M0 codes (NaN for ``0xFF``). Introduced in Chapter 10."""
    c = codes.to(torch.int64)
    out = pow2(c - 127, torch.float64)
    return torch.where(c == 255, torch.full_like(out, math.nan), out).to(dtype)
