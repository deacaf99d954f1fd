"""The decoder itself: :class:`Decoder` (embeddings, blocks, final norm and head; cache, early exit,
verification), and the seam that swaps its linear layers (:func:`replace_linears`).

Introduced in the appendix "The models in this book".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .._validate import check_int, suggest
from .cache import CacheProtocol, KVCache
from .components import Block, RMSNorm, Rotary
from .config import LINEAR_NAMES, DecoderConfig

__all__ = ["Decoder", "linear_names", "replace_linears"]

# --------------------------------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------------------------------


class Decoder(nn.Module):
    """A LLaMA-style decoder-only transformer (see the module docstring for its seams).

    ``Decoder(config)`` builds it with random weights (normal, std 0.02; residual outputs scaled by
    ``1/sqrt(2n)`` as in GPT-2 [Radford et al. 2019]); ``seed`` makes the initialisation reproducible without
    touching the global RNG. Introduced in the appendix "The models in this book".
    """

    def __init__(self, config: DecoderConfig, seed: int | None = 0):
        super().__init__()
        if not isinstance(config, DecoderConfig):
            raise TypeError(f"config must be a DecoderConfig, got {type(config).__name__}")
        self.config = config
        # PyTorch's default init draws from the global RNG; keep that untouched when we re-init from a seed.
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
            self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_layers))
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = Rotary(config.head_dim, config.rope_theta, config.max_seq_len)
        if seed is not None:
            self._init_weights(seed)

    def _init_weights(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(int(seed))
        resid_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                elif name.endswith(("o_proj.weight", "down_proj.weight")):
                    p.normal_(0.0, resid_std, generator=gen)
                else:
                    p.normal_(0.0, 0.02, generator=gen)

    # -- running ----------------------------------------------------------------------------------

    def _positions(self, t: int, cache: Any, positions: int | torch.Tensor | None) -> torch.Tensor:
        if positions is None:
            start = int(cache.offset) if cache is not None else 0
            return torch.arange(start, start + t)
        if isinstance(positions, int):
            return torch.arange(positions, positions + t)
        if not isinstance(positions, torch.Tensor) or positions.dim() != 1 or positions.numel() != t:
            raise ValueError(f"positions must be an int offset or a 1-D tensor of length {t}")
        return positions.long()

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a LongTensor [batch, seq_len], got {type(tokens).__name__}")
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(f"tokens must be an integer tensor [batch, seq_len], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.shape[1] == 0:
            raise ValueError("tokens must hold at least one position")
        return tokens

    def _check_layers(self, num_layers: int | None) -> int:
        n = self.config.num_layers
        if num_layers is None:
            return n
        return check_int("num_layers", num_layers, minimum=0, maximum=n)

    def _run(self, tokens, cache, positions, num_layers, collect: bool):
        tokens = self._check_tokens(tokens)
        k = self._check_layers(num_layers)
        pos = self._positions(tokens.shape[1], cache, positions)
        x = self.embed_tokens(tokens)
        states = [x] if collect else None
        for layer in self.layers[:k]:
            x = layer(x, self.rope, pos, cache)
            if collect:
                states.append(x)
        return x, states

    def forward(
        self,
        tokens: torch.Tensor,
        cache: CacheProtocol | None = None,
        positions: int | torch.Tensor | None = None,
        *,
        num_layers: int | None = None,
    ) -> torch.Tensor:
        """Logits ``[B, T, V]`` for every position of ``tokens`` ``[B, T]`` (a 1-D tensor is one sequence).

        With ``cache``, the new keys/values are appended and the tokens attend to everything held before
        them. ``num_layers=k`` exits early after ``k`` blocks (final norm and head still applied).
        """
        x, _ = self._run(tokens, cache, positions, num_layers, collect=False)
        return self.head(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final RMSNorm then ``lm_head``: logits from any residual-stream state (early exit)."""
        return self.lm_head(self.norm(hidden))

    def hidden_states(
        self,
        tokens: torch.Tensor,
        cache: CacheProtocol | None = None,
        positions: int | torch.Tensor | None = None,
        *,
        num_layers: int | None = None,
    ) -> list[torch.Tensor]:
        """The residual stream ``[B, T, h]`` after the embedding and after each of the first ``num_layers``
        blocks (``num_layers + 1`` tensors, before the final norm). Introduced for Chapter 7's early exits."""
        _, states = self._run(tokens, cache, positions, num_layers, collect=True)
        return states

    def verify(self, tokens: torch.Tensor, cache: CacheProtocol) -> torch.Tensor:
        """Score ``k`` proposed tokens against ``cache`` in one pass: logits ``[B, k, V]``.

        ``logits[:, i]`` is the next-token distribution after ``tokens[:, : i + 1]``. This is the parallel
        verification step of speculative decoding [Leviathan et al. 2023]: accept a prefix of the proposal,
        then ``cache.crop(len_before + accepted)``. Introduced in Chapter 7.
        """
        if cache is None:
            raise ValueError("verify needs the cache that holds the context the proposal continues")
        return self.forward(tokens, cache)

    def new_cache(self) -> KVCache:
        """An empty :class:`KVCache` sized for this model."""
        return KVCache(self.config.num_layers)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied embedding/head counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    @property
    def tied(self) -> bool:
        """Whether ``lm_head`` still shares its weight with ``embed_tokens``."""
        return isinstance(self.lm_head, nn.Linear) and self.lm_head.weight is self.embed_tokens.weight

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, params={self.num_parameters():,}"


# --------------------------------------------------------------------------------------------------
# Linear-layer access (Chapter 3)
# --------------------------------------------------------------------------------------------------


def linear_names(model: nn.Module, include_head: bool = True) -> list[str]:
    """Dotted names of every ``nn.Linear`` in ``model`` (e.g. ``"layers.0.self_attn.q_proj"``, ``"lm_head"``).

    Introduced in Chapter 3.
    """
    return [
        name
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and (include_head or name != "lm_head")
    ]


def replace_linears(
    model: nn.Module,
    fn: Callable[[str, nn.Linear], nn.Module],
    include: Callable[[str], bool] | Iterable[str] | None = None,
) -> list[str]:
    """Replace linear layers in place by ``fn(name, linear)`` and return the replaced names.

    ``include`` selects layers: ``None`` means every block projection but not ``lm_head`` (the usual
    weight-quantization scope, e.g. GPTQ [Frantar et al. 2023]); an iterable of names or suffixes such as
    ``["q_proj", "lm_head"]``; or a predicate on the dotted name. Replacing ``lm_head`` unties it.
    Introduced in Chapter 3.
    """
    if not callable(fn):
        raise TypeError("fn must be callable as fn(name, linear) -> nn.Module")
    names = linear_names(model)
    if include is None:
        def select(n: str) -> bool:
            return n != "lm_head"
    elif callable(include):
        select = include
    else:
        wanted = [include] if isinstance(include, str) else list(include)
        known = set(LINEAR_NAMES) | {"lm_head"} | set(names)
        for w in wanted:
            if not any(n == w or n.endswith("." + w) for n in names):
                close = suggest(w, known)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"no linear layer matches {w!r}.{hint} Names look like {names[:3]}")

        def select(n: str) -> bool:
            return any(n == w or n.endswith("." + w) for w in wanted)

    done = []
    for name in names:
        if not select(name):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        new = fn(name, getattr(parent, attr))
        if not isinstance(new, nn.Module):
            raise TypeError(f"fn must return an nn.Module, got {type(new).__name__} for {name}")
        setattr(parent, attr, new)
        done.append(name)
    return done
