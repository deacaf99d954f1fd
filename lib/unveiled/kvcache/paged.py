"""Paged KV memory: a block allocator, per-sequence block tables, copy-on-write sharing, paged attention.

PagedAttention [Kwon et al. 2023]: the cache is a pool of fixed-size blocks, and each sequence reaches its
keys and values through a block table (the idea is explained in :mod:`.blocks`). Attention gathers them
through that table.

Three layers, from bookkeeping to tensors: :class:`BlockAllocator` (free list and reference counts) and
:class:`BlockManager` (block tables, growth, forking, prefix caching, swapping, statistics) live in
:mod:`.blocks` (no tensors, so serving simulations run them directly) and are re-exported here;
:class:`PagedKVCache` (tensor pools per layer that plug into :class:`~unveiled.models.Decoder`),
:func:`gather_kv` and :func:`paged_attention` are the tensor side. Introduced in Chapter 6.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from .blocks import BlockAllocator, BlockManager, BlockStats, OutOfBlocksError, _check_block_size

__all__ = [
    "BlockAllocator",
    "BlockManager",
    "BlockStats",
    "OutOfBlocksError",
    "PagedKVCache",
    "gather_kv",
    "paged_attention",
]


# --------------------------------------------------------------------------------------------------
# Paged attention on tensors
# --------------------------------------------------------------------------------------------------


def gather_kv(pool: torch.Tensor, block_table: Sequence[int] | torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` tokens of one sequence, gathered from a paged pool in logical order.

    ``pool`` is ``[num_blocks, block_size, ...]``; token ``t`` is ``pool[block_table[t // B], t % B]``. The
    result is ``[length, ...]``, as a contiguous cache would hold it [Kwon et al. 2023]. Introduced in
    Chapter 6.
    """
    bs = pool.shape[1]
    table = torch.as_tensor(block_table, dtype=torch.long)
    need = math.ceil(length / bs)
    if length < 0 or need > len(table):
        raise ValueError(f"a table of {len(table)} blocks of {bs} tokens cannot hold {length} tokens")
    return pool[table[:need]].reshape(need * bs, *pool.shape[2:])[:length]


