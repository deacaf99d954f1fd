"""The parts of a pre-norm LLaMA block: RMSNorm, rotary positions, grouped-query attention over a cache,
the SwiGLU MLP, and the block that chains them.

Introduced in the appendix "The models in this book".
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import DecoderConfig

__all__ = ["MLP", "Attention", "Block", "RMSNorm", "Rotary"]

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
