"""The decoder's cache seam: the :class:`CacheProtocol` every KV cache of the book implements, and the plain
contiguous full-precision :class:`KVCache` (preallocated, grows by doubling, exact crop).

Introduced in the appendix "The models in this book"; Chapter 6 adds paged, quantized and evicting caches.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

from .._validate import check_int

__all__ = ["CacheProtocol", "KVCache"]

# --------------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class CacheProtocol(Protocol):
    """The interface :meth:`Decoder.forward` needs from a KV cache (see the module docstring)."""

    offset: int

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __len__(self) -> int: ...

    def crop(self, n: int) -> None: ...


class KVCache:
    """The plain KV cache: per layer, keys and values ``[B, K, L, d]`` in preallocated, doubling buffers.

    Keys are stored after RoPE, so decoding a token costs one append per layer and no recomputation
    [Pope et al. 2023]. ``crop(n)`` rolls back to the first ``n`` tokens exactly (later appends overwrite the
    dropped entries). ``nbytes`` counts the bytes held (not the spare capacity). Introduced in the appendix
    "The models in this book"; Chapter 6 builds quantized, paged and evicting caches on the same protocol.
    """

    keys_before_rope = False

    def __init__(self, num_layers: int | None = None):
        self._k: list[torch.Tensor | None] = []
        self._v: list[torch.Tensor | None] = []
        self._len: list[int] = []
        if num_layers is not None:
            check_int("num_layers", num_layers)
            self._grow_layers(num_layers)

    def _grow_layers(self, n: int) -> None:
        while len(self._len) < n:
            self._k.append(None)
            self._v.append(None)
            self._len.append(0)

    @property
    def offset(self) -> int:
        return len(self)

    def __len__(self) -> int:
        return self._len[0] if self._len else 0

    def layer_length(self, layer: int) -> int:
        """Tokens held by one layer (equal across layers except after an early-exit forward)."""
        return self._len[layer] if layer < len(self._len) else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._grow_layers(layer + 1)
        n, t = self._len[layer], k.shape[2]
        buf_k = self._k[layer]
        if buf_k is None or buf_k.shape[0] != k.shape[0] or n + t > buf_k.shape[2]:
            cap = max(64, 2 ** math.ceil(math.log2(n + t)))
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if n:
                if buf_k is None or buf_k.shape[0] != k.shape[0]:
                    raise ValueError(f"batch size changed from {buf_k.shape[0]} to {k.shape[0]} with a non-empty cache")
                new_k[:, :, :n] = buf_k[:, :, :n]
                new_v[:, :, :n] = self._v[layer][:, :, :n]
            self._k[layer], self._v[layer] = new_k, new_v
        self._k[layer][:, :, n : n + t] = k
        self._v[layer][:, :, n : n + t] = v
        self._len[layer] = n + t
        return self._k[layer][:, :, : n + t], self._v[layer][:, :, : n + t]

    def crop(self, n: int) -> None:
        """Keep the first ``n`` tokens of every layer (``n`` may be negative: drop ``-n`` from the end)."""
        if n < 0:
            n = len(self) + n
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot crop a cache of {len(self)} tokens to {n}")
        self._len = [min(x, n) for x in self._len]

    def keys(self, layer: int) -> torch.Tensor:
        """The keys held by ``layer``, ``[B, K, L, d]`` (a view)."""
        return self._k[layer][:, :, : self._len[layer]]

    def values(self, layer: int) -> torch.Tensor:
        """The values held by ``layer``, ``[B, K, L, d]`` (a view)."""
        return self._v[layer][:, :, : self._len[layer]]

    @property
    def nbytes(self) -> int:
        total = 0
        for i, n in enumerate(self._len):
            if self._k[i] is not None:
                per_token = self._k[i][:, :, :1].numel() * self._k[i].element_size()
                total += 2 * per_token * n
        return total

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self._len)}, tokens={len(self)})"
