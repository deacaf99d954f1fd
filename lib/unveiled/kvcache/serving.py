"""A small serving simulation: how the KV memory layout sets how many sequences run at once.

Decode throughput grows with the batch (Chapter 2), and the batch is capped by the KV memory left after the
weights. Systems before vLLM gave each request one contiguous slab sized for the longest output it might
produce; most of it stays empty, so few requests fit. Paging [Kwon et al. 2023] hands memory out in blocks
as sequences grow: the only waste is the unfilled tail of each sequence's last block, under ``block_size``
slots. And requests that start with the same system prompt can share its blocks (prefix caching).

Everything here drives the real :class:`~unveiled.kvcache.paged.BlockManager` with seeded request streams; the
contiguous baselines are counted in the same token slots. Introduced in Chapter 6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._validate import check_int
from .paged import BlockManager, OutOfBlocksError

__all__ = [
    "Request",
    "admit",
    "block_size_sweep",
    "parallel_sampling_savings",
    "prefix_sharing_savings",
    "request_stream",
]


@dataclass(frozen=True)
class Request:
    """One request: ``prompt_len`` tokens in, ``output_len`` tokens generated (unknown to the server)."""

    prompt_len: int
    output_len: int

    @property
    def total(self) -> int:
        return self.prompt_len + self.output_len


def request_stream(n: int, seed: int = 0, max_len: int = 2048, mean_prompt: int = 300,
                   mean_output: int = 200) -> list[Request]:
    """``n`` seeded requests with exponentially distributed prompt and output lengths, capped at ``max_len``.

    Chat traffic is skewed: most requests are short and a few are long, which is what makes reserving the
    maximum length so wasteful. Introduced in Chapter 6.
    """
    n = check_int("n", n)
    max_len = check_int("max_len", max_len, minimum=2)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = int(min(max_len - 1, 1 + rng.exponential(mean_prompt)))
        o = int(min(max_len - p, 1 + rng.exponential(mean_output)))
        out.append(Request(p, o))
    return out


def admit(requests: Sequence[Request], memory_tokens: int, layout: str = "paged", block_size: int = 16,
          max_len: int = 2048) -> dict:
    """How many requests (in arrival order) fit in KV memory of ``memory_tokens`` token slots at their
    final length, and how the slots are used.

    ``layout``: ``"reserve-max"`` gives every request ``max_len`` contiguous slots up front (the pre-vLLM
    practice); ``"reserve-exact"`` reserves exactly its final length (an oracle that knows the output length);
    ``"paged"`` allocates blocks of ``block_size`` through a :class:`BlockManager` as the sequence grows.
    Returns ``sequences``, ``tokens`` (useful), ``reserved`` slots and ``waste_fraction``. Introduced in Chapter 6.
    """
    memory_tokens = check_int("memory_tokens", memory_tokens)
    if layout == "paged":
        mgr = BlockManager(block_size, memory_tokens // block_size)
        for i, r in enumerate(requests):
            try:
                mgr.add(i, r.prompt_len)
                mgr.append(i, r.output_len)
            except OutOfBlocksError:
                if i in mgr.sequences:
                    mgr.free(i)
                break
        st = mgr.stats()
        n = st.sequences
        tokens, reserved = st.stored_tokens, st.capacity_tokens
    elif layout in ("reserve-max", "reserve-exact"):
        used, n, tokens = 0, 0, 0
        for r in requests:
            need = max_len if layout == "reserve-max" else r.total
            if used + need > memory_tokens:
                break
            used, n, tokens = used + need, n + 1, tokens + r.total
        reserved = used
    else:
        raise ValueError(f"layout must be 'paged', 'reserve-max' or 'reserve-exact', got {layout!r}")
    return {"layout": layout, "block_size": block_size if layout == "paged" else None, "sequences": n,
            "tokens": tokens, "reserved": reserved,
            "waste_fraction": 1 - tokens / reserved if reserved else 0.0}


def block_size_sweep(requests: Sequence[Request], memory_tokens: int,
                     block_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                     max_len: int = 2048) -> pd.DataFrame:
    """Sequences that fit and wasted slots for each paged block size, next to the two contiguous layouts.

    Smaller blocks waste less (at most ``block_size - 1`` slots per sequence) but mean longer block tables
    and smaller, less efficient memory transactions in the attention kernel; vLLM settles on 16.
    Introduced in Chapter 6.
    """
    rows = [admit(requests, memory_tokens, "reserve-max", max_len=max_len),
            admit(requests, memory_tokens, "reserve-exact", max_len=max_len)]
    rows += [admit(requests, memory_tokens, "paged", b, max_len=max_len) for b in block_sizes]
    return pd.DataFrame(rows)


def prefix_sharing_savings(num_requests: int, shared_prefix: int, unique_lens: Sequence[int] | int,
                           block_size: int = 16, seed: int = 0) -> dict:
    """Blocks used by ``num_requests`` prompts that start with the same ``shared_prefix`` tokens, with and
    without prefix caching (chained block hashes, as vLLM).

    Each request is the shared prefix followed by its own tokens (``unique_lens``: a length per request, or
    one length for all). With caching the prefix's ``shared_prefix // block_size`` full blocks are stored once,
    so the saving is ``(num_requests - 1) · shared_prefix // block_size`` blocks. Introduced in Chapter 6.
    """
    num_requests = check_int("num_requests", num_requests)
    shared_prefix = check_int("shared_prefix", shared_prefix, minimum=0)
    lens = [unique_lens] * num_requests if isinstance(unique_lens, int) else list(unique_lens)
    if len(lens) != num_requests:
        raise ValueError(f"need {num_requests} unique lengths, got {len(lens)}")
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, 50_000, shared_prefix).tolist()
    prompts = [prefix + rng.integers(0, 50_000, u).tolist() for u in lens]
    out = {}
    for caching in (False, True):
        mgr = BlockManager(block_size, prefix_caching=caching)
        for i, p in enumerate(prompts):
            mgr.add(i, p)
        st = mgr.stats()
        out["blocks_shared" if caching else "blocks_private"] = st.used_blocks
    out["blocks_saved"] = out["blocks_private"] - out["blocks_shared"]
    out["saving_fraction"] = out["blocks_saved"] / out["blocks_private"]
    out["expected_saved"] = (num_requests - 1) * (shared_prefix // block_size)
    return out


def parallel_sampling_savings(prompt_len: int, output_len: int, num_samples: int, block_size: int = 16) -> dict:
    """Blocks for ``num_samples`` continuations of one prompt: forked with copy-on-write vs copied.

    Forking shares the prompt's blocks; the first write into the shared, partly filled last block copies it
    for the writer. Introduced in Chapter 6.
    """
    prompt_len = check_int("prompt_len", prompt_len)
    output_len = check_int("output_len", output_len, minimum=0)
    num_samples = check_int("num_samples", num_samples)
    mgr = BlockManager(block_size)
    mgr.add(0, prompt_len)
    copies = 0
    for i in range(1, num_samples):
        mgr.fork(0, i)
    for i in range(num_samples):
        copies += len(mgr.append(i, output_len))
    forked = mgr.stats().used_blocks
    separate = num_samples * math.ceil((prompt_len + output_len) / block_size)
    return {"blocks_forked": forked, "blocks_separate": separate, "copy_on_write_copies": copies,
            "saving_fraction": 1 - forked / separate}
