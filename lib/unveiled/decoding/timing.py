"""Measuring decoding on this machine: verification-pass time vs tokens, and speculative vs plain decoding.

Two measurements carry Chapter 7. :func:`measure_verification` times one forward pass that scores ``T`` new
tokens against a filled KV cache, for several ``T``: while the pass is memory-bound the time hardly grows
with ``T``, which is why verifying ``k + 1`` draft tokens costs about one decode step. :func:`compare_decoding`
runs plain greedy decoding and speculative decoding with several drafts and draft lengths in one process,
alternating them ``repeats`` times and keeping each one's best run (noise on a shared machine only ever slows
a run down), checks that every greedy output equals the plain one token for token, and puts the analytic
model's prediction next to each measured speedup. Introduced in Chapter 7.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .._validate import check_int
from ..session import progress_bar
from .analytic import expected_speedup, expected_tokens_per_pass
from .speculative import Draft, plain_generate, speculative_generate

__all__ = ["TransposedLinear", "compare_decoding", "measure_verification", "transpose_linears"]


class TransposedLinear(torch.nn.Module):
    """A bias-free linear layer that stores its weight transposed, ``[in, out]``, and computes ``x @ Wᵀ``.

    Same numbers as ``nn.Linear`` (up to float rounding). Why it exists: on a CPU, PyTorch sends a thin
    matrix product (a few rows, as when a verification pass scores ``k + 1`` tokens) through a GEMM kernel
    that handles the ``[out, in]`` weight less efficiently than a matrix-vector product handles one row, so a
    few-token pass costs well over one single-token pass; with the weight stored ``[in, out]`` the kernel
    streams it and the gap narrows. The cached ``decoding.experiments.smollm2_verification`` table measures
    both layouts (Chapter 7 prints it). Introduced in Chapter 7.
    """

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        if getattr(linear, "bias", None) is not None:
            raise ValueError("TransposedLinear supports bias-free linear layers only (the book's decoders)")
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_t


def transpose_linears(model: torch.nn.Module) -> list[str]:
    """Replace every linear layer of ``model`` (``lm_head`` included) by a :class:`TransposedLinear`, in place.

    Uses the decoder's ``replace_linears`` seam; returns the replaced names. A tied ``lm_head`` becomes a
    transposed copy of the embedding (the embedding itself is kept for the lookup). Introduced in Chapter 7.
    """
    from ..models import replace_linears

    return replace_linears(model, lambda name, lin: TransposedLinear(lin), include=lambda name: True)


@torch.inference_mode()
def measure_verification(model, tokens: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 12, 16), context_len: int = 128,
                         repeats: int = 5, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Time a forward pass over ``T`` new tokens with ``context_len`` tokens cached, for each ``T``.

    The cache is filled once with seeded random tokens; each repeat visits every ``T`` (in a shuffled order,
    so slow spells of a shared machine spread evenly), crops the cache back and times the pass. Returns one
    row per ``T``: ``time_s`` (best repeat), ``median_s`` and ``relative_time`` (best over the best at T = 1).
    Introduced in Chapter 7.
    """
    repeats = check_int("repeats", repeats)
    context_len = check_int("context_len", context_len)
    ts = [check_int("tokens", int(t)) for t in tokens]
    if 1 not in ts:
        ts = [1, *ts]
    v = model.config.vocab_size
    gen = torch.Generator().manual_seed(int(seed))
    ctx = torch.randint(0, v, (1, context_len), generator=gen)
    new = torch.randint(0, v, (1, max(ts)), generator=gen)
    cache = model.new_cache()
    model(ctx, cache)
    model(new[:, :1], cache)  # warm-up
    cache.crop(context_len)
    times: dict[int, list[float]] = {t: [] for t in ts}
    rng = np.random.default_rng(seed)
    bar = None
    if progress:
        bar = progress_bar(total=repeats * len(ts), desc="timing verification passes", leave=False)
    for _ in range(repeats):
        for t in rng.permutation(ts).tolist():
            t0 = time.perf_counter()
            model(new[:, :t], cache)
            times[t].append(time.perf_counter() - t0)
            cache.crop(context_len)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    rows = [{"tokens": t, "context_len": context_len, "time_s": min(times[t]), "median_s": float(np.median(times[t]))}
            for t in sorted(ts)]
    df = pd.DataFrame(rows)
    df["relative_time"] = df["time_s"] / df.loc[df["tokens"] == 1, "time_s"].iloc[0]
    return df


