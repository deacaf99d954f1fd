"""Paged KV memory: a block allocator, per-sequence block tables, copy-on-write sharing, paged attention.

PagedAttention [Kwon et al. 2023] stores the KV cache the way an operating system stores a process's pages:
the memory is a pool of fixed-size *blocks* of ``block_size`` tokens, and each sequence owns a *block table*
that maps its logical block ``i`` (tokens ``i·B .. i·B + B - 1``) to a physical block anywhere in the pool.
Token ``t`` lives at ``(table[t // B], t % B)``. Blocks are handed out only when a sequence grows into them,
so at most ``B - 1`` slots per sequence are wasted (instead of reserving the maximum length up front), and
blocks are reference-counted so sequences can *share* them: a forked sample shares its parent's prompt, and
requests with a common prefix share its full blocks. Writing into a shared block first copies it
(copy-on-write). Attention then gathers each sequence's keys and values through its table.

Three layers, from bookkeeping to tensors: :class:`BlockAllocator` (free list and reference counts),
:class:`BlockManager` (block tables, growth, forking, prefix caching by chained block hashes, statistics;
no tensors, so serving simulations run it directly) and :class:`PagedKVCache` (tensor pools per layer that
plug into :class:`~unveiled.models.Decoder`). Introduced in Chapter 6.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from .._validate import check_int

__all__ = [
    "BlockAllocator",
    "BlockManager",
    "BlockStats",
    "OutOfBlocksError",
    "PagedKVCache",
    "gather_kv",
    "paged_attention",
]


class OutOfBlocksError(RuntimeError):
    """Raised when the pool has no free block left (a serving system would preempt or queue the request)."""


def _check_block_size(block_size: object) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"block_size must be an int (tokens per block, e.g. 16), got {block_size!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1 token per block (vLLM uses 16), got {block_size}")
    return block_size


class BlockAllocator:
    """A pool of ``num_blocks`` physical blocks: a free list plus a reference count per block.

    :meth:`allocate` hands out the lowest free block with count 1, :meth:`share` adds a reference,
    :meth:`free` drops one and returns the block to the free list when none is left. Freeing a block that is
    not allocated is an error (a double free would let two sequences write the same memory).
    Introduced in Chapter 6.
    """

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = check_int("num_blocks", num_blocks, minimum=0)
        self._refs = [0] * self.num_blocks
        self._free = list(range(self.num_blocks))  # a heap: lowest id first keeps tables readable
        heapq.heapify(self._free)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def refcount(self, block: int) -> int:
        self._check_id(block)
        return self._refs[block]

    def _check_id(self, block: int) -> None:
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < self.num_blocks:
            raise ValueError(f"no block {block!r} in a pool of {self.num_blocks}")

    def allocate(self) -> int:
        if not self._free:
            raise OutOfBlocksError(f"all {self.num_blocks} KV blocks are in use")
        block = heapq.heappop(self._free)
        self._refs[block] = 1
        return block

    def share(self, block: int) -> int:
        """Add a reference to an allocated block (another sequence now reads it) and return it."""
        self._check_id(block)
        if self._refs[block] == 0:
            raise ValueError(f"block {block} is free; only an allocated block can be shared")
        self._refs[block] += 1
        return block

    def free(self, block: int) -> bool:
        """Drop one reference; return True when the block went back to the free list."""
        self._check_id(block)
        if self._refs[block] == 0:
            raise ValueError(f"block {block} is not allocated (double free)")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            heapq.heappush(self._free, block)
            return True
        return False

    def grow(self, extra: int) -> None:
        """Add ``extra`` free blocks at the end of the pool."""
        extra = check_int("extra", extra, minimum=0)
        for b in range(self.num_blocks, self.num_blocks + extra):
            self._refs.append(0)
            heapq.heappush(self._free, b)
        self.num_blocks += extra

    def __repr__(self) -> str:
        return f"BlockAllocator({self.num_used} of {self.num_blocks} blocks used)"


@dataclass(frozen=True)
class BlockStats:
    """Occupancy of a paged pool: blocks in use, tokens stored, and the slots wasted inside last blocks.

    ``logical_tokens`` counts every sequence's tokens (shared ones once per sequence); ``stored_tokens``
    counts the token slots actually written in used blocks (shared blocks once). Introduced in Chapter 6.
    """

    block_size: int
    num_blocks: int
    used_blocks: int
    free_blocks: int
    sequences: int
    logical_tokens: int
    stored_tokens: int

    @property
    def capacity_tokens(self) -> int:
        return self.used_blocks * self.block_size

    @property
    def internal_fragmentation_tokens(self) -> int:
        """Allocated slots that hold no token (the unfilled tails of last blocks)."""
        return self.capacity_tokens - self.stored_tokens

    @property
    def utilisation(self) -> float:
        """Stored tokens over allocated slots."""
        return self.stored_tokens / self.capacity_tokens if self.used_blocks else 1.0

    @property
    def sharing_ratio(self) -> float:
        """Logical tokens per stored token (above 1 when sequences share blocks)."""
        return self.logical_tokens / self.stored_tokens if self.stored_tokens else 1.0

    def as_dict(self) -> dict:
        return {
            "block_size": self.block_size,
            "num_blocks": self.num_blocks,
            "used_blocks": self.used_blocks,
            "free_blocks": self.free_blocks,
            "sequences": self.sequences,
            "logical_tokens": self.logical_tokens,
            "stored_tokens": self.stored_tokens,
            "capacity_tokens": self.capacity_tokens,
            "internal_fragmentation_tokens": self.internal_fragmentation_tokens,
            "utilisation": self.utilisation,
        }


class BlockManager:
    """Block tables for many sequences on one :class:`BlockAllocator`: grow, fork, free, share prefixes.

    ``add(seq, n_or_tokens)`` gives a new sequence the blocks for its prompt; ``append(seq, n)`` grows it
    (allocating a block at every block boundary, and copying a shared partially filled last block before
    writing into it: copy-on-write); ``fork(parent, child)`` makes ``child`` share all of ``parent``'s blocks
    (parallel sampling, beam search); ``free(seq)`` returns its references. With ``prefix_caching`` the token
    ids of each *full* block are hashed together with the hash of the block before it, as vLLM does, and a
    new prompt reuses any live block with the same chained hash: two prompts share exactly
    ``common_prefix // block_size`` blocks. Every method that must copy block contents returns the
    ``(src, dst)`` pairs so the owner of the tensors can copy them. ``num_blocks=None`` grows the pool on
    demand. Introduced in Chapter 6.
    """

    def __init__(self, block_size: int, num_blocks: int | None = None, *, prefix_caching: bool = False) -> None:
        self.block_size = _check_block_size(block_size)
        self.growable = num_blocks is None
        self.allocator = BlockAllocator(0 if num_blocks is None else num_blocks)
        self.prefix_caching = bool(prefix_caching)
        self._tables: dict[Hashable, list[int]] = {}
        self._lens: dict[Hashable, int] = {}
        self._hash_of_block: dict[int, Hashable] = {}
        self._block_of_hash: dict[Hashable, int] = {}

    # -- helpers ----------------------------------------------------------------------------------

    def _allocate(self) -> int:
        if self.allocator.num_free == 0 and self.growable:
            self.allocator.grow(max(16, self.allocator.num_blocks))
        return self.allocator.allocate()

    def _release(self, block: int) -> None:
        if self.allocator.free(block) and block in self._hash_of_block:
            del self._block_of_hash[self._hash_of_block.pop(block)]

    def _need(self, seq: Hashable) -> None:
        if seq not in self._tables:
            known = list(self._tables)[:8]
            raise KeyError(f"unknown sequence {seq!r}; live sequences: {known}{' ...' if len(self._tables) > 8 else ''}")

    # -- public API -------------------------------------------------------------------------------

    def add(self, seq: Hashable, prompt: int | Sequence[int]) -> None:
        """Register ``seq`` with a prompt of ``prompt`` tokens (a count, or token ids for prefix caching).

        All-or-nothing: when the pool cannot hold the prompt, nothing is allocated and
        :class:`OutOfBlocksError` is raised.
        """
        if seq in self._tables:
            raise ValueError(f"sequence {seq!r} already exists")
        tokens = None if isinstance(prompt, int) else list(prompt)
        n = check_int("prompt length", prompt if tokens is None else len(tokens), minimum=0)
        if tokens is None and self.prefix_caching:
            raise ValueError("prefix caching needs the prompt's token ids, not only its length")
        table: list[int] = []
        self._tables[seq], self._lens[seq] = table, 0
        parent: Hashable = None
        try:
            if tokens is not None and self.prefix_caching:
                for i in range(n // self.block_size):
                    chunk = tuple(tokens[i * self.block_size : (i + 1) * self.block_size])
                    key = (parent, chunk)
                    hit = self._block_of_hash.get(key)
                    if hit is not None:
                        table.append(self.allocator.share(hit))
                    else:
                        block = self._allocate()
                        table.append(block)
                        self._hash_of_block[block] = key
                        self._block_of_hash[key] = block
                    parent = hash(key)
                    self._lens[seq] += self.block_size
            self.append(seq, n - self._lens[seq])
        except OutOfBlocksError:
            self.free(seq)
            raise

    def append(self, seq: Hashable, n: int = 1) -> list[tuple[int, int]]:
        """Grow ``seq`` by ``n`` token slots; returns the ``(src, dst)`` block copies copy-on-write made."""
        self._need(seq)
        n = check_int("n", n, minimum=0)
        table, length, bs = self._tables[seq], self._lens[seq], self.block_size
        # A partly filled last block that others also read must be copied before we write into it.
        cow = bool(n and length % bs and self.allocator.refcount(table[-1]) > 1)
        needed = math.ceil((length + n) / bs) - len(table)
        if needed + cow > self.allocator.num_free and not self.growable:
            raise OutOfBlocksError(
                f"sequence {seq!r} needs {needed + cow} more blocks, only {self.allocator.num_free} free "
                f"of {self.allocator.num_blocks}"
            )
        copies = []
        if cow:
            new = self._allocate()
            copies.append((table[-1], new))
            self._release(table[-1])
            table[-1] = new
        for _ in range(needed):
            table.append(self._allocate())
        self._lens[seq] = length + n
        return copies

    def fork(self, parent: Hashable, child: Hashable) -> None:
        """Make ``child`` a copy of ``parent`` that shares every block (no memory is copied)."""
        self._need(parent)
        if child in self._tables:
            raise ValueError(f"sequence {child!r} already exists")
        self._tables[child] = [self.allocator.share(b) for b in self._tables[parent]]
        self._lens[child] = self._lens[parent]

    def truncate(self, seq: Hashable, n: int) -> None:
        """Keep the first ``n`` tokens of ``seq`` and free the blocks past them."""
        self._need(seq)
        n = check_int("n", n, minimum=0, maximum=self._lens[seq])
        table = self._tables[seq]
        keep = math.ceil(n / self.block_size)
        for block in table[keep:]:
            self._release(block)
        del table[keep:]
        self._lens[seq] = n

    def free(self, seq: Hashable) -> None:
        """Drop ``seq`` and its references to its blocks."""
        self._need(seq)
        for block in self._tables.pop(seq):
            self._release(block)
        del self._lens[seq]

    def block_table(self, seq: Hashable) -> list[int]:
        self._need(seq)
        return list(self._tables[seq])

    def length(self, seq: Hashable) -> int:
        self._need(seq)
        return self._lens[seq]

    def slot(self, seq: Hashable, position: int) -> tuple[int, int]:
        """``(physical block, offset)`` of token ``position`` of ``seq``."""
        self._need(seq)
        if not 0 <= position < self._lens[seq]:
            raise ValueError(f"position {position} is outside sequence {seq!r} of {self._lens[seq]} tokens")
        return self._tables[seq][position // self.block_size], position % self.block_size

    @property
    def sequences(self) -> list[Hashable]:
        return list(self._tables)

    def stats(self) -> BlockStats:
        """Blocks used, tokens stored and internal fragmentation right now."""
        filled: dict[int, int] = {}
        for seq, table in self._tables.items():
            n = self._lens[seq]
            for i, block in enumerate(table):
                filled[block] = max(filled.get(block, 0), min(self.block_size, n - i * self.block_size))
        return BlockStats(
            block_size=self.block_size,
            num_blocks=self.allocator.num_blocks,
            used_blocks=self.allocator.num_used,
            free_blocks=self.allocator.num_free,
            sequences=len(self._tables),
            logical_tokens=sum(self._lens.values()),
            stored_tokens=sum(filled.values()),
        )

    def __repr__(self) -> str:
        return (f"BlockManager(block_size={self.block_size}, sequences={len(self._tables)}, "
                f"blocks {self.allocator.num_used}/{self.allocator.num_blocks})")


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
