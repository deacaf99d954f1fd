"""Evicting KV caches: a fixed token budget, spent on attention sinks plus a recent window, or on heavy hitters.

A cache that keeps every token grows without bound; an evicting cache keeps at most ``budget`` tokens between
steps and drops the rest for good. Which tokens to keep is the question. StreamingLLM [Xiao et al. 2024]
observed that the first few tokens receive a large share of attention whatever their content (*attention
sinks*): keep them plus a sliding window of the most recent tokens, and give the kept keys positions by their
place in the cache, and a model streams far past its training length. H2O [Zhang et al. 2023] keeps the
tokens that have *accumulated* the most attention so far (*heavy hitters*) plus a recent window.

Both caches follow one rule: ``update`` appends the new tokens and returns everything the new queries may
attend to (the kept tokens plus the new ones); eviction then brings the cache back to ``budget`` tokens,
in :meth:`SinkWindowCache.update` or, once the step's attention weights are known, in
:meth:`HeavyHitterCache.observe_attention`. ``kept_positions`` says which original tokens survive.
Introduced in Chapter 6.
"""

from __future__ import annotations

import torch

from .._validate import check_int

__all__ = ["HeavyHitterCache", "SinkWindowCache"]


def _check_budget(budget: object, reserved: int, what: str) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise TypeError(f"budget must be an int (tokens kept in the cache), got {budget!r}")
    if budget <= reserved:
        raise ValueError(
            f"budget ({budget} tokens) must be larger than {what} ({reserved}): the rest of the budget is "
            "the window of recent tokens, which needs at least one token"
        )
    return budget


class _EvictingCache:
    """What both evicting caches share: per-layer kept keys and values, and ``offset``, the number of tokens
    seen so far (it keeps growing after eviction: it is the position of the next token)."""

    def __init__(self) -> None:
        self._k: list[torch.Tensor | None] = []
        self._v: list[torch.Tensor | None] = []
        self._offset = 0

    @property
    def offset(self) -> int:
        return self._offset

    def __len__(self) -> int:
        return 0 if not self._k or self._k[0] is None else self._k[0].shape[2]


class SinkWindowCache(_EvictingCache):
    """StreamingLLM's cache: the first ``num_sinks`` tokens plus the most recent ``budget - num_sinks``.

    Keys are stored before RoPE (``keys_before_rope = True``): the decoder rotates the returned keys by their
    place in the cache (``0 .. L'-1``) and the queries by the last places, so relative distances stay within
    what the model was trained on however long the stream gets [Xiao et al. 2024]. ``num_sinks=0`` is plain
    window attention, the baseline that collapses once the first token is evicted. Introduced in Chapter 6.
    """

    keys_before_rope = True

    def __init__(self, budget: int, num_sinks: int = 4) -> None:
        self.num_sinks = check_int("num_sinks", num_sinks, minimum=0)
        self.budget = _check_budget(budget, self.num_sinks, "the number of sink tokens num_sinks")
        self.window = self.budget - self.num_sinks
        super().__init__()
        self._pos: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self._k) <= layer:
            self._k.append(None)
            self._v.append(None)
            self._pos.append(torch.empty(0, dtype=torch.long))
        start = self._offset if layer == 0 else self._offset - k.shape[2]
        new_pos = torch.arange(start, start + k.shape[2])
        if self._k[layer] is None:
            keys, values, pos = k, v, new_pos
        else:
            keys = torch.cat([self._k[layer], k], dim=2)
            values = torch.cat([self._v[layer], v], dim=2)
            pos = torch.cat([self._pos[layer], new_pos])
        if layer == 0:
            self._offset += k.shape[2]
        n = keys.shape[2]
        if n > self.budget:
            keep = torch.cat([torch.arange(self.num_sinks), torch.arange(n - self.window, n)])
            self._k[layer], self._v[layer], self._pos[layer] = keys[:, :, keep], values[:, :, keep], pos[keep]
        else:
            self._k[layer], self._v[layer], self._pos[layer] = keys, values, pos
        return keys, values

    def kept_positions(self, layer: int = 0) -> list[int]:
        """Original positions (0-based, in the stream) of the tokens ``layer`` keeps."""
        return self._pos[layer].tolist() if layer < len(self._pos) else []

    def crop(self, n: int) -> None:
        """Roll back to ``n`` tokens; only possible while nothing has been evicted."""
        if n < 0:
            n = self._offset + n
        if len(self) != self._offset:
            raise ValueError("cannot roll back an evicting cache once it has evicted tokens")
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot crop a cache of {len(self)} tokens to {n}")
        for i in range(len(self._k)):
            if self._k[i] is not None:
                self._k[i], self._v[i] = self._k[i][:, :, :n], self._v[i][:, :, :n]
                self._pos[i] = self._pos[i][:n]
        self._offset = n

    @property
    def nbytes(self) -> int:
        return sum(2 * t.numel() * t.element_size() for t in self._k if t is not None)

    def __repr__(self) -> str:
        return f"SinkWindowCache(sinks={self.num_sinks}, window={self.window}, tokens={len(self)}, seen={self._offset})"


