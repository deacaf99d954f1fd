"""Quantized KV caches: asymmetric min-max groups, KIVI's key-per-channel / value-per-token layout.

A cached key or value is stored as ``b``-bit integer codes plus, for every *group* of elements, a scale and a
minimum (the zero point) in fp16. Which elements share a group is the whole story [Liu et al. 2024]: keys have
a few **outlier channels** whose magnitude is large for every token, so a group that runs along the tokens of
one channel (``"channel"`` grouping) has a narrow range, while a group that runs along the channels of one
token (``"token"`` grouping) must stretch to cover the outlier and crushes every other channel. Values have
no such channels, and their errors are averaged by the attention weights, so per-token groups suit them. KIVI
also keeps the most recent ``R`` tokens in full precision (the *residual window*): decoding attends most to
the recent past.

The caches here simulate the arithmetic exactly (codes are integers, dequantization is ``code·scale + min``)
but keep a dequantized fp32 copy to attend over, as a reference implementation would; ``nbytes`` reports
the bytes the packed format would occupy. Introduced in Chapter 6.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validate import check_choice, check_int

__all__ = [
    "GROUPINGS",
    "QuantizedKVCache",
    "QuantizedTensor",
    "dequantize",
    "fake_quantize",
    "kivi_cache",
    "quantize",
]

#: How elements are grouped under one (scale, min): ``"channel"``: one pair per channel, the group running
#: along ``group_size`` tokens; ``"token"``: one pair per token, the group running along ``group_size``
#: channels. The tensor layout is ``[B, K, L, d]`` (tokens on axis 2, channels on axis 3).
GROUPINGS = ("channel", "token")
_AXIS = {"channel": 2, "token": 3}  # the axis a group runs along


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int between 1 and 8, got {type(bits).__name__} {bits!r}")
    if not 1 <= bits <= 8:
        raise ValueError(
            f"bits must be between 1 and 8 for a quantized KV cache, got {bits} "
            "(use the plain full-precision cache for 16 bits)"
        )
    return bits


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes with one fp scale and minimum per group, and how to put them back.

    ``codes`` has the input's shape (uint8); ``scale`` and ``minimum`` have the input's shape with the grouped
    axis ``dim`` divided by ``group_size``. Introduced in Chapter 6.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    minimum: torch.Tensor
    bits: int
    dim: int
    group_size: int

    @property
    def num_groups(self) -> int:
        return self.scale.numel()

    def packed_bytes(self, scale_bits: int = 16) -> float:
        """Bytes of the packed format: ``bits`` per code plus a ``scale_bits`` scale and minimum per group."""
        return (self.codes.numel() * self.bits + 2 * self.num_groups * scale_bits) / 8

    def dequantize(self) -> torch.Tensor:
        return dequantize(self)


def _grouped(x: torch.Tensor, dim: int, group_size: int) -> torch.Tensor:
    """View ``x`` with axis ``dim`` split into ``[n_groups, group_size]`` and moved last."""
    x = x.movedim(dim, -1)
    return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)


def _ungrouped(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-2], -1).movedim(-1, dim)


def quantize(x: torch.Tensor, bits: int, dim: int, group_size: int | None = None) -> QuantizedTensor:
    """Asymmetric min-max round-to-nearest quantization in groups of ``group_size`` along axis ``dim``.

    Each group maps ``[min, max]`` onto the integers ``0 .. 2**bits - 1`` with ``scale = (max - min) / (2**bits
    - 1)``, so every element comes back within half a step (``scale / 2``) of where it was. A constant group
    gets scale 0 and is stored exactly. ``group_size=None`` makes the whole axis one group. This is the
    quantizer KIVI applies to keys (``dim`` = tokens) and values (``dim`` = channels) [Liu et al. 2024].
    Introduced in Chapter 6.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    bits = _check_bits(bits)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be an axis of a {x.dim()}-D tensor, got {dim!r}")
    dim = dim % x.dim()
    n = x.shape[dim]
    group_size = n if group_size is None else check_int("group_size", group_size)
    if n % group_size:
        raise ValueError(f"group_size {group_size} does not divide the grouped axis of length {n}")
    if not torch.isfinite(x).all():
        raise ValueError("cannot quantize NaN or infinite values")
    g = _grouped(x, dim, group_size)
    lo = g.amin(-1, keepdim=True)
    hi = g.amax(-1, keepdim=True)
    levels = 2**bits - 1
    scale = (hi - lo) / levels
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((g - lo) / safe).clamp_(0, levels).to(torch.uint8)
    return QuantizedTensor(
        codes=_ungrouped(codes, dim),
        scale=scale[..., 0].movedim(-1, dim),
        minimum=lo[..., 0].movedim(-1, dim),
        bits=bits,
        dim=dim,
        group_size=group_size,
    )


