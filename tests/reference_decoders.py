"""Small reference PyTorch decoders, built from a raw Hugging Face ``config.json`` dict, for validating the
analyzer: their parameters mirror the Hugging Face modules (names and shapes), and their forward passes do
the matrix products an eager implementation does, so ``FlopCounterMode`` can count them on the ``meta``
device without allocating memory.

They are deliberately independent of ``unveiled`` (they read the dict themselves) and of the book's own
decoder (``unveiled.models``). Attention is written with explicit matmuls inside tiny modules named
``qk_matmul`` and ``sv_matmul`` so the counts can be attributed to the analyzer's operators. Routing in the
mixture-of-experts block is a fixed round-robin assignment (token t goes to experts (t·k + j) mod E): the
FLOPs of the experts depend only on the number of token-expert pairs, not on which expert gets which token,
and data-dependent routing cannot run on ``meta`` tensors anyway.
"""

from __future__ import annotations

import torch
from torch import nn

META = torch.device("meta")


def _lin(i, o, bias=False):
    return nn.Linear(i, o, bias=bias, device=META)


class MatMul(nn.Module):
    """A named matrix product, so FlopCounterMode attributes its FLOPs to this module."""

    def forward(self, a, b):
        return torch.matmul(a, b)


class RMSNorm(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(width, device=META))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def _norm(cfg, width):
    if cfg["model_type"] in ("opt", "gpt2"):
        return nn.LayerNorm(width, device=META)
    return RMSNorm(width)


def _act(cfg):
    name = cfg.get("hidden_activation") or cfg.get("hidden_act") or cfg.get("activation_function") or "silu"
    return {"silu": nn.SiLU(), "relu": nn.ReLU()}.get(name, nn.GELU(approximate="tanh"))


class GatedMLP(nn.Module):
    def __init__(self, cfg, h, inter, bias=False):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = _lin(h, inter, bias), _lin(h, inter, bias), _lin(inter, h, bias)
        self.act = _act(cfg)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class PlainMLP(nn.Module):
    def __init__(self, cfg, h, inter):
        super().__init__()
        self.fc1, self.fc2 = _lin(h, inter, True), _lin(inter, h, True)
        self.act = _act(cfg)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class BankedLinear(nn.Module):
    """The same projection for E experts: a weight of shape (E, out, in). ``forward(x, experts)`` applies
    expert ``experts[g]`` to the rows ``x[g]`` (x of shape (G, rows, in)): one batched product per group."""

    def __init__(self, experts, i, o):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, o, i, device=META))

    def forward(self, x, experts):
        return torch.bmm(x, self.weight[list(experts)].transpose(1, 2))


class Experts(nn.Module):
    def __init__(self, cfg, experts, h, inter):
        super().__init__()
        self.gate_proj = BankedLinear(experts, h, inter)
        self.up_proj = BankedLinear(experts, h, inter)
        self.down_proj = BankedLinear(experts, inter, h)
        self.act = _act(cfg)

    def forward(self, x, e):
        return self.down_proj(self.act(self.gate_proj(x, e)) * self.up_proj(x, e), e)


class MoE(nn.Module):
    def __init__(self, cfg, h):
        super().__init__()
        mt = cfg["model_type"]
        self.E = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts")
        self.k = cfg["num_experts_per_tok"]
        inter = cfg["intermediate_size"] if mt == "mixtral" else cfg["moe_intermediate_size"]
        self.router = _lin(h, self.E)
        if mt == "deepseek_v3" and cfg.get("topk_method") == "noaux_tc":
            self.e_score_correction_bias = nn.Parameter(torch.empty(self.E, device=META))
        self.experts = Experts(cfg, self.E, h, inter)
        shared = 0
        if mt == "qwen2_moe":
            shared = cfg.get("shared_expert_intermediate_size") or 0
        elif mt.startswith("deepseek"):
            shared = (cfg.get("n_shared_experts") or 0) * inter
        self.shared_expert = GatedMLP(cfg, h, shared) if shared else None
        self.shared_expert_gate = _lin(h, 1) if (shared and mt == "qwen2_moe") else None

    def forward(self, x):
        B, T, h = x.shape
        flat = x.reshape(B * T, h)
        self.router(flat)
        out = torch.zeros_like(flat)
        counts = [0] * self.E
        for t in range(B * T):
            for j in range(self.k):
                counts[(t * self.k + j) % self.E] += 1
        # experts that received the same number of tokens run as one batched product
        for n in sorted(set(counts) - {0}):
            group = [e for e, c in enumerate(counts) if c == n]
            idx = torch.empty(len(group) * n, dtype=torch.long, device=flat.device)
            y = self.experts(torch.index_select(flat, 0, idx).view(len(group), n, h), group)
            out = out.index_add(0, idx, y.reshape(len(group) * n, h))
        if self.shared_expert is not None:
            s = self.shared_expert(flat)
            if self.shared_expert_gate is not None:
                s = torch.sigmoid(self.shared_expert_gate(flat)) * s
            out = out + s
        return out.reshape(B, T, h)


