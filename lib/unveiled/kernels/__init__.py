"""Kernels: FlashAttention and Flash-Decoding built in plain PyTorch, a memory-traffic counter, fusion measured.

The survey's §5.1 (operator fusion, FlashAttention, Flash-Decoding) argued on the roofline; this package
builds the kernels and counts and measures their traffic: :mod:`.attention` (naive, tiled and split-K
attention), :mod:`.traffic` (``ByteCounter``, the bytes every ATen operator reads and writes). Introduced in
Chapter 8.
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

__all__ = [
    "TileTraffic",
    "flash_attention",
    "flash_attention_traffic",
    "flash_decoding",
    "merge_partials",
    "naive_attention",
    "online_softmax_update",
    "tile_schedule",
]
