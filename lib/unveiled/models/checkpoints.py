"""The decoder's weights on disk: fp16 safetensors with the config in the metadata (no pickle), loaded
with every shape checked against the config.

Introduced in the appendix "The models in this book".
"""

from __future__ import annotations

import json
import os

import torch

from .components import Rotary
from .config import DecoderConfig
from .decoder import Decoder

__all__ = ["expected_shapes", "load_model", "model_from_state", "save_model"]

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
