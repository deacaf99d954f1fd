"""Divergences between a teacher's and a student's next-token distributions, the losses of distillation.

The **forward KL** KL(p‖q) (word-level KD [Kim & Rush 2016]) makes the student cover every token the teacher
likes (*mode covering*); the **reverse KL** KL(q‖p) (MiniLLM [Gu et al. 2024]) makes it put its mass where
the teacher is sure (*mode seeking*); the **generalized Jensen-Shannon divergence** JSD_β of GKD
[Agarwal et al. 2024] interpolates between them; the **total variation** TV(p, q) is what speculative
decoding's acceptance rate measures (α = 1 − TV), so DistillSpec [Zhou et al. 2024] trains drafts with it.
Each loss takes the teacher's logits or a cached top-k summary (:class:`TopKTargets`), and
:func:`bimodal_fit` shows on one picture what the divergences do. The conventions are in the package's
docstring (:mod:`unveiled.distill`). Introduced in Chapter 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .._validate import check_choice, check_int, check_number, unknown_name

__all__ = [
    "LOSSES",
    "TopKTargets",
    "bimodal_fit",
    "distillation_loss",
    "forward_kl",
    "generalized_jsd",
    "reverse_kl",
    "topk_targets",
    "total_variation",
]

#: The divergences :func:`distillation_loss` and :func:`distill` accept, by name.
LOSSES = ("forward_kl", "reverse_kl", "jsd", "tv")

# Finite stand-in for log(0) in the tail bucket when the top-k already covers the whole vocabulary: exp of it
# is exactly 0 in float32/64, and unlike -inf it keeps gradients free of NaN.
_LOG_ZERO = -1e9


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _check_temperature(temperature: float) -> float:
    temperature = check_number("temperature", temperature)
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 (it divides the logits), got {temperature}; use 1.0 for the plain softmax"
        )
    return temperature


def _check_logits(name: str, logits: object) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of logits [..., vocab], got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of logits, got dtype {logits.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError(f"{name} must have a vocabulary axis of at least 2 entries last, got {tuple(logits.shape)}")
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise ValueError(f"{name} holds NaN or +inf values; logits must be finite (or -inf for impossible tokens)")
    return logits


def _check_pair(student_logits: object, teacher_logits: object) -> None:
    s = _check_logits("student_logits", student_logits)
    t = _check_logits("teacher_logits", teacher_logits)
    if s.shape[-1] != t.shape[-1]:
        raise ValueError(
            f"vocabulary mismatch: the student has {s.shape[-1]} tokens, the teacher {t.shape[-1]}. Token-level "
            "(white-box) distillation compares distributions over one shared vocabulary; with different "
            "tokenizers use sequence-level distillation on the teacher's text instead (teacher_samples)"
        )
    if s.shape != t.shape:
        raise ValueError(
            f"shape mismatch: student_logits {tuple(s.shape)} vs teacher_logits {tuple(t.shape)}; both must be "
            "[..., vocab] for the same positions"
        )


def _reduce(per_position: torch.Tensor, mask: torch.Tensor | None, reduction: str) -> torch.Tensor:
    check_choice("reduction", reduction, ("mean", "sum", "none"))
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.shape != per_position.shape:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"mask must be a tensor of shape {tuple(per_position.shape)} (one per position), got {got}")
        mask = mask.to(per_position.dtype)
        per_position = per_position * mask
    if reduction == "none":
        return per_position
    if reduction == "sum":
        return per_position.sum()
    count = per_position.numel() if mask is None else mask.sum()
    if float(count) == 0:
        raise ValueError("the mask selects no position: nothing to average")
    return per_position.sum() / count


# --------------------------------------------------------------------------------------------------
# Divergences on log-probabilities (last axis = categories)
# --------------------------------------------------------------------------------------------------


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a‖b) per position from log-probabilities; terms where a = 0 contribute 0."""
    a = log_a.exp()
    terms = torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a))
    return terms.sum(-1)