def dequantize(q: QuantizedTensor) -> torch.Tensor:
    """Inverse of :func:`quantize`: ``code · scale + min`` per group. Introduced in Chapter 6."""
    codes = _grouped(q.codes, q.dim, q.group_size).to(q.scale.dtype)
    scale = q.scale.movedim(q.dim, -1)[..., None]
    lo = q.minimum.movedim(q.dim, -1)[..., None]
    return _ungrouped(codes * scale + lo, q.dim)


def fake_quantize(x: torch.Tensor, bits: int, dim: int, group_size: int | None = None) -> torch.Tensor:
    """``dequantize(quantize(x, ...))``: the values a quantized cache hands back. Introduced in Chapter 6."""
    return dequantize(quantize(x, bits, dim, group_size))


class _Stream:
    """One layer's keys (or values): quantized groups, then the full-precision tail, in token order."""

    def __init__(self) -> None:
        self.deq: torch.Tensor | None = None  # dequantized quantized part [B, K, Lq, d]
        self.fp: torch.Tensor | None = None  # full-precision tail [B, K, Lf, d]
        self.n_groups = 0  # (scale, min) pairs held, summed over B, K and the other axis
        self.n_codes = 0

    @property
    def quantized_len(self) -> int:
        return 0 if self.deq is None else self.deq.shape[2]

    @property
    def fp_len(self) -> int:
        return 0 if self.fp is None else self.fp.shape[2]

    def __len__(self) -> int:
        return self.quantized_len + self.fp_len

    def all(self) -> torch.Tensor:
        if self.deq is None:
            return self.fp
        if self.fp is None or self.fp.shape[2] == 0:
            return self.deq
        return torch.cat([self.deq, self.fp], dim=2)


