"""Model descriptions for the analyzer, read offline from Hugging Face ``config.json`` files.

A :class:`ModelSpec` holds the handful of numbers the cost model needs (widths, heads, layers, vocabulary,
experts, latent ranks) plus the architectural choices that change the operator list: RMSNorm or LayerNorm,
gated or plain MLP, rotary or learned positions, sliding-window attention, mixture of experts, multi-head
latent attention. The book ships the configs of the models it uses under ``data/model_configs/``; any other
``config.json`` can be read with :func:`model_from_hf_config` without network access.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib.resources.abc import Traversable

import pandas as pd

from .._validate import check_int, unknown_name
from ..datafiles import data_file, list_data_files
from .precision import check_bits

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ModelSpec",
    "model_from_hf_config",
    "model_names",
    "model_spec",
]

_CONFIG_DIR = "model_configs"

#: The ``model_type`` values of ``config.json`` that the analyzer understands, with a word on each.
SUPPORTED_MODEL_TYPES: dict[str, str] = {
    "llama": "Llama 1/2/3 (and Llama-style models such as SmolLM2): RMSNorm, SwiGLU, RoPE, GQA",
    "mistral": "Mistral: Llama plus sliding-window attention",
    "mixtral": "Mixtral: Mistral with top-k routed experts",
    "qwen2": "Qwen2 / Qwen2.5: Llama with biases on q/k/v",
    "qwen2_moe": "Qwen1.5-MoE / Qwen2-MoE: routed experts plus a gated shared expert",
    "qwen3": "Qwen3: explicit head_dim, RMSNorm on queries and keys",
    "qwen3_moe": "Qwen3-MoE: Qwen3 with routed experts",
    "gemma": "Gemma: explicit head_dim, GeGLU, tied embeddings, scaled embeddings",
    "opt": "OPT: LayerNorm, plain ReLU MLP, learned positions, biases everywhere",
    "gpt2": "GPT-2: LayerNorm, plain GELU MLP, learned positions, fused qkv with biases",
    "deepseek_v2": "DeepSeek-V2: multi-head latent attention (MLA) and fine-grained experts",
    "deepseek_v3": "DeepSeek-V3: MLA and fine-grained experts with sigmoid routing",
}

_ACT_ALIASES = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "relu": "relu",
}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as the cost model sees it (read it from a ``config.json``).

    Sizes follow the book's vocabulary (``STYLE.md``): ``hidden_size`` h, ``num_layers`` n, ``num_heads`` H,
    ``num_kv_heads`` K, ``head_dim`` d (read from the config, not always h/H), ``intermediate_size`` I,
    ``vocab_size`` V. Mixture-of-experts models add ``num_experts`` E, ``experts_per_token`` k and the
    expert width; multi-head latent attention (MLA) models add the latent ranks. Introduced in Chapter 2.
    """

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    tie_embeddings: bool
    norm: str = "rms"  # "rms" or "layer"
    mlp: str = "gated"  # "gated" (SwiGLU/GeGLU) or "plain"
    activation: str = "silu"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    positions: str = "rope"  # "rope" or "learned"
    position_rows: int = 0  # rows of the learned position table (OPT adds an offset of 2)
    sliding_window: int | None = None
    qk_norm: bool = False
    embed_scale: bool = False
    final_norm: bool = True
    embed_proj_dim: int | None = None  # OPT-350m projects embeddings from this width to hidden_size
    # mixture of experts
    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False
    router_bias: bool = False
    moe_layer_flags: tuple[bool, ...] = ()
    # multi-head latent attention
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    hf_id: str = ""
    config: Mapping = field(default_factory=dict, repr=False, compare=False)

    # ---- structure -------------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        """True for mixture-of-experts models."""
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        """True for multi-head latent attention (DeepSeek-V2/V3)."""
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts."""
        return sum(self.moe_layer_flags) if self.is_moe else 0

    @property
    def num_dense_layers(self) -> int:
        """Layers with an ordinary (dense) MLP."""
        return self.num_layers - self.num_moe_layers

    @property
    def attention_width(self) -> int:
        """Width of the concatenated query heads, H·d (not always the hidden size: Gemma, Qwen3)."""
        return self.num_heads * self.head_dim

    # ---- parameters ------------------------------------------------------------------------------------
    def param_breakdown(self) -> pd.DataFrame:
        """Parameters per component (one row each: ``component``, ``params``, ``count``, ``total``, ``storage``).

        ``count`` is how many times the component occurs (layers, or 1); ``total = params × count``. Tied
        embeddings are counted once. DeepSeek-V3's multi-token-prediction module is not part of the model
        that generates text and is left out. Introduced in Chapter 2.
        """
        return pd.DataFrame(
            [{"component": c, "params": p, "count": n, "total": p * n, "storage": cls}
             for c, p, n, cls in _param_rows_classed(self)]
        )

    def param_count(self) -> int:
        """Total number of parameters (embeddings, all layers, all experts, norms, biases, lm_head)."""
        return int(sum(p * n for _, p, n in _param_rows(self)))

    def active_param_count(self) -> int:
        """Parameters one token touches: all but the routed experts it is not sent to (Chapter 2)."""
        total = self.param_count()
        if not self.is_moe:
            return total
        per_expert = 3 * self.hidden_size * self.expert_intermediate_size
        idle = (self.num_experts - self.experts_per_token) * per_expert * self.num_moe_layers
        return int(total - idle)

    def kv_cache_bytes(self, seq_len: int, batch: int = 1, kv_bits: int = 16) -> float:
        """Bytes of the KV cache for ``batch`` sequences of ``seq_len`` tokens at ``kv_bits`` per element.

        Per token and layer a standard model caches keys and values of its K key/value heads
        (2·K·d elements); an MLA model caches one latent vector plus the rotary key (r + d_rope); a
        sliding-window model keeps at most the last ``sliding_window`` tokens [Jiang et al. 2023].
        Introduced in Chapter 2.
        """
        seq_len = check_int("seq_len", seq_len, minimum=0)
        batch = check_int("batch", batch)
        kv_bits = check_bits("kv_bits", kv_bits)
        tokens = seq_len if self.sliding_window is None else min(seq_len, self.sliding_window)
        return float(batch * tokens * self.kv_elements_per_token * self.num_layers * kv_bits / 8)

    @property
    def kv_elements_per_token(self) -> int:
        """Cached elements per token and layer: 2·K·d, or r + d_rope for MLA."""
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    def with_(self, **changes) -> ModelSpec:
        """A modified copy, e.g. ``m.with_(num_kv_heads=8)`` for a what-if study."""
        return replace(self, **changes)

    def summary(self) -> pd.Series:
        """The main numbers as a Series (for display)."""
        out = {
            "model_type": self.model_type,
            "params_B": self.param_count() / 1e9,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_context": self.max_context,
            "tie_embeddings": self.tie_embeddings,
        }
        if self.sliding_window:
            out["sliding_window"] = self.sliding_window
        if self.is_moe:
            out.update(num_experts=self.num_experts, experts_per_token=self.experts_per_token,
                       expert_intermediate_size=self.expert_intermediate_size,
                       active_params_B=self.active_param_count() / 1e9)
        if self.is_mla:
            out.update(kv_lora_rank=self.kv_lora_rank, q_lora_rank=self.q_lora_rank,
                       qk_rope_head_dim=self.qk_rope_head_dim)
        return pd.Series(out, name=self.name)

    def __repr__(self) -> str:
        extra = ""
        if self.is_moe:
            extra += f", {self.num_experts} experts top-{self.experts_per_token}"
        if self.is_mla:
            extra += f", MLA r={self.kv_lora_rank}"
        if self.sliding_window:
            extra += f", window {self.sliding_window}"
        return (f"ModelSpec({self.name!r}: {self.param_count() / 1e9:.2f} B params, {self.model_type}, "
                f"h={self.hidden_size}, n={self.num_layers}, H={self.num_heads}, K={self.num_kv_heads}, "
                f"d={self.head_dim}{extra})")


def _norm_params(spec: ModelSpec, width: int) -> int:
    return 2 * width if spec.norm == "layer" else width


# Each row: (component, parameters, how many times it occurs, storage class). The storage class decides the
# bits a weight is stored in: "linear" matrices follow w_bits, "embedding" (tables and lm_head) and "other"
# (norms, biases, routers) usually stay in 16 bits in quantized checkpoints.
def _param_rows_classed(s: ModelSpec) -> list[tuple[str, int, int, str]]:
    h, n = s.hidden_size, s.num_layers
    rows: list[tuple[str, int, int, str]] = []
    emb_w = s.embed_proj_dim or h
    rows.append(("embed_tokens", s.vocab_size * emb_w, 1, "embedding"))
    if s.positions == "learned":
        rows.append(("embed_positions", s.position_rows * h, 1, "embedding"))
    if s.embed_proj_dim and s.embed_proj_dim != h:
        rows.append(("project_in", s.embed_proj_dim * h, 1, "linear"))
        rows.append(("project_out", h * s.embed_proj_dim, 1, "linear"))
    rows.append(("attn_norm", _norm_params(s, h), n, "other"))
    rows.append(("mlp_norm", _norm_params(s, h), n, "other"))
    if s.is_mla:
        H, dn, dr, dv, r = s.num_heads, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim, s.kv_lora_rank
        if s.q_lora_rank:
            rows.append(("q_a_proj", h * s.q_lora_rank, n, "linear"))
            rows.append(("q_a_layernorm", s.q_lora_rank, n, "other"))
            rows.append(("q_b_proj", s.q_lora_rank * H * (dn + dr), n, "linear"))
        else:
            rows.append(("q_proj", h * H * (dn + dr), n, "linear"))
        rows.append(("kv_a_proj_with_mqa", h * (r + dr), n, "linear"))
        rows.append(("kv_a_layernorm", r, n, "other"))
        rows.append(("kv_b_proj", r * H * (dn + dv), n, "linear"))
        rows.append(("o_proj", H * dv * h, n, "linear"))
        if s.qkv_bias:
            rows.append(("attention_bias", (s.q_lora_rank or 0) + r + dr, n, "other"))
        if s.o_bias:
            rows.append(("o_bias", h, n, "other"))
    else:
        qo, kv = s.attention_width, s.num_kv_heads * s.head_dim
        rows.append(("q_proj", h * qo, n, "linear"))
        rows.append(("k_proj", h * kv, n, "linear"))
        rows.append(("v_proj", h * kv, n, "linear"))
        rows.append(("o_proj", qo * h, n, "linear"))
        if s.qkv_bias:
            rows.append(("qkv_bias", qo + 2 * kv, n, "other"))
        if s.o_bias:
            rows.append(("o_bias", h, n, "other"))
        if s.qk_norm:
            rows.append(("qk_norm", 2 * s.head_dim, n, "other"))
    nd, nm = s.num_dense_layers, s.num_moe_layers
    if nd:
        inter = s.intermediate_size
        if s.mlp == "gated":
            rows.append(("gate_proj", h * inter, nd, "linear"))
            rows.append(("up_proj", h * inter, nd, "linear"))
            rows.append(("down_proj", inter * h, nd, "linear"))
            if s.mlp_bias:
                rows.append(("mlp_bias", 2 * inter + h, nd, "other"))
        else:
            rows.append(("fc1", h * inter, nd, "linear"))
            rows.append(("fc2", inter * h, nd, "linear"))
            if s.mlp_bias:
                rows.append(("mlp_bias", inter + h, nd, "other"))
    if nm:
        E, Ie = s.num_experts, s.expert_intermediate_size
        rows.append(("router", h * E + (E if s.router_bias else 0), nm, "other"))
        rows.append(("experts", E * 3 * h * Ie, nm, "linear"))
        if s.shared_expert_intermediate_size:
            rows.append(("shared_expert", 3 * h * s.shared_expert_intermediate_size, nm, "linear"))
            if s.shared_expert_gate:
                rows.append(("shared_expert_gate", h, nm, "other"))
    if s.final_norm:
        rows.append(("final_norm", _norm_params(s, h), 1, "other"))
    if not s.tie_embeddings:
        rows.append(("lm_head", emb_w * s.vocab_size, 1, "embedding"))
    return rows


def _param_rows(s: ModelSpec) -> list[tuple[str, int, int]]:
    return [(c, p, n) for c, p, n, _ in _param_rows_classed(s)]


@functools.lru_cache(maxsize=256)
def param_classes(s: ModelSpec) -> dict[str, int]:
    """Parameters per storage class: ``{"linear": ..., "embedding": ..., "other": ...}`` (do not mutate)."""
    out = {"linear": 0, "embedding": 0, "other": 0}
    for _, p, n, cls in _param_rows_classed(s):
        out[cls] += p * n
    return out


# ---- reading config.json ------------------------------------------------------------------------------
def _get(cfg: Mapping, key: str, model_type: str, name: str):
    if key not in cfg or cfg[key] is None:
        raise ValueError(
            f"the config of {name!r} is missing the field {key!r}, which model_type {model_type!r} needs "
            f"(add it to the config.json)"
        )
    return cfg[key]


def _int(cfg: Mapping, key: str, model_type: str, name: str, minimum: int = 1) -> int:
    value = _get(cfg, key, model_type, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"the config of {name!r}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _act(cfg: Mapping, *keys: str, default: str) -> str:
    for k in keys:
        v = cfg.get(k)
        if v:
            return _ACT_ALIASES.get(str(v), "gelu" if "gelu" in str(v) else str(v))
    return default


def _spec_from_config(cfg: Mapping, name: str) -> ModelSpec:
    """Read a parsed ``config.json``: check its ``model_type``, then build the spec of its family.

    GPT-2 and OPT have their own field names; every other supported family is a Llama-style decoder read in
    three steps: the common shape (:func:`_decoder_shape`), the family's attention options
    (:func:`_attention_options`) and its mixture of experts and latent attention (:func:`_moe_fields`).
    """
    mt = _model_type(cfg, name)
    g = functools.partial(_int, cfg, model_type=mt, name=name)
    common: dict = {"name": name, "model_type": mt, "config": dict(cfg), "hf_id": str(cfg.get("_name_or_path", ""))}
    if mt == "gpt2":
        return ModelSpec(**common, **_gpt2_fields(cfg, g))
    if mt == "opt":
        return ModelSpec(**common, **_opt_fields(cfg, g))
    kw = _decoder_shape(cfg, g, mt, name)
    kw.update(_attention_options(cfg, g, mt))
    kw.update(_moe_fields(cfg, g, mt, kw["num_layers"], kw["intermediate_size"]))
    if mt in ("deepseek_v2", "deepseek_v3"):
        kw.update(_mla_fields(cfg, g))
    return ModelSpec(**common, **kw)


def _model_type(cfg: Mapping, name: str) -> str:
    if not isinstance(cfg, Mapping):
        raise TypeError(f"a config must be a dict (the parsed config.json), got {type(cfg).__name__}")
    mt = cfg.get("model_type")
    if mt is None:
        raise ValueError(
            f"the config of {name!r} is missing the field 'model_type'; supported: {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    if mt not in SUPPORTED_MODEL_TYPES:
        raise unknown_name("model_type", mt, SUPPORTED_MODEL_TYPES)
    return mt


def _gpt2_fields(cfg: Mapping, g) -> dict:
    """GPT-2: LayerNorm, a plain GELU MLP of width ``n_inner`` (4h by default), learned positions, biases."""
    h, H = g("n_embd"), g("n_head")
    return dict(
        hidden_size=h, num_layers=g("n_layer"), num_heads=H, num_kv_heads=H, head_dim=h // H,
        intermediate_size=cfg.get("n_inner") or 4 * h, vocab_size=g("vocab_size"), max_context=g("n_positions"),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)), norm="layer", mlp="plain",
        activation=_act(cfg, "activation_function", default="gelu"), qkv_bias=True, o_bias=True, mlp_bias=True,
        positions="learned", position_rows=g("n_positions"),
    )


def _opt_fields(cfg: Mapping, g) -> dict:
    """OPT: LayerNorm, a plain ReLU MLP, learned positions (offset by 2), OPT-350m's embedding projection."""
    h, H = g("hidden_size"), g("num_attention_heads")
    ctx = g("max_position_embeddings")
    bias = bool(cfg.get("enable_bias", True))
    proj = cfg.get("word_embed_proj_dim") or h
    pre_ln = bool(cfg.get("do_layer_norm_before", True))
    return dict(
        hidden_size=h, num_layers=g("num_hidden_layers"), num_heads=H, num_kv_heads=H,
        head_dim=h // H, intermediate_size=g("ffn_dim"), vocab_size=g("vocab_size"), max_context=ctx,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", True)), norm="layer", mlp="plain",
        activation=_act(cfg, "activation_function", default="relu"), qkv_bias=bias, o_bias=bias,
        mlp_bias=bias, positions="learned", position_rows=ctx + 2,
        final_norm=pre_ln and not cfg.get("_remove_final_layer_norm", False),
        embed_proj_dim=proj if proj != h else None,
    )


