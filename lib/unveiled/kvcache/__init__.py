"""The KV cache: how big it gets, and four ways to hold it (contiguous, paged, quantized, evicting).

Decoding one token reads every key and value the sequence has produced so far, in every layer. That cache
grows linearly with context length and batch, and past some length it outweighs the model itself
(survey §3.1, §5.2, §7.5; Fig. 11). This package sizes it for real architectures (MHA, MQA, GQA and MLA)
and implements the caches the survey discusses, each plugging into :class:`~unveiled.models.Decoder`
through its cache protocol: the plain contiguous cache (:class:`~unveiled.models.KVCache`), PagedAttention's
paged cache with block tables and copy-on-write sharing [Kwon et al. 2023], KIVI's quantized cache [Liu et al.
2024], and StreamingLLM's sinks + window [Xiao et al. 2024] and H2O's heavy hitters [Zhang et al. 2023].
Introduced in Chapter 6.
"""

from __future__ import annotations

from ..models import KVCache as ContiguousKVCache
from .eviction import HeavyHitterCache, SinkWindowCache
from .paged import (
    BlockAllocator,
    BlockManager,
    BlockStats,
    OutOfBlocksError,
    PagedKVCache,
    gather_kv,
    paged_attention,
)
from .quality import (
    capture_kv,
    compare_caches,
    grouping_error,
    key_channel_stats,
    streaming_nll,
    streaming_perplexity,
)
from .quantized import (
    GROUPINGS,
    QuantizedKVCache,
    fake_quantize_along,
    kivi_cache,
    kv_quant_spec,
)
from .serving import (
    Request,
    admit,
    block_size_sweep,
    parallel_sampling_savings,
    prefix_sharing_savings,
    request_stream,
)
from .sizing import (
    attention_kind,
    attention_variants,
    decode_traffic,
    kv_bytes_per_token,
    kv_cache_bytes,
    kv_elements_per_token,
    kv_size_table,
    kv_weights_crossover,
    memory_wall,
)

__all__ = [
    "GROUPINGS",
    "BlockAllocator",
    "BlockManager",
    "BlockStats",
    "ContiguousKVCache",
    "HeavyHitterCache",
    "OutOfBlocksError",
    "PagedKVCache",
    "QuantizedKVCache",
    "Request",
    "SinkWindowCache",
    "admit",
    "attention_kind",
    "attention_variants",
    "block_size_sweep",
    "capture_kv",
    "compare_caches",
    "decode_traffic",
    "fake_quantize_along",
    "gather_kv",
    "grouping_error",
    "key_channel_stats",
    "kivi_cache",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "kv_elements_per_token",
    "kv_quant_spec",
    "kv_size_table",
    "kv_weights_crossover",
    "memory_wall",
    "paged_attention",
    "parallel_sampling_savings",
    "prefix_sharing_savings",
    "request_stream",
    "streaming_nll",
    "streaming_perplexity",
]