def paged_attention(
    query: torch.Tensor,
    key_pool: torch.Tensor,
    value_pool: torch.Tensor,
    block_tables: Sequence[Sequence[int]] | torch.Tensor,
    context_lens: Sequence[int] | torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Decode-step attention for a batch of sequences whose keys and values live in paged pools.

    ``query`` is ``[num_seqs, H, d]`` (one new token per sequence), the pools ``[num_blocks, block_size, K,
    d]`` with ``H`` a multiple of ``K`` (grouped-query attention: query head ``h`` reads key/value head
    ``h // (H / K)``), ``block_tables[i]`` and ``context_lens[i]`` say where sequence ``i``'s tokens are. The
    reference gathers each sequence through its table, then attends; vLLM's kernel does the same gather
    inside the kernel, block by block [Kwon et al. 2023]. Returns ``[num_seqs, H, d]``. Introduced in Chapter 6.
    """
    n, h, d = query.shape
    kv_heads = key_pool.shape[2]
    if h % kv_heads:
        raise ValueError(f"{h} query heads cannot share {kv_heads} key/value heads evenly")
    if len(block_tables) != n or len(context_lens) != n:
        raise ValueError(f"need one block table and one length per sequence ({n}), got "
                         f"{len(block_tables)} and {len(context_lens)}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(query)
    for i in range(n):
        length = int(context_lens[i])
        k = gather_kv(key_pool, block_tables[i], length).repeat_interleave(h // kv_heads, dim=1)  # [L, H, d]
        v = gather_kv(value_pool, block_tables[i], length).repeat_interleave(h // kv_heads, dim=1)
        w = torch.einsum("hd,lhd->hl", query[i], k).mul(scale).softmax(-1)
        out[i] = torch.einsum("hl,lhd->hd", w, v)
    return out


class PagedKVCache:
    """A KV cache for :class:`~unveiled.models.Decoder` whose tokens live in blocks of a shared pool.

    Each of the ``B`` batch rows is a sequence with its own block table in a :class:`BlockManager`; every
    layer has a key pool and a value pool ``[num_blocks, block_size, K, d]`` indexed by the same physical
    block ids. ``update`` writes the new tokens into their slots and returns the gathered ``[B, K, L, d]``
    keys and values, so the model computes exactly what a contiguous cache gives it. :meth:`fork` returns a
    second cache whose sequences share every block with this one (copy-on-write on the first write into a
    shared block), the way parallel samples share their prompt [Kwon et al. 2023]. ``num_blocks=None`` lets
    the pool grow. Introduced in Chapter 6.
    """

    keys_before_rope = False

    def __init__(self, block_size: int = 16, num_blocks: int | None = None, *,
                 manager: BlockManager | None = None, pools: dict | None = None) -> None:
        self.manager = manager if manager is not None else BlockManager(block_size, num_blocks)
        if manager is not None and manager.block_size != _check_block_size(block_size):
            raise ValueError(f"block_size {block_size} differs from the shared manager's {manager.block_size}")
        self.block_size = self.manager.block_size
        # Pools are shared by forked caches: {"k": [per layer], "v": [per layer]}.
        self._pools = pools if pools is not None else {"k": [], "v": []}
        self._seqs: list[Hashable] = []
        self._len: list[int] = []
        self._offset = 0
        self._table: torch.Tensor | None = None
        self._rows: list[list[int]] = []

    # -- pools ------------------------------------------------------------------------------------

    def _ensure_pool(self, layer: int, like: torch.Tensor) -> None:
        kp, vp = self._pools["k"], self._pools["v"]
        n = self.manager.allocator.num_blocks
        while len(kp) <= layer:
            shape = (n, self.block_size, like.shape[1], like.shape[3])
            kp.append(like.new_zeros(shape))
            vp.append(like.new_zeros(shape))
        for pool in (kp, vp):
            for i, t in enumerate(pool):
                if t.shape[0] < n:  # the manager grew: extend every layer's pool
                    pool[i] = torch.cat([t, t.new_zeros((n - t.shape[0], *t.shape[1:]))])

    def _copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        for pool in (*self._pools["k"], *self._pools["v"]):
            for src, dst in copies:
                if src < pool.shape[0] and dst < pool.shape[0]:
                    pool[dst] = pool[src]

    def _new_seq_id(self) -> Hashable:
        i = 0
        while (id(self), i) in self.manager._tables:
            i += 1
        return (id(self), i)

    # -- protocol ---------------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        return self._offset

    def __len__(self) -> int:
        return self._len[0] if self._len else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = k.shape[0], k.shape[2]
        if not self._seqs:
            for _ in range(b):
                seq = self._new_seq_id()
                self.manager.add(seq, 0)
                self._seqs.append(seq)
        elif len(self._seqs) != b:
            raise ValueError(f"batch size changed from {len(self._seqs)} to {b} with a non-empty cache")
        while len(self._len) <= layer:
            self._len.append(0)
        n = self._len[layer]
        have = self.manager.length(self._seqs[0])
        if n + t > have:
            copies, grew = [], False
            for seq in self._seqs:
                before = len(self.manager._tables[seq])
                copies += self.manager.append(seq, n + t - have)
                grew |= len(self.manager._tables[seq]) != before
            self._ensure_pool(layer, k)
            self._copy_blocks(copies)
            if grew or copies:
                self._table = None
        elif layer >= len(self._pools["k"]):
            self._ensure_pool(layer, k)
        if self._table is None:
            self._refresh_table()
        kp, vp = self._pools["k"][layer], self._pools["v"][layer]
        bs = self.block_size
        if t == 1:  # a decode step: one slot per sequence, addressed with plain ints
            off = n % bs
            for i, row in enumerate(self._rows):
                kp[row[n // bs], off] = k[i, :, 0]
                vp[row[n // bs], off] = v[i, :, 0]
        else:
            pos = torch.arange(n, n + t)
            blocks = self._table[:, pos // bs]  # [B, T]
            offs = (pos % bs).expand(b, t)
            kp[blocks, offs] = k.transpose(1, 2)  # [B, T, K, d] into the slots
            vp[blocks, offs] = v.transpose(1, 2)
        self._len[layer] = n + t
        if layer == 0:
            self._offset = n + t
        return self._gather(kp, n + t), self._gather(vp, n + t)

    def _refresh_table(self) -> None:
        self._rows = [self.manager.block_table(s) for s in self._seqs]
        self._table = torch.tensor(self._rows, dtype=torch.long).reshape(len(self._rows), -1)

    def keys(self, layer: int) -> torch.Tensor:
        """The keys ``layer`` holds, gathered into ``[B, K, L, d]``."""
        return self._gather(self._pools["k"][layer], self._len[layer])

    def values(self, layer: int) -> torch.Tensor:
        """The values ``layer`` holds, gathered into ``[B, K, L, d]``."""
        return self._gather(self._pools["v"][layer], self._len[layer])

    def _gather(self, pool: torch.Tensor, length: int) -> torch.Tensor:
        """Blocks of every row in table order, flattened to tokens: ``[B, K, length, d]`` (a strided view of
        one gathered copy)."""
        if self._table is None:
            self._refresh_table()
        b = self._table.shape[0]
        nb = math.ceil(length / self.block_size)
        g = pool.index_select(0, self._table[:, :nb].reshape(-1))  # [B·nb, bs, K, d]
        return g.view(b, nb * self.block_size, *pool.shape[2:])[:, :length].transpose(1, 2)

    def crop(self, n: int) -> None:
        """Keep the first ``n`` tokens (blocks past them go back to the pool)."""
        if n < 0:
            n = len(self) + n
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot crop a cache of {len(self)} tokens to {n}")
        for seq in self._seqs:
            self.manager.truncate(seq, min(n, self.manager.length(seq)))
        self._len = [min(x, n) for x in self._len]
        self._offset = n
        self._table = None

    # -- sharing and bookkeeping ------------------------------------------------------------------

    def fork(self) -> PagedKVCache:
        """A new cache whose sequences start as copies of these ones, sharing all their blocks."""
        child = PagedKVCache(self.block_size, manager=self.manager, pools=self._pools)
        for seq in self._seqs:
            new = child._new_seq_id()
            self.manager.fork(seq, new)
            child._seqs.append(new)
        child._len = list(self._len)
        child._offset = self._offset
        return child

    def release(self) -> None:
        """Give this cache's blocks back to the pool (the cache is empty afterwards)."""
        for seq in self._seqs:
            self.manager.free(seq)
        self._seqs, self._len, self._offset, self._table = [], [], 0, None

    def block_tables(self) -> list[list[int]]:
        """The physical block ids of each batch row, in logical order."""
        return [self.manager.block_table(s) for s in self._seqs]

    def stats(self) -> BlockStats:
        """Occupancy of the (possibly shared) pool."""
        return self.manager.stats()

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks this cache's sequences reference (a shared block counts once)."""
        if not self._pools["k"]:
            return 0
        blocks = {b for s in self._seqs for b in self.manager.block_table(s)}
        per_block = sum(p[0].numel() * p.element_size() for p in (*self._pools["k"], *self._pools["v"]))
        return len(blocks) * per_block

    def __repr__(self) -> str:
        return f"PagedKVCache(block_size={self.block_size}, batch={len(self._seqs)}, tokens={len(self)})"