def _decoder_shape(cfg: Mapping, g, mt: str, name: str) -> dict:
    """Widths, heads, layers, vocabulary and context of a Llama-style decoder (head_dim read, not assumed)."""
    h, H = g("hidden_size"), g("num_attention_heads")
    K = cfg.get("num_key_value_heads") or H
    kw: dict = dict(
        hidden_size=h, num_layers=g("num_hidden_layers"), num_heads=H, num_kv_heads=K,
        head_dim=cfg.get("head_dim") or h // H, intermediate_size=g("intermediate_size"),
        vocab_size=g("vocab_size"), max_context=g("max_position_embeddings"),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", mt == "gemma")),
        activation=_act(cfg, "hidden_activation", "hidden_act", default="silu"),
    )
    if isinstance(kw["head_dim"], bool) or not isinstance(kw["head_dim"], int) or kw["head_dim"] < 1:
        raise ValueError(f"the config of {name!r}: 'head_dim' must be an integer >= 1, got {kw['head_dim']!r}")
    if H % K:
        raise ValueError(f"the config of {name!r}: num_attention_heads={H} is not a multiple of num_key_value_heads={K}")
    return kw


def _attention_options(cfg: Mapping, g, mt: str) -> dict:
    """Biases, sliding windows, query/key norms and Gemma's scaled embeddings, per family."""
    kw: dict = {}
    if mt in ("llama", "mistral", "mixtral"):
        kw["qkv_bias"] = kw["o_bias"] = bool(cfg.get("attention_bias", False))
        kw["mlp_bias"] = bool(cfg.get("mlp_bias", False))
    if mt in ("mistral", "mixtral") and cfg.get("sliding_window"):
        kw["sliding_window"] = int(cfg["sliding_window"])
    if mt in ("qwen2", "qwen2_moe"):
        kw["qkv_bias"] = True
        if cfg.get("use_sliding_window") and cfg.get("sliding_window"):
            # Qwen2 applies the window only to layers at or above max_window_layers; the analyzer models
            # one window for every layer, which is exact when max_window_layers is 0.
            kw["sliding_window"] = int(cfg["sliding_window"])
    if mt in ("qwen3", "qwen3_moe"):
        kw["qk_norm"] = True
        kw["qkv_bias"] = kw["o_bias"] = bool(cfg.get("attention_bias", False))
    if mt == "gemma":
        kw["embed_scale"] = True
        kw["head_dim"] = g("head_dim")
    if mt in ("deepseek_v2", "deepseek_v3"):
        kw["qkv_bias"] = kw["o_bias"] = bool(cfg.get("attention_bias", False))
    return kw


