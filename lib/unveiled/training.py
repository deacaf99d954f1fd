"""The book's one training recipe: AdamW, a warm-up then cosine learning rate, gradient clipping, fixed steps.

Every model the book trains follows it: the tiny models of the zoo (appendix "The models in this book"), the
distilled students of Chapter 4 and the SmolLM2 draft of Chapter 7. :class:`TrainingRecipe` holds its
settings, which each training loop's own settings extend (batch shape, loss mix, ...).
:func:`make_optimizer` builds AdamW [Loshchilov & Hutter 2019] with weight decay on matrices only (not on
norms and biases); :func:`lr_at` gives the learning rate of a step, a linear warm-up then a cosine decay to a
floor; :func:`optimizer_step` applies one update: set the rate, back-propagate, clip the gradient norm
[Pascanu et al. 2013] and step. Runs are counted in steps and seeded, so a run is reproducible on a given
machine and thread count. Introduced in the appendix "The models in this book".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._validate import check_int, check_number, check_positive

__all__ = ["TrainingRecipe", "lr_at", "make_optimizer", "optimizer_step"]


@dataclass(frozen=True, kw_only=True)
class TrainingRecipe:
    """Steps, peak learning rate and schedule, AdamW's betas and weight decay, gradient clipping, seed.

    The schedule warms up linearly over ``warmup_fraction`` of the steps, then decays along a cosine to
    ``min_lr_ratio`` of the peak ``lr``. Fields are keyword-only, so a training loop's settings can extend
    the recipe with fields of their own. Introduced in the appendix "The models in this book".
    """

    steps: int
    lr: float = 3e-3
    warmup_fraction: float = 0.03
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_positive("lr", self.lr)
        check_positive("grad_clip", self.grad_clip)
        for name in ("warmup_fraction", "min_lr_ratio", "weight_decay"):
            check_number(name, getattr(self, name))
        for name in ("warmup_fraction", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        check_int("seed", self.seed, minimum=0)

    def lr_at(self, step: int) -> float:
        """The learning rate at 0-based ``step`` (see :func:`lr_at`)."""
        return lr_at(step, self)


def lr_at(step: int, recipe: TrainingRecipe) -> float:
    """Learning rate at 0-based ``step``: linear warm-up over ``warmup_fraction`` of the steps (3 % by default),
    then cosine decay to ``min_lr_ratio`` of the peak (10 %). Introduced in the appendix "The models in this book".
    """
    warm = max(1, round(recipe.warmup_fraction * recipe.steps))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    frac = (step - warm) / max(1, recipe.steps - warm)
    floor = recipe.lr * recipe.min_lr_ratio
    return floor + 0.5 * (recipe.lr - floor) * (1 + math.cos(math.pi * min(1.0, frac)))


def make_optimizer(model: torch.nn.Module, recipe: TrainingRecipe) -> torch.optim.Optimizer:
    """AdamW over ``model``'s parameters: weight decay on matrices (2-D and up), none on vectors.

    A parameter shared by two modules (tied embeddings) is optimised once. ``foreach=False`` keeps the update
    order, hence the rounding, the same on every machine.
    """
    params = list({id(p): p for p in model.parameters()}.values())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, foreach=False)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   recipe: TrainingRecipe, step: int) -> float:
    """One update at 0-based ``step``: the scheduled learning rate, ``loss.backward()``, gradient-norm
    clipping to ``grad_clip``, ``optimizer.step()``. Returns the learning rate used."""
    lr = lr_at(step, recipe)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    optimizer.step()
    return lr
