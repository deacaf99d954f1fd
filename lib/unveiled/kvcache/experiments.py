"""The cached experiments of Chapter 6: KV-cache quantization and eviction on SmolLM2-135M.

Each is a function registered with :func:`unveiled.results.experiment`; ``python -m unveiled.results run
kvcache.experiments.<name>`` recomputes its table (tens of minutes on a 2-core CPU) and the chapter reads the
shipped copy. Every setting streams the same text through the model in chunks of :data:`CHUNK` tokens
(:func:`~unveiled.kvcache.quality.streaming_nll`), so the tables also record the mean NLL of the first
:data:`LIVE_TOKENS` predictions, which the chapter recomputes live and a test compares. They run PyTorch on one
thread: on a shared, oversubscribed 2-core machine two threads made SmolLM2's forward passes about 8 times
slower (threads waiting for each other), while one thread loses at most a factor of 2 on an idle machine.
Introduced in Chapter 6.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch

from ..results import experiment
from ..session import progress_bar
from ..threads import torch_threads
from .eviction import HeavyHitterCache, SinkWindowCache
from .quality import streaming_nll
from .quantized import QuantizedKVCache

__all__ = [
    "CHUNK",
    "EVICTION_BUDGETS",
    "EVICTION_SKIP",
    "EVICTION_TOKENS",
    "KV_BITS",
    "LIVE_SETTINGS",
    "LIVE_TOKENS",
    "QUANT_SCHEMES",
    "QUANT_TOKENS",
    "ROUNDING_SEEDS",
    "eviction_policies",
    "quant_cache",
    "smollm2_eval_tokens",
    "smollm2_kv_eviction",
    "smollm2_kv_quant",
    "smollm2_kv_rounding",
]

#: Tokens fed per forward pass while streaming (see :func:`~unveiled.kvcache.quality.streaming_nll`).
CHUNK = 16
#: Predictions scored in the quantization sweep, and in the eviction sweep (a longer text).
QUANT_TOKENS = 512
EVICTION_TOKENS = 1024
#: The eviction sweep scores predictions after this many tokens, where every budget has started evicting.
EVICTION_SKIP = 256
#: The first predictions whose mean NLL the chapter recomputes live.
LIVE_TOKENS = 64
KV_BITS = (8, 4, 3, 2)
GROUP_SIZE = 32
#: Quantization layouts compared: name -> (key grouping, value grouping, residual window).
QUANT_SCHEMES: dict[str, tuple[str, str, int]] = {
    "KIVI (K per channel, V per token), R=32": ("channel", "token", 32),
    "KIVI, no residual (R=0)": ("channel", "token", 0),
    "per token (K and V), R=32": ("token", "token", 32),
    "per token (K and V), R=0": ("token", "token", 0),
}
EVICTION_BUDGETS = (32, 64, 128)
#: The settings whose first LIVE_TOKENS predictions are rerun live (chapter, tests): (scheme, bits); None =
#: the full-precision cache. The last one, 2-bit per-token groups without a window, is the most fragile.
LIVE_SETTINGS = ((None, 16), ("KIVI (K per channel, V per token), R=32", 2), ("per token (K and V), R=0", 2))
#: Perturbed reruns per live setting in :func:`smollm2_kv_rounding`.
ROUNDING_SEEDS = 8


def smollm2_eval_tokens(n: int) -> list[int]:
    """The first ``n + 1`` BPE tokens of Tiny Shakespeare's validation split (``n`` predictions). Chapter 6."""
    from ..smollm2 import smollm2_tokenizer
    from ..text import corpus_split

    ids = smollm2_tokenizer().encode(corpus_split("val"))
    if len(ids) < n + 1:
        raise ValueError(f"the validation text has only {len(ids)} tokens")
    return ids[: n + 1]


def quant_cache(scheme: str | None, bits: int | None) -> Callable[[], object] | None:
    """A factory for the cache of one quantization setting (``None``: the full-precision cache). Chapter 6."""
    if scheme is None:
        return None
    kg, vg, residual = QUANT_SCHEMES[scheme]
    return lambda: QuantizedKVCache(bits, key_grouping=kg, value_grouping=vg, group_size=GROUP_SIZE,
                                    residual=residual)


def eviction_policies(budget: int) -> dict[str, Callable[[], object]]:
    """The evicting caches compared at one token budget. Chapter 6."""
    return {
        "window": lambda: SinkWindowCache(budget, num_sinks=0),
        "sinks + window (StreamingLLM)": lambda: SinkWindowCache(budget, num_sinks=4),
        "heavy hitters + recent (H2O)": lambda: HeavyHitterCache(budget),
    }