def _moe_fields(cfg: Mapping, g, mt: str, n: int, intermediate_size: int) -> dict:
    """Routed experts (how many, top-k, their width), which layers have them, and any shared expert."""
    if mt == "mixtral":
        return dict(num_experts=g("num_local_experts"), experts_per_token=g("num_experts_per_tok"),
                    expert_intermediate_size=intermediate_size, moe_layer_flags=(True,) * n)
    if mt in ("qwen2_moe", "qwen3_moe"):
        E = g("num_experts")
        step = cfg.get("decoder_sparse_step", 1) or 1
        only = set(cfg.get("mlp_only_layers") or [])
        kw = dict(num_experts=E, experts_per_token=g("num_experts_per_tok"),
                  expert_intermediate_size=g("moe_intermediate_size"),
                  moe_layer_flags=tuple((i not in only) and (E > 0) and ((i + 1) % step == 0) for i in range(n)))
        if mt == "qwen2_moe" and cfg.get("shared_expert_intermediate_size"):
            kw.update(shared_expert_intermediate_size=int(cfg["shared_expert_intermediate_size"]),
                      shared_expert_gate=True)
        return kw
    if mt in ("deepseek_v2", "deepseek_v3"):
        first = cfg.get("first_k_dense_replace", 0) or 0
        freq = cfg.get("moe_layer_freq", 1) or 1
        Ie = g("moe_intermediate_size")
        return dict(
            num_experts=g("n_routed_experts"), experts_per_token=g("num_experts_per_tok"),
            expert_intermediate_size=Ie, moe_layer_flags=tuple(i >= first and i % freq == 0 for i in range(n)),
            shared_expert_intermediate_size=Ie * int(cfg.get("n_shared_experts") or 0),
            router_bias=mt == "deepseek_v3" and cfg.get("topk_method") == "noaux_tc",
        )
    return {}