class Attention(nn.Module):
    """Multi-head / grouped-query attention with an explicit KV cache (K/V of shape (B, K, S, d))."""

    def __init__(self, cfg, h, H, K, d, bias, o_bias):
        super().__init__()
        self.H, self.K, self.d = H, K, d
        self.q_proj, self.k_proj, self.v_proj = _lin(h, H * d, bias), _lin(h, K * d, bias), _lin(h, K * d, bias)
        self.o_proj = _lin(H * d, h, o_bias)
        if cfg["model_type"] in ("qwen3", "qwen3_moe"):
            self.q_norm, self.k_norm = RMSNorm(d), RMSNorm(d)
        self.qk_matmul, self.sv_matmul = MatMul(), MatMul()

    def forward(self, x, cache_len=0):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.d).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.K, self.d).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.K, self.d).transpose(1, 2)
        if cache_len:
            k = torch.cat([torch.empty(B, self.K, cache_len, self.d, device=x.device), k], dim=2)
            v = torch.cat([torch.empty(B, self.K, cache_len, self.d, device=x.device), v], dim=2)
        rep = self.H // self.K
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        p = torch.softmax(self.qk_matmul(q, k.transpose(-1, -2)), dim=-1)
        o = self.sv_matmul(p, v)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.H * self.d))


class Absorb(nn.Module):
    """A per-head product with a slice of kv_b_proj's weight (MLA's absorbed up-projections)."""

    def forward(self, x, w):
        return torch.einsum("bhi,hio->bho", x, w)


class MLAttention(nn.Module):
    """DeepSeek multi-head latent attention: prefill decompresses K/V with kv_b_proj; decode absorbs the
    up-projections and attends over the latent cache (c_kv and the rotary key), as FlashMLA does."""

    def __init__(self, cfg, h, H):
        super().__init__()
        self.H, self.r = H, cfg["kv_lora_rank"]
        self.dn, self.dr, self.dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        bias = bool(cfg.get("attention_bias", False))
        rq = cfg.get("q_lora_rank")
        if rq:
            self.q_a_proj, self.q_a_layernorm = _lin(h, rq, bias), RMSNorm(rq)
            self.q_b_proj = _lin(rq, H * (self.dn + self.dr))
        else:
            self.q_proj = _lin(h, H * (self.dn + self.dr))
        self.kv_a_proj_with_mqa = _lin(h, self.r + self.dr, bias)
        self.kv_a_layernorm = RMSNorm(self.r)
        self.kv_b_proj = _lin(self.r, H * (self.dn + self.dv))
        self.o_proj = _lin(H * self.dv, h, bias)
        self.qk_matmul, self.sv_matmul = MatMul(), MatMul()
        self.q_absorb, self.o_absorb = Absorb(), Absorb()

    def forward(self, x, cache_len=0, decode=False):
        B, T, _ = x.shape
        H, r, dn, dr, dv = self.H, self.r, self.dn, self.dr, self.dv
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if hasattr(self, "q_a_proj") else self.q_proj(x)
        q = q.view(B, T, H, dn + dr).transpose(1, 2)
        kv = self.kv_a_proj_with_mqa(x)
        c_kv, k_pe = self.kv_a_layernorm(kv[..., :r]), kv[..., r:]
        if not decode:
            kvb = self.kv_b_proj(c_kv).view(B, T, H, dn + dv).transpose(1, 2)
            k = torch.cat([kvb[..., :dn], k_pe.unsqueeze(1).expand(B, H, T, dr)], dim=-1)
            p = torch.softmax(self.qk_matmul(q, k.transpose(-1, -2)), dim=-1)
            o = self.sv_matmul(p, kvb[..., dn:])
            return self.o_proj(o.transpose(1, 2).reshape(B, T, H * dv))
        assert T == 1
        w = self.kv_b_proj.weight.view(H, dn + dv, r)
        c_all = torch.cat([torch.empty(B, cache_len, r, device=x.device), c_kv], dim=1)  # (B, S, r)
        pe_all = torch.cat([torch.empty(B, cache_len, dr, device=x.device), k_pe], dim=1)
        q_lat = self.q_absorb(q[:, :, 0, :dn], w[:, :dn, :])  # (B, H, r)
        latent_k = torch.cat([c_all, pe_all], dim=-1).unsqueeze(1)  # (B, 1, S, r + dr)
        q_full = torch.cat([q_lat, q[:, :, 0, dn:]], dim=-1).unsqueeze(2)  # (B, H, 1, r + dr)
        p = torch.softmax(self.qk_matmul(q_full, latent_k.transpose(-1, -2)), dim=-1)  # (B, H, 1, S)
        o_lat = self.sv_matmul(p, c_all.unsqueeze(1))[:, :, 0]  # (B, H, r)
        o = self.o_absorb(o_lat, w[:, dn:, :].transpose(1, 2))  # (B, H, dv)
        return self.o_proj(o.reshape(B, 1, H * dv))