class HeavyHitterCache(_EvictingCache):
    """H2O's cache: per key/value head, the ``recent`` latest tokens plus the ``budget - recent`` older ones
    with the largest accumulated attention [Zhang et al. 2023].

    The decoder hands the softmax weights ``[B, H, T, L']`` of every layer to :meth:`observe_attention`
    (it computes attention explicitly when a cache has that method); each key's score is the attention it
    has received so far, summed over queries and over the query heads that share its key/value head. Keys
    stay rotated at their original positions (``keys_before_rope = False``), and each head keeps its own set
    of tokens, in their original order. Introduced in Chapter 6.
    """

    keys_before_rope = False

    def __init__(self, budget: int, recent: int | None = None) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 2:
            raise ValueError(f"budget must be an int >= 2 (heavy hitters + recent window), got {budget!r}")
        self.recent = budget // 2 if recent is None else check_int("recent", recent)
        self.budget = _check_budget(budget, self.recent, "the recent window")
        self.heavy = self.budget - self.recent
        super().__init__()
        self._score: list[torch.Tensor | None] = []
        self._pos: list[torch.Tensor | None] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self._k) <= layer:
            for lst in (self._k, self._v, self._score, self._pos):
                lst.append(None)
        b, kv_heads, t, _ = k.shape
        start = self._offset if layer == 0 else self._offset - t
        new_pos = torch.arange(start, start + t).expand(b, kv_heads, t)
        new_score = k.new_zeros(b, kv_heads, t)
        if self._k[layer] is None:
            self._k[layer], self._v[layer], self._pos[layer], self._score[layer] = k, v, new_pos, new_score
        else:
            self._k[layer] = torch.cat([self._k[layer], k], dim=2)
            self._v[layer] = torch.cat([self._v[layer], v], dim=2)
            self._pos[layer] = torch.cat([self._pos[layer], new_pos], dim=2)
            self._score[layer] = torch.cat([self._score[layer], new_score], dim=2)
        if layer == 0:
            self._offset += t
        return self._k[layer], self._v[layer]

    def observe_attention(self, layer: int, weights: torch.Tensor) -> None:
        """Add this step's attention to each key's score, then evict down to the budget."""
        b, h, _, n = weights.shape
        kv_heads = self._k[layer].shape[1]
        received = weights.sum(2).reshape(b, kv_heads, h // kv_heads, n).sum(2)  # [B, K, L']
        self._score[layer] = self._score[layer] + received.to(self._score[layer].dtype)
        if n > self.budget:
            self._evict(layer, n)

    def _evict(self, layer: int, n: int) -> None:
        older = n - self.recent
        top = self._score[layer][:, :, :older].topk(self.heavy, dim=-1).indices.sort(dim=-1).values
        recent = torch.arange(older, n).expand(*top.shape[:2], self.recent)
        keep = torch.cat([top, recent], dim=-1)  # [B, K, budget], in original order
        idx = keep[..., None].expand(-1, -1, -1, self._k[layer].shape[3])
        self._k[layer] = self._k[layer].gather(2, idx)
        self._v[layer] = self._v[layer].gather(2, idx)
        self._score[layer] = self._score[layer].gather(2, keep)
        self._pos[layer] = self._pos[layer].gather(2, keep)

    def kept_positions(self, layer: int = 0) -> torch.Tensor:
        """Original positions ``[B, K, L']`` of the tokens each head of ``layer`` keeps."""
        return self._pos[layer].clone()

    def scores(self, layer: int = 0) -> torch.Tensor:
        """Accumulated attention ``[B, K, L']`` of the kept tokens of ``layer``."""
        return self._score[layer].clone()

    def crop(self, n: int) -> None:
        """Roll back to ``n`` tokens; only possible while nothing has been evicted."""
        if n < 0:
            n = self._offset + n
        if len(self) != self._offset:
            raise ValueError("cannot roll back an evicting cache once it has evicted tokens")
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot crop a cache of {len(self)} tokens to {n}")
        for i in range(len(self._k)):
            if self._k[i] is not None:
                self._k[i], self._v[i] = self._k[i][:, :, :n], self._v[i][:, :, :n]
                self._pos[i], self._score[i] = self._pos[i][..., :n], self._score[i][..., :n]
        self._offset = n

    @property
    def nbytes(self) -> int:
        return sum(2 * t.numel() * t.element_size() for t in self._k if t is not None)

    def __repr__(self) -> str:
        return f"HeavyHitterCache(heavy={self.heavy}, recent={self.recent}, tokens={len(self)}, seen={self._offset})"
