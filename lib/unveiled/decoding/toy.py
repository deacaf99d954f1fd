"""A table language model: next-token logits looked up from the last two tokens, with the decoder's interface.

Checking that a whole decoding loop samples from the right distribution takes many thousands of runs; with a
real transformer that is minutes. :class:`TableLM` behaves like :class:`~unveiled.models.Decoder` where the
decoding loops care (``model(tokens, cache)`` returns ``[B, T, V]`` logits, ``new_cache()``, ``crop``,
``config.vocab_size``) but its forward pass is a table lookup, so a chi-square test over whole generated
sequences runs in seconds, and :meth:`TableLM.sequence_distribution` gives the exact law to test against.
Introduced in Chapter 7.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from .._validate import check_int, check_number

__all__ = ["TableLM"]


@dataclass(frozen=True)
class _Config:
    vocab_size: int
    name: str = "table-lm"
    num_layers: int = 1


class _TokenCache:
    """The toy model's "KV cache": the tokens seen so far (all it needs to look up the next logits)."""

    def __init__(self):
        self.tokens: list[int] = []

    @property
    def offset(self) -> int:
        return len(self.tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def crop(self, n: int) -> None:
        self.tokens = self.tokens[: check_int("n", n, minimum=0)]


class TableLM:
    """Logits of the next token = ``table[previous token, current token]`` (a random trigram model).

    ``sharpness`` scales the random logits (larger = more peaked); ``seed`` fixes them. The first position
    uses the current token as its own predecessor. Introduced in Chapter 7.
    """

    def __init__(self, vocab_size: int = 4, seed: int = 0, sharpness: float = 1.5):
        v = check_int("vocab_size", vocab_size, minimum=2)
        gen = torch.Generator().manual_seed(int(seed))
        self.table = torch.randn(v, v, v, generator=gen) * check_number("sharpness", sharpness)
        self.config = _Config(v, name=f"table-lm-{seed}")

    def new_cache(self) -> _TokenCache:
        return _TokenCache()

    def __call__(self, tokens: torch.Tensor, cache: _TokenCache | None = None) -> torch.Tensor:
        tokens = tokens[None] if tokens.dim() == 1 else tokens
        if tokens.shape[0] != 1:
            raise ValueError("TableLM runs one sequence at a time")
        new = tokens[0].tolist()
        history = (cache.tokens if cache is not None else []) + new
        start = len(history) - len(new)
        rows = []
        for i in range(start, len(history)):
            prev = history[i - 1] if i > 0 else history[i]
            rows.append(self.table[prev, history[i]])
        if cache is not None:
            cache.tokens = history
        return torch.stack(rows)[None]

    def next_probs(self, context: list[int], temperature: float = 1.0) -> torch.Tensor:
        """The next-token distribution after ``context`` at ``temperature`` (> 0)."""
        prev = context[-2] if len(context) > 1 else context[-1]
        return (self.table[prev, context[-1]] / temperature).softmax(-1)

    def sequence_distribution(self, context: list[int], length: int, temperature: float = 1.0) -> torch.Tensor:
        """Exact probabilities of every continuation of ``length`` tokens, ``[V ** length]`` in
        lexicographic order (the law that ancestral sampling, and exact speculative sampling, follow)."""
        v = self.config.vocab_size
        out = torch.zeros(v ** check_int("length", length), dtype=torch.float64)
        for i, seq in enumerate(itertools.product(range(v), repeat=length)):
            ctx, prob = list(context), 1.0
            for x in seq:
                prob *= float(self.next_probs(ctx, temperature)[x])
                ctx.append(x)
            out[i] = prob
        return out
