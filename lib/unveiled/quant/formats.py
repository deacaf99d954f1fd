"""Number formats with scales: FP8/FP6/FP4 per tensor, channel or block, and the block formats MX and NVFP4.

The element formats (minifloats) are in :mod:`unveiled.quant.minifloat`; they cover a fixed range (FP4 tops out
at 6), so real tensors are *scaled* first: one scale per tensor, per row (channel or token), or per block of
consecutive values along the last dimension. A :class:`FormatSpec` names the element, the granularity and the
scale's own format:

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
``QuantLinear``, ``fake_quantize`` and the storage counts accept either. The element functions are re-exported
here. Introduced in Chapter 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd
import torch

from .._validate import check_choice, check_int, unknown_name
from .minifloat import (
    ELEMENTS,
    ElementFormat,
    decode_e8m0,
    decode_element,
    element_format,
    encode_e8m0,
    encode_element,
    round_to_element,
)
from .minifloat import floor_log2 as _floor_log2
from .minifloat import pow2 as _pow2
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


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


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
