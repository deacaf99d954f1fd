"""Paged KV memory bookkeeping: a block allocator and per-sequence block tables, with no tensors.

PagedAttention [Kwon et al. 2023] stores the KV cache the way an operating system stores a process's pages:
the memory is a pool of fixed-size *blocks* of ``block_size`` tokens, and each sequence owns a *block table*
that maps its logical block ``i`` (tokens ``i·B .. i·B + B - 1``) to a physical block anywhere in the pool.
Token ``t`` lives at ``(table[t // B], t % B)``. Blocks are handed out only when a sequence grows into them,
so at most ``B - 1`` slots per sequence are wasted (instead of reserving the maximum length up front), and
blocks are reference-counted so sequences can *share* them: a forked sample shares its parent's prompt, and
requests with a common prefix share its full blocks. Writing into a shared block first copies it
(copy-on-write). Under memory pressure a server can *swap* a sequence's blocks out to a host pool and back.

:class:`BlockAllocator` keeps the free list and reference counts, :class:`BlockManager` the block tables,
growth, forking, prefix caching by chained block hashes, swapping and statistics. No tensors here: the
serving simulator (Chapter 9) runs the manager directly, and :class:`~unveiled.kvcache.paged.PagedKVCache`
puts tensor pools behind it. Introduced in Chapter 6.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .._validate import check_int

__all__ = ["BlockAllocator", "BlockManager", "BlockStats", "OutOfBlocksError"]


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
    demand. :meth:`cached_prefix` says how much of a prompt the prefix cache already holds. With
    ``host_blocks`` the manager also keeps a second pool in host memory: :meth:`swap_out` moves a sequence's
    blocks there (freeing device blocks under memory pressure, as vLLM's swap preemption does) and
    :meth:`swap_in` brings them back. Introduced in Chapter 6; swapping and :meth:`cached_prefix` in Chapter 9.
    """

    def __init__(self, block_size: int, num_blocks: int | None = None, *, prefix_caching: bool = False,
                 host_blocks: int = 0) -> None:
        self.block_size = _check_block_size(block_size)
        self.growable = num_blocks is None
        self.allocator = BlockAllocator(0 if num_blocks is None else num_blocks)
        self.host = BlockAllocator(host_blocks)
        self.prefix_caching = bool(prefix_caching)
        self._tables: dict[Hashable, list[int]] = {}
        self._swapped: dict[Hashable, list[int]] = {}
        self._lens: dict[Hashable, int] = {}
        self._hash_of_block: dict[int, Hashable] = {}
        self._block_of_hash: dict[Hashable, int] = {}

    # -- helpers ----------------------------------------------------------------------------------

    # The two helpers below run once per block a server allocates or frees (hundreds of thousands in a
    # serving simulation): they touch the allocator's free heap and counts directly, skipping the id checks
    # of its public methods (the ids come from the manager's own tables).

    def _allocate(self) -> int:
        alloc = self.allocator
        if not alloc._free:
            if not self.growable:
                raise OutOfBlocksError(f"all {alloc.num_blocks} KV blocks are in use")
            alloc.grow(max(16, alloc.num_blocks))
        block = heapq.heappop(alloc._free)
        alloc._refs[block] = 1
        return block

    def _release(self, block: int) -> None:
        refs = self.allocator._refs
        if refs[block] <= 0:
            raise ValueError(f"block {block} is not allocated (double free)")
        refs[block] -= 1
        if refs[block] == 0:
            heapq.heappush(self.allocator._free, block)
            if block in self._hash_of_block:
                del self._block_of_hash[self._hash_of_block.pop(block)]

    def _need(self, seq: Hashable) -> None:
        if seq not in self._tables:
            if seq in self._swapped:
                raise KeyError(f"sequence {seq!r} is swapped out to host memory; swap_in({seq!r}) first")
            known = list(self._tables)[:8]
            raise KeyError(f"unknown sequence {seq!r}; live sequences: {known}{' ...' if len(self._tables) > 8 else ''}")

    # -- public API -------------------------------------------------------------------------------

    def add(self, seq: Hashable, prompt: int | Sequence[int]) -> None:
        """Register ``seq`` with a prompt of ``prompt`` tokens (a count, or token ids for prefix caching).

        All-or-nothing: when the pool cannot hold the prompt, nothing is allocated and
        :class:`OutOfBlocksError` is raised.
        """
        if seq in self._tables or seq in self._swapped:
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
        if seq not in self._tables:
            self._need(seq)
        if type(n) is not int or n < 0:
            n = check_int("n", n, minimum=0)
        table, length, bs = self._tables[seq], self._lens[seq], self.block_size
        # A partly filled last block that others also read must be copied before we write into it.
        cow = bool(n and length % bs and self.allocator._refs[table[-1]] > 1)
        needed = -(-(length + n) // bs) - len(table)
        if needed + cow > len(self.allocator._free) and not self.growable:
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
        if child in self._tables or child in self._swapped:
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
        """Drop ``seq`` and its references to its blocks (its host blocks if it is swapped out)."""
        if seq in self._swapped:
            for block in self._swapped.pop(seq):
                self.host.free(block)
            del self._lens[seq]
            return
        self._need(seq)
        for block in self._tables.pop(seq):
            self._release(block)
        del self._lens[seq]

    def cached_prefix(self, tokens: Sequence[Hashable]) -> int:
        """How many leading tokens of a prompt the prefix cache holds right now (a multiple of the block size).

        Walks the prompt's full blocks with the same chained hashes as :meth:`add` and stops at the first
        block no live sequence holds; nothing is allocated. A server skips computing these tokens' keys and
        values (automatic prefix caching). 0 without ``prefix_caching``. Introduced in Chapter 9.
        """
        if not self.prefix_caching:
            return 0
        tokens = list(tokens)
        parent: Hashable = None
        hits = 0
        for i in range(len(tokens) // self.block_size):
            key = (parent, tuple(tokens[i * self.block_size : (i + 1) * self.block_size]))
            if key not in self._block_of_hash:
                break
            hits += 1
            parent = hash(key)
        return hits * self.block_size

    def swap_out(self, seq: Hashable) -> list[tuple[int, int]]:
        """Move ``seq``'s blocks to the host pool; returns the ``(device block, host block)`` copies to make.

        Every block is copied (a block shared with another sequence stays on the device for that one; this
        sequence's reference to it is dropped). All-or-nothing: without enough free host blocks nothing moves
        and :class:`OutOfBlocksError` is raised. Introduced in Chapter 9.
        """
        self._need(seq)
        table = self._tables[seq]
        if len(table) > self.host.num_free:
            raise OutOfBlocksError(f"swapping out {seq!r} needs {len(table)} host blocks, only "
                                   f"{self.host.num_free} free of {self.host.num_blocks}")
        pairs = [(block, self.host.allocate()) for block in table]
        for block in table:
            self._release(block)
        del self._tables[seq]
        self._swapped[seq] = [h for _, h in pairs]
        return pairs

    def swap_in(self, seq: Hashable) -> list[tuple[int, int]]:
        """Bring a swapped-out ``seq`` back to device blocks; returns the ``(host block, device block)`` copies.

        All-or-nothing: without enough free device blocks nothing moves and :class:`OutOfBlocksError` is
        raised. Introduced in Chapter 9.
        """
        if seq not in self._swapped:
            raise KeyError(f"sequence {seq!r} is not swapped out (swapped: {list(self._swapped)[:8]})")
        host = self._swapped[seq]
        if len(host) > self.allocator.num_free and not self.growable:
            raise OutOfBlocksError(f"swapping in {seq!r} needs {len(host)} blocks, only {self.allocator.num_free} "
                                   f"free of {self.allocator.num_blocks}")
        pairs = [(h, self._allocate()) for h in host]
        for h in host:
            self.host.free(h)
        del self._swapped[seq]
        self._tables[seq] = [d for _, d in pairs]
        return pairs

    def block_table(self, seq: Hashable) -> list[int]:
        self._need(seq)
        return list(self._tables[seq])

    def length(self, seq: Hashable) -> int:
        """Tokens of ``seq`` (also while it is swapped out)."""
        if seq not in self._swapped:
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
        """Sequences whose blocks are on the device."""
        return list(self._tables)

    @property
    def swapped(self) -> list[Hashable]:
        """Sequences swapped out to the host pool."""
        return list(self._swapped)

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
