"""Medusa: extra heads guess several future tokens at once; one tree-attention pass verifies many guesses.

Instead of a separate draft model, Medusa [Cai et al. 2024] adds ``K`` small heads to the frozen model's last
hidden state; head ``j`` (``j = 1..K``) predicts the token ``j + 1`` places ahead. Each head is a residual
block (``x + SiLU(W x + b)``, initialised to the identity) followed by a copy of the model's output layer,
and only the heads are trained (Medusa-1: the base model is frozen, so its outputs are unchanged).

Taking the top candidates of every head gives many possible continuations. They share prefixes, so they form
a tree: a node's token attends to the cached context, to its ancestors and to itself, never to its siblings.
:func:`tree_forward` runs the decoder's own weights over all tree nodes in **one** pass with that mask
(positions = context length + depth) and :func:`medusa_generate` keeps the longest path whose every token
equals the model's arg-max after its parent, so greedy output is identical to plain greedy decoding.
Introduced in Chapter 7.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_int
from ..session import progress_bar
from .speculative import SpeculativeResult, _bar, _prompt_list

__all__ = [
    "MEDUSA_CHOICES",
    "MedusaHeads",
    "MedusaTree",
    "medusa_generate",
    "train_medusa_heads",
    "tree_forward",
]

#: A small default tree: paths of candidate ranks, (i,) = head 1's i-th guess, (i, j) = then head 2's j-th.
MEDUSA_CHOICES: tuple[tuple[int, ...], ...] = (
    (0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0),
)


class MedusaHeads(nn.Module):
    """``num_heads`` Medusa heads on a decoder: head ``j`` maps the final-normed hidden state of position
    ``t`` to logits for position ``t + j + 1`` (``j = 1..num_heads``). Introduced in Chapter 7 [Cai et al. 2024]."""

    def __init__(self, model: nn.Module, num_heads: int = 3):
        super().__init__()
        num_heads = check_int("num_heads", num_heads)
        h = model.config.hidden_size
        self.num_heads = num_heads
        self.blocks = nn.ModuleList(nn.Linear(h, h) for _ in range(num_heads))
        self.outputs = nn.ModuleList(copy.deepcopy(_plain_head(model)) for _ in range(num_heads))
        with torch.no_grad():
            for b in self.blocks:  # identity at start: each head begins as the model's own next-token head
                b.weight.zero_()
                b.bias.zero_()

    def forward(self, normed_hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[num_heads, ..., V]`` of every head for hidden states ``[..., h]`` (after the final norm)."""
        return torch.stack([out(normed_hidden + F.silu(block(normed_hidden)))
                            for block, out in zip(self.blocks, self.outputs, strict=True)])


