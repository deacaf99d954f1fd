"""Number formats beyond integers: FP8, FP6 and FP4 minifloats, and the block-scaled MX and NVFP4 formats.

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

Rounding is to nearest, ties to even, in the *unbounded* exponent range; a result beyond the largest finite
value either **saturates** to ±max (``saturate=True``, the OFP8 "saturation" mode, what Transformer Engine and
the MX reference do) or overflows to ±inf (E5M2) or NaN (E4M3, fnuz). PyTorch's ``float8_e4m3fn`` cast saturates
and its ``float8_e5m2`` cast does not; :func:`round_to_element` reproduces both bit for bit.

Element formats alone cover a fixed range (FP4 tops out at 6), so real tensors are *scaled* first: one scale per
tensor, per row (channel or token), or per block of consecutive values along the last dimension. A
:class:`FormatSpec` names the element, the granularity and the scale's own format:

* **MXFP8 / MXFP6 / MXFP4** (OCP MX v1.0): blocks of 32, one shared E8M0 scale (a pure power of two, 8 bits)
  ``2^(⌊log2 max|x|⌋ − emax)``, where ``emax`` is the exponent of the element's largest normal; elements are then
  rounded with saturation. The scale is a *shared exponent*: the survey's "bit-sharing" (Table 4).
* **NVFP4** (NVIDIA Blackwell): blocks of 16 E2M1 values with an FP8 E4M3 scale each, plus one FP32 scale per
  tensor so that the E4M3 scales use their range: ``t = max|x| / (6·448)``, block scale
  ``s = e4m3(max|x_block| / 6 / t)``, elements ``e2m1(x / (s·t))``, decoded as ``(e·s)·t``.

:func:`quantize_dequantize` is the one entry point (nine named formats, :data:`FORMAT_NAMES`, or any
:class:`FormatSpec`); :func:`quantize` returns the codes and scales that would be stored
(:class:`FormatTensor`), :func:`bits_per_element` what each format costs with its scales. A ``FormatSpec`` plugs
into the same quantizer framework as the integer :class:`~unveiled.quant.uniform.QuantSpec`: ``quantize_model``,
``QuantLinear``, ``fake_quantize`` and the storage counts accept either. Introduced in Chapter 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd
import torch

from .._validate import check_choice, check_int, unknown_name
from .uniform import check_tensor, pack_codes

__all__ = [
    "ELEMENTS",
    "FORMAT_NAMES",
    "ElementFormat",
    "FormatSpec",
    "FormatTensor",
    "bits_per_element",
    "code_entropy",
    "decode_e8m0",
    "decode_element",
    "element_format",
    "encode_e8m0",
    "encode_element",
    "format_table",
    "get_format",
    "quantize",
    "quantize_dequantize",
    "round_to_element",
    "saturated_blocks",
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


def _pow2(k: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Exactly ``2^k`` for integer tensors ``k`` in the normal range of ``dtype``, built from its bits."""
    if dtype == torch.float64:
        return ((k.to(torch.int64) + 1023) << 52).view(torch.float64)
    return ((k.to(torch.int32) + 127) << 23).view(torch.float32)


def _floor_log2(a: torch.Tensor) -> torch.Tensor:
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
    step = (_floor_log2(a).clamp_(min=fmt.emin) - fmt.man_bits)
    q = torch.round(a * _pow2(-step, work)).mul_(_pow2(step, work))
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
    e = _floor_log2(af).clamp(min=fmt.emin)
    normal = af >= fmt.min_normal
    sig = af * _pow2(fmt.man_bits - e, torch.float64)  # 2^m + f for normals, f for subnormals
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
    norm = (mf + 2**fmt.man_bits) * _pow2(ef - fmt.bias - fmt.man_bits, torch.float64)
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
    out = _pow2(c - 127, torch.float64)
    return torch.where(c == 255, torch.full_like(out, math.nan), out).to(dtype)


# --------------------------------------------------------------------------------------------------
# Scaled formats
# --------------------------------------------------------------------------------------------------

#: Formats of the scales, with their storage bits.
SCALE_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "e8m0": 8, "fp8_e4m3": 8}
SCALE_ROUNDINGS = ("floor", "ceil")
GRANULARITIES = ("none", "tensor", "channel", "token", "group")


