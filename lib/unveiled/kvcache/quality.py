"""What a compressed KV cache costs in quality: perplexity measured the way decoding sees the cache.

Scoring a text in one forward pass would let every query attend to full-precision keys computed in the
same pass, so a quantized or evicting cache would never show its effect. :func:`streaming_nll` instead feeds
the text through the model in chunks of ``chunk`` tokens with the cache under test, so each token is
predicted from what the cache holds at that point (exactly decoding when ``chunk=1``; with larger chunks
the tokens of the current chunk are also visible in the form the cache stores them, which differs from
token-by-token decoding only in the last few positions). The same function measures quantized caches
[Liu et al. 2024] and evicting ones [Xiao et al. 2024; Zhang et al. 2023]. Key statistics show why keys
want per-channel quantization groups. Introduced in Chapter 6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch

from .._validate import check_int
from ..session import progress_bar
from .quantized import fake_quantize_along

__all__ = [
    "capture_kv",
    "compare_caches",
    "grouping_error",
    "key_channel_stats",
    "streaming_nll",
    "streaming_perplexity",
]


@torch.inference_mode()
def streaming_nll(model, tokens: Sequence[int] | torch.Tensor, make_cache: Callable[[], object] | None,
                  chunk: int = 8, progress: bool = False) -> torch.Tensor:
    """Negative log-likelihood (nats, float64) of ``tokens[1:]``, fed in chunks through one cache.

    ``make_cache()`` builds the cache under test (``None``: the model's plain cache). Token ``i`` is predicted
    from tokens ``< i`` as the cache holds them after the chunk containing ``i - 1`` was appended.
    Introduced in Chapter 6.
    """
    chunk = check_int("chunk", chunk)
    data = tokens.long() if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    if data.dim() != 1 or len(data) < 2:
        raise ValueError(f"tokens must be a 1-D sequence of at least 2 ids, got shape {tuple(data.shape)}")
    cache = model.new_cache() if make_cache is None else make_cache()
    n = len(data) - 1
    nll = torch.empty(n, dtype=torch.float64)
    starts = range(0, n, chunk)
    if progress:
        starts = progress_bar(starts, desc="streaming")
    for s in starts:
        e = min(s + chunk, n)
        logits = model(data[None, s:e], cache)[0].double()
        nll[s:e] = -torch.log_softmax(logits, -1).gather(-1, data[s + 1 : e + 1, None])[:, 0]
    return nll


def streaming_perplexity(model, tokens, make_cache, chunk: int = 8, skip: int = 0, progress: bool = False) -> dict:
    """Perplexity of :func:`streaming_nll` over the predictions of tokens ``skip + 1`` onwards.

    ``skip`` leaves out the start of the text, where an evicting cache has not evicted anything yet.
    Returns ``{"nll", "perplexity", "tokens"}``. Introduced in Chapter 6.
    """
    skip = check_int("skip", skip, minimum=0)
    nll = streaming_nll(model, tokens, make_cache, chunk=chunk, progress=progress)[skip:]
    if len(nll) == 0:
        raise ValueError(f"skip={skip} leaves no token to score")
    mean = float(nll.mean())
    return {"nll": mean, "perplexity": math.exp(mean), "tokens": len(nll)}


def compare_caches(model, tokens, caches: dict[str, Callable[[], object] | None], chunk: int = 16,
                   smooth: int = 64, every: int = 8, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stream the same text through several caches: per-position loss curves and a summary table.

    Returns ``(curves, summary)``: ``curves`` has the loss of each cache averaged over a trailing window of
    ``smooth`` predictions, every ``every`` positions (columns ``policy``, ``position``, ``nll``); ``summary``
    has one row per cache with the mean loss over the whole text and over its second half. Introduced in
    Chapter 6.
    """
    smooth = check_int("smooth", smooth)
    every = check_int("every", every)
    curves, rows = [], []
    items = caches.items()
    if progress:
        items = progress_bar(items, desc="caches")
    for name, make in items:
        nll = streaming_nll(model, tokens, make, chunk=chunk)
        csum = torch.cat([torch.zeros(1, dtype=nll.dtype), nll.cumsum(0)])
        for end in range(smooth, len(nll) + 1, every):
            curves.append({"policy": name, "position": end, "nll": float((csum[end] - csum[end - smooth]) / smooth)})
        half = len(nll) // 2
        rows.append({"policy": name, "nll": float(nll.mean()), "perplexity": math.exp(float(nll.mean())),
                     "nll_second_half": float(nll[half:].mean())})
    return pd.DataFrame(curves), pd.DataFrame(rows)


@torch.inference_mode()
def capture_kv(model, tokens: Sequence[int] | torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys (after RoPE) and values every layer caches for ``tokens``: ``[(k, v)]``, each ``[K, L, d]``.

    Introduced in Chapter 6.
    """
    data = tokens.long() if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    cache = model.new_cache()
    model(data[None], cache)
    return [(cache.keys(i)[0].clone(), cache.values(i)[0].clone()) for i in range(model.config.num_layers)]


def key_channel_stats(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> pd.DataFrame:
    """Per layer, head and channel: the mean |key| and |value| over tokens, and how far each channel stands out.

    ``key_outlier_ratio`` is a channel's mean |key| over the median channel's in the same head: keys have a
    few channels far above 1 (the outliers KIVI groups per channel for), values stay near 1.
    Introduced in Chapter 6.
    """
    rows = []
    for layer, (k, v) in enumerate(kv):
        km, vm = k.abs().mean(1), v.abs().mean(1)  # [K, d]
        kr = km / km.median(dim=1, keepdim=True).values
        vr = vm / vm.median(dim=1, keepdim=True).values
        for h in range(k.shape[0]):
            for c in range(k.shape[2]):
                rows.append({"layer": layer, "head": h, "channel": c, "key_mean_abs": float(km[h, c]),
                             "value_mean_abs": float(vm[h, c]), "key_outlier_ratio": float(kr[h, c]),
                             "value_outlier_ratio": float(vr[h, c])})
    return pd.DataFrame(rows)


def grouping_error(kv: list[tuple[torch.Tensor, torch.Tensor]], bits: Sequence[int] = (4, 2),
                   group_size: int = 32) -> pd.DataFrame:
    """Relative quantization error of real keys and values under per-channel vs per-token groups.

    For each tensor, layer and bit width: ``||x - Q(x)||² / ||x||²`` with groups of ``group_size`` tokens
    sharing a scale per channel (``"channel"``) or groups of ``group_size`` channels within a token
    (``"token"``). Tokens are cut to a multiple of ``group_size``. Introduced in Chapter 6.
    """
    rows = []
    for layer, (k, v) in enumerate(kv):
        n = k.shape[1] - k.shape[1] % group_size
        for name, x in (("key", k[:, :n]), ("value", v[:, :n])):
            for b in bits:
                for grouping, dim in (("channel", 1), ("token", 2)):
                    xq = fake_quantize_along(x, b, dim, group_size)
                    err = float(((x - xq) ** 2).sum() / (x**2).sum())
                    rows.append({"layer": layer, "tensor": name, "bits": b, "grouping": grouping,
                                 "relative_error": err})
    return pd.DataFrame(rows)
