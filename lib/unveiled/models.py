"""The one decoder every chapter runs: a plain-PyTorch LLaMA-style transformer with clean seams.

The architecture is LLaMA's [Touvron et al. 2023]: token embedding, ``num_layers`` pre-norm blocks of
RMSNorm [Zhang & Sennrich 2019] → grouped-query attention [Ainslie et al. 2023] with rotary position
embeddings [Su et al. 2021] → RMSNorm → SwiGLU MLP [Shazeer 2020], a final RMSNorm and a linear head
(optionally tied to the embedding). The tiny character models of :mod:`unveiled.zoo` and SmolLM2-135M
(:mod:`unveiled.smollm2`) are both instances of :class:`Decoder`; only :class:`DecoderConfig` differs.
Everything runs in fp32 on the CPU by default; weights are stored as fp16 safetensors (no pickle).

Seams for later chapters (stable API; change them only with care)
-----------------------------------------------------------------
**Module names (quantized linears, Chapter 3).** Every projection is an ``nn.Linear`` without bias, reachable
by a Hugging Face-style dotted name::

    embed_tokens                                   nn.Embedding [V, h]
    layers.{i}.input_layernorm                     RMSNorm
    layers.{i}.self_attn.{q_proj,k_proj,v_proj,o_proj}
    layers.{i}.post_attention_layernorm            RMSNorm
    layers.{i}.mlp.{gate_proj,up_proj,down_proj}
    norm                                           final RMSNorm
    lm_head                                        nn.Linear [V, h] (shares embed_tokens.weight when tied)

The blocks call these modules only through ``module(x)``, so any ``nn.Module`` mapping ``[..., in]`` to
``[..., out]`` can replace them: :func:`replace_linears` swaps them by a function and a name filter,
:func:`linear_names` lists them. Replacing ``lm_head`` of a tied model unties it (the embedding is kept).

**KV cache (Chapter 6; rollback for Chapter 7).** ``forward(tokens, cache=...)`` accepts any object with
the :class:`CacheProtocol` interface:

* ``update(layer, k, v) -> (keys, values)``: called once per layer and forward with the new keys and
  values ``[B, K, T, d]`` (``K`` = key/value heads, ``d`` = head_dim; keys already rotated by RoPE unless
  ``keys_before_rope`` is set); returns every key/value this layer's queries attend over, ``[B, K, L', d]``,
  **with the ``T`` new entries last** (the causal mask is built from that rule, so evicting caches work);
* ``offset`` (int): the absolute position of the next token, i.e. how many tokens were ever appended. The
  model reads it *before* running the layers to place the new tokens; it may exceed ``len(cache)`` for caches
  that evict (StreamingLLM sinks + window), which typically advance it in ``update(0, ...)``;
* ``__len__``: tokens currently held (by layer 0);
* ``crop(n)``: keep the first ``n`` tokens (``offset`` becomes ``n``; a negative ``n`` drops ``-n`` from the
  end): the rollback speculative decoding needs;
* optional ``keys_before_rope`` (bool, default False): when True the model hands over un-rotated keys and
  rotates the returned keys by their *position in the cache* (0..L'-1) and the queries by L'-T..L'-1, as
  StreamingLLM does [Xiao et al. 2024];
* optional ``observe_attention(layer, weights)``: when present, attention is computed explicitly and the
  softmax weights ``[B, H, T, L']`` are passed to it (for H2O-style eviction [Zhang et al. 2023]).

:class:`KVCache` is the plain full-precision cache (preallocated, grows by doubling, exact crop).

**Positions.** ``forward(tokens, cache, positions=...)`` takes explicit positions (an int offset or a 1-D
tensor of length T); by default they are ``cache.offset + arange(T)`` (or ``arange(T)`` with no cache).

**Early exit and layer access (Chapter 7).** ``forward(tokens, num_layers=k)`` runs only the first ``k`` blocks
and then the final norm and head; :meth:`Decoder.hidden_states` returns the residual stream after the
embedding and after every block (before the final norm); :meth:`Decoder.head` applies norm + lm_head to any of
them. With a cache and ``num_layers=k``, only layers ``< k`` are appended to.

**Verifying several tokens (speculative decoding, Chapter 7).** :meth:`Decoder.verify` scores ``k`` new tokens
against a cache in one pass and returns the logits at all ``k`` positions; after accepting ``a`` of them, call
``cache.crop(n_before + a)`` to roll back the rest.

Introduced in the appendix "The models in this book".
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_int, check_positive, suggest

__all__ = [
    "LINEAR_NAMES",
    "CacheProtocol",
    "Decoder",
    "DecoderConfig",
    "KVCache",
    "linear_names",
    "load_model",
    "replace_linears",
    "save_model",
]

#: The projection names inside a block, in execution order (Hugging Face LLaMA names).
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class DecoderConfig:
    """Shape of a LLaMA-style decoder, in the book's vocabulary (see STYLE: h, n, H, K, d, I, V).

    ``head_dim`` defaults to ``hidden_size // num_heads``; ``max_seq_len`` is the context the model was
    trained for (RoPE tables grow past it on demand, but quality is only measured within it).
    Introduced in the appendix "The models in this book".
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int | None = None
    max_seq_len: int = 256
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                  "max_seq_len"):
            check_int(f, getattr(self, f))
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                    "give head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        check_int("head_dim", self.head_dim)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads} (GQA groups)"
            )
        check_positive("rope_theta", self.rope_theta)
        check_positive("rms_norm_eps", self.rms_norm_eps)
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(f"tie_embeddings must be a bool, got {self.tie_embeddings!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored in safetensors metadata and model cards)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected with close-match suggestions."""
        if not isinstance(data, dict):
            raise TypeError(f"a decoder config must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                close = suggest(key, known)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"unknown decoder config field {key!r}.{hint} Known: {sorted(known)}")
        return cls(**data)

    def to_hf_config(self) -> dict[str, Any]:
        """A Hugging Face ``LlamaForCausalLM`` ``config.json`` dict for this shape (what the analyzer reads)."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "_name_or_path": self.name,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_embeddings,
            "hidden_act": "silu",
            "attention_bias": False,
            "mlp_bias": False,
            "torch_dtype": "float16",
        }

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], name: str = "") -> DecoderConfig:
        """Read the fields of a Hugging Face LLaMA ``config.json`` dict."""
        try:
            return cls(
                vocab_size=cfg["vocab_size"],
                hidden_size=cfg["hidden_size"],
                num_layers=cfg["num_hidden_layers"],
                num_heads=cfg["num_attention_heads"],
                num_kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
                intermediate_size=cfg["intermediate_size"],
                head_dim=cfg.get("head_dim"),
                max_seq_len=cfg.get("max_position_embeddings", 2048),
                rope_theta=float(cfg.get("rope_theta", 10_000.0)),
                rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                name=name or cfg.get("_name_or_path", ""),
            )
        except KeyError as e:
            raise ValueError(f"HF config lacks the field {e.args[0]!r}") from None

    def num_parameters(self) -> int:
        """Parameter count (a tied head is counted once)."""
        h, d = self.hidden_size, self.head_dim
        attn = h * self.num_heads * d * 2 + h * self.num_kv_heads * d * 2
        mlp = 3 * h * self.intermediate_size
        block = attn + mlp + 2 * h
        head = 0 if self.tie_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_layers * block + h + head


# --------------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------------


@runtime_checkable
class CacheProtocol(Protocol):
    """The interface :meth:`Decoder.forward` needs from a KV cache (see the module docstring)."""

    offset: int

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def __len__(self) -> int: ...

    def crop(self, n: int) -> None: ...


class KVCache:
    """The plain KV cache: per layer, keys and values ``[B, K, L, d]`` in preallocated, doubling buffers.

    Keys are stored after RoPE, so decoding a token costs one append per layer and no recomputation
    [Pope et al. 2023]. ``crop(n)`` rolls back to the first ``n`` tokens exactly (later appends overwrite the
    dropped entries). ``nbytes`` counts the bytes held (not the spare capacity). Introduced in the appendix
    "The models in this book"; Chapter 6 builds quantized, paged and evicting caches on the same protocol.
    """

    keys_before_rope = False

    def __init__(self, num_layers: int | None = None):
        self._k: list[torch.Tensor | None] = []
        self._v: list[torch.Tensor | None] = []
        self._len: list[int] = []
        if num_layers is not None:
            check_int("num_layers", num_layers)
            self._grow_layers(num_layers)

    def _grow_layers(self, n: int) -> None:
        while len(self._len) < n:
            self._k.append(None)
            self._v.append(None)
            self._len.append(0)

    @property
    def offset(self) -> int:
        return len(self)

    def __len__(self) -> int:
        return self._len[0] if self._len else 0

    def layer_length(self, layer: int) -> int:
        """Tokens held by one layer (equal across layers except after an early-exit forward)."""
        return self._len[layer] if layer < len(self._len) else 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._grow_layers(layer + 1)
        n, t = self._len[layer], k.shape[2]
        buf_k = self._k[layer]
        if buf_k is None or buf_k.shape[0] != k.shape[0] or n + t > buf_k.shape[2]:
            cap = max(64, 2 ** math.ceil(math.log2(n + t)))
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if n:
                if buf_k is None or buf_k.shape[0] != k.shape[0]:
                    raise ValueError(f"batch size changed from {buf_k.shape[0]} to {k.shape[0]} with a non-empty cache")
                new_k[:, :, :n] = buf_k[:, :, :n]
                new_v[:, :, :n] = self._v[layer][:, :, :n]
            self._k[layer], self._v[layer] = new_k, new_v
        self._k[layer][:, :, n : n + t] = k
        self._v[layer][:, :, n : n + t] = v
        self._len[layer] = n + t
        return self._k[layer][:, :, : n + t], self._v[layer][:, :, : n + t]

    def crop(self, n: int) -> None:
        """Keep the first ``n`` tokens of every layer (``n`` may be negative: drop ``-n`` from the end)."""
        if n < 0:
            n = len(self) + n
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot crop a cache of {len(self)} tokens to {n}")
        self._len = [min(x, n) for x in self._len]

    def keys(self, layer: int) -> torch.Tensor:
        """The keys held by ``layer``, ``[B, K, L, d]`` (a view)."""
        return self._k[layer][:, :, : self._len[layer]]

    def values(self, layer: int) -> torch.Tensor:
        """The values held by ``layer``, ``[B, K, L, d]`` (a view)."""
        return self._v[layer][:, :, : self._len[layer]]

    @property
    def nbytes(self) -> int:
        total = 0
        for i, n in enumerate(self._len):
            if self._k[i] is not None:
                per_token = self._k[i][:, :, :1].numel() * self._k[i].element_size()
                total += 2 * per_token * n
        return total

    def __repr__(self) -> str:
        return f"KVCache(layers={len(self._len)}, tokens={len(self)})"


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned gain and no bias [Zhang & Sennrich 2019]."""

    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding tables in the rotate-half layout (Hugging Face's LLaMA convention).

    Pair ``i`` of a head is ``(x[i], x[i + d/2])`` rotated by angle ``pos * theta**(-2i/d)`` [Su et al. 2021].
    GGUF checkpoints store q/k rows in the interleaved-pair layout; :mod:`unveiled.smollm2` permutes them.
    """

    def __init__(self, head_dim: int, theta: float, max_pos: int):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self._build(max_pos)

    def _build(self, n: int) -> None:
        inv = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim))
        ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        self.cos = ang.cos().float()
        self.sin = ang.sin().float()

    def tables(self, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[T, d]`` at ``positions``, on the device and in the dtype of ``like``."""
        need = int(positions.max()) + 1 if positions.numel() else 0
        if need > self.cos.shape[0]:
            self._build(max(need, 2 * self.cos.shape[0]))
        if self.cos.device != like.device or self.cos.dtype != like.dtype:
            self.cos, self.sin = self.cos.to(like.device, like.dtype), self.sin.to(like.device, like.dtype)
        positions = positions.to(self.cos.device)
        return self.cos[positions], self.sin[positions]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and an optional KV cache [Ainslie et al. 2023]."""

    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h, d = cfg.hidden_size, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)

    def forward(self, x: torch.Tensor, rope: Rotary, positions: torch.Tensor, cache: Any = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        late_rope = cache is not None and getattr(cache, "keys_before_rope", False)
        if not late_rope:
            cos, sin = rope.tables(positions, x)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        n_keys = k.shape[2]
        if late_rope:
            # StreamingLLM: positions are places in the cache, not in the original text.
            cos, sin = rope.tables(torch.arange(n_keys), x)
            k = _rotate(k, cos, sin)
            q = _rotate(q, cos[n_keys - t :], sin[n_keys - t :])
        rep = self.num_heads // self.num_kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        observer = getattr(cache, "observe_attention", None) if cache is not None else None
        # The new tokens are the last t keys; every earlier key is visible to every new query.
        if observer is not None:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if t > 1:
                scores = scores.masked_fill(~_causal_mask(t, n_keys, x.device), float("-inf"))
            weights = scores.softmax(-1)
            observer(self.layer, weights)
            out = weights @ v
        elif t == 1:
            out = F.scaled_dot_product_attention(q, k, v)
        elif n_keys == t:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=_causal_mask(t, n_keys, x.device))
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


def _causal_mask(t: int, n_keys: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[t, n_keys]`` mask: query i sees keys ``j <= n_keys - t + i``."""
    q_idx = torch.arange(t, device=device)[:, None] + (n_keys - t)
    return torch.arange(n_keys, device=device)[None, :] <= q_idx


class MLP(nn.Module):
    """SwiGLU feed-forward block: ``down(silu(gate(x)) * up(x))`` [Shazeer 2020]."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """One pre-norm decoder block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: DecoderConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: Rotary, positions: torch.Tensor, cache: Any = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, positions, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


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


# --------------------------------------------------------------------------------------------------
# Saving and loading (safetensors, no pickle)
# --------------------------------------------------------------------------------------------------


def _state_for_saving(model: Decoder, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    state = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.tied:
            continue  # stored once, as embed_tokens.weight
        state[name] = t.detach().to(dtype).contiguous()
    return state


def save_model(
    model: Decoder, path: str | os.PathLike, dtype: torch.dtype = torch.float16, metadata: dict | None = None
) -> None:
    """Write ``model``'s weights to a safetensors file (fp16 by default) with its config in the metadata.

    Introduced in the appendix "The models in this book".
    """
    from safetensors.torch import save_file

    if not isinstance(model, Decoder):
        raise TypeError(f"model must be a Decoder, got {type(model).__name__}")
    meta = {"config": json.dumps(model.config.to_dict()), "format": "unveiled.Decoder"}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    save_file(_state_for_saving(model, dtype), os.fspath(path), metadata=meta)


def expected_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes a checkpoint of ``config`` must contain."""
    h, d, i = config.hidden_size, config.head_dim, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (config.vocab_size, h), "norm.weight": (h,)}
    for n in range(config.num_layers):
        p = f"layers.{n}."
        shapes |= {
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (config.num_heads * d, h),
            p + "self_attn.k_proj.weight": (config.num_kv_heads * d, h),
            p + "self_attn.v_proj.weight": (config.num_kv_heads * d, h),
            p + "self_attn.o_proj.weight": (h, config.num_heads * d),
            p + "mlp.gate_proj.weight": (i, h),
            p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i),
        }
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    return shapes


def model_from_state(config: DecoderConfig, state: dict[str, torch.Tensor], source: str = "state dict") -> Decoder:
    """Build a :class:`Decoder` from a config and a name → tensor dict, checking every name and shape.

    A mismatch raises a ValueError that names the first missing, unexpected or mis-shaped tensors.
    """
    want = expected_shapes(config)
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    bad = [(k, tuple(state[k].shape), want[k]) for k in want if k in state and tuple(state[k].shape) != want[k]]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected tensors {extra[:4]}{' ...' if len(extra) > 4 else ''}")
        if bad:
            parts.append("wrong shapes " + ", ".join(f"{k}: {got} (config needs {need})" for k, got, need in bad[:3]))
        raise ValueError(f"{source} does not match the config {config.name or config}: " + "; ".join(parts))
    # Build on the meta device (no random init of weights about to be overwritten: seconds for SmolLM2),
    # then adopt the given tensors as parameters.
    with torch.device("meta"):
        model = Decoder(config, seed=None)
    full = {k: v.float().contiguous() for k, v in state.items()}
    if config.tie_embeddings:
        full["lm_head.weight"] = full["embed_tokens.weight"]
    model.load_state_dict(full, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.rope = Rotary(config.head_dim, config.rope_theta, config.max_seq_len)
    return model.eval()


def load_model(path: str | os.PathLike, config: DecoderConfig | None = None) -> Decoder:
    """Load a :class:`Decoder` from a safetensors file written by :func:`save_model` (no pickle involved).

    The config comes from the file's metadata unless given; a checkpoint that does not match it, or a file
    that is not valid safetensors, raises a ValueError saying so. Weights are upcast to fp32.
    Introduced in the appendix "The models in this book".
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint file at {path!r}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as e:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f"{path!r} is not a readable safetensors checkpoint (corrupt or truncated?): {e}") from e
    if config is None:
        if "config" not in meta:
            raise ValueError(f"{path!r} has no config in its metadata; pass config=DecoderConfig(...)")
        config = DecoderConfig.from_dict(json.loads(meta["config"]))
    return model_from_state(config, state, source=f"checkpoint {os.path.basename(path)!r}")
