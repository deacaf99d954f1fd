"""Kernels: FlashAttention and Flash-Decoding built in plain PyTorch, a memory-traffic counter, fusion measured.

The survey's §5.1 (operator fusion, FlashAttention, Flash-Decoding) argued on the roofline; this package builds
the kernels and counts and measures their traffic:

* :mod:`.attention`: naive, tiled (FlashAttention) and split-K (Flash-Decoding) attention, the tile traffic;
* :mod:`.traffic`: :class:`ByteCounter`, the bytes every ATen kernel reads and writes;
* :mod:`.validation`: the analyzer's per-operator bytes against the counter on the book's ``Decoder``;
* :mod:`.io`: FlashAttention's traffic against sequence length and on-chip buffer, and the survey's Fig. 16;
* :mod:`.fusion`: ``torch.compile`` (inductor) against eager PyTorch, with the generated code;
* :mod:`.decode_step`: a compiler-friendly decode step and a per-operator profile of a real one;
* :mod:`.experiments`: the cached SmolLM2 measurements.

Introduced in Chapter 8.
"""

from __future__ import annotations

from .attention import (
    TileTraffic,
    flash_attention,
    flash_attention_traffic,
    flash_decoding,
    merge_partials,
    naive_attention,
    online_softmax_update,
    tile_schedule,
)
from .traffic import ByteCounter, unique_bytes

__all__ = [
    "ByteCounter",
    "TileTraffic",
    "flash_attention",
    "flash_attention_traffic",
    "flash_decoding",
    "merge_partials",
    "naive_attention",
    "online_softmax_update",
    "tile_schedule",
    "unique_bytes",
]