def compare_decoding(
    target,
    drafts: Mapping[str, Draft],
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int = 64,
    ks: Sequence[int] | Mapping[str, Sequence[int]] = (1, 2, 4),
    repeats: int = 2,
    progress: bool = True,
) -> pd.DataFrame:
    """Plain greedy decoding vs speculative decoding with each draft and draft length, measured in one run.

    ``ks`` is one list of draft lengths for every draft, or a dict giving each draft its own. Every
    configuration runs ``repeats`` times, interleaved with the plain baseline; the best time of each is kept. Columns: ``draft``, ``k``, ``tokens_per_s``, ``plain_tokens_per_s``, ``speedup`` (their ratio),
    ``identical`` (greedy output equals the plain output token for token), ``acceptance_rate`` α,
    ``tokens_per_pass``, ``cost_ratio`` ``c`` (draft time per proposed token over a plain decode step),
    ``verify_ratio`` ``v`` (verification pass over a plain decode step) and ``predicted_speedup``
    (:func:`~unveiled.decoding.expected_speedup` at the measured α, k, c and v). Introduced in Chapter 7.
    """
    repeats = check_int("repeats", repeats)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens)
    per_draft = ks if isinstance(ks, Mapping) else {name: ks for name in drafts}
    missing = sorted(set(drafts) - set(per_draft))
    if missing:
        raise ValueError(f"ks has no draft lengths for {missing}")
    configs = [(name, check_int("k (draft length)", int(k))) for name in drafts for k in per_draft[name]]
    bar = None
    if progress:
        bar = progress_bar(total=repeats * (len(configs) + 1), desc="plain vs speculative decoding", leave=False)
    best_plain, plain_tokens = None, None
    best: dict[tuple[str, int], object] = {}
    for _ in range(repeats):
        r = plain_generate(target, prompt, max_new_tokens, progress=False)
        if best_plain is None or r.time_s < best_plain.time_s:
            best_plain = r
        plain_tokens = r.new_tokens
        if bar is not None:
            bar.update(1)
        for name, k in configs:
            s = speculative_generate(target, drafts[name], prompt, max_new_tokens, k=k, progress=False)
            if (name, k) not in best or s.time_s < best[(name, k)].time_s:
                best[(name, k)] = s
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    step_s = best_plain.time_s / max_new_tokens
    rows = []
    for (name, k), s in best.items():
        log = s.rounds
        drafted = float(log["drafted"].sum())
        c = float(log["draft_s"].sum()) / drafted / step_s if drafted else 0.0
        v = float(log["target_s"].mean()) / step_s
        alpha = s.acceptance_rate
        a = 0.0 if np.isnan(alpha) else alpha
        rows.append({
            "draft": name, "k": k, "new_tokens": len(s.new_tokens), "tokens_per_s": s.tokens_per_s,
            "plain_tokens_per_s": best_plain.tokens_per_s, "speedup": s.tokens_per_s / best_plain.tokens_per_s,
            "identical": s.new_tokens == plain_tokens, "acceptance_rate": alpha, "tokens_per_pass": s.tokens_per_pass,
            "predicted_tokens_per_pass": float(expected_tokens_per_pass(a, k)), "cost_ratio": c, "verify_ratio": v,
            "predicted_speedup": float(expected_speedup(a, k, c, v)),
        })
    return pd.DataFrame(rows)
