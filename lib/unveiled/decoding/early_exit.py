"""Early exit: stop running layers for a token once an intermediate prediction is confident (CALM-style).

Some tokens are easy: their prediction is settled long before the last layer [Geva et al. 2022]. Early-exit
decoding applies the model's own final norm and output layer (the *shared head*) to the hidden state after
each block and stops as soon as a confidence measure passes a threshold ``λ`` [Schuster et al. 2022; CALM].
The measure here is CALM's *softmax response*: the gap between the top-1 and top-2 probabilities. The
blocks a token skips still owe a key and value to later tokens; CALM copies the exit hidden state upward
("state propagation") and computes the skipped blocks' keys/values from it, which is what
:func:`early_exit_generate` does, so the KV cache keeps its full shape.

``λ > 1`` never exits (exactly the full model); ``λ <= 0`` always exits after ``min_layers``. Between them,
the chapter measures the trade: average layers run vs agreement with the full model. Each skipped layer
skips its weights, so on the roofline the decode time falls in proportion (survey §4.1.4). Introduced in
Chapter 7.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pandas as pd
import torch

from .._validate import check_int, check_number
from .medusa import _rotate
from .speculative import SpeculativeResult, _bar, _prompt_list

__all__ = ["early_exit_generate", "layer_agreement", "softmax_response"]


def softmax_response(logits: torch.Tensor) -> torch.Tensor:
    """CALM's confidence: top-1 minus top-2 probability of ``softmax(logits)``, in [0, 1]. Chapter 7."""
    top2 = logits.float().softmax(-1).topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


@torch.inference_mode()
def layer_agreement(model, tokens: Sequence[int] | torch.Tensor, window: int = 128) -> pd.DataFrame:
    """Teacher-forced, per layer: how often the shared head's arg-max after that layer equals the final one,
    and the mean confidence (softmax response). One row per layer ``1..n``. Introduced in Chapter 7."""
    window = check_int("window", window, minimum=2)
    data = torch.as_tensor(tokens, dtype=torch.long).flatten()
    n = (len(data) // window) * window
    if n == 0:
        raise ValueError(f"need at least window = {window} tokens")
    x = data[:n].reshape(-1, window)
    states = model.hidden_states(x)
    final = model.head(states[-1]).argmax(-1)
    rows = []
    for layer in range(1, len(states)):
        logits = model.head(states[layer])
        rows.append({"layer": layer, "agreement": float((logits.argmax(-1) == final).float().mean()),
                     "confidence": float(softmax_response(logits).mean())})
    return pd.DataFrame(rows)


def _propagate_kv(model, block_index: int, x: torch.Tensor, pos: torch.Tensor, cache) -> None:
    """Append block ``block_index``'s keys/values computed from hidden state ``x`` (CALM state propagation)."""
    block = model.layers[block_index]
    attn = block.self_attn
    h = block.input_layernorm(x)
    b, t, _ = h.shape
    k = attn.k_proj(h).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    cos, sin = model.rope.tables(pos, h)
    cache.update(block_index, _rotate(k, cos, sin), v)


@torch.inference_mode()
def early_exit_generate(
    model,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    threshold: float,
    min_layers: int = 1,
    progress: bool | None = None,
) -> SpeculativeResult:
    """Greedy decoding that exits each token's forward pass at the first block whose softmax response
    reaches ``threshold``; skipped blocks get keys/values from the exit state. ``result.extra["exit_layers"]``
    lists the blocks run per generated token (the prompt always runs every block). Introduced in Chapter 7
    [Schuster et al. 2022]."""
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=0)
    threshold = check_number("threshold", threshold)
    n = model.config.num_layers
    min_layers = check_int("min_layers", min_layers, maximum=n)
    tokens = _prompt_list(prompt)
    prompt_len = len(tokens)
    bar = _bar(max_new_tokens, progress, f"early exit (λ={threshold:g})")
    rows, exits = [], []
    t_start = time.perf_counter()
    cache = model.new_cache()
    logits = model(torch.tensor([tokens]), cache)[0, -1]
    for step in range(max_new_tokens):
        t0 = time.perf_counter()
        tokens.append(int(logits.argmax()))
        if step == max_new_tokens - 1:
            rows.append({"drafted": 0, "accepted": 0, "emitted": 1, "draft_s": 0.0,
                         "target_s": time.perf_counter() - t0})
            break
        pos = torch.tensor([cache.offset])
        x = model.embed_tokens(torch.tensor([[tokens[-1]]]))
        used = n
        for i, block in enumerate(model.layers):
            x = block(x, model.rope, pos, cache)
            if i + 1 >= min_layers and i + 1 < n:
                logits = model.head(x)[0, -1]
                if float(softmax_response(logits)) >= threshold:
                    used = i + 1
                    for j in range(i + 1, n):
                        _propagate_kv(model, j, x, pos, cache)
                    break
        if used == n:
            logits = model.head(x)[0, -1]
        exits.append(used)
        rows.append({"drafted": 0, "accepted": 0, "emitted": 1, "draft_s": 0.0, "target_s": time.perf_counter() - t0})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    res = SpeculativeResult(tokens, prompt_len, rows, time.perf_counter() - t_start,
                            draft=f"early exit (λ={threshold:g})", k=0)
    res.extra["exit_layers"] = exits
    res.extra["mean_layers"] = float(sum(exits) / len(exits)) if exits else float(n)
    return res