def _row(nll: torch.Tensor, skip: int = 0) -> dict:
    scored = nll[skip:]
    return {"nll": float(scored.mean()), "perplexity": float(scored.mean().exp()), "tokens": len(scored),
            f"nll_first_{LIVE_TOKENS}": float(nll[:LIVE_TOKENS].mean())}


@experiment("smollm2_kv_quant", "SmolLM2-135M perplexity vs KV bits (8/4/3/2) and quantization layout, streamed")
@torch_threads(1)  # see the module docstring
def smollm2_kv_quant() -> pd.DataFrame:
    """SmolLM2 perplexity on Tiny Shakespeare (512 predictions, streamed in chunks of 16) for each KV bit
    width and layout of :data:`QUANT_SCHEMES`, plus the full-precision cache. Chapter 6."""
    from ..smollm2 import load_smollm2

    model = load_smollm2()
    tokens = smollm2_eval_tokens(QUANT_TOKENS)
    settings = [(None, 16)] + [(s, b) for s in QUANT_SCHEMES for b in KV_BITS]
    rows = []
    for scheme, bits in progress_bar(settings, desc="KV quantization settings", leave=True):
        nll = streaming_nll(model, tokens, quant_cache(scheme, bits), chunk=CHUNK)
        kg, vg, residual = QUANT_SCHEMES[scheme] if scheme else ("-", "-", 0)
        rows.append({"scheme": scheme or "full precision", "key_grouping": kg, "value_grouping": vg,
                     "residual": residual, "group_size": GROUP_SIZE if scheme else 0, "kv_bits": bits,
                     **_row(nll)})
    return pd.DataFrame(rows)


@experiment("smollm2_kv_eviction", "SmolLM2-135M perplexity with sink+window and H2O eviction vs a full cache")
@torch_threads(1)  # see the module docstring
def smollm2_kv_eviction() -> pd.DataFrame:
    """SmolLM2 perplexity on 1,024 tokens of Tiny Shakespeare, streamed in chunks of 16, scoring predictions
    after the first 256 tokens, for a full cache and each eviction policy at budgets of 32, 64 and 128 tokens.
    Chapter 6."""
    from ..smollm2 import load_smollm2

    model = load_smollm2()
    tokens = smollm2_eval_tokens(EVICTION_TOKENS)
    settings = [("full cache", EVICTION_TOKENS, None)]
    settings += [(name, b, make) for b in EVICTION_BUDGETS for name, make in eviction_policies(b).items()]
    rows = []
    for name, budget, make in progress_bar(settings, desc="eviction settings", leave=True):
        nll = streaming_nll(model, tokens, make, chunk=CHUNK)
        rows.append({"policy": name, "budget": budget, **_row(nll, EVICTION_SKIP)})
    return pd.DataFrame(rows)


@experiment("smollm2_kv_rounding", "How far rounding-level perturbations move the live-check settings' NLL")
@torch_threads(1)
def smollm2_kv_rounding() -> pd.DataFrame:
    """For each of :data:`LIVE_SETTINGS`, the mean NLL of the first :data:`LIVE_TOKENS` predictions unperturbed
    and under :data:`ROUNDING_SEEDS` seeded rounding-level perturbations
    (:func:`~unveiled.evaluation.rounding_perturbation`): ``spread`` is the largest move, the tolerance a live
    rerun on another CPU needs. A quantized cache rounds to a grid, so a tiny change of its input can flip a
    code and, at 2 bits, change the model's next tokens' probabilities visibly. Chapter 6."""
    from ..evaluation import rounding_perturbation
    from ..smollm2 import load_smollm2

    model = load_smollm2(progress=False)
    tokens = smollm2_eval_tokens(LIVE_TOKENS)
    rows = []
    for scheme, bits in LIVE_SETTINGS:
        make = quant_cache(scheme, bits)
        base = float(streaming_nll(model, tokens, make, chunk=CHUNK).mean())
        moved = []
        for seed in range(1, ROUNDING_SEEDS + 1):
            with rounding_perturbation(seed, model=model):
                moved.append(float(streaming_nll(model, tokens, make, chunk=CHUNK).mean()))
        rows.append({"scheme": scheme or "full precision", "kv_bits": bits, f"nll_first_{LIVE_TOKENS}": base,
                     "nll_min": min(moved), "nll_max": max(moved), "perturbed_runs": len(moved),
                     "spread": max(abs(m - base) for m in moved)})
    return pd.DataFrame(rows)
