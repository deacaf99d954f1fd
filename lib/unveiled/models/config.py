"""The shape of the book's decoder: :class:`DecoderConfig`, and the names of its projections.

Introduced in the appendix "The models in this book".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .._validate import check_int, check_positive, suggest

__all__ = ["LINEAR_NAMES", "DecoderConfig"]

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