@dataclass(frozen=True)
class FormatSpec:
    """A number format with its scaling: element type, granularity, block size, scale format.

    ``granularity``: ``"none"`` (the element format on its own, no scale), ``"tensor"``, ``"channel"``/
    ``"token"`` (one scale per row of the 2-D view ``[rows, last_dim]``) or ``"group"`` (``group_size``
    consecutive values along the last dimension share one scale: MX's and NVFP4's blocks). ``scale``: how each
    scale is stored: ``"fp32"``, ``"fp16"``, ``"bf16"`` (``max|x| / max_finite`` rounded to that type),
    ``"e8m0"`` (MX's power of two) or ``"fp8_e4m3"`` (NVFP4's). ``tensor_scale`` adds NVFP4's second-level FP32
    scale per tensor (only with E4M3 scales). ``saturate`` clamps overflowing elements to ±max.
    ``scale_rounding`` sets the E8M0 exponent: ``"floor"`` is the OCP MX rule ``⌊log2 max|x|⌋ − emax``, which
    lets a block's largest values exceed the element's maximum and saturate (up to ``2^(emax+1)`` against 6 for
    E2M1, 448 for E4M3); ``"ceil"`` takes the smallest power of two that fits the block maximum (no clipping,
    a coarser step), the round-up variant of NVIDIA's MXFP8 recipe and torchao. The attributes
    ``bits``, ``symmetric``, ``label``… let it stand wherever a :class:`~unveiled.quant.uniform.QuantSpec` is
    accepted (``quantize_model``, ``QuantLinear``, ``fake_quantize``). Introduced in Chapter 10.
    """

    element: str = "fp8_e4m3"
    granularity: str = "none"
    group_size: int | None = None
    scale: str = "fp32"
    tensor_scale: bool = False
    saturate: bool = True
    name: str = ""
    scale_rounding: str = "floor"

    def __post_init__(self) -> None:
        element_format(self.element)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("scale", self.scale, tuple(SCALE_BITS))
        if not isinstance(self.saturate, bool) or not isinstance(self.tensor_scale, bool):
            raise TypeError("saturate and tensor_scale must be True or False")
        if self.granularity == "group":
            if self.group_size is None:
                raise ValueError("granularity='group' needs group_size (32 for MX, 16 for NVFP4)")
            check_int("group_size", self.group_size, minimum=1)
        elif self.group_size is not None:
            raise ValueError(f"group_size is only used with granularity='group', got granularity={self.granularity!r}")
        if self.tensor_scale and self.scale != "fp8_e4m3":
            raise ValueError("tensor_scale (NVFP4's per-tensor FP32 scale) needs scale='fp8_e4m3'")
        if self.tensor_scale and self.granularity in ("none", "tensor"):
            raise ValueError("tensor_scale needs per-channel or per-group scales under it")
        check_choice("scale_rounding", self.scale_rounding, SCALE_ROUNDINGS)
        if self.scale_rounding != "floor" and self.scale != "e8m0":
            raise ValueError("scale_rounding chooses how an E8M0 (power-of-two) scale is rounded; use scale='e8m0'")

    @property
    def element_format(self) -> ElementFormat:
        return ELEMENTS[self.element]

    @property
    def bits(self) -> int:
        """Bits of one element (without scales)."""
        return self.element_format.bits

    @property
    def symmetric(self) -> bool:
        """Floating-point formats are sign–magnitude: symmetric around zero, no zero point."""
        return True

    @property
    def zero_point(self) -> str:
        return "none"

    @property
    def scale_bits(self) -> int:
        """Storage bits of one scale (0 without scales)."""
        return 0 if self.granularity == "none" else SCALE_BITS[self.scale]

    @property
    def label(self) -> str:
        """``"mxfp4"``, or e.g. ``"fp8_e4m3 channel fp16-scale"``."""
        if self.name:
            return self.name
        gran = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        if self.granularity == "none":
            return self.element + ("" if self.saturate else " (no saturation)")
        return (f"{self.element} {gran} {self.scale}-scale" + (" + tensor scale" if self.tensor_scale else "")
                + (f" ({self.scale_rounding})" if self.scale_rounding != "floor" else ""))

    def with_(self, **changes) -> FormatSpec:
        """A modified copy (the name is dropped unless given)."""
        changes.setdefault("name", "")
        return replace(self, **changes)

    # The quantizer protocol shared with QuantSpec (see unveiled.quant.uniform.Quantizer)
    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_dequantize(x, self)

    def quantize(self, x: torch.Tensor) -> FormatTensor:
        return quantize(x, self)

    def storage_bytes(self, shape: tuple[int, ...] | torch.Size) -> int:
        return _storage_bytes(tuple(int(s) for s in shape), self)

    def bits_per_weight(self, group_size: int | None = None) -> float:
        return bits_per_element(self, group_size)


