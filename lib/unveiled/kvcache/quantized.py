"""Quantized KV caches: asymmetric min-max groups, KIVI's key-per-channel / value-per-token layout.

A cached key or value is stored as ``b``-bit integer codes plus, for every *group* of elements, a scale and a
minimum (the zero point) in fp16. Which elements share a group is the whole story [Liu et al. 2024]: keys have
a few **outlier channels** whose magnitude is large for every token, so a group that runs along the tokens of
one channel (``"channel"`` grouping) has a narrow range, while a group that runs along the channels of one
token (``"token"`` grouping) must stretch to cover the outlier and crushes every other channel. Values have
no such channels, and their errors are averaged by the attention weights, so per-token groups suit them. KIVI
also keeps the most recent ``R`` tokens in full precision (the *residual window*): decoding attends most to
the recent past.

The quantizer is the quantization package's (Chapter 3): asymmetric min-max round-to-nearest with a float
minimum per group (:func:`kv_quant_spec`), applied along the tokens or the channels
(:func:`fake_quantize_along`). The caches simulate the arithmetic exactly (codes are integers,
dequantization is ``code·scale + min``) but keep a dequantized copy to attend over, as a reference
implementation would; ``nbytes`` reports the bytes the packed format would occupy. Introduced in Chapter 6.
"""

from __future__ import annotations

import torch

from .._validate import check_choice, check_int
from ..quant.uniform import QuantSpec, fake_quantize

__all__ = [
    "GROUPINGS",
    "QuantizedKVCache",
    "fake_quantize_along",
    "kivi_cache",
    "kv_quant_spec",
]

#: How elements are grouped under one (scale, min): ``"channel"``: one pair per channel, the group running
#: along ``group_size`` tokens; ``"token"``: one pair per token, the group running along ``group_size``
#: channels. The tensor layout is ``[B, K, L, d]`` (tokens on axis 2, channels on axis 3).
GROUPINGS = ("channel", "token")
_AXIS = {"channel": 2, "token": 3}  # the axis a group runs along


def kv_quant_spec(bits: int, group_size: int | None = None) -> QuantSpec:
    """KIVI's quantizer as a :class:`~unveiled.quant.QuantSpec`: asymmetric min-max, an fp16 scale and minimum
    per group of ``group_size`` values (``None``: the whole axis), ``x̂ = code·scale + min``.

    That is the quantization package's float-minimum format (llama.cpp's Q4_1 form): each group maps
    ``[min, max]`` onto ``0 .. 2**bits - 1``, so every element comes back within half a step of where it was
    and a constant group is stored exactly. ``bits`` is 2 to 8. Introduced in Chapter 6.
    """
    if group_size is None:
        return QuantSpec(bits, granularity="token", zero_point="float")
    return QuantSpec(bits, granularity="group", group_size=check_int("group_size", group_size), zero_point="float")


def fake_quantize_along(x: torch.Tensor, bits: int, dim: int, group_size: int | None = None) -> torch.Tensor:
    """Quantize and dequantize ``x`` in groups of ``group_size`` consecutive elements along axis ``dim``.

    The quantization package's round-to-nearest quantizer (:func:`unveiled.quant.fake_quantize` with
    :func:`kv_quant_spec`) cuts groups along the last axis; this moves ``dim`` there and back. KIVI applies it
    to keys along the tokens (per-channel groups) and to values along the channels (per-token groups)
    [Liu et al. 2024]. Introduced in Chapter 6.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be an axis of a {x.dim()}-D tensor, got {dim!r}")
    spec = kv_quant_spec(bits, group_size)
    return fake_quantize(x.movedim(dim, -1), spec).movedim(-1, dim)


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
        self.key_bits = kv_quant_spec(bits if key_bits is None else key_bits).bits  # 2 to 8 bits
        self.value_bits = kv_quant_spec(bits if value_bits is None else value_bits).bits
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
        deq = fake_quantize_along(old, bits, _AXIS[grouping], g)
        s.deq = deq if s.deq is None else torch.cat([s.deq, deq], dim=2)
        s.n_groups += old.numel() // g
        s.n_codes += old.numel()

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

