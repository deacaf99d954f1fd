"""Jacobi decoding: guess a whole block of future tokens and refine every position in parallel.

Greedy decoding solves ``y_i = argmax p(· | x, y_<i)`` for ``i = 1..n`` one equation at a time. Jacobi
iteration [Song et al. 2021; Santilli et al. 2023] solves all ``n`` at once: start from any guess, then set
every ``y_i`` to the arg-max given the *current* guesses before it, in one forward pass over the block, and
repeat. The greedy continuation is the fixed point, and it is reached in at most ``n`` iterations, because
each one makes at least one more leading position correct (:func:`jacobi_fixed_point`).

As a decoder (:func:`jacobi_generate`), each pass commits the leading guesses that the pass confirmed plus the
first corrected token, and keeps the rest of its predictions as the next guess: a speculative decoder whose
draft is the model's own previous iterate, at no draft cost. Lookahead decoding [Fu et al. 2024] adds an
n-gram pool harvested from these trajectories (``pool=True`` here keeps the simplest form of it). Output
equals plain greedy decoding. Introduced in Chapter 7.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .._validate import check_int
from .speculative import SpeculativeResult, _bar, _prompt_list

__all__ = ["jacobi_fixed_point", "jacobi_generate"]


@torch.inference_mode()
def jacobi_fixed_point(model, context: Sequence[int] | torch.Tensor, guess: Sequence[int] | torch.Tensor,
                       max_iterations: int | None = None) -> tuple[list[int], list[list[int]]]:
    """Iterate Jacobi updates on a block until it stops changing; return the fixed point and the trajectory.

    ``guess`` (``n`` tokens) continues ``context``; one iteration is one forward pass over
    ``context[-1:] + guess[:-1]`` with the context cached. The trajectory lists every iterate, the initial
    guess first. ``max_iterations`` defaults to ``n + 1`` (``n`` to converge, one more to see it).
    Introduced in Chapter 7.
    """
    ctx = _prompt_list(context)
    y = _prompt_list(guess)
    n = len(y)
    limit = n + 1 if max_iterations is None else check_int("max_iterations", max_iterations)
    cache = model.new_cache()
    if len(ctx) > 1:
        model(torch.tensor([ctx[:-1]]), cache)
    base = len(cache)
    trajectory = [list(y)]
    for _ in range(limit):
        logits = model(torch.tensor([[ctx[-1], *y[:-1]]]), cache)[0]
        cache.crop(base)
        new = logits.argmax(-1).tolist()
        trajectory.append(new)
        if new == y:
            break
        y = new
    return y, trajectory


@torch.inference_mode()
def jacobi_generate(
    model,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    block_size: int = 8,
    pool: bool = False,
    progress: bool | None = None,
) -> SpeculativeResult:
    """Greedy decoding by Jacobi iteration with commitment; one row of ``rounds`` per forward pass.

    Invariant: the cache holds every token but the last. A pass feeds the last token and the ``block_size``
    current guesses, takes the arg-max at each position, commits the guesses that match (``a`` of them) plus
    the next prediction, crops the cache to the committed tokens and carries the unconfirmed predictions over
    as the next guess (padded by repeating the last). With ``pool`` the guess is replaced, when possible, by
    the continuation of the latest n-gram in the text so far that starts with the last token (a minimal
    lookahead-style pool). Output equals plain greedy decoding. Introduced in Chapter 7.
    """
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=0)
    n = check_int("block_size", block_size)
    tokens = _prompt_list(prompt)
    prompt_len = len(tokens)
    bar = _bar(max_new_tokens, progress, f"Jacobi decoding (block {n})")
    rows = []
    t_start = time.perf_counter()
    cache = model.new_cache()
    if len(tokens) > 1:
        model(torch.tensor([tokens[:-1]]), cache)
    guess = [tokens[-1]] * n
    produced = 0
    while produced < max_new_tokens:
        t0 = time.perf_counter()
        if pool:
            guess = _pool_guess(tokens, n) or guess
        n_before = len(tokens) - 1
        pred = model(torch.tensor([[tokens[-1], *guess]]), cache)[0].argmax(-1).tolist()  # n + 1 predictions
        a = 0
        while a < n and guess[a] == pred[a]:
            a += 1
        emitted = pred[: a + 1]
        cache.crop(n_before + a + 1)
        emitted = emitted[: max_new_tokens - produced]
        tokens.extend(emitted)
        produced += len(emitted)
        rest = pred[a + 1:]
        guess = (rest + [rest[-1] if rest else tokens[-1]] * n)[:n]
        rows.append({"drafted": n, "accepted": a, "emitted": len(emitted), "draft_s": 0.0,
                     "target_s": time.perf_counter() - t0})
        if bar is not None:
            bar.update(len(emitted))
    if bar is not None:
        bar.close()
    return SpeculativeResult(tokens, prompt_len, rows, time.perf_counter() - t_start,
                             draft=f"Jacobi (block {n}{', n-gram pool' if pool else ''})", k=n)


def _pool_guess(tokens: list[int], n: int) -> list[int] | None:
    last = tokens[-1]
    for start in range(len(tokens) - 2, -1, -1):
        if tokens[start] == last:
            cont = tokens[start + 1: start + 1 + n]
            if len(cont) == n:
                return cont
    return None