class QuantizedKVCache:
    """A KV cache that stores keys and values as ``bits``-bit groups behind a full-precision residual window.

    ``key_grouping`` / ``value_grouping`` choose the group layout (see :data:`GROUPINGS`): KIVI's choice is
    keys per ``"channel"`` and values per ``"token"`` [Liu et al. 2024]. The ``residual`` most recent tokens
    always stay in full precision; older tokens are quantized as soon as they can be: a token-wise group at
    once, a channel-wise group when ``group_size`` tokens older than the window have gathered (so at most
    ``residual + group_size - 1`` tokens are in full precision). KIVI's own code flushes its whole residual at
    once instead; keeping the last ``residual`` tokens always exact makes the window's effect easy to state.
    Plugs into :class:`~unveiled.models.Decoder` through the cache protocol. Introduced in Chapter 6.
    """

    keys_before_rope = False

    def __init__(
        self,
        bits: int = 2,
        *,
        key_grouping: str = "channel",
        value_grouping: str = "token",
        group_size: int | None = 32,
        residual: int = 32,
        key_bits: int | None = None,
        value_bits: int | None = None,
        fp_bits: int = 16,
    ) -> None:
        self.key_bits = _check_bits(bits if key_bits is None else key_bits)
        self.value_bits = _check_bits(bits if value_bits is None else value_bits)
        self.key_grouping = check_choice("key_grouping", key_grouping, GROUPINGS)
        self.value_grouping = check_choice("value_grouping", value_grouping, GROUPINGS)
        self.group_size = None if group_size is None else check_int("group_size", group_size)
        if self.group_size is None and "channel" in (key_grouping, value_grouping):
            raise ValueError("channel-wise groups run along tokens and need a group_size (e.g. 32)")
        self.residual = check_int("residual", residual, minimum=0)
        self.fp_bits = check_choice("fp_bits", fp_bits, (16, 32))
        self._k: list[_Stream] = []
        self._v: list[_Stream] = []
        self._offset = 0

    # -- protocol ---------------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        return self._offset

    def __len__(self) -> int:
        return len(self._k[0]) if self._k else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self._k) <= layer:
            self._k.append(_Stream())
            self._v.append(_Stream())
        ks, vs = self._k[layer], self._v[layer]
        for stream, new, grouping, bits in ((ks, k, self.key_grouping, self.key_bits),
                                            (vs, v, self.value_grouping, self.value_bits)):
            stream.fp = new if stream.fp is None else torch.cat([stream.fp, new], dim=2)
            self._flush(stream, grouping, bits)
        if layer == 0:
            self._offset += k.shape[2]
        return ks.all(), vs.all()

    def _group_len(self, grouping: str, d: int) -> int:
        if grouping == "channel":
            return self.group_size
        return d if self.group_size is None else self.group_size

    def _flush(self, s: _Stream, grouping: str, bits: int) -> None:
        """Quantize the tokens that left the residual window (whole groups only for channel grouping)."""
        excess = s.fp_len - self.residual
        if grouping == "channel":
            excess -= excess % self.group_size
        if excess <= 0:
            return
        d = s.fp.shape[3]
        g = self._group_len(grouping, d)
        if grouping == "token" and d % g:
            raise ValueError(f"group_size {g} does not divide head_dim {d}")
        old, s.fp = s.fp[:, :, :excess], s.fp[:, :, excess:]
        q = quantize(old, bits, _AXIS[grouping], g)
        deq = q.dequantize()
        s.deq = deq if s.deq is None else torch.cat([s.deq, deq], dim=2)
        s.n_groups += q.num_groups
        s.n_codes += q.codes.numel()

    def crop(self, n: int) -> None:
        """Keep the first ``n`` tokens; only tokens still in full precision can be dropped."""
        if n < 0:
            n = len(self) + n
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot crop a cache of {len(self)} tokens to {n}")
        for s in [*self._k, *self._v]:
            if n < s.quantized_len:
                raise ValueError(
                    f"cannot crop to {n} tokens: the first {s.quantized_len} are already quantized "
                    f"(only the last tokens, still in full precision, can be rolled back)"
                )
            if s.fp is not None:
                s.fp = s.fp[:, :, : n - s.quantized_len]
        self._offset = n

    # -- inspection -------------------------------------------------------------------------------

    def quantized_tokens(self, layer: int = 0) -> tuple[int, int]:
        """How many of ``layer``'s (keys, values) are quantized; the rest are in full precision."""
        return self._k[layer].quantized_len, self._v[layer].quantized_len

    @property
    def nbytes(self) -> float:
        """Bytes of the packed cache: codes at their bit width, fp16 (``fp_bits``) scales, minimums and residual."""
        total = 0.0
        for s, bits in [*((s, self.key_bits) for s in self._k), *((s, self.value_bits) for s in self._v)]:
            total += s.n_codes * bits / 8 + 2 * s.n_groups * self.fp_bits / 8
            if s.fp is not None:
                total += s.fp.numel() * self.fp_bits / 8
        return total

    @property
    def nbytes_full_precision(self) -> float:
        """Bytes the same tokens would take at ``fp_bits`` (the baseline the compression ratio divides)."""
        total = 0.0
        for s in [*self._k, *self._v]:
            if len(s):
                ref = s.fp if s.fp is not None and s.fp.shape[2] else s.deq
                per_token = ref[:, :, :1].numel()
                total += per_token * len(s) * self.fp_bits / 8
        return total

    def bits_per_element(self, head_dim: int, seq_len: int) -> float:
        """Average bits per cached element (codes, group overhead and the residual) at ``seq_len`` tokens.

        A closed form of what :attr:`nbytes` measures, for the sizing tables. Introduced in Chapter 6.
        """
        head_dim = check_int("head_dim", head_dim)
        seq_len = check_int("seq_len", seq_len, minimum=0)
        if seq_len == 0:
            return 0.0
        total = 0.0
        for grouping, bits in ((self.key_grouping, self.key_bits), (self.value_grouping, self.value_bits)):
            excess = max(0, seq_len - self.residual)
            if grouping == "channel":
                excess -= excess % self.group_size
                groups = excess // self.group_size * head_dim
            else:
                groups = excess * (head_dim // self._group_len(grouping, head_dim))
            fp = seq_len - excess
            total += excess * head_dim * bits + 2 * groups * self.fp_bits + fp * head_dim * self.fp_bits
        return total / (2 * seq_len * head_dim)

    def __repr__(self) -> str:
        return (
            f"QuantizedKVCache(K{self.key_bits} per {self.key_grouping}, V{self.value_bits} per "
            f"{self.value_grouping}, group_size={self.group_size}, residual={self.residual}, tokens={len(self)})"
        )


def kivi_cache(bits: int = 2, group_size: int = 32, residual: int = 32) -> QuantizedKVCache:
    """KIVI's cache: keys quantized per channel and values per token, in groups of ``group_size``, behind a
    full-precision window of ``residual`` tokens [Liu et al. 2024]. Introduced in Chapter 6."""
    return QuantizedKVCache(bits, key_grouping="channel", value_grouping="token", group_size=group_size,
                            residual=residual)