class Layer(nn.Module):
    def __init__(self, cfg, i, dims):
        super().__init__()
        h, H, K, d, inter = dims
        mt = cfg["model_type"]
        self.input_layernorm, self.post_attention_layernorm = _norm(cfg, h), _norm(cfg, h)
        if "kv_lora_rank" in cfg:
            self.self_attn = MLAttention(cfg, h, H)
        else:
            bias = mt in ("qwen2", "qwen2_moe", "opt", "gpt2") or bool(cfg.get("attention_bias", False))
            o_bias = mt in ("opt", "gpt2") or (mt not in ("qwen2", "qwen2_moe") and bool(cfg.get("attention_bias")))
            self.self_attn = Attention(cfg, h, H, K, d, bias, o_bias)
        if _is_moe_layer(cfg, i):
            self.mlp = MoE(cfg, h)
        elif mt in ("opt", "gpt2"):
            self.mlp = PlainMLP(cfg, h, inter)
        else:
            self.mlp = GatedMLP(cfg, h, inter, bool(cfg.get("mlp_bias", False)))

    def forward(self, x, cache_len=0, decode=False):
        kw = {"decode": decode} if isinstance(self.self_attn, MLAttention) else {}
        x = x + self.self_attn(self.input_layernorm(x), cache_len, **kw)
        return x + self.mlp(self.post_attention_layernorm(x))


def _is_moe_layer(cfg, i) -> bool:
    mt = cfg["model_type"]
    if mt == "mixtral":
        return True
    if mt in ("qwen2_moe", "qwen3_moe"):
        step = cfg.get("decoder_sparse_step", 1) or 1
        return i not in (cfg.get("mlp_only_layers") or []) and (i + 1) % step == 0
    if mt.startswith("deepseek"):
        return i >= (cfg.get("first_k_dense_replace") or 0) and i % (cfg.get("moe_layer_freq") or 1) == 0
    return False


class RefDecoder(nn.Module):
    """A decoder-only transformer built from a config.json dict, on the meta device."""

    def __init__(self, cfg: dict):
        super().__init__()
        mt = cfg["model_type"]
        self.cfg = cfg
        if mt == "gpt2":
            h, H, n, V, ctx = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
            K, d, inter = H, h // H, cfg.get("n_inner") or 4 * h
        else:
            h, H, n, V = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"], cfg["vocab_size"]
            K = cfg.get("num_key_value_heads") or H
            d = cfg.get("head_dim") or h // H
            inter = cfg["ffn_dim"] if mt == "opt" else cfg["intermediate_size"]
            ctx = cfg.get("max_position_embeddings")
        proj = cfg.get("word_embed_proj_dim") or h if mt == "opt" else h
        self.embed_tokens = nn.Embedding(V, proj, device=META)
        if mt in ("opt", "gpt2"):
            self.embed_positions = nn.Embedding(ctx + (2 if mt == "opt" else 0), h, device=META)
        if proj != h:
            self.project_in, self.project_out = _lin(proj, h), _lin(h, proj)
        self.layers = nn.ModuleList(Layer(cfg, i, (h, H, K, d, inter)) for i in range(n))
        pre_ln = cfg.get("do_layer_norm_before", True) and not cfg.get("_remove_final_layer_norm", False)
        self.norm = _norm(cfg, h) if pre_ln or mt != "opt" else None
        tied = cfg.get("tie_word_embeddings", mt in ("gemma", "opt", "gpt2"))
        self.lm_head = None if tied else _lin(proj, V)
        self.head = MatMul()

    def forward(self, tokens: torch.Tensor, cache_len: int = 0, decode: bool = False, logits: str = "all"):
        """Prefill (``decode=False``): all positions of ``tokens``. Decode: one new token per sequence after a
        KV cache of ``cache_len`` tokens. ``logits``: "all" positions or the "last" one (decode: last)."""
        x = self.embed_tokens(tokens)
        if hasattr(self, "project_in"):
            x = self.project_in(x)
        if hasattr(self, "embed_positions"):
            x = x + self.embed_positions(torch.zeros_like(tokens))
        for layer in self.layers:
            x = layer(x, cache_len, decode)
        if self.norm is not None:
            x = self.norm(x)
        if hasattr(self, "project_out"):
            x = self.project_out(x)
        if logits == "last" or decode:
            x = x[:, -1:]
        if self.lm_head is not None:
            return self.lm_head(x)
        return self.head(x, self.embed_tokens.weight.t())