def _plain_head(model: nn.Module) -> nn.Linear:
    head = model.lm_head
    lin = nn.Linear(head.weight.shape[1], head.weight.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(head.weight.detach())
    return lin


def train_medusa_heads(
    model: nn.Module,
    tokens: Sequence[int] | torch.Tensor,
    num_heads: int = 3,
    steps: int = 300,
    batch_size: int = 16,
    seq_len: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> tuple[MedusaHeads, pd.DataFrame]:
    """Train Medusa heads on a frozen model for a fixed number of steps (Medusa-1); returns heads and log.

    Each step takes random windows of ``tokens``, runs the frozen model once (no gradient) to get final-normed
    hidden states, and minimises the sum over heads of the cross-entropy of head ``j`` at position ``t``
    against token ``t + j + 1``. AdamW with a cosine schedule; seeded. The log has one row per step with the
    loss and each head's top-1 accuracy. Introduced in Chapter 7 [Cai et al. 2024].
    """
    from ..text import random_batch

    steps = check_int("steps", steps)
    heads = MedusaHeads(model, num_heads)
    k = heads.num_heads
    data = torch.as_tensor(tokens, dtype=torch.long).flatten()
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(int(seed))
    bar = None
    if progress:
        bar = progress_bar(total=steps, desc="training Medusa heads")
    rows = []
    was_training = model.training
    model.eval()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, _ = random_batch(data, batch_size, seq_len + k, gen)
        with torch.no_grad():
            hidden = model.norm(model.hidden_states(x[:, :seq_len])[-1])
        logits = heads(hidden)  # [K, B, T, V]
        loss, accs = 0.0, {}
        for j in range(k):
            target = x[:, j + 2: j + 2 + seq_len]
            usable = target.shape[1]
            lj = logits[j, :, :usable]
            loss = loss + F.cross_entropy(lj.reshape(-1, lj.shape[-1]), target.reshape(-1))
            accs[f"head{j + 1}_acc"] = float((lj.argmax(-1) == target).float().mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rows.append({"step": step + 1, "loss": float(loss.detach()), **accs})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.train(was_training)
    heads.eval()
    return heads, pd.DataFrame(rows)


@dataclass(frozen=True)
class MedusaTree:
    """A candidate tree built from Medusa ``choices`` (paths of candidate ranks, one rank per head).

    Node 0 is the root (the token the model already chose); node ``i > 0`` is ``choices[i - 1]``, sorted so
    that parents come before children. ``parents[i]``, ``depth[i]`` and the boolean ``mask`` ``[N, N]``
    (node ``i`` sees node ``j`` iff ``j`` is ``i`` or one of its ancestors) describe it. Introduced in
    Chapter 7.
    """

    paths: tuple[tuple[int, ...], ...]
    parents: tuple[int, ...]
    depth: tuple[int, ...]

    @classmethod
    def from_choices(cls, choices: Sequence[Sequence[int]] = MEDUSA_CHOICES) -> MedusaTree:
        paths = sorted({tuple(int(r) for r in c) for c in choices}, key=lambda p: (len(p), p))
        if not paths:
            raise ValueError("choices must hold at least one path, e.g. [(0,), (0, 0)]")
        index = {(): 0}
        parents, depth = [-1], [0]
        for i, p in enumerate(paths, start=1):
            if not p or any(r < 0 for r in p):
                raise ValueError(f"each choice is a non-empty tuple of ranks >= 0, got {p}")
            if p[:-1] not in index:
                raise ValueError(f"choice {p} has no parent {p[:-1]} in the tree; add it")
            index[p] = i
            parents.append(index[p[:-1]])
            depth.append(len(p))
        return cls(((), *paths), tuple(parents), tuple(depth))

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depth)

    @property
    def mask(self) -> torch.Tensor:
        n = self.size
        m = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            j = i
            while j >= 0:
                m[i, j] = True
                j = self.parents[j]
        return m

    def children(self, node: int) -> list[int]:
        return [i for i, p in enumerate(self.parents) if p == node]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def tree_forward(model: nn.Module, tokens: torch.Tensor, tree: MedusaTree,
                 cache) -> tuple[torch.Tensor, list, torch.Tensor]:
    """Run the decoder over the nodes of ``tree`` (``tokens`` ``[N]``) in one pass with tree attention.

    Node ``i`` sits at position ``cache.offset + depth[i]`` and attends to the whole cache plus its own
    ancestors. Uses the model's own modules (embedding, norms, projections, RoPE tables, MLPs), so the logits
    at node ``i`` equal those of a plain causal forward over the root-to-``i`` path. The cache is left as it
    was; the per-layer keys/values of every node are returned so the caller can append the accepted ones.
    Returns ``(logits [N, V], [(k, v) per layer], final-normed hidden states [N, h])``. Introduced in Chapter 7 [Cai et al. 2024; Miao et al. 2024].
    """
    if getattr(cache, "keys_before_rope", False):
        raise ValueError("tree_forward needs a cache that stores rotated keys (a plain KVCache)")
    n_before = len(cache)
    depth = torch.tensor(tree.depth)
    pos = cache.offset + depth
    visible = torch.cat([torch.ones(tree.size, n_before, dtype=torch.bool), tree.mask], dim=1)
    x = model.embed_tokens(tokens[None])
    kv = []
    for li, block in enumerate(model.layers):
        attn = block.self_attn
        hN = block.input_layernorm(x)
        b, t, _ = hN.shape
        q = attn.q_proj(hN).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(hN).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(hN).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
        cos, sin = model.rope.tables(pos, hN)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        kv.append((k, v))
        keys, values = cache.update(li, k, v)
        rep = attn.num_heads // attn.num_kv_heads
        if rep > 1:
            keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        x = x + attn.o_proj(out.transpose(1, 2).reshape(b, t, attn.num_heads * attn.head_dim))
        x = x + block.mlp(block.post_attention_layernorm(x))
    cache.crop(n_before)
    normed = model.norm(x)
    return model.lm_head(normed)[0], kv, normed[0]


@torch.inference_mode()
def medusa_generate(
    model: nn.Module,
    heads: MedusaHeads,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    choices: Sequence[Sequence[int]] = MEDUSA_CHOICES,
    progress: bool | None = None,
) -> SpeculativeResult:
    """Greedy Medusa decoding: each pass verifies a whole tree of head guesses and keeps the longest match.

    Invariant: the cache holds every token but the last (the "root", the model's own previous choice). A
    round builds the tree's tokens from the heads' top candidates at the root's parent position, runs
    :func:`tree_forward`, walks down from the root while a child's token equals the arg-max after its parent,
    appends the accepted path's keys/values to the cache and emits those tokens. The output equals plain
    greedy decoding token for token. Introduced in Chapter 7 [Cai et al. 2024].
    """
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=0)
    tree = MedusaTree.from_choices(choices)
    if tree.max_depth > heads.num_heads:
        raise ValueError(f"the tree is {tree.max_depth} deep but there are only {heads.num_heads} Medusa heads")
    tokens = _prompt_list(prompt)
    prompt_len = len(tokens)
    bar = _bar(max_new_tokens, progress, "Medusa decoding")
    rows = []
    t_start = time.perf_counter()
    cache = model.new_cache()
    hidden = model.hidden_states(torch.tensor([tokens]), cache)[-1][0, -1]
    root_logits = model.head(hidden)
    guesses = heads(model.norm(hidden))  # [K, V]
    tokens.append(int(root_logits.argmax()))
    produced = 1
    rows.append({"drafted": 0, "accepted": 0, "emitted": 1, "draft_s": 0.0, "target_s": time.perf_counter() - t_start})
    top = max(max(p) for p in tree.paths[1:]) + 1
    while produced < max_new_tokens:
        t0 = time.perf_counter()
        ranked = guesses.topk(top, dim=-1).indices  # [K, top]
        node_tokens = [tokens[-1]] + [int(ranked[len(p) - 1, p[-1]]) for p in tree.paths[1:]]
        logits, kv, hidden = tree_forward(model, torch.tensor(node_tokens), tree, cache)
        nxt = logits.argmax(-1)
        path = [0]
        while True:
            match = [c for c in tree.children(path[-1]) if node_tokens[c] == int(nxt[path[-1]])]
            if not match:
                break
            path.append(match[0])
        idx = torch.tensor(path)
        for li, (k, v) in enumerate(kv):
            cache.update(li, k[:, :, idx], v[:, :, idx])
        emitted = [node_tokens[i] for i in path[1:]] + [int(nxt[path[-1]])]
        emitted = emitted[: max_new_tokens - produced]
        tokens.extend(emitted)
        produced += len(emitted)
        guesses = heads(hidden[path[-1]])  # the heads read the last accepted node's hidden state
        rows.append({"drafted": tree.size - 1, "accepted": len(path) - 1, "emitted": len(emitted), "draft_s": 0.0,
                     "target_s": time.perf_counter() - t0})
        if bar is not None:
            bar.update(len(emitted))
    if bar is not None:
        bar.close()
    res = SpeculativeResult(tokens, prompt_len, rows, time.perf_counter() - t_start,
                            draft=f"Medusa ({heads.num_heads} heads, {tree.size - 1}-node tree)", k=tree.max_depth)
    return res
