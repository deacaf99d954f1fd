"""Uniform integer quantization: scales, zero points, granularity, round-to-nearest, and bit packing.

A ``b``-bit uniform quantizer maps a real value ``x`` to an integer code ``q`` and back to ``x̂ = s·(q − z)``
(the step ``s`` is the *scale*, ``z`` the *zero point*). **Symmetric** quantizers fix ``z = 0`` and use
``s = max|x| / (2^(b−1) − 1)``; **asymmetric** (affine) ones fit ``[min, max]`` with ``s = (max − min)/(2^b − 1)``.
*Granularity* says which values share one ``(s, z)``: the whole tensor, one row (an output channel of a weight
matrix ``[out, in]``, or a token of an activation matrix ``[tokens, features]``), or a group of ``g``
consecutive values along the last (input, reduction) dimension. Round-to-nearest (RTN) rounds every value
independently [Nagel et al. 2021; Gholami et al. 2022]; GPTQ and AWQ (same package) choose better codes on
the same grids. Inside the calibrated range the round-trip error is at most half a step, ``|x − x̂| ≤ s/2``:
the invariant the tests check. Introduced in Chapter 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import pandas as pd
import torch

from .._validate import check_choice, check_int

__all__ = [
    "GRANULARITIES",
    "QuantSpec",
    "QuantizedTensor",
    "Quantizer",
    "bits_per_weight",
    "check_tensor",
    "compute_params",
    "dequantize",
    "dequantize_values",
    "error_table",
    "fake_quantize",
    "pack_codes",
    "quantize",
    "quantize_values",
    "storage_bytes",
    "unpack_codes",
]

#: Accepted granularities. "channel" and "token" both mean one (scale, zero) per row of the 2-D view
#: ``[rows, last_dim]``: an output channel of a weight ``[out, in]`` or a token of activations ``[T, h]``.
GRANULARITIES = ("tensor", "channel", "token", "group")
ZERO_POINTS = ("integer", "float")
MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a tensor: bit width, symmetric or not, granularity and group size.

    ``bits`` is 2–8. ``granularity`` is ``"tensor"``, ``"channel"``/``"token"`` (one scale per row) or
    ``"group"`` (``group_size`` consecutive values of a row share a scale; the size must divide the row).
    Asymmetric quantizers store an integer zero point by default (GPTQ/AWQ style, the range is widened to
    contain 0 so zero is exact); ``zero_point="float"`` stores the group minimum as a float instead, which is
    llama.cpp's Q4_1 format [Gerganov 2023]. ``scale_bits`` is the storage width of each scale (16: fp16).
    Introduced in Chapter 3.
    """

    bits: int = 4
    symmetric: bool = False
    granularity: str = "channel"
    group_size: int | None = None
    zero_point: str = "integer"
    scale_bits: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"bits must be an int between {MIN_BITS} and {MAX_BITS}, got {self.bits!r}")
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(
                f"bits must be between {MIN_BITS} and {MAX_BITS} for these integer quantizers, got {self.bits} "
                "(16-bit means 'not quantized': pass no spec instead)"
            )
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric must be a bool, got {self.symmetric!r}")
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("zero_point", self.zero_point, ZERO_POINTS)
        check_choice("scale_bits", self.scale_bits, (16, 32))
        if self.granularity == "group":
            if self.group_size is None:
                raise ValueError("granularity='group' needs group_size (e.g. 32, 64 or 128)")
            check_int("group_size", self.group_size, minimum=1)
        elif self.group_size is not None:
            raise ValueError(f"group_size is only used with granularity='group', got granularity={self.granularity!r}")

    @property
    def label(self) -> str:
        """A short name such as ``"int4 g128 asym"`` or ``"int8 channel sym"`` for tables and legends."""
        gran = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        kind = "sym" if self.symmetric else ("asym-fmin" if self.zero_point == "float" else "asym")
        return f"int{self.bits} {gran} {kind}"

    @property
    def qmin(self) -> int:
        """Smallest integer code."""
        return -(2 ** (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest integer code."""
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def with_(self, **changes) -> QuantSpec:
        """A modified copy, e.g. ``spec.with_(bits=3)``."""
        return replace(self, **changes)


@runtime_checkable
class Quantizer(Protocol):
    """Any other quantizer spec that plugs into this framework: the number formats of
    :mod:`unveiled.quant.formats` (FP8, MXFP4, NVFP4, ...; Chapter 10). :func:`quantize`, :func:`fake_quantize`,
    :func:`storage_bytes` and :func:`bits_per_weight`, and with them ``QuantLinear`` and ``quantize_model``,
    accept such a spec in place of a :class:`QuantSpec` and call its methods. Introduced in Chapter 10."""

    @property
    def bits(self) -> int: ...

    @property
    def label(self) -> str: ...

    def quantize(self, x: torch.Tensor): ...

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor: ...

    def storage_bytes(self, shape: tuple[int, ...]) -> int: ...

    def bits_per_weight(self, group_size: int | None = None) -> float: ...


def check_tensor(name: str, x: object, *, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """Check that ``x`` is a finite floating-point tensor (NaN or inf weights are refused with a clear message).

    Introduced in Chapter 3."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if dims is not None and x.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    # One reduction is much cheaper than an elementwise test; a NaN or inf anywhere makes the sum non-finite.
    if not torch.isfinite(x.sum()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        if n_nan or n_inf:
            raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} infinite values; quantizers need finite inputs")
    return x


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 inputs are quantized in float64 (exactness tests); everything else in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_spec(spec: object) -> QuantSpec | Quantizer:
    if not isinstance(spec, (QuantSpec, Quantizer)):
        raise TypeError(f"spec must be a QuantSpec such as QuantSpec(bits=4, granularity='group', group_size=128), "
                        f"got {type(spec).__name__}")
    return spec


def _grouped(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View ``x`` as ``[rows, n_groups, group]`` following the spec's granularity."""
    cols = x.shape[-1]
    rows = x.reshape(-1, cols)
    if spec.granularity == "tensor":
        return rows.reshape(1, 1, -1)
    if spec.granularity in ("channel", "token"):
        return rows.reshape(rows.shape[0], 1, cols)
    g = spec.group_size
    if cols % g:
        divisors = [d for d in (16, 32, 64, 128, 256) if cols % d == 0]
        raise ValueError(
            f"group_size {g} does not divide the last dimension {cols} of a tensor of shape {tuple(x.shape)}; "
            f"pick a divisor of {cols}" + (f" such as {divisors}" if divisors else "")
        )
    return rows.reshape(rows.shape[0], cols // g, g)


def compute_params(x: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of each quantization group of ``x`` by min–max (RTN) calibration.

    Reduces over the last axis of ``x`` (any leading shape is kept, with a trailing 1 for broadcasting). An
    all-zero group gets scale 1 so nothing divides by zero. Introduced in Chapter 3.
    """
    spec = _check_spec(spec)
    if spec.symmetric:
        amax = x.abs().amax(dim=-1, keepdim=True)
        scale = amax / spec.qmax
        zero = torch.zeros_like(scale)
    else:
        lo = x.amin(dim=-1, keepdim=True)
        hi = x.amax(dim=-1, keepdim=True)
        if spec.zero_point == "integer":
            # Widen the range to contain 0 so that 0 is exactly representable (as GPTQ does).
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / spec.qmax
        zero = torch.round(-lo / torch.where(scale > 0, scale, torch.ones_like(scale)))
        if spec.zero_point == "float":
            zero = lo  # Q4_1: x̂ = q·s + min
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale, zero


def quantize_values(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Integer codes (as a float tensor of whole numbers) of ``x`` on the grid ``(scale, zero)``, clamped.

    Rounding is to nearest, ties to even (``torch.round``). Introduced in Chapter 3.
    """
    float_zero = spec.zero_point == "float" and not spec.symmetric
    q = (x - zero).div_(scale) if float_zero else x / scale
    q.round_()
    if not float_zero and not spec.symmetric:
        q.add_(zero)
    return q.clamp_(spec.qmin, spec.qmax)


def dequantize_values(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: QuantSpec,
                      inplace: bool = False) -> torch.Tensor:
    """Real values of codes ``q`` on the grid ``(scale, zero)`` (overwriting ``q`` with ``inplace``).

    Introduced in Chapter 3.
    """
    out = q if inplace else q.clone()
    if spec.zero_point == "float" and not spec.symmetric:
        return out.mul_(scale).add_(zero)
    if not spec.symmetric:
        out.sub_(zero)
    return out.mul_(scale)


@dataclass
class QuantizedTensor:
    """Integer codes plus the scales and zero points that turn them back into real numbers.

    ``codes`` has the original shape (int16 here; :func:`pack_codes` squeezes them to ``bits`` per value for
    storage); ``scale`` and ``zero`` have shape ``[rows, n_groups, 1]`` of the 2-D view. Introduced in Chapter 3.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    spec: QuantSpec
    shape: tuple[int, ...]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The real-valued tensor the codes stand for (the 'fake-quantized' tensor)."""
        g = _grouped(self.codes.to(self.scale.dtype), self.spec)
        return dequantize_values(g, self.scale, self.zero, self.spec, inplace=True).reshape(self.shape).to(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes to store it: packed codes plus scales (and zero points)."""
        return storage_bytes(self.shape, self.spec)

    def __repr__(self) -> str:
        return f"QuantizedTensor({self.spec.label}, shape={self.shape}, {self.nbytes:,} bytes)"


def quantize(x: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Quantize ``x`` with round-to-nearest on the min–max grid of each group: codes, scales, zero points.

    The last dimension is the reduction dimension (``in`` of a weight ``[out, in]``), along which groups are
    cut. Raises ValueError for NaN/inf values or a group size that does not divide the last dimension.
    Introduced in Chapter 3.
    """
    spec = _check_spec(spec)
    if not isinstance(spec, QuantSpec):
        return spec.quantize(x)
    x = check_tensor("x", x)
    g = _grouped(x.detach().to(_work_dtype(x)), spec)
    scale, zero = compute_params(g, spec)
    q = quantize_values(g, scale, zero, spec)
    return QuantizedTensor(q.reshape(x.shape).to(torch.int16), scale, zero, spec, tuple(x.shape))


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize` up to rounding: ``s·(q − z)`` for each group. Introduced in Chapter 3."""
    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"expected a QuantizedTensor from quantize(), got {type(qt).__name__}")
    return qt.dequantize(dtype)


def fake_quantize(x: torch.Tensor, spec: QuantSpec | None) -> torch.Tensor:
    """Quantize then dequantize ``x`` ("fake quantization"): same shape and dtype, values on the grid.

    This is how accuracy effects are simulated without integer kernels [Jacob et al. 2018]. ``spec=None``
    returns ``x`` unchanged. Introduced in Chapter 3.
    """
    if spec is None:
        return x
    spec = _check_spec(spec)
    if not isinstance(spec, QuantSpec):
        return spec.fake_quantize(x)
    x = check_tensor("x", x)
    g = _grouped(x.detach().to(_work_dtype(x)), spec)
    scale, zero = compute_params(g, spec)
    out = dequantize_values(quantize_values(g, scale, zero, spec), scale, zero, spec, inplace=True)
    return out.reshape(x.shape).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Packing and storage
# --------------------------------------------------------------------------------------------------

def pack_codes(codes: torch.Tensor, bits: int, signed: bool = False) -> torch.Tensor:
    """Pack integer codes of ``bits`` bits (1–8) densely into bytes along the last dimension.

    Each row is written as one little-endian bit stream: code ``i`` occupies bits ``bits·i`` to
    ``bits·(i+1) − 1`` of the row (so with 4 bits, code 0 is the low nibble of byte 0, as in GPTQ's int32
    format [Frantar et al. 2023]; 3-bit codes straddle byte boundaries). The row is padded with zero bits to
    a whole byte. Signed codes are stored in two's complement. Returns ``uint8`` of shape
    ``[..., ceil(n·bits/8)]``; :func:`unpack_codes` inverts it exactly. Introduced in Chapter 3.
    """
    bits = check_int("bits", bits, minimum=1, maximum=8)
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes).__name__)}")
    if codes.dim() == 0:
        raise ValueError("codes must have at least one dimension")
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise ValueError(f"{'signed' if signed else 'unsigned'} {bits}-bit codes must lie in [{lo}, {hi}], "
                         f"got values in [{int(codes.min())}, {int(codes.max())}]")
    c = codes.to(torch.int32) & (2**bits - 1)
    stream = ((c[..., None] >> torch.arange(bits, dtype=torch.int32)) & 1).reshape(*c.shape[:-1], -1)
    pad = (-stream.shape[-1]) % 8
    if pad:
        stream = torch.nn.functional.pad(stream, (0, pad))
    stream = stream.reshape(*stream.shape[:-1], -1, 8)
    return (stream << torch.arange(8, dtype=torch.int32)).sum(dim=-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int, signed: bool = False) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``n`` codes of each row, as int16. Introduced in Chapter 3."""
    bits = check_int("bits", bits, minimum=1, maximum=8)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor from pack_codes, got {getattr(packed, 'dtype', packed)}")
    n = check_int("n", n, minimum=0)
    if n * bits > packed.shape[-1] * 8:
        raise ValueError(f"cannot unpack {n} codes of {bits} bits from {packed.shape[-1]} bytes")
    stream = ((packed.to(torch.int32)[..., None] >> torch.arange(8, dtype=torch.int32)) & 1)
    stream = stream.reshape(*packed.shape[:-1], -1)[..., : n * bits].reshape(*packed.shape[:-1], n, bits)
    c = (stream << torch.arange(bits, dtype=torch.int32)).sum(dim=-1)
    if signed:
        c = torch.where(c >= 2 ** (bits - 1), c - 2**bits, c)
    return c.to(torch.int16)


def storage_bytes(shape: tuple[int, ...] | torch.Size, spec: QuantSpec | None, dtype_bytes: float = 2.0) -> int:
    """Bytes to store a tensor of ``shape`` quantized with ``spec``: packed codes + scales + zero points.

    Codes take ``bits`` each, densely packed as :func:`pack_codes` does; every group stores
    one scale of ``spec.scale_bits`` and, if asymmetric, an integer zero point of ``bits`` bits or a float
    minimum of ``scale_bits``. ``spec=None`` means unquantized at ``dtype_bytes`` per value (fp16).
    Introduced in Chapter 3.
    """
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if spec is None:
        return math.ceil(n * dtype_bytes)
    spec = _check_spec(spec)
    if not isinstance(spec, QuantSpec):
        return spec.storage_bytes(shape)
    cols = shape[-1]
    rows = n // cols
    if spec.granularity == "tensor":
        groups = 1
    elif spec.granularity in ("channel", "token"):
        groups = rows
    else:
        if cols % spec.group_size:
            raise ValueError(f"group_size {spec.group_size} does not divide the last dimension {cols}")
        groups = rows * (cols // spec.group_size)
    zero_bits = 0 if spec.symmetric else (spec.scale_bits if spec.zero_point == "float" else spec.bits)
    return int(math.ceil(n * spec.bits / 8) + math.ceil(groups * (spec.scale_bits + zero_bits) / 8))


def bits_per_weight(spec: QuantSpec | None, group_size: int | None = None, dtype_bits: int = 16) -> float:
    """Average storage bits per weight, scales and zero points included, counted as in :func:`storage_bytes`.

    Examples: int4 g128 symmetric with fp16 scales is 4 + 16/128 = 4.125 bits; llama.cpp's Q4_1 (int4 g32 with
    an fp16 scale and an fp16 minimum) is 4 + 32/32 = 5.0. For per-row specs pass the row length as
    ``group_size``. Introduced in Chapter 3."""
    if spec is None:
        return float(dtype_bits)
    spec = _check_spec(spec)
    if not isinstance(spec, QuantSpec):
        return spec.bits_per_weight(group_size)
    if spec.granularity == "group":
        g = spec.group_size
    elif group_size is None:
        raise ValueError(f"{spec.granularity} granularity: pass group_size = the number of values per scale")
    else:
        g = check_int("group_size", group_size)
    zero_bits = 0 if spec.symmetric else (spec.scale_bits if spec.zero_point == "float" else spec.bits)
    return spec.bits + (spec.scale_bits + zero_bits) / g


def error_table(x: torch.Tensor, specs: list[QuantSpec]) -> pd.DataFrame:
    """Round-to-nearest error of ``x`` under each spec: mean squared and maximum absolute error, stored bits.

    Columns: ``label``, ``bits``, ``granularity`` (``"tensor"``, ``"channel"`` or ``"g<size>"``), ``symmetric``,
    ``mse``, ``max_abs_error``, ``bits_per_weight`` (codes plus scales and zero points). Introduced in Chapter 3.
    """
    x = check_tensor("x", x)
    rows = []
    for spec in specs:
        spec = _check_spec(spec)
        err = fake_quantize(x, spec).double() - x.double()
        gran = f"g{spec.group_size}" if spec.granularity == "group" else spec.granularity
        rows.append({"label": spec.label, "bits": spec.bits, "granularity": gran, "symmetric": spec.symmetric,
                     "mse": float((err**2).mean()), "max_abs_error": float(err.abs().max()),
                     "bits_per_weight": 8 * storage_bytes(x.shape, spec) / x.numel()})
    return pd.DataFrame(rows)
