"""Quantization for parameter-efficient fine-tuning (Q-PEFT): LoRA adapters on a frozen low-bit model.

LoRA [Hu et al. 2022] freezes a weight ``W`` and learns a low-rank correction ``(α/r)·B A`` (``A`` is
``r × in``, ``B`` is ``out × r``, ``B`` starts at zero so training starts from the base model). QLoRA
[Dettmers et al. 2023] keeps the frozen base in 4 bits, so the memory of fine-tuning is dominated by the
small adapters; LoftQ and LQ-LoRA [Li et al. 2023; Guo et al. 2023] go further and choose the adapters to
absorb part of the quantization error. Here the base is any model from :func:`unveiled.quant.quantize_model`
(fake-quantized weights, frozen) and :func:`lora_finetune` trains only the adapters, by a fixed number of
seeded steps. Introduced in Chapter 3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_int, check_positive
from ..models import Decoder
from .layers import QuantLinear, _check_model

__all__ = ["LoRALinear", "add_lora", "lora_finetune", "lora_parameters"]


class LoRALinear(nn.Module):
    """``base(x) + (alpha/rank)·(x Aᵀ) Bᵀ`` with a frozen ``base`` and trainable ``A``, ``B`` (``B = 0`` at start).

    Introduced in Chapter 3.
    """

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0, seed: int = 0):
        super().__init__()
        rank = check_int("rank", rank)
        alpha = check_positive("alpha", alpha)
        out_f, in_f = base.weight.shape
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        gen = torch.Generator().manual_seed(int(seed))
        self.lora_a = nn.Parameter(torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f))
        self.lora_b = nn.Parameter(torch.zeros(out_f, rank))
        self.scale = alpha / rank

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``W + (α/r)·B A`` (what a merged adapter would store)."""
        return self.base.weight + self.scale * (self.lora_b @ self.lora_a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)


def add_lora(model: Decoder, rank: int = 8, alpha: float = 16.0, seed: int = 0) -> list[str]:
    """Wrap every block projection (quantized or not) in :class:`LoRALinear`, in place; freeze the rest.

    Returns the wrapped names. Introduced in Chapter 3.
    """
    model = _check_model(model)
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear)) and n != "lm_head"]
    for i, name in enumerate(names):
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha, seed + i))
    return names


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable adapter parameters of a model prepared with :func:`add_lora`. Introduced in Chapter 3."""
    return [p for n, p in model.named_parameters() if n.endswith(("lora_a", "lora_b"))]


def lora_finetune(model: Decoder, tokens: Sequence[int] | torch.Tensor, *, steps: int = 50, batch_size: int = 8,
                  seq_len: int = 128, lr: float = 2e-3, seed: int = 0) -> pd.DataFrame:
    """Train only the LoRA adapters of ``model`` on next-token prediction over ``tokens`` for ``steps`` steps.

    Batches are seeded random windows (:func:`unveiled.text.training_batches`); AdamW at a constant ``lr``.
    Returns the log (``step``, ``loss`` in nats/token). Introduced in Chapter 3.
    """
    from ..text import training_batches

    model = _check_model(model)
    steps = check_int("steps", steps)
    params = lora_parameters(model)
    if not params:
        raise ValueError("the model has no LoRA adapters: call add_lora(model) first")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    batches = training_batches(tokens, batch_size, seq_len, seed=seed)
    rows = []
    model.train()
    for step in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rows.append({"step": step, "loss": float(loss.detach())})
    model.eval()
    return pd.DataFrame(rows)
