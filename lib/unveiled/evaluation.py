"""Perplexity on held-out text: the book's measure of what an inference trick costs in quality.

A language model's perplexity is ``exp`` of its mean negative log-likelihood per token on text it never
trained on. Every chapter that changes the model (quantization, KV-cache compression, distillation) reports
the change in perplexity on the same fixed text, so the comparison is paired and deterministic: the text is
cut into fixed, non-overlapping windows of ``window`` tokens (each token is predicted exactly once, from at
most ``window`` tokens of context, restarting at every window boundary as in nanoGPT's evaluation), and the
log-likelihoods are summed in float64. Introduced in the appendix "The models in this book".
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ._validate import check_int
from .session import progress_bar

__all__ = ["ROUNDING_EPS", "PerplexityResult", "perplexity", "rounding_perturbation", "text_perplexity", "window_nll"]


@dataclass(frozen=True)
class PerplexityResult:
    """Summed negative log-likelihood over ``tokens`` predictions, with the derived rates.

    ``nll`` is nats per token and ``perplexity = exp(nll)``; ``bits_per_token = nll / ln 2``. When the text's
    length in characters is known (``chars``), ``nats_per_char`` and ``bits_per_char`` compare models with
    different tokenizers (a character model and a BPE model) on the same text.
    """

    nll_sum: float
    tokens: int
    windows: int
    window: int
    chars: int | None = None

    @property
    def nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    @property
    def bits_per_token(self) -> float:
        return self.nll / math.log(2)

    @property
    def nats_per_char(self) -> float | None:
        return None if not self.chars else self.nll_sum / self.chars

    @property
    def bits_per_char(self) -> float | None:
        return None if not self.chars else self.nll_sum / self.chars / math.log(2)

    def as_dict(self) -> dict:
        """A flat dict (one row of a results table)."""
        return {
            "tokens": self.tokens,
            "windows": self.windows,
            "window": self.window,
            "nll_nats_per_token": self.nll,
            "perplexity": self.perplexity,
            "bits_per_token": self.bits_per_token,
            "chars": self.chars,
            "bits_per_char": self.bits_per_char,
        }


def _windows(n: int, window: int) -> list[tuple[int, int]]:
    """(start, length) of each window of inputs; window w predicts tokens start+1 .. start+length."""
    out = []
    start = 0
    while start < n - 1:
        length = min(window, n - 1 - start)
        out.append((start, length))
        start += window
    return out


@torch.inference_mode()
def window_nll(
    model: Callable[[torch.Tensor], torch.Tensor],
    tokens: Sequence[int] | torch.Tensor,
    window: int = 256,
    batch_size: int = 8,
    progress: bool = False,
) -> torch.Tensor:
    """Per-token negative log-likelihoods (nats, float64), one per predicted token, in text order.

    ``tokens[0]`` is never predicted; token ``i`` is predicted from the tokens since the start of its window.
    ``model`` is anything mapping ``[B, T]`` token ids to ``[B, T, V]`` logits (a :class:`~unveiled.models.Decoder`
    or a wrapped one). Introduced in the appendix "The models in this book".
    """
    window = check_int("window", window, minimum=1)
    batch_size = check_int("batch_size", batch_size)
    data = tokens.long() if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    if data.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(data.shape)}")
    if len(data) < 2:
        raise ValueError("need at least 2 tokens to predict one")
    spans = _windows(len(data), window)
    full = [s for s in spans if s[1] == window]
    rest = [s for s in spans if s[1] != window]
    groups = [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in rest]
    nll = torch.empty(len(data) - 1, dtype=torch.float64)
    bar = None
    if progress:
        bar = progress_bar(total=len(spans), desc="perplexity windows")
    for group in groups:
        length = group[0][1]
        idx = torch.tensor([s for s, _ in group])[:, None] + torch.arange(length + 1)[None, :]
        chunk = data[idx]
        logits = model(chunk[:, :-1]).double()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, chunk[:, 1:, None])[..., 0]
        for row, (start, _) in enumerate(group):
            nll[start : start + length] = -lp[row]
        if bar is not None:
            bar.update(len(group))
    if bar is not None:
        bar.close()
    return nll


def perplexity(
    model: Callable[[torch.Tensor], torch.Tensor],
    tokens: Sequence[int] | torch.Tensor,
    window: int = 256,
    batch_size: int = 8,
    progress: bool = False,
    chars: int | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``tokens`` over fixed, non-overlapping windows of ``window`` tokens.

    Deterministic for given arguments: the same windows, the same batches, a float64 sum. Pass ``chars`` (the
    text's length) to also get bits per character. Introduced in the appendix "The models in this book".
    """
    nll = window_nll(model, tokens, window=window, batch_size=batch_size, progress=progress)
    return PerplexityResult(
        nll_sum=float(nll.sum()),
        tokens=len(nll),
        windows=len(_windows(len(nll) + 1, window)),
        window=window,
        chars=chars,
    )


def text_perplexity(
    model: Callable[[torch.Tensor], torch.Tensor],
    tokenizer,
    text: str,
    window: int = 256,
    max_tokens: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> PerplexityResult:
    """Tokenize ``text`` and measure perplexity on its first ``max_tokens`` predicted tokens (all if None).

    ``chars`` in the result is the length of the text those tokens cover, so bits per character are
    comparable across tokenizers. Introduced in the appendix "The models in this book".
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    ids = tokenizer.encode(text)
    if max_tokens is not None:
        max_tokens = check_int("max_tokens", max_tokens)
        ids = ids[: max_tokens + 1]
    covered = len(tokenizer.decode(ids[1:]))  # the predicted tokens' characters
    return perplexity(model, ids, window=window, batch_size=batch_size, progress=progress, chars=covered)


#: The relative size of a rounding-level perturbation: a few float32 ulps, the size of the differences between
#: CPUs whose matrix kernels sum in another order (another vector width, another vendor's BLAS).
ROUNDING_EPS = 1e-6


@contextlib.contextmanager
def rounding_perturbation(seed: int, eps: float = ROUNDING_EPS, model: torch.nn.Module | None = None) -> Iterator[None]:
    """Multiply token embeddings by ``1 + eps·u`` (``u`` uniform in [−1, 1], seeded) inside the ``with`` block.

    Why: a result computed in float32 on one CPU is not bit-identical on another, because matrix kernels add
    in a different order (AVX-512 vs AVX2, Intel's vs AMD's code paths). Most results move by a few ulps; a
    result that passes through a discontinuous step (rounding to a 2-bit grid, an argmax) or through many
    training steps can move by much more. Re-running it under a few seeded perturbations of this size
    measures how far it can move: the tolerance a cross-CPU comparison needs. With ``model`` only its
    ``embed_tokens`` is perturbed; without, every :class:`torch.nn.Embedding` used in the block (a teacher's
    and a student's alike). Introduced in Chapter 6.
    """
    gen = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))

    def perturb(out: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(out.shape, generator=gen, dtype=torch.float32).to(out.dtype) * 2 - 1
        return out * (1 + eps * noise)

    if model is not None:
        embed = getattr(model, "embed_tokens", None)
        if not isinstance(embed, torch.nn.Module):
            raise TypeError(f"rounding_perturbation needs a model with an embed_tokens module, got "
                            f"{type(model).__name__}")
        handle = embed.register_forward_hook(lambda _m, _i, out: perturb(out))
        try:
            yield
        finally:
            handle.remove()
        return
    original = torch.nn.Embedding.forward
    torch.nn.Embedding.forward = lambda self, x: perturb(original(self, x))
    try:
        yield
    finally:
        torch.nn.Embedding.forward = original