def _mla_fields(cfg: Mapping, g) -> dict:
    """Multi-head latent attention's ranks and head widths; after decompression every head has its own K/V."""
    q_rank = cfg.get("q_lora_rank")
    nope, rope = g("qk_nope_head_dim"), g("qk_rope_head_dim")
    return dict(q_lora_rank=int(q_rank) if q_rank else None, kv_lora_rank=g("kv_lora_rank"),
                qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=g("v_head_dim"),
                head_dim=nope + rope, num_kv_heads=g("num_attention_heads"))


def model_from_hf_config(config: str | os.PathLike | Mapping | Traversable, name: str | None = None) -> ModelSpec:
    """Read a Hugging Face ``config.json`` (a path, a parsed dict, or a packaged file) into a :class:`ModelSpec`.

    Nothing is downloaded: pass the file (or its contents). The architecture is chosen from ``model_type``
    (see :data:`SUPPORTED_MODEL_TYPES`); a missing required field raises a ValueError that names it.
    Introduced in Chapter 2.
    """
    if isinstance(config, Mapping):
        cfg, default_name = config, str(config.get("_name_or_path") or config.get("model_type") or "custom")
    elif isinstance(config, (str, os.PathLike)):
        path = pathlib.Path(config)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ValueError(f"no config file at {str(path)!r} (pass a config.json path, or a dict)")
        cfg, default_name = json.loads(path.read_text(encoding="utf-8")), path.stem
        if default_name == "config":
            default_name = path.parent.name
    elif isinstance(config, Traversable):
        cfg, default_name = json.loads(config.read_text(encoding="utf-8")), config.name.removesuffix(".json")
    else:
        raise TypeError(f"config must be a path, a dict or a packaged file, got {type(config).__name__}")
    return _spec_from_config(cfg, name or default_name)