#: The nine named formats of :func:`quantize_dequantize` (plus E5M2/E3M2 MX variants in :func:`get_format`).
FORMAT_NAMES = ("fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1", "mxfp8", "mxfp6", "mxfp4", "nvfp4")
_NAMED: dict[str, FormatSpec] = {
    **{n: FormatSpec(n, name=n) for n in ("fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp6_e2m3", "fp4_e2m1")},
    "mxfp8": FormatSpec("fp8_e4m3", "group", 32, "e8m0", name="mxfp8"),
    "mxfp8_e5m2": FormatSpec("fp8_e5m2", "group", 32, "e8m0", name="mxfp8_e5m2"),
    "mxfp6": FormatSpec("fp6_e2m3", "group", 32, "e8m0", name="mxfp6"),
    "mxfp6_e3m2": FormatSpec("fp6_e3m2", "group", 32, "e8m0", name="mxfp6_e3m2"),
    "mxfp4": FormatSpec("fp4_e2m1", "group", 32, "e8m0", name="mxfp4"),
    "nvfp4": FormatSpec("fp4_e2m1", "group", 16, "fp8_e4m3", tensor_scale=True, name="nvfp4"),
}


def get_format(fmt: str | FormatSpec, **changes) -> FormatSpec:
    """A named format as a :class:`FormatSpec`, optionally modified: ``get_format("fp8_e5m2", saturate=False)``.

    ``"mxfp8"`` uses E4M3 elements and ``"mxfp6"`` E2M3 (the MX paper's inference choices); ``"mxfp8_e5m2"`` and
    ``"mxfp6_e3m2"`` name the others. Introduced in Chapter 10.
    """
    if isinstance(fmt, FormatSpec):
        spec = fmt
    elif isinstance(fmt, str):
        if fmt not in _NAMED:
            raise unknown_name("number format", fmt, _NAMED)
        spec = _NAMED[fmt]
    else:
        raise TypeError(f"fmt must be a format name such as 'mxfp4' or a FormatSpec, got {type(fmt).__name__}")
    return replace(spec, **({"name": ""} | changes)) if changes else spec  # a changed format loses its name


