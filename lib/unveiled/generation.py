"""Autoregressive generation: greedy decoding and sampling with temperature, top-k and top-p, seeded.

Decoding turns next-token logits into a token. Greedy takes the arg-max (ties go to the lowest id). Sampling
draws from ``softmax(logits / T)`` after two optional filters, applied in the order Hugging Face and vLLM
use: **top-k** keeps the ``k`` largest logits [Fan et al. 2018], then **top-p** (nucleus) keeps the smallest
set of most-probable tokens whose probability reaches ``p`` — the token that crosses ``p`` is kept, and at
least one token always is [Holtzman et al. 2020]. :func:`sampling_probs` exposes the resulting distribution,
because speculative decoding must warp the draft's and the target's distributions identically (Chapter 7).

:func:`generate` runs the usual two phases: one *prefill* pass over the prompt that fills the KV cache, then
one *decode* pass per new token [Pope et al. 2023]. Introduced in the appendix "The models in this book";
Chapter 7 builds on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ._validate import check_int, check_number
from .session import progress_bar

__all__ = ["check_sampling", "decode_stream", "draw", "generate", "generate_text", "sample_next", "sampling_probs",
           "warp_logits"]


def check_sampling(temperature: float, top_k: int | None = None, top_p: float | None = None) -> tuple[float, int, float]:
    """Validate sampling settings; return ``(temperature, k, p)`` with ``k = 0`` (no top-k) and ``p = 1`` (no
    nucleus) for None. Temperature 0 means greedy. Every decoder of the book (this module's and the
    speculative ones of Chapter 7) checks its settings here. Introduced in the appendix "The models in this book".
    """
    temperature = check_number("temperature", temperature)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    k = 0 if top_k is None else check_int("top_k", top_k, minimum=0)
    p = 1.0 if top_p is None else check_number("top_p", top_p)
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    return temperature, k, p


def warp_logits(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Divide by the temperature, then set logits outside the top-k and outside the top-p nucleus to -inf.

    ``logits`` is ``[..., V]``; ``temperature`` must be > 0 here (0 means greedy, see :func:`sampling_probs`).
    ``top_k`` of 0/None or >= V and ``top_p`` of 1/None are no-ops. Introduced in Chapter 7.
    """
    temperature, k, p = check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("warp_logits needs temperature > 0; temperature 0 is greedy (use sampling_probs)")
    out = logits.float() / temperature
    v = out.shape[-1]
    if 0 < k < v:
        kth = torch.topk(out, k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass of the tokens ranked above each token
        drop_sorted = before >= p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sampling_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """The distribution decoding draws from: a one-hot arg-max when ``temperature == 0``, else the softmax of
    :func:`warp_logits`. Rows sum to 1. Introduced in Chapter 7."""
    temperature, _, _ = check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        idx = logits.argmax(-1, keepdim=True)
        return torch.zeros_like(logits, dtype=torch.float32).scatter(-1, idx, 1.0)
    return warp_logits(logits, temperature, top_k, top_p).softmax(-1)


def draw(probs: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of ``probs`` ``[..., V]`` (a ``[...]`` tensor): the arg-max when ``temperature`` is
    0 (no random number is drawn), else a draw from the row. Introduced in the appendix "The models in this book".
    """
    if temperature == 0:
        return probs.argmax(-1)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(probs.shape[:-1])


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` ``[B, V]`` (greedy when ``temperature == 0``), as a ``[B]`` tensor.

    Introduced in the appendix "The models in this book".
    """
    temperature, _, _ = check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    return draw(sampling_probs(logits, temperature, top_k, top_p), temperature, generator)


@torch.inference_mode()
def decode_stream(
    model,
    tokens: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_token_id: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the new tokens of prompts ``tokens`` ``[B, T]`` one step at a time, each a ``[B]`` tensor.

    The two phases of generation [Pope et al. 2023]: the first step runs the *prefill* (one pass over the
    prompts fills a fresh KV cache), every later step one *decode* pass over the token just drawn. A row that
    has produced ``eos_token_id`` keeps producing it; the stream ends after ``max_new_tokens`` tokens or when
    every row is done. Timing one step is timing one iteration. Introduced in the appendix "The models in
    this book"; Chapter 7 times plain decoding with it.
    """
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    cache = model.new_cache()
    logits = model(tokens, cache)[:, -1]
    done = torch.zeros(tokens.shape[0], dtype=torch.bool)
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator=generator)
        if eos_token_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
            done |= nxt == eos_token_id
        yield nxt
        if step + 1 == max_new_tokens or (eos_token_id is not None and bool(done.all())):
            return
        logits = model(nxt[:, None], cache)[:, -1]


@torch.inference_mode()
def generate(
    model,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_token_id: int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Continue ``prompt`` (1-D ids, or ``[B, T]`` equal-length prompts) by ``max_new_tokens`` tokens.

    Returns prompt + continuation, ``[B, T + n]`` (1-D in, 1-D out), as :func:`decode_stream` produces it:
    prefill fills a KV cache in one pass; each decode step appends one token. Sampling is reproducible
    through ``seed``; generation stops early when every row has produced ``eos_token_id``.
    ``progress=None`` shows a tqdm bar for more than 100 tokens. Introduced in the appendix "The models in
    this book".
    """
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=0)
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    tokens = prompt if isinstance(prompt, torch.Tensor) else torch.tensor(list(prompt), dtype=torch.long)
    one_d = tokens.dim() == 1
    tokens = tokens.long()[None] if one_d else tokens.long()
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError("prompt must hold at least one token, as 1-D ids or a [batch, seq_len] tensor")
    gen = torch.Generator().manual_seed(int(seed))
    out = [tokens]
    bar = None
    if progress or (progress is None and max_new_tokens > 100):
        bar = progress_bar(total=max_new_tokens, desc="generating")
    for nxt in decode_stream(model, tokens, max_new_tokens, temperature, top_k, top_p, gen, eos_token_id):
        out.append(nxt[:, None])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    result = torch.cat(out, dim=1)
    return result[0] if one_d else result


def generate_text(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    stop_at_eos: bool = True,
    progress: bool | None = None,
) -> str:
    """The text a model writes after ``prompt`` (the continuation only), with any book tokenizer.

    Introduced in the appendix "The models in this book".
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty str")
    ids = tokenizer.encode(prompt)
    eos = getattr(tokenizer, "eos_token_id", None) if stop_at_eos else None
    out = generate(model, ids, max_new_tokens, temperature, top_k, top_p, seed=seed, eos_token_id=eos,
                   progress=progress)
    new = out[len(ids):].tolist()
    if eos is not None and eos in new:
        new = new[: new.index(eos)]
    return tokenizer.decode(new)