def model_names() -> list[str]:
    """Names of the model configs shipped with the book (``data/model_configs/*.json``). Chapter 2."""
    prefix = _CONFIG_DIR + "/"
    return sorted(f[len(prefix):-5] for f in list_data_files() if f.startswith(prefix) and f.endswith(".json"))


@functools.cache
def _shipped(name: str) -> ModelSpec:
    return model_from_hf_config(data_file(f"{_CONFIG_DIR}/{name}.json"), name=name)


def model_spec(name: str | ModelSpec) -> ModelSpec:
    """A shipped model's analyzer description by name, e.g. ``model_spec("llama-2-7b")`` (see :func:`model_names`).

    Names are case-insensitive; a typo raises a ValueError listing close matches. Passing a
    :class:`ModelSpec` returns it unchanged. Introduced in Chapter 2.
    """
    if isinstance(name, ModelSpec):
        return name
    if not isinstance(name, str):
        raise TypeError(f"model must be a name such as 'llama-2-7b' or a ModelSpec, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    names = model_names()
    if key not in names:
        raise unknown_name("model", name, names)
    return _shipped(key)


#: Deprecated alias of :func:`model_spec` (``uv.model`` read like the :mod:`unveiled.models` module); kept so
#: that older notebooks run.
model = model_spec