def _gjsd(log_p: torch.Tensor, log_q: torch.Tensor, beta: float, scaled: bool) -> torch.Tensor:
    if beta == 0.0:
        return _kl(log_p, log_q) if scaled else torch.zeros(log_p.shape[:-1], dtype=log_p.dtype)
    if beta == 1.0:
        return _kl(log_q, log_p) if scaled else torch.zeros(log_p.shape[:-1], dtype=log_p.dtype)
    if min(beta, 1 - beta) < _NEAR_LIMIT:
        scaled_jsd = _scaled_gjsd_near_limit(log_p, log_q, beta)
        return scaled_jsd if scaled else beta * (1 - beta) * scaled_jsd
    # Mix probabilities, not log-probabilities (mixing logs was a real bug in early GKD code: TRL #2202).
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log1p(-beta)]), dim=0)
    jsd = beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)
    return jsd / (beta * (1 - beta)) if scaled else jsd


#: Below this distance of beta from 0 or 1 the scaled JSD is computed by :func:`_scaled_gjsd_near_limit`.
_NEAR_LIMIT = 1e-3


def _log_mix_over_scaled(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """log(m / a) / w for the mixture m = (1 - w)·a + w·b, accurate for every w in (0, 1), subnormal ones included.

    With z = b/a - 1, log(m/a) = log1p(w·z); dividing it by w would magnify its rounding (and, for a subnormal w,
    the product w·z keeps a single significant bit). So where |w·z| < 1/2 the ratio is computed as
    z · log1p(y)/y with y = w·z (the series 1 - y/2 for tiny y): no division by w at all. Elsewhere
    |log(m/a)| > 0.4, nothing cancels, and the direct log-sum-exp form divided by w is exact enough."""
    delta = log_b - log_a
    z = torch.expm1(torch.clamp(delta, max=700.0))  # log-probabilities never differ by more in float64
    y = w * z
    near = y.abs() < 0.5
    ys = torch.where(near, y, torch.zeros_like(y))
    tiny = ys.abs() < 1e-8
    ratio = torch.where(tiny, 1 - ys / 2, torch.log1p(ys) / torch.where(tiny, torch.ones_like(ys), ys))
    log_1mw = math.log1p(-w) if w < 1.0 else -math.inf
    far = torch.logaddexp(torch.full_like(delta, log_1mw), math.log(w) + delta) / w
    return torch.where(near, z * ratio, far)


def _scaled_gjsd_near_limit(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD_beta / (beta (1 - beta)) for beta within ``_NEAR_LIMIT`` of 0 or 1.

    The textbook form divides a KL of order (1 - beta) by (1 - beta) (or one of order beta by beta): its rounding
    error, of the order of machine epsilon times |log m|, is magnified by 1/(1 - beta) and the result can even turn
    negative. Writing beta·KL(p‖m) / (beta (1 - beta)) = -Σ p·log(m/p) / (1 - beta), with log(m/p) computed by
    log1p, keeps full precision all the way to the limits KL(p‖q) (beta → 0) and KL(q‖p) (beta → 1).
    """
    p, q = log_p.exp(), log_q.exp()
    from_p = _log_mix_over_scaled(log_p, log_q, 1 - beta)  # log(m/p)/(1-beta), m = beta p + (1-beta) q
    from_q = _log_mix_over_scaled(log_q, log_p, beta)  # log(m/q)/beta
    terms = -(torch.where(p > 0, p * from_p, torch.zeros_like(p)) + torch.where(q > 0, q * from_q, torch.zeros_like(q)))
    return terms.sum(-1)


def _tv(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


# --------------------------------------------------------------------------------------------------
# Cached top-k teacher targets
# --------------------------------------------------------------------------------------------------


@dataclass
class TopKTargets:
    """A teacher's next-token distribution summarised by its top ``k`` tokens plus one "rest" bucket.

    ``indices`` ``[..., k]`` are token ids; ``log_probs`` ``[..., k + 1]`` their log-probabilities at
    ``temperature``, the last entry being the log of the mass of every other token. This is what a
    distillation run stores instead of ``V`` logits per position (k + 1 numbers instead of V).
    Introduced in Chapter 4.
    """

    indices: torch.Tensor
    log_probs: torch.Tensor
    temperature: float
    vocab_size: int

    @property
    def k(self) -> int:
        return self.indices.shape[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        """The positions' shape (without the k axis)."""
        return tuple(self.indices.shape[:-1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the summary (ids and log-probabilities)."""
        return self.indices.numel() * self.indices.element_size() + self.log_probs.numel() * self.log_probs.element_size()

    def __getitem__(self, idx) -> TopKTargets:
        return TopKTargets(self.indices[idx], self.log_probs[idx], self.temperature, self.vocab_size)


def topk_targets(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TopKTargets:
    """Summarise teacher logits ``[..., V]`` by their top ``k`` tokens and one bucket for the rest.

    The log-probabilities are taken at ``temperature`` over the full vocabulary before truncation, so the
    k + 1 buckets hold exactly the teacher's probability mass. Storing them instead of the logits is how large
    teachers are distilled offline (a cache of sparse teacher outputs). Introduced in Chapter 4.
    """
    teacher_logits = _check_logits("teacher_logits", teacher_logits)
    temperature = _check_temperature(temperature)
    v = teacher_logits.shape[-1]
    k = check_int("k", k, minimum=1, maximum=v)
    log_p = torch.log_softmax(teacher_logits.detach().to(_float_dtype(teacher_logits)) / temperature, dim=-1)
    top, idx = torch.topk(log_p, k, dim=-1)
    tail = _tail_log_mass(log_p, idx)
    index_dtype = torch.int16 if v <= 32_767 else torch.int32
    return TopKTargets(idx.to(index_dtype), torch.cat([top, tail[..., None]], -1), temperature, v)


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; half precisions are upcast to float32 for the softmax."""
    return torch.promote_types(t.dtype, torch.float32)


def _tail_log_mass(log_probs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log Σ of exp(log_probs) outside the ids ``idx`` (the "rest" bucket), computed without cancellation."""
    outside = log_probs.scatter(-1, idx.long(), _LOG_ZERO)
    if idx.shape[-1] == log_probs.shape[-1]:
        return torch.full(log_probs.shape[:-1], _LOG_ZERO, dtype=log_probs.dtype)
    return torch.logsumexp(outside, dim=-1).clamp_min(_LOG_ZERO)


def _coarsen(logits: torch.Tensor, targets: TopKTargets, temperature: float) -> torch.Tensor:
    """The student's log-probabilities over the teacher's k + 1 buckets (differentiable)."""
    log_q = torch.log_softmax(logits / temperature, dim=-1)
    idx = targets.indices.long()
    return torch.cat([log_q.gather(-1, idx), _tail_log_mass(log_q, idx)[..., None]], -1)


def _log_prob_pair(student_logits, teacher, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p teacher, log q student) over a common set of categories, at ``temperature``."""
    temperature = _check_temperature(temperature)
    if isinstance(teacher, TopKTargets):
        s = _check_logits("student_logits", student_logits)
        if s.shape[-1] != teacher.vocab_size:
            raise ValueError(
                f"vocabulary mismatch: the student has {s.shape[-1]} tokens, the cached teacher "
                f"{teacher.vocab_size}; token-level distillation needs one shared vocabulary"
            )
        if tuple(s.shape[:-1]) != teacher.shape:
            raise ValueError(f"shape mismatch: student_logits positions {tuple(s.shape[:-1])} vs cached teacher "
                             f"positions {teacher.shape}")
        if not math.isclose(temperature, teacher.temperature):
            raise ValueError(f"the cached teacher targets were built at temperature {teacher.temperature}, "
                             f"not {temperature}; rebuild them with topk_targets(..., temperature={temperature})")
        return teacher.log_probs.to(s.dtype), _coarsen(s, teacher, temperature)
    _check_pair(student_logits, teacher)
    log_p = torch.log_softmax(teacher.detach().to(student_logits.dtype) / temperature, dim=-1)
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    return log_p, log_q


# --------------------------------------------------------------------------------------------------
# The losses
# --------------------------------------------------------------------------------------------------


def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | TopKTargets,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """τ² · KL(p‖q): the teacher p weighs the student's log-loss on every token (mode covering).

    The classic soft-target loss [Hinton et al. 2015] and word-level KD [Kim & Rush 2016]. The student is
    punished wherever the teacher has mass the student lacks, so it spreads out to cover all of it. Gradient
    with respect to the student's logits (τ = 1): q − p. Introduced in Chapter 4.
    """
    log_p, log_q = _log_prob_pair(student_logits, teacher_logits, temperature)
    return temperature**2 * _reduce(_kl(log_p, log_q), mask, reduction)


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | TopKTargets,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """τ² · KL(q‖p): the student's own mass weighs its disagreement with the teacher (mode seeking).

    MiniLLM's objective [Gu et al. 2024]: putting mass where the teacher has little is expensive, leaving
    some of the teacher's modes uncovered is free, so the student concentrates on the teacher's main modes.
    Computed exactly over the vocabulary at each position (MiniLLM estimates the sequence-level version with
    policy gradients). Gradient (τ = 1): q ⊙ (log q − log p − KL). Introduced in Chapter 4.
    """
    log_p, log_q = _log_prob_pair(student_logits, teacher_logits, temperature)
    return temperature**2 * _reduce(_kl(log_q, log_p), mask, reduction)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | TopKTargets,
    beta: float = 0.5,
    temperature: float = 1.0,
    scaled: bool = True,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """τ² · JSD_β(p‖q) / (β(1 − β)) (``scaled``) or τ² · JSD_β (raw), with M = βp + (1 − β)q.

    GKD's generalized Jensen-Shannon divergence [Agarwal et al. 2024]: β KL(p‖M) + (1 − β) KL(q‖M). Scaled by
    1/(β(1 − β)) it is continuous in β and equals the forward KL at β = 0 and the reverse KL at β = 1 (the
    raw value is 0 at both ends); see the module docstring. Introduced in Chapter 4.
    """
    beta = check_number("beta", beta)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1] (0: forward KL end, 1: reverse KL end), got {beta}")
    if not isinstance(scaled, bool):
        raise TypeError(f"scaled must be a bool, got {scaled!r}")
    log_p, log_q = _log_prob_pair(student_logits, teacher_logits, temperature)
    return temperature**2 * _reduce(_gjsd(log_p, log_q, beta, scaled), mask, reduction)


def total_variation(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | TopKTargets,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """τ² · TV(p, q) = τ² · ½ Σ |p − q|: one minus the acceptance rate of q as a speculative draft for p.

    Speculative sampling accepts a draft token with probability Σ min(p, q) = 1 − TV(p, q) [Leviathan et al.
    2023], so minimising TV maximises the draft's acceptance directly, one of DistillSpec's objectives
    [Zhou et al. 2024]. Introduced in Chapter 4.
    """
    log_p, log_q = _log_prob_pair(student_logits, teacher_logits, temperature)
    return temperature**2 * _reduce(_tv(log_p, log_q), mask, reduction)


def distillation_loss(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | TopKTargets,
    temperature: float = 1.0,
    beta: float = 0.5,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """The divergence called ``name`` (one of :data:`LOSSES`) between teacher and student, as above.

    ``"jsd"`` is the scaled generalized JSD with parameter ``beta``. Introduced in Chapter 4.
    """
    if name not in LOSSES:
        raise unknown_name("distillation loss", name, LOSSES)
    if name == "jsd":
        return generalized_jsd(student_logits, teacher_logits, beta, temperature, True, mask, reduction)
    fn = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "tv": total_variation}[name]
    return fn(student_logits, teacher_logits, temperature, mask, reduction)


# --------------------------------------------------------------------------------------------------
# The visual example: one Gaussian student fitted to a two-mode teacher
# --------------------------------------------------------------------------------------------------


def bimodal_fit(
    losses: Sequence[str] = ("forward_kl", "reverse_kl"),
    betas: Sequence[float] = (0.5,),
    separation: float = 4.0,
    weight: float = 0.5,
    grid: int = 301,
    steps: int = 200,
    init_mean: float | None = None,
) -> pd.DataFrame:
    """Fit a single Gaussian student to a two-Gaussian teacher on a grid, once per divergence.

    The teacher has modes at ±``separation``/2 (unit width, the right one weighing ``weight``); the student
    has a learned mean and width. Minimising the forward KL covers both modes (mean between them, wide);
    the reverse KL picks one mode (the one the start ``init_mean``, by default a quarter of the separation
    right of the centre, leans towards), the scaled JSD_β moves between them as β
    goes from 0 to 1 [Minka 2005; Gu et al. 2024]. Returns the densities in long form (``x``, ``density``,
    ``model``, ``beta``) with each fit's ``mean``/``std``/``divergence``. Introduced in Chapter 4.
    """
    separation = check_number("separation", separation)
    weight = check_number("weight", weight)
    if not 0 < weight < 1:
        raise ValueError(f"weight must be in (0, 1), got {weight}")
    grid = check_int("grid", grid, minimum=16)
    steps = check_int("steps", steps)
    # Wide enough that the forward-KL fit (std ≈ sqrt(1 + separation²/4)) is not truncated by the grid.
    half = 1.5 * separation + 5.0
    init_mean = separation / 4 if init_mean is None else check_number("init_mean", init_mean)
    x = torch.linspace(-half, half, grid, dtype=torch.float64)

    def gauss_logits(mean, log_std):
        return -0.5 * ((x - mean) / log_std.exp()) ** 2 - log_std

    teacher = torch.logsumexp(torch.stack([
        math.log(1 - weight) + gauss_logits(torch.tensor(-separation / 2), torch.tensor(0.0)),
        math.log(weight) + gauss_logits(torch.tensor(separation / 2), torch.tensor(0.0)),
    ]), 0)
    rows = [pd.DataFrame({"x": x.numpy(), "density": teacher.softmax(-1).numpy(), "model": "teacher", "beta": np.nan,
                          "mean": np.nan, "std": np.nan, "divergence": np.nan})]
    fits = [(name, None) for name in losses if name != "jsd"] + [("jsd", float(b)) for b in betas if "jsd" in losses]
    for name in losses:
        if name not in LOSSES:
            raise unknown_name("distillation loss", name, LOSSES)
    for name, beta in fits:
        mean = torch.tensor(float(init_mean), dtype=torch.float64, requires_grad=True)
        log_std = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([mean, log_std], lr=0.05)

        def objective(name=name, beta=beta, mean=mean, log_std=log_std):
            return distillation_loss(name, gauss_logits(mean, log_std), teacher, beta=0.5 if beta is None else beta)

        for _ in range(steps):
            loss = objective()
            opt.zero_grad()
            loss.backward()
            opt.step()
        # Adam finds the basin (which mode, for the reverse KL); L-BFGS then converges tightly inside it.
        polish = torch.optim.LBFGS([mean, log_std], max_iter=100, line_search_fn="strong_wolfe")

        def closure(objective=objective, polish=polish):
            polish.zero_grad()
            loss = objective()
            loss.backward()
            return loss

        polish.step(closure)
        with torch.no_grad():
            student = gauss_logits(mean, log_std)
            div = float(objective())
        label = name if beta is None else f"jsd (β={beta:g})"
        rows.append(pd.DataFrame({"x": x.numpy(), "density": student.softmax(-1).numpy(), "model": label,
                                  "beta": np.nan if beta is None else beta, "mean": mean.item(),
                                  "std": log_std.exp().item(), "divergence": div}))
    return pd.concat(rows, ignore_index=True)