def _grouped(x: torch.Tensor, spec: FormatSpec) -> torch.Tensor:
    """``x`` as ``[rows, n_groups, group]`` following the granularity (``none``/``tensor``: one group)."""
    cols = x.shape[-1]
    rows = x.reshape(-1, cols)
    if spec.granularity in ("none", "tensor"):
        return rows.reshape(1, 1, -1)
    if spec.granularity in ("channel", "token"):
        return rows.reshape(rows.shape[0], 1, cols)
    g = spec.group_size
    if cols % g:
        raise ValueError(f"block size {g} does not divide the last dimension {cols} of a tensor of shape "
                         f"{tuple(x.shape)}; blocks run along the last dimension")
    return rows.reshape(rows.shape[0], cols // g, g)


def _scales(g: torch.Tensor, spec: FormatSpec) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Per-group scale values, their codes (E8M0/E4M3) and the per-tensor scale (1 if none)."""
    elem = spec.element_format
    work = g.dtype
    if spec.granularity == "none":
        return torch.ones((1, 1, 1), dtype=work), None, 1.0
    amax = g.abs().amax(dim=-1, keepdim=True)
    if spec.scale == "e8m0":
        k = _floor_log2(amax) - elem.emax
        if spec.scale_rounding == "ceil":  # smallest 2^k with max|x| <= max_finite * 2^k (exact comparison)
            k = torch.where(amax > elem.max_finite * _pow2(k, torch.float64).to(work), k + 1, k)
        k = torch.where(amax > 0, k, torch.full_like(k, -127)).clamp(-127, 127)
        return _pow2(k, torch.float64).to(work), encode_e8m0(k), 1.0
    tensor = 1.0
    if spec.tensor_scale:
        top = float(amax.max())
        scale_max = ELEMENTS["fp8_e4m3"].max_finite
        tensor = float(torch.tensor(top / (elem.max_finite * scale_max), dtype=torch.float32)) if top > 0 else 1.0
    raw = amax / elem.max_finite / tensor
    if spec.scale == "fp8_e4m3":
        s = round_to_element(raw, "fp8_e4m3", saturate=True).to(work)
        return s, encode_element(s, "fp8_e4m3"), tensor
    if spec.scale in ("fp16", "bf16"):
        s = raw.to(getattr(torch, "float16" if spec.scale == "fp16" else "bfloat16")).to(work)
        return s, None, tensor
    return torch.where(amax > 0, raw, torch.ones_like(raw)), None, tensor


def _quantize_grouped(x: torch.Tensor, spec: FormatSpec):
    g = _grouped(x.detach().to(_work_dtype(x)), spec)
    s, s_codes, tensor = _scales(g, spec)
    denom = s * tensor if tensor != 1.0 else s
    scaled = torch.where(denom > 0, g / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(g))
    elems = round_to_element(scaled, spec.element, spec.saturate)
    return g, elems, s, s_codes, tensor


def _decode(elems: torch.Tensor, s: torch.Tensor, tensor: float) -> torch.Tensor:
    out = elems * s
    return out.mul_(tensor) if tensor != 1.0 else out


def _check_spec(fmt: str | FormatSpec) -> FormatSpec:
    return get_format(fmt)


def quantize_dequantize(x: torch.Tensor, fmt: str | FormatSpec) -> torch.Tensor:
    """Fake-quantize ``x`` in a number format: the values a kernel would compute with, same shape and dtype.

    ``fmt`` is one of :data:`FORMAT_NAMES` (``"fp8_e4m3"``, ``"fp8_e5m2"``, ``"fp6_e3m2"``, ``"fp6_e2m3"``,
    ``"fp4_e2m1"`` unscaled; ``"mxfp8"``, ``"mxfp6"``, ``"mxfp4"`` in blocks of 32 with E8M0 scales; ``"nvfp4"``
    in blocks of 16 with E4M3 scales and an FP32 tensor scale) or a :class:`FormatSpec`. Blocks run along the
    last dimension and must divide it. Computed in float32 (float64 for float64 input). NaN or inf inputs are
    refused. Introduced in Chapter 10.
    """
    spec = _check_spec(fmt)
    x = check_tensor("x", x)
    _, elems, s, _, tensor = _quantize_grouped(x, spec)
    return _decode(elems, s, tensor).reshape(x.shape).to(x.dtype)


@dataclass
class FormatTensor:
    """A tensor stored in a number format: element codes, the scales, and the per-tensor scale.

    ``codes`` (``uint8``, the original shape) are element bit patterns; ``scale`` holds the scale values
    ``[rows, n_groups, 1]`` of the 2-D view and ``scale_codes`` their E8M0/E4M3 bit patterns where the scale
    format has them; ``tensor_scale`` is NVFP4's FP32 scale (1 otherwise). Introduced in Chapter 10.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    scale_codes: torch.Tensor | None
    tensor_scale: float
    spec: FormatSpec
    shape: tuple[int, ...]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The real values the codes stand for (equal to :func:`quantize_dequantize`'s, bit for bit)."""
        elems = decode_element(self.codes, self.spec.element, self.scale.dtype)
        g = _grouped(elems, self.spec)
        return _decode(g, self.scale, self.tensor_scale).reshape(self.shape).to(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes to store it: packed element codes, scales and the tensor scale."""
        return _storage_bytes(self.shape, self.spec)

    def packed_state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores: ``codes`` packed to ``bits`` per element (one packed row per row),
        ``scale`` (uint8 codes for E8M0/E4M3, else fp16/bf16/fp32 values) and ``tensor_scale`` (fp32)."""
        spec = self.spec
        out = {"codes": pack_codes(self.codes.reshape(-1, self.shape[-1]), spec.bits)}
        if spec.granularity != "none":
            s = self.scale.reshape(self.scale.shape[0], -1)
            dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(spec.scale)
            out["scale"] = (self.scale_codes.reshape(s.shape) if dt is None else s.to(dt)).contiguous()
        if spec.tensor_scale:
            out["tensor_scale"] = torch.tensor([self.tensor_scale], dtype=torch.float32)
        return out

    def __repr__(self) -> str:
        return f"FormatTensor({self.spec.label}, shape={self.shape}, {self.nbytes:,} bytes)"


def quantize(x: torch.Tensor, fmt: str | FormatSpec) -> FormatTensor:
    """Quantize ``x`` to a number format: element codes plus scales (see :func:`quantize_dequantize`).

    Introduced in Chapter 10."""
    spec = _check_spec(fmt)
    x = check_tensor("x", x)
    _, elems, s, s_codes, tensor = _quantize_grouped(x, spec)
    codes = encode_element(elems, spec.element).reshape(x.shape)
    return FormatTensor(codes, s, s_codes, tensor, spec, tuple(x.shape))


def _n_groups(shape: tuple[int, ...], spec: FormatSpec) -> int:
    n = math.prod(shape)
    cols = shape[-1]
    if spec.granularity == "none":
        return 0
    if spec.granularity == "tensor":
        return 1
    if spec.granularity in ("channel", "token"):
        return n // cols
    if cols % spec.group_size:
        raise ValueError(f"block size {spec.group_size} does not divide the last dimension {cols}")
    return n // spec.group_size


def _storage_bytes(shape: tuple[int, ...], spec: FormatSpec) -> int:
    n = math.prod(shape)
    extra = 4 if spec.tensor_scale else 0
    return int(math.ceil(n * spec.bits / 8) + math.ceil(_n_groups(shape, spec) * spec.scale_bits / 8) + extra)


def bits_per_element(fmt: str | FormatSpec, group_size: int | None = None, numel: int | None = None) -> float:
    """Average storage bits per element, scales included: element bits + scale bits / values per scale.

    MXFP4 costs 4 + 8/32 = 4.25 bits, NVFP4 4 + 8/16 = 4.5 (plus 32 bits per tensor, counted when ``numel``
    is given), MXFP8 8.25. For per-channel or per-tensor scales pass the number of values per scale as
    ``group_size``. Introduced in Chapter 10.
    """
    spec = _check_spec(fmt)
    extra = 32 / check_int("numel", numel) if (spec.tensor_scale and numel is not None) else 0.0
    if spec.granularity == "none":
        return float(spec.bits)
    if spec.granularity == "group":
        g = spec.group_size
    elif group_size is None:
        raise ValueError(f"{spec.granularity} granularity: pass group_size = the number of values per scale")
    else:
        g = check_int("group_size", group_size)
    return spec.bits + spec.scale_bits / g + extra


def format_table(names: tuple[str, ...] = FORMAT_NAMES) -> pd.DataFrame:
    """One row per format: element layout, largest and smallest values, binades of range, values per binade
    (precision), bits per element with scales. Table 3's "range vs precision" in numbers. Introduced in Chapter 10.
    """
    rows = []
    for n in names:
        spec = get_format(n)
        e = spec.element_format
        rows.append({
            "format": n, "element": e.name, "exp_bits": e.exp_bits, "man_bits": e.man_bits,
            "max_value": e.max_finite, "min_normal": e.min_normal, "min_subnormal": e.min_subnormal,
            "range_binades": math.log2(e.max_finite / e.min_subnormal), "values_per_binade": 2**e.man_bits,
            "block": spec.group_size if spec.granularity == "group" else None,
            "scale": spec.scale if spec.granularity != "none" else "",
            "bits_per_element": bits_per_element(spec),
        })
    return pd.DataFrame(rows)


def saturated_blocks(x: torch.Tensor, fmt: str | FormatSpec) -> float:
    """Fraction of scale groups whose largest value exceeds the element's maximum after scaling, so that it
    saturates: what MX's floor rule costs (0 with ``scale_rounding="ceil"`` or with exact scales).
    Introduced in Chapter 10."""
    spec = _check_spec(fmt)
    x = check_tensor("x", x)
    g = _grouped(x.detach().to(_work_dtype(x)), spec)
    s, _, tensor = _scales(g, spec)
    amax = g.abs().amax(dim=-1, keepdim=True)
    over = (amax > spec.element_format.max_finite * s * tensor) & (amax > 0)
    return float(over.double().mean())


def code_entropy(codes: torch.Tensor) -> float:
    """Shannon entropy (bits per value) of a tensor of codes: the average length an ideal variable-length code
    (Huffman, arithmetic coding) would need to store them, against the fixed width of the format. Common codes
    (small magnitudes near zero) get short words. Introduced in Chapter 10."""
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point():
        raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    counts = torch.bincount(codes.flatten().long() - int(codes.min())).double()
    p = counts[counts > 0] / codes.numel()
    return float(-(p * torch.log2(p)).sum())
