"""Knowledge distillation: train a small student to imitate a large teacher, then read the gain on the roofline.

A student q_θ learns from a teacher p through a divergence between their next-token distributions at every
position [Hinton et al. 2015]. Which divergence matters: the **forward KL** KL(p‖q) (word-level KD
[Kim & Rush 2016]) makes the student cover every token the teacher likes (*mode covering*); the **reverse
KL** KL(q‖p) (MiniLLM [Gu et al. 2024]) makes it put its mass where the teacher is sure (*mode seeking*);
the **generalized Jensen-Shannon divergence** JSD_β of GKD [Agarwal et al. 2024] interpolates between them;
the **total variation** TV(p, q) is what speculative decoding's acceptance rate measures (α = 1 − TV), so
DistillSpec [Zhou et al. 2024] uses it to train better drafts.

Conventions (the tests check each of them):

* Every loss takes ``student_logits`` and the teacher's logits ``[..., V]`` (or a cached top-k summary, see
  below), divides both by the temperature τ, and multiplies the divergence by τ², Hinton's factor that keeps
  the gradient's size independent of τ. ``reduction="mean"`` averages over positions (optionally masked).
* **Generalized JSD.** With the mixture M = βp + (1 − β)q, JSD_β = β KL(p‖M) + (1 − β) KL(q‖M) (GKD's and
  TRL's convention: β weighs the teacher). Its value vanishes at both ends (JSD_0 = JSD_1 = 0), yet
  JSD_β/β → KL(p‖q) as β → 0 and JSD_β/(1 − β) → KL(q‖p) as β → 1. The book therefore defines the *scaled*
  divergence JSD_β / (β(1 − β)) (``scaled=True``, the default): continuous on [0, 1], equal to the forward KL
  at β = 0, to the reverse KL at β = 1 and to 4·JSD at β = ½. ``scaled=False`` returns the raw JSD_β,
  bounded by the binary entropy h(β) ≤ ln 2.
* **Cached top-k teacher.** :func:`topk_targets` keeps the teacher's k most likely tokens plus one bucket
  holding the rest of the vocabulary's mass. The student's distribution is coarsened to the same k + 1
  buckets, so every divergence is computed exactly on the coarsened pair. By the data-processing
  inequality the coarsened divergence never exceeds the full one, and it equals it when k = V.

The training loop (:func:`distill`) is seeded and counted in steps. Its batches come from a fixed list of
windows and a seeded schedule known in advance, so the teacher's top-k can be computed once for exactly the
windows the run will see (:func:`build_teacher_cache`) and reused by every student, loss and rerun: a
distillation step then costs about as much as a plain one. Sequence-level (black-box) distillation trains on
the teacher's samples (:func:`teacher_samples`); on-policy distillation (``on_policy_fraction`` > 0) scores
the student's own samples with the teacher. Introduced in Chapter 4.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ._validate import check_choice, check_int, check_number, unknown_name
from .results import experiment
from .session import progress_bar

__all__ = [
    "LIVE_SETTINGS",
    "LOSSES",
    "PAIRS",
    "TINY_RUNS",
    "DistillResult",
    "DistillSettings",
    "TeacherCache",
    "TinyRun",
    "TopKTargets",
    "acceptance_rate",
    "batch_schedule",
    "bimodal_fit",
    "build_teacher_cache",
    "cost_points",
    "decode_on_this_machine",
    "distill",
    "distillation_loss",
    "expected_acceptance",
    "expected_tokens_per_call",
    "forward_kl",
    "generalized_jsd",
    "live_check",
    "live_runs",
    "load_student",
    "measure_decode",
    "model_table",
    "next_token_table",
    "reverse_kl",
    "smollm2_blackbox",
    "smollm2_continuations",
    "step_costs",
    "student_report",
    "teacher_samples",
    "teacher_student_costs",
    "teacher_student_limits",
    "text_windows",
    "tiny_data",
    "tiny_eval",
    "tiny_runs",
    "tiny_sample_windows",
    "tiny_val_loss",
    "topk_targets",
    "total_variation",
    "train_tiny_run",
    "with_settings",
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


def _log_mix_over(log_a: torch.Tensor, log_b: torch.Tensor, w: float) -> torch.Tensor:
    """log(m / a) for the mixture m = (1 - w)·a + w·b, accurate when it is close to 0: log1p(w·(b/a - 1)) where
    that argument is small, the direct log-sum-exp form elsewhere (there |log(m/a)| > 0.4, so nothing cancels)."""
    delta = log_b - log_a
    zeros = torch.zeros_like(delta)
    y = w * torch.expm1(torch.where(delta < 30.0, delta, zeros))
    near_zero = (delta < 30.0) & (y.abs() < 0.5)
    small = torch.log1p(torch.where(near_zero, y, zeros))
    log_1mw = math.log1p(-w) if w < 1.0 else -math.inf  # w rounds to 1 when beta < 1e-16
    large = torch.logaddexp(torch.full_like(delta, log_1mw), math.log(w) + delta)
    return torch.where(near_zero, small, large)


def _scaled_gjsd_near_limit(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """JSD_beta / (beta (1 - beta)) for beta within ``_NEAR_LIMIT`` of 0 or 1.

    The textbook form divides a KL of order (1 - beta) by (1 - beta) (or one of order beta by beta): its rounding
    error, of the order of machine epsilon times |log m|, is magnified by 1/(1 - beta) and the result can even turn
    negative. Writing beta·KL(p‖m) / (beta (1 - beta)) = -Σ p·log(m/p) / (1 - beta), with log(m/p) computed by
    log1p, keeps full precision all the way to the limits KL(p‖q) (beta → 0) and KL(q‖p) (beta → 1).
    """
    p, q = log_p.exp(), log_q.exp()
    from_p = _log_mix_over(log_p, log_q, 1 - beta) / (1 - beta)  # log(m/p)/(1-beta), m = beta p + (1-beta) q
    from_q = _log_mix_over(log_q, log_p, beta) / beta  # log(m/q)/beta
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


# --------------------------------------------------------------------------------------------------
# Speculative-decoding view: how much of the target does the draft match?
# --------------------------------------------------------------------------------------------------


def expected_acceptance(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Σ_v min(p, q) per position: the probability that speculative sampling accepts the draft's token.

    With target p and draft q (both sampled at ``temperature``; 0 means greedy, where it is 1 if the two
    arg-maxes agree), a draft token is accepted with probability Σ min(p, q) = 1 − TV(p, q) [Leviathan et al.
    2023; Chen et al. 2023]. Its mean over positions is the α of the speedup formulas. Introduced in Chapter 4
    (the decoding chapter uses the same quantity).
    """
    from .generation import sampling_probs

    _check_pair(draft_logits, target_logits)
    temperature = check_number("temperature", temperature)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    p = sampling_probs(target_logits.float(), temperature)
    q = sampling_probs(draft_logits.float(), temperature)
    return _reduce(torch.minimum(p, q).sum(-1), None, reduction)


def expected_tokens_per_call(alpha: float | np.ndarray, gamma: int) -> float | np.ndarray:
    """Expected tokens produced per target call with ``gamma`` draft tokens and acceptance ``alpha``.

    (1 − α^(γ+1)) / (1 − α) under i.i.d. acceptance [Leviathan et al. 2023]: between 1 (α = 0) and γ + 1
    (α = 1). Introduced in Chapter 4.
    """
    gamma = check_int("gamma", gamma, minimum=0)
    a = np.asarray(check_number("alpha", alpha, allow_array=True), dtype=float)
    if np.any((a < 0) | (a > 1)):
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(a < 1, (1 - a ** (gamma + 1)) / np.where(a < 1, 1 - a, 1), gamma + 1.0)
    return float(out) if out.ndim == 0 else out


@torch.inference_mode()
def acceptance_rate(
    target: Callable[[torch.Tensor], torch.Tensor],
    draft: Callable[[torch.Tensor], torch.Tensor],
    tokens: Sequence[int] | torch.Tensor,
    temperature: float = 1.0,
    window: int = 256,
    batch_size: int = 8,
) -> float:
    """Mean expected acceptance α of ``draft`` for ``target``, teacher-forced over ``tokens``.

    Both models read the same fixed, non-overlapping windows; at each position α = Σ min(p, q). Measured on
    the target's own samples this is the per-token acceptance rate speculative sampling would see; on real
    text it is a close proxy. Introduced in Chapter 4.
    """
    window = check_int("window", window, minimum=2)
    batch_size = check_int("batch_size", batch_size)
    data = tokens.long() if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    if data.dim() == 2:
        chunks = data
    else:
        n = (len(data) // window) * window
        if n == 0:
            raise ValueError(f"need at least window = {window} tokens, got {len(data)}")
        chunks = data[:n].reshape(-1, window)
    total, count = 0.0, 0
    for i in range(0, len(chunks), batch_size):
        x = chunks[i : i + batch_size]
        acc = expected_acceptance(target(x), draft(x), temperature, reduction="none")
        total += float(acc.double().sum())
        count += acc.numel()
    return total / count


# --------------------------------------------------------------------------------------------------
# Data for the training loop
# --------------------------------------------------------------------------------------------------


def text_windows(tokens: Sequence[int] | torch.Tensor, seq_len: int, stride: int | None = None) -> torch.Tensor:
    """Cut a token stream into fixed windows ``[N, seq_len + 1]`` (inputs and shifted targets together).

    Windows start every ``stride`` tokens (default ``seq_len``: non-overlapping). A fixed list of windows is
    what lets a distillation run cache its teacher's outputs per window. Introduced in Chapter 4.
    """
    seq_len = check_int("seq_len", seq_len)
    stride = seq_len if stride is None else check_int("stride", stride)
    data = tokens.long() if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    if data.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(data.shape)}")
    if len(data) < seq_len + 1:
        raise ValueError(f"need at least seq_len + 1 = {seq_len + 1} tokens, got {len(data)}")
    starts = torch.arange(0, len(data) - seq_len, stride)
    return data[starts[:, None] + torch.arange(seq_len + 1)[None, :]]


def batch_schedule(num_windows: int, steps: int, batch_size: int, seed: int = 0) -> torch.Tensor:
    """The window ids of every batch of a run, ``[steps, batch_size]``, drawn from a seeded generator.

    Known before training starts, so the teacher's outputs can be precomputed for exactly these windows.
    Introduced in Chapter 4.
    """
    num_windows = check_int("num_windows", num_windows)
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, num_windows, (steps, batch_size), generator=gen)


@dataclass
class TeacherCache:
    """The teacher's top-k targets for some windows of a dataset: ``window id → TopKTargets [seq_len]``.

    Built once by :func:`build_teacher_cache`; ``time_s`` is what building it cost (the teacher's forward
    passes), paid once and shared by every run that reads the same windows. Introduced in Chapter 4.
    """

    window_ids: torch.Tensor
    targets: TopKTargets
    time_s: float

    def __post_init__(self) -> None:
        self._row = {int(w): i for i, w in enumerate(self.window_ids.tolist())}

    def lookup(self, ids: torch.Tensor) -> TopKTargets:
        """The cached targets of windows ``ids`` (a 1-D tensor), stacked ``[len(ids), seq_len, ...]``."""
        try:
            rows = torch.tensor([self._row[int(i)] for i in ids.tolist()])
        except KeyError as e:
            raise ValueError(f"window {e.args[0]} is not in the teacher cache; build it from the run's "
                             "batch_schedule") from None
        return self.targets[rows]

    @property
    def nbytes(self) -> int:
        return self.targets.nbytes


@torch.inference_mode()
def build_teacher_cache(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    windows: torch.Tensor,
    window_ids: torch.Tensor | Sequence[int],
    k: int = 16,
    temperature: float = 1.0,
    batch_size: int = 32,
    progress: bool = True,
) -> TeacherCache:
    """Run the teacher once over the given windows and keep its top-``k`` targets (fp16 log-probabilities).

    The cost of the teacher's forward passes moves out of the training loop: this is how distillation from a
    large model is done in practice when the same data is used more than once. Introduced in Chapter 4.
    """
    ids = torch.unique(torch.as_tensor(window_ids).long().flatten())
    k = check_int("k", k)
    temperature = _check_temperature(temperature)
    batch_size = check_int("batch_size", batch_size)
    bar = None
    if progress:
        bar = progress_bar(total=len(ids), desc="teacher top-k cache", leave=False)
    t0 = time.perf_counter()
    parts = []
    for i in range(0, len(ids), batch_size):
        x = windows[ids[i : i + batch_size], :-1]
        parts.append(topk_targets(teacher(x), k, temperature))
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    targets = TopKTargets(
        torch.cat([p.indices for p in parts]),
        torch.cat([p.log_probs for p in parts]).half(),
        temperature,
        parts[0].vocab_size,
    )
    return TeacherCache(ids, targets, time.perf_counter() - t0)


@torch.inference_mode()
def teacher_samples(
    teacher,
    prompts: torch.Tensor,
    new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's continuations of ``prompts`` ``[N, P]``: windows ``[N, P + new_tokens]`` and a loss mask.

    Sequence-level (black-box) distillation [Kim & Rush 2016] trains the student with plain cross-entropy on
    these sequences: it needs the teacher's text only, never its logits, so it also works through an API or
    across tokenizers. Sampling at τ = 1 makes that cross-entropy a Monte-Carlo estimate of the sequence-level
    forward KL (Kim & Rush used beam search, which a character model turns into loops). The mask ``[N,
    P + new_tokens - 1]`` is True on the positions that predict a generated token (the prompt is context
    only). Introduced in Chapter 4.
    """
    from .generation import generate

    new_tokens = check_int("new_tokens", new_tokens)
    batch_size = check_int("batch_size", batch_size)
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2:
        raise ValueError("prompts must be a [N, prompt_len] tensor of token ids")
    bar = None
    if progress:
        bar = progress_bar(total=len(prompts), desc="teacher samples", leave=False)
    out = []
    for i in range(0, len(prompts), batch_size):
        out.append(generate(teacher, prompts[i : i + batch_size], new_tokens, temperature=temperature,
                            seed=seed + i, progress=False))
        if bar is not None:
            bar.update(len(out[-1]))
    if bar is not None:
        bar.close()
    seqs = torch.cat(out).clone()
    mask = torch.zeros(seqs.shape[0], seqs.shape[1] - 1, dtype=torch.bool)
    mask[:, prompts.shape[1] - 1 :] = True
    return seqs, mask


# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistillSettings:
    """A distillation run: steps, optimiser, batch shape, the loss mix and how the teacher is consulted.

    The loss is (1 − ``alpha``)·CE(data) + ``alpha``·``loss``(teacher‖student) at ``temperature``;
    ``alpha = 0`` is plain training on the data (no teacher). ``top_k`` = None consults the teacher's full
    logits during the step (``teacher_mode="online"`` only); an int uses its top-k summary, computed during
    the step (``"online"``) or read from a precomputed cache (``"cached"``). ``on_policy_fraction`` λ is the
    share of steps whose sequences the student writes itself (continuing ``prompt_len`` tokens of a window by
    ``seq_len - prompt_len`` sampled tokens) and the teacher scores (GKD [Agarwal et al. 2024]); those steps
    use the divergence only. Introduced in Chapter 4.
    """

    steps: int = 400
    lr: float = 3e-3
    batch_size: int = 16
    alpha: float = 0.0
    loss: str = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    top_k: int | None = 16
    teacher_mode: str = "cached"
    on_policy_fraction: float = 0.0
    prompt_len: int = 32
    warmup_fraction: float = 0.03
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_chars: int = 16_384

    def __post_init__(self) -> None:
        check_int("steps", self.steps)
        check_int("batch_size", self.batch_size)
        check_int("prompt_len", self.prompt_len)
        check_int("eval_every", self.eval_every)
        for name in ("lr", "alpha", "beta", "on_policy_fraction", "warmup_fraction", "min_lr_ratio"):
            check_number(name, getattr(self, name))
        for name in ("alpha", "beta", "on_policy_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        _check_temperature(self.temperature)
        if self.loss not in LOSSES:
            raise unknown_name("distillation loss", self.loss, LOSSES)
        check_choice("teacher_mode", self.teacher_mode, ("cached", "online"))
        if self.top_k is not None:
            check_int("top_k", self.top_k)
        if self.top_k is None and self.teacher_mode == "cached":
            raise ValueError("a cached teacher stores top-k targets: give top_k (e.g. 16) or use teacher_mode='online'")

    @property
    def uses_teacher(self) -> bool:
        return self.alpha > 0 or self.on_policy_fraction > 0

    def lr_at(self, step: int) -> float:
        """Linear warm-up then cosine decay to ``min_lr_ratio``·lr (the zoo's schedule, :func:`unveiled.zoo.lr_at`)."""
        from .zoo import lr_at

        return lr_at(step, self)


@dataclass
class DistillResult:
    """A trained student, its per-step log and where the time went.

    ``log`` has ``step``, ``lr``, ``loss``, ``ce``, ``kd`` (NaN where unused), ``on_policy``, ``time_s``
    (cumulative training-loop time) and ``val_loss`` (every ``eval_every`` steps, evaluation time excluded).
    ``time_s`` is the training loop, ``teacher_time_s`` its share spent in the teacher (online mode) and
    ``cache_time_s`` the one-off cost of the cache it read (0 if none). Introduced in Chapter 4.
    """

    model: torch.nn.Module
    log: pd.DataFrame
    settings: DistillSettings
    time_s: float
    teacher_time_s: float
    cache_time_s: float

    @property
    def final_val_loss(self) -> float:
        return float(self.log.val_loss.dropna().iloc[-1]) if self.log.val_loss.notna().any() else float("nan")

    def summary(self) -> dict:
        """One flat row: the settings and the timings."""
        s = asdict(self.settings)
        s.pop("betas")
        return {**s, "time_s": self.time_s, "teacher_time_s": self.teacher_time_s,
                "cache_time_s": self.cache_time_s, "val_loss_16k": self.final_val_loss}


def _optimizer(model: torch.nn.Module, s: DistillSettings) -> torch.optim.Optimizer:
    params = list({id(p): p for p in model.parameters()}.values())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, foreach=False)


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return _reduce(ce.reshape(targets.shape), mask, "mean")


def _student_samples(student, x: torch.Tensor, prompt_len: int, seed: int) -> torch.Tensor:
    from .generation import generate

    prompt_len = min(prompt_len, x.shape[1] - 1)
    out = generate(student, x[:, :prompt_len], x.shape[1] - prompt_len + 1, temperature=1.0, seed=seed,
                   progress=False)
    return out.clone()  # leave inference mode: the ids feed a forward pass that is differentiated


def _check_decoder(name: str, model: object) -> torch.nn.Module:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{name} must be a torch model mapping [B, T] ids to [B, T, V] logits, got "
                        f"{type(model).__name__}")
    return model


def distill(
    student: torch.nn.Module,
    windows: torch.Tensor,
    settings: DistillSettings,
    teacher: torch.nn.Module | None = None,
    cache: TeacherCache | None = None,
    mask: torch.Tensor | None = None,
    schedule: torch.Tensor | None = None,
    val_loss: Callable[[torch.nn.Module], float] | None = None,
    progress: bool = True,
) -> DistillResult:
    """Train ``student`` in place for ``settings.steps`` steps on ``windows`` ``[N, T + 1]``; return the log.

    Deterministic for fixed inputs, seed and thread count: the batches follow :func:`batch_schedule` (or
    ``schedule``), on-policy steps and their samples come from seeded generators, and nothing depends on the
    clock. ``mask`` ``[N, T]`` excludes positions from every loss (e.g. the prompt of teacher samples).
    ``val_loss(model)`` is called every ``eval_every`` steps and at the end (its time is not counted).
    Introduced in Chapter 4.
    """
    student = _check_decoder("student", student)
    if not isinstance(settings, DistillSettings):
        raise TypeError(f"settings must be a DistillSettings, got {type(settings).__name__}")
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError("windows must be a [N, seq_len + 1] tensor of token ids (see text_windows)")
    s = settings
    n_win, t = windows.shape[0], windows.shape[1] - 1
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (n_win, t)):
        raise ValueError(f"mask must be a bool tensor [{n_win}, {t}] (one entry per predicted position)")
    if schedule is None:
        schedule = batch_schedule(n_win, s.steps, s.batch_size, s.seed)
    elif tuple(schedule.shape) != (s.steps, s.batch_size):
        raise ValueError(f"schedule must be [{s.steps}, {s.batch_size}], got {tuple(schedule.shape)}")
    vocab = getattr(getattr(student, "config", None), "vocab_size", None)
    if s.uses_teacher:
        if s.teacher_mode == "online" or s.on_policy_fraction > 0:
            if teacher is None:
                raise ValueError("these settings consult the teacher during training: pass teacher=...")
            _check_decoder("teacher", teacher)
            t_vocab = getattr(getattr(teacher, "config", None), "vocab_size", None)
            if vocab is not None and t_vocab is not None and vocab != t_vocab:
                raise ValueError(f"vocabulary mismatch: student {vocab} tokens, teacher {t_vocab}; token-level "
                                 "distillation needs one shared vocabulary (use teacher_samples instead)")
        if s.teacher_mode == "cached" and s.alpha > 0:
            if cache is None:
                raise ValueError("teacher_mode='cached' needs cache=build_teacher_cache(teacher, windows, schedule)")
            if cache.targets.k != s.top_k or not math.isclose(cache.targets.temperature, s.temperature):
                raise ValueError(f"the cache holds top-{cache.targets.k} at temperature {cache.targets.temperature}, "
                                 f"the settings ask for top-{s.top_k} at {s.temperature}")
    on_policy = torch.rand(s.steps, generator=torch.Generator().manual_seed(s.seed + 1)) < s.on_policy_fraction
    student.train()
    opt = _optimizer(student, s)
    rows, elapsed, teacher_time = [], 0.0, 0.0
    bar = None
    if progress:
        bar = progress_bar(total=s.steps, desc=f"distilling ({s.loss}, α={s.alpha:g})" if s.uses_teacher else "training",
                   leave=False)
    for step in range(s.steps):
        t0 = time.perf_counter()
        lr = s.lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        ids = schedule[step]
        batch = windows[ids]
        m = None if mask is None else mask[ids]
        ce = kd = None
        if on_policy[step]:
            # GKD's on-policy branch: the student writes the text, the teacher grades every generated position.
            with torch.no_grad():
                batch = _student_samples(student, batch[:, :-1], s.prompt_len, s.seed * 100_003 + step)
            x = batch[:, :-1]
            m = torch.zeros_like(x, dtype=torch.bool)
            m[:, min(s.prompt_len, t - 1) - 1 :] = True
            logits = student(x)
            t1 = time.perf_counter()
            with torch.inference_mode():
                teacher_logits = teacher(x)
            teacher_time += time.perf_counter() - t1
            target = teacher_logits.clone() if s.top_k is None else topk_targets(teacher_logits, s.top_k, s.temperature)
            kd = distillation_loss(s.loss, logits, target, s.temperature, s.beta, mask=m)
            loss = kd
        else:
            x, y = batch[:, :-1], batch[:, 1:]
            logits = student(x)
            ce = _masked_ce(logits, y, m)
            loss = ce
            if s.alpha > 0:
                if s.teacher_mode == "cached":
                    target = cache.lookup(ids)
                else:
                    t1 = time.perf_counter()
                    with torch.inference_mode():
                        teacher_logits = teacher(x)
                    teacher_time += time.perf_counter() - t1
                    target = (teacher_logits.clone() if s.top_k is None
                              else topk_targets(teacher_logits, s.top_k, s.temperature))
                kd = distillation_loss(s.loss, logits, target, s.temperature, s.beta, mask=m)
                loss = (1 - s.alpha) * ce + s.alpha * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), s.grad_clip)
        opt.step()
        elapsed += time.perf_counter() - t0
        row = {"step": step + 1, "lr": lr, "loss": loss.item(), "ce": float("nan") if ce is None else ce.item(),
               "kd": float("nan") if kd is None else kd.item(), "on_policy": bool(on_policy[step]),
               "time_s": elapsed, "val_loss": float("nan")}
        if val_loss is not None and ((step + 1) % s.eval_every == 0 or step + 1 == s.steps):
            student.eval()
            with torch.no_grad():
                row["val_loss"] = float(val_loss(student))
            student.train()
        rows.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
    if bar is not None:
        bar.close()
    student.eval()
    cache_time = cache.time_s if (cache is not None and s.teacher_mode == "cached" and s.alpha > 0) else 0.0
    return DistillResult(student, pd.DataFrame(rows), s, elapsed, teacher_time, cache_time)


# --------------------------------------------------------------------------------------------------
# Measured decode speed (student vs teacher on this CPU)
# --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def measure_decode(
    model: torch.nn.Module,
    batch: int = 1,
    prompt_len: int = 64,
    new_tokens: int = 64,
    repeats: int = 3,
    vocab_size: int | None = None,
) -> dict:
    """Time one prefill of ``prompt_len`` tokens and ``new_tokens`` decode steps with a KV cache.

    Returns the best of ``repeats`` runs (the least disturbed on a shared machine): ``ttft_s`` (prefill),
    ``tpot_s`` (mean time per decode step) and ``tokens_per_s`` (``batch`` / ``tpot_s``), plus the weight
    bytes in fp32 as run. Greedy decoding of random prompts: the time does not depend on the text.
    Introduced in Chapter 4.
    """
    batch = check_int("batch", batch)
    prompt_len = check_int("prompt_len", prompt_len)
    new_tokens = check_int("new_tokens", new_tokens)
    repeats = check_int("repeats", repeats)
    v = vocab_size or model.config.vocab_size
    prompt = torch.randint(0, v, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    best_ttft, best_tpot = math.inf, math.inf
    for _ in range(repeats):
        cache = model.new_cache()
        t0 = time.perf_counter()
        logits = model(prompt, cache)[:, -1]
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            logits = model(logits.argmax(-1)[:, None], cache)[:, -1]
        t2 = time.perf_counter()
        best_ttft, best_tpot = min(best_ttft, t1 - t0), min(best_tpot, (t2 - t1) / new_tokens)
    params = list({id(p): p for p in model.parameters()}.values())
    return {"batch": batch, "prompt_len": prompt_len, "ttft_s": best_ttft, "tpot_s": best_tpot,
            "tokens_per_s": batch / best_tpot, "weight_bytes": sum(p.numel() * p.element_size() for p in params)}


# --------------------------------------------------------------------------------------------------
# The book's experiment: student S distilled from teacher M on Tiny Shakespeare
# --------------------------------------------------------------------------------------------------

#: Torch threads of the cached experiments. One: on a shared 2-core machine, two OpenMP threads that spin while
#: waiting for each other were measured ten times slower than one thread for these small tensors.
EXPERIMENT_THREADS = 1

#: Context of the tiny distillation runs (characters per training window).
TINY_SEQ_LEN = 128
#: Shared settings of the tiny runs: 400 steps of 16 × 128 characters (819,200 characters, under one pass
#: over the training split), the zoo's optimiser, and α = 0.9 for the white-box runs (mostly teacher, a
#: little ground truth).
TINY_BASE = DistillSettings(steps=400, lr=3e-3, batch_size=16, alpha=0.0, top_k=16, eval_every=100)


@dataclass(frozen=True)
class TinyRun:
    """One run of the tiny distillation experiment: a name, what it is, its settings and its data."""

    name: str
    method: str
    settings: DistillSettings
    data: str = "text"  # "text": Tiny Shakespeare windows; "teacher_samples": M's continuations (black-box)
    description: str = ""


def _tiny_runs() -> dict[str, TinyRun]:
    kd = replace(TINY_BASE, alpha=0.9)
    runs = [
        TinyRun("data-400", "data only", TINY_BASE, description="cross-entropy on the text, 400 steps"),
        TinyRun("data-800", "data only", replace(TINY_BASE, steps=800),
                description="cross-entropy on the text, 800 steps (the cost of a KD run with a live teacher)"),
        TinyRun("fkl-online", "forward KL (full logits, live teacher)", replace(kd, teacher_mode="online", top_k=None),
                description="word-level KD, the teacher runs inside every step"),
        TinyRun("fkl", "forward KL", kd, description="word-level KD from the cached top-16"),
        TinyRun("rkl", "reverse KL", replace(kd, loss="reverse_kl"), description="MiniLLM's divergence, cached top-16"),
        TinyRun("jsd", "JSD (β = 0.5)", replace(kd, loss="jsd", beta=0.5), description="GKD's divergence, cached"),
        TinyRun("tv", "total variation", replace(kd, loss="tv"), description="DistillSpec's TVD, cached top-16"),
        TinyRun("seqkd", "teacher samples (black-box)", TINY_BASE, data="teacher_samples",
                description="cross-entropy on M's sampled continuations; no logits"),
        TinyRun("gkd", "on-policy JSD (λ = 0.5)",
                replace(kd, loss="jsd", beta=0.5, on_policy_fraction=0.5, prompt_len=96),
                description="GKD: on half the steps the student continues 96 characters of text by 32 of its "
                            "own, which the live teacher scores"),
    ]
    return {r.name: r for r in runs}


#: The runs of the tiny experiment, by name (see :func:`tiny_runs`).
TINY_RUNS: dict[str, TinyRun] = _tiny_runs()


def tiny_data(seq_len: int = TINY_SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny Shakespeare as fixed training windows ``[N, seq_len + 1]`` and the validation characters.

    Introduced in Chapter 4.
    """
    from .text import corpus_split, shakespeare_tokenizer

    tok = shakespeare_tokenizer()
    train = torch.tensor(tok.encode(corpus_split("train")), dtype=torch.long)
    val = torch.tensor(tok.encode(corpus_split("val")), dtype=torch.long)
    return text_windows(train, seq_len), val


def tiny_val_loss(model: torch.nn.Module, val: torch.Tensor, max_chars: int | None = None,
                  window: int = TINY_SEQ_LEN) -> float:
    """Validation loss (nats per character) over fixed windows of the training context. Introduced in Chapter 4."""
    from .evaluation import perplexity

    tokens = val if max_chars is None else val[:max_chars]
    return perplexity(model, tokens, window=window, batch_size=32).nll


def tiny_sample_windows(teacher, windows: torch.Tensor, n: int = 2048, prompt_len: int = 32, seed: int = 0,
                        progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The black-box training set: ``n`` teacher continuations of ``prompt_len``-character prompts.

    Prompts are the starts of ``n`` seeded training windows; each continues at τ = 1 to the window length.
    Introduced in Chapter 4.
    """
    ids = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))[:n]
    new = windows.shape[1] - prompt_len
    # Large batches: generation is one forward call per token, and on a CPU the per-call overhead dominates.
    return teacher_samples(teacher, windows[ids, :prompt_len], new, temperature=1.0, seed=seed, batch_size=256,
                           progress=progress)


def train_tiny_run(
    run: str | TinyRun,
    teacher: torch.nn.Module,
    windows: torch.Tensor,
    val: torch.Tensor,
    cache: TeacherCache | None = None,
    samples: tuple[torch.Tensor, torch.Tensor] | None = None,
    settings: DistillSettings | None = None,
    progress: bool = True,
) -> DistillResult:
    """Train one run of the tiny experiment from the S architecture's seeded initialisation.

    ``settings`` overrides the run's own (the chapter's short live rerun). Every run starts from the same
    weights and, for text runs, reads the same batches. Introduced in Chapter 4.
    """
    from .models import Decoder
    from .zoo import ZOO

    spec = TINY_RUNS[run] if isinstance(run, str) and run in TINY_RUNS else run
    if not isinstance(spec, TinyRun):
        raise unknown_name("tiny distillation run", run, TINY_RUNS)
    s = settings or spec.settings
    student = Decoder(ZOO["S"].config, seed=s.seed)
    mask = None
    data = windows
    if spec.data == "teacher_samples":
        if samples is None:
            raise ValueError("the black-box run trains on teacher samples: pass samples=tiny_sample_windows(...)")
        data, mask = samples
    eval_chars = s.eval_chars
    return distill(student, data, s, teacher=teacher, cache=cache, mask=mask,
                   val_loss=lambda m: tiny_val_loss(m, val, eval_chars), progress=progress)


def _checkpoint_dir():
    import pathlib

    return pathlib.Path("data") / "distill"


def load_student(run: str) -> torch.nn.Module:
    """A shipped student of the tiny experiment (fp16 safetensors → fp32 Decoder), e.g. ``"fkl"``.

    Introduced in Chapter 4.
    """
    from importlib.resources import as_file

    from .datafiles import data_file
    from .models import load_model

    if run not in TINY_RUNS:
        raise unknown_name("tiny distillation run", run, TINY_RUNS)
    node = data_file(f"distill/{run}.safetensors")
    with as_file(node) as path:
        return load_model(path)


@experiment("tiny_runs", "Student S distilled from teacher M on Tiny Shakespeare: nine runs, curves, checkpoints")
def tiny_runs() -> pd.DataFrame:
    """Train every run of :data:`TINY_RUNS`; return their curves and save the students under data/distill/.

    One teacher cache (top-16 of M on exactly the windows the 400-step schedule reads) serves every cached
    run; its build time is reported once. Rows: ``run``, ``step``, ``loss``, ``ce``, ``kd``, ``time_s``
    (training loop, cumulative), ``val_loss_16k`` (first 16,384 validation characters, every 100 steps) and,
    on each run's last row, ``val_loss`` on the full validation split, ``teacher_time_s``, ``cache_time_s``
    and ``samples_time_s``. Run from the repository root. Introduced in Chapter 4.
    """
    from .models import save_model
    from .zoo import load

    torch.set_num_threads(EXPERIMENT_THREADS)
    teacher = load("M")
    windows, val = tiny_data()
    sched = batch_schedule(len(windows), TINY_BASE.steps, TINY_BASE.batch_size, TINY_BASE.seed)
    cache = build_teacher_cache(teacher, windows, sched, k=TINY_BASE.top_k, temperature=TINY_BASE.temperature)
    t0 = time.perf_counter()
    samples = tiny_sample_windows(teacher, windows)
    samples_time = time.perf_counter() - t0
    out = _checkpoint_dir()
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for name, spec in TINY_RUNS.items():
        res = train_tiny_run(spec, teacher, windows, val, cache=cache, samples=samples)
        log = res.log.rename(columns={"val_loss": "val_loss_16k"}).assign(run=name)
        for col in ("val_loss", "teacher_time_s", "cache_time_s", "samples_time_s"):
            log[col] = np.nan
        last = log.index[-1]
        log.loc[last, "val_loss"] = tiny_val_loss(res.model, val)
        log.loc[last, "teacher_time_s"] = res.teacher_time_s
        log.loc[last, "cache_time_s"] = res.cache_time_s
        log.loc[last, "samples_time_s"] = samples_time if spec.data == "teacher_samples" else 0.0
        frames.append(log)
        save_model(res.model, out / f"{name}.safetensors",
                   metadata={"run": name, "method": spec.method, "settings": res.summary()})
    cols = ["run", "step", "lr", "loss", "ce", "kd", "on_policy", "time_s", "val_loss_16k", "val_loss",
            "teacher_time_s", "cache_time_s", "samples_time_s"]
    out = pd.concat(frames, ignore_index=True)[cols]
    out["teacher_sha256"] = _teacher_sha()
    return out


def _teacher_sha() -> str:
    """The SHA-256 of the shipped teacher M the cached tables were made with (tests compare it with the card)."""
    from .zoo import card

    return card("M")["weights_sha256"]


def student_report(
    students: dict[str, torch.nn.Module],
    teacher: torch.nn.Module,
    val: torch.Tensor,
    samples: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_chars: int | None = None,
    sample_count: int = 64,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare students against their teacher: quality, coverage vs precision, and draft acceptance.

    Columns: ``val_loss`` (nats/char on the validation text: how well the student *covers* real text),
    ``entropy`` (mean entropy of its next-character distribution: low = mode seeking), ``teacher_nll`` (the
    teacher's nats/char on text the student samples at τ = 1: the *precision* MiniLLM argues reverse KL
    improves), ``acceptance_text`` and ``acceptance_greedy`` (α = E[Σ min(p, q)] as a speculative draft
    for the teacher, at τ = 1 and τ = 0, teacher-forced on the validation text) and ``acceptance_samples``
    (α at τ = 1 on the teacher's own samples, the text speculative sampling actually sees; ``samples`` is
    :func:`teacher_samples`'s pair, and only the generated positions count). Introduced in Chapter 4.
    """
    from .evaluation import perplexity

    tokens = val if max_chars is None else val[:max_chars]
    chunks = tokens[: (len(tokens) // TINY_SEQ_LEN) * TINY_SEQ_LEN].reshape(-1, TINY_SEQ_LEN)
    rows = []
    with torch.inference_mode():
        teacher_logits = [teacher(chunks[i : i + 32]) for i in range(0, len(chunks), 32)]
        seqs, smask = (None, None) if samples is None else samples
        sample_logits = None if seqs is None else [teacher(seqs[i : i + 32, :-1]) for i in range(0, len(seqs), 32)]
        prompts = chunks[:sample_count, :16] if len(chunks) >= sample_count else chunks[:, :16]
        for name, model in students.items():
            ent, acc1, acc0, n = 0.0, 0.0, 0.0, 0
            for i, t_logits in zip(range(0, len(chunks), 32), teacher_logits, strict=True):
                s_logits = model(chunks[i : i + 32]).float()
                logq = torch.log_softmax(s_logits, -1)
                ent += float(-(logq.exp() * logq).sum(-1).double().sum())
                acc1 += float(expected_acceptance(t_logits, s_logits, 1.0, reduction="sum"))
                acc0 += float(expected_acceptance(t_logits, s_logits, 0.0, reduction="sum"))
                n += t_logits.shape[0] * t_logits.shape[1]
            acc_s = float("nan")
            if seqs is not None:
                tot, cnt = 0.0, 0
                for i, t_logits in zip(range(0, len(seqs), 32), sample_logits, strict=True):
                    acc = expected_acceptance(t_logits, model(seqs[i : i + 32, :-1]), 1.0, reduction="none")
                    keep = smask[i : i + 32]
                    tot += float(acc[keep].double().sum())
                    cnt += int(keep.sum())
                acc_s = tot / cnt
            from .generation import generate

            written = generate(model, prompts, TINY_SEQ_LEN - 16, temperature=1.0, seed=seed, progress=False)
            # the teacher scores only what the student wrote (the 16-character prompt is context)
            lp = torch.log_softmax(teacher(written[:, :-1]).double(), -1).gather(-1, written[:, 1:, None])[..., 0]
            teacher_nll = float(-lp[:, 15:].mean())
            rows.append({"student": name, "val_loss": perplexity(model, tokens, window=TINY_SEQ_LEN,
                                                                  batch_size=32).nll,
                         "entropy": ent / n, "teacher_nll": teacher_nll, "acceptance_text": acc1 / n,
                         "acceptance_greedy": acc0 / n, "acceptance_samples": acc_s})
    return pd.DataFrame(rows)


#: The chapter's short live rerun: 60 steps of 16 × 128 characters, plain vs forward KL from the cached top-16.
LIVE_SETTINGS = replace(TINY_BASE, steps=60, batch_size=16, eval_every=60, eval_chars=8192)


def live_runs(progress: bool = True) -> pd.DataFrame:
    """The short runs the chapter trains live (data only vs forward KL from M's cached top-16, 60 steps).

    Returns one row per run with the validation loss on the first 8,192 characters, the training-loop time
    and the cache build time. :func:`live_check` caches the same table, so the chapter (and a test) can put
    the live numbers next to the cached ones. Introduced in Chapter 4.
    """
    from .zoo import load

    teacher = load("M")
    windows, val = tiny_data()
    s = LIVE_SETTINGS
    sched = batch_schedule(len(windows), s.steps, s.batch_size, s.seed)
    cache = build_teacher_cache(teacher, windows, sched, k=s.top_k, temperature=s.temperature, progress=progress)
    rows = []
    for name, settings in (("data-60", s), ("fkl-60", replace(s, alpha=0.9))):
        res = train_tiny_run("fkl" if settings.alpha else "data-400", teacher, windows, val, cache=cache,
                             settings=settings, progress=progress)
        rows.append({"run": name, "alpha": settings.alpha, "steps": settings.steps, "batch_size": settings.batch_size,
                     "val_loss_8k": res.final_val_loss, "final_train_loss": float(res.log.loss.iloc[-1]),
                     "time_s": res.time_s, "cache_time_s": res.cache_time_s if settings.alpha else 0.0,
                     "teacher_sha256": _teacher_sha()})
    return pd.DataFrame(rows)


@experiment("live_check", "The chapter's short live distillation runs (60 steps), cached for comparison")
def live_check() -> pd.DataFrame:
    """:func:`live_runs`, cached. Introduced in Chapter 4."""
    torch.set_num_threads(EXPERIMENT_THREADS)
    return live_runs()


def step_costs(
    teacher: torch.nn.Module,
    windows: torch.Tensor,
    settings: DistillSettings = TINY_BASE,
    steps: int = 3,
    rounds: int = 3,
    progress: bool = True,
) -> pd.DataFrame:
    """Time a training step of the S student three ways, interleaved so that machine noise hits all alike.

    Modes: ``plain`` (cross-entropy only), ``live teacher`` (the teacher's forward pass inside every step, full
    logits) and ``cached top-k`` (targets read from a cache built beforehand). Also times the teacher's
    inference pass over one batch, the one-off cost per batch of building the cache. Returns per mode the
    median and best seconds per step over ``rounds`` rounds of ``steps`` steps, and the ratio of medians to
    the plain step. Introduced in Chapter 4.
    """
    from .models import Decoder
    from .zoo import ZOO

    steps = check_int("steps", steps)
    rounds = check_int("rounds", rounds)
    s = replace(settings, steps=steps, eval_every=steps)
    sched = batch_schedule(len(windows), steps, s.batch_size, s.seed)
    cache = build_teacher_cache(teacher, windows, sched, k=s.top_k or 16, temperature=s.temperature, progress=False)
    modes = {"plain": replace(s, alpha=0.0),
             "live teacher": replace(s, alpha=0.9, teacher_mode="online", top_k=None),
             "cached top-k": replace(s, alpha=0.9, teacher_mode="cached", top_k=s.top_k or 16)}
    times: dict[str, list[float]] = {m: [] for m in [*modes, "teacher pass (cache build)"]}
    bar = None
    if progress:
        bar = progress_bar(total=rounds * (len(modes) + 1), desc="timing training steps", leave=False)
    for _ in range(rounds):
        for mode, ms in modes.items():
            res = distill(Decoder(ZOO["S"].config, seed=ms.seed), windows, ms, teacher=teacher, cache=cache,
                          schedule=sched, progress=False)
            times[mode].append(res.time_s / steps)
            if bar is not None:
                bar.update(1)
        t0 = time.perf_counter()
        build_teacher_cache(teacher, windows, sched[0], k=s.top_k or 16, temperature=s.temperature,
                            batch_size=s.batch_size, progress=False)
        times["teacher pass (cache build)"].append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    plain = float(np.median(times["plain"]))
    return pd.DataFrame([{"mode": m, "median_s": float(np.median(v)), "best_s": float(np.min(v)),
                          "ratio_to_plain": float(np.median(v)) / plain} for m, v in times.items()])


@experiment("tiny_eval", "Tiny distillation students vs teacher M: val loss, entropy, precision, acceptance")
def tiny_eval() -> pd.DataFrame:
    """Evaluate the shipped students of :func:`tiny_runs` (and the teacher itself) with :func:`student_report`.

    Adds each run's training cost from the cached curves. Introduced in Chapter 4.
    """
    from .results import cached
    from .zoo import load

    torch.set_num_threads(EXPERIMENT_THREADS)
    teacher = load("M")
    windows, val = tiny_data()
    samples = tiny_sample_windows(teacher, windows, n=256, seed=1)
    students = {"teacher": teacher, **{name: load_student(name) for name in TINY_RUNS}}
    report = student_report(students, teacher, val, samples=samples)
    report = report[report.student != "teacher"].reset_index(drop=True).pipe(
        lambda df: pd.concat([df, report[report.student == "teacher"]], ignore_index=True))
    curves = cached("distill.tiny_runs")
    last = curves.groupby("run").tail(1).set_index("run")
    runs = [r for r in report.student if r in TINY_RUNS]
    report["method"] = [TINY_RUNS[r].method if r in TINY_RUNS else "teacher M itself" for r in report.student]
    report["steps"] = [TINY_RUNS[r].settings.steps if r in TINY_RUNS else np.nan for r in report.student]
    for col in ("time_s", "teacher_time_s", "cache_time_s", "samples_time_s"):
        report[col] = [float(last.loc[r, col]) if r in runs else np.nan for r in report.student]
    return report


# --------------------------------------------------------------------------------------------------
# The roofline view: what the smaller model buys
# --------------------------------------------------------------------------------------------------

#: Teacher → student pairs of real model families (analyzer names), used by the roofline view and explorer.
PAIRS: dict[str, tuple[str, str]] = {
    "Llama-2 13B → 7B": ("llama-2-13b", "llama-2-7b"),
    "Llama-3 70B → 8B": ("llama-3-70b", "llama-3-8b"),
    "Qwen2.5 7B → 0.5B": ("qwen2.5-7b", "qwen2.5-0.5b"),
    "Qwen3 8B → 0.6B": ("qwen3-8b", "qwen3-0.6b"),
}
#: Devices of the static explorer (any registered device works in the live one).
EXPLORER_DEVICES = ("a6000", "a100-80gb", "h100-sxm", "rtx-4090", "l4", "jetson-agx-orin", "m2-ultra", "i9-13900k")


def _pairs(pairs) -> dict[str, tuple[str, str]]:
    if pairs is None:
        return dict(PAIRS)
    if isinstance(pairs, dict):
        return dict(pairs)
    out = {}
    for item in pairs:
        if isinstance(item, str):
            if item not in PAIRS:
                raise unknown_name("teacher/student pair", item, PAIRS)
            out[item] = PAIRS[item]
        else:
            teacher, student = item
            out[f"{teacher} → {student}"] = (teacher, student)
    return out


def teacher_student_costs(
    pairs=None,
    devices: Sequence[str] = EXPLORER_DEVICES,
    batches: Sequence[int] = (1, 4, 16, 64, 256),
    seq_lens: Sequence[int] = (512, 1024, 2048, 4096),
    w_bits: int = 16,
    a_bits: int = 16,
) -> pd.DataFrame:
    """Teacher vs student decode cost on each device, from the analyzer's roofline model [Yuan et al. 2024].

    One row per pair, role (``teacher``/``student``), device, batch and context ``seq_len`` (tokens in the KV
    cache): ``tpot_s`` (one decode step), ``ttft_s`` (prefill of a ``seq_len``-token prompt at that batch),
    ``weights_bytes``, ``kv_cache_bytes``, ``memory_bytes``, ``capacity_bytes`` and ``fits``. At small batch
    decoding is memory-bound, so the student's speedup is about its ratio of bytes read per step.
    Introduced in Chapter 4.
    """
    from .analyzer import sweep
    from .hardware import hardware

    pairs = _pairs(pairs)
    frames = []
    for label, (teacher, student) in pairs.items():
        for role, name in (("teacher", teacher), ("student", student)):
            common = dict(batch=list(batches), seq_len=list(seq_lens), w_bits=w_bits, a_bits=a_bits,
                          check_context=False)
            dec = sweep(name, list(devices), stage="decode", **common)
            pre = sweep(name, list(devices), stage="prefill", **common)
            dec = dec.assign(pair=label, role=role, tpot_s=dec.time_s, ttft_s=pre.time_s.to_numpy())
            frames.append(dec)
    df = pd.concat(frames, ignore_index=True)
    df["capacity_bytes"] = [hardware(d).memory_bytes for d in df.device]
    cols = ["pair", "role", "model", "device", "batch", "seq_len", "w_bits", "tpot_s", "ttft_s", "weights_bytes",
            "kv_cache_bytes", "memory_bytes", "capacity_bytes", "fits"]
    return df[cols]


def teacher_student_limits(
    pairs=None,
    devices: Sequence[str] = EXPLORER_DEVICES,
    seq_lens: Sequence[int] = (512, 1024, 2048, 4096),
    w_bits: int = 16,
    a_bits: int = 16,
) -> pd.DataFrame:
    """Per pair, role, device and context: the weights, TTFT and TPOT at batch 1 and the largest batch that fits.

    ``max_batch`` is the analyzer's :func:`~unveiled.analyzer.max_batch` (weights + KV cache + activations
    within the device's memory; 0 if even one sequence does not fit). The student's smaller weights leave
    room for more KV cache, so it serves larger batches on the same device. Introduced in Chapter 4.
    """
    from .analyzer import max_batch

    base = teacher_student_costs(pairs, devices, batches=(1,), seq_lens=seq_lens, w_bits=w_bits, a_bits=a_bits)
    base["max_batch"] = [
        max_batch(m, d, seq_len=int(s), w_bits=w_bits, a_bits=a_bits) for m, d, s in
        zip(base.model, base.device, base.seq_len, strict=True)
    ]
    return base.drop(columns=["batch", "fits"])


def decode_on_this_machine(
    models: dict[str, torch.nn.Module],
    device,
    context: int = 128,
    new_tokens: int = 64,
    batch: int = 1,
    repeats: int = 3,
) -> pd.DataFrame:
    """Measured decode time per token of each model on this CPU next to the analyzer's roofline prediction.

    ``device`` is the measured machine (``uv.measure_machine().device``); the models run in fp32, so the
    analyzer is asked for 32-bit weights and activations with a KV cache of ``context`` tokens. A large gap
    between the two means the step is not bandwidth- or compute-bound but overhead-bound (Python and kernel
    launches), as tiny models are. Introduced in Chapter 4.
    """
    from .analyzer import analyze, model_from_hf_config

    rows = []
    for name, m in models.items():
        measured = measure_decode(m, batch=batch, prompt_len=context, new_tokens=new_tokens, repeats=repeats)
        spec = model_from_hf_config(m.config.to_hf_config(), name=name)
        pred = analyze(spec, device, stage="decode", batch=batch, seq_len=context + new_tokens // 2, w_bits=32,
                       a_bits=32, check_context=False)
        rows.append({"model": name, "parameters": m.num_parameters(), "weights_bytes": pred.memory.weights,
                     "kv_cache_bytes_per_token": pred.memory.kv_cache / (batch * (context + new_tokens // 2)),
                     "predicted_tpot_s": pred.time_s, "measured_tpot_s": measured["tpot_s"],
                     "measured_ttft_s": measured["ttft_s"]})
    df = pd.DataFrame(rows)
    df["overhead_factor"] = df.measured_tpot_s / df.predicted_tpot_s
    return df


# --------------------------------------------------------------------------------------------------
# Black-box distillation from the real pretrained model (SmolLM2) into a character model
# --------------------------------------------------------------------------------------------------


def smollm2_continuations(n: int = 160, prompt_tokens: int = 48, new_tokens: int = 64, temperature: float = 1.0,
                          seed: int = 0, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """SmolLM2-135M's continuations of ``n`` passages of Tiny Shakespeare's training split (black-box outputs).

    Each prompt is the first ``prompt_tokens`` BPE tokens of a seeded 600-character passage; SmolLM2 samples
    ``new_tokens`` more at ``temperature``. Returns ``prompt`` and ``continuation`` texts. Only text crosses
    over: this is how a character model can learn from a BPE model. Introduced in Chapter 4.
    """
    from .generation import generate
    from .smollm2 import load_smollm2, smollm2_tokenizer
    from .text import corpus_split

    model = load_smollm2(progress=progress)
    tok = smollm2_tokenizer()
    text = corpus_split("train")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(text) - 600, (n,), generator=gen).tolist()
    prompts = torch.tensor([tok.encode(text[s : s + 600])[:prompt_tokens] for s in starts])
    rows = []
    bar = None
    if progress:
        bar = progress_bar(total=n, desc="SmolLM2 continuations", leave=False)
    for i in range(0, n, batch_size):
        out = generate(model, prompts[i : i + batch_size], new_tokens, temperature=temperature, seed=seed + i,
                       progress=False)
        for row in out.tolist():
            rows.append({"prompt": tok.decode(row[:prompt_tokens]), "continuation": tok.decode(row[prompt_tokens:])})
        if bar is not None:
            bar.update(len(out))
    if bar is not None:
        bar.close()
    return pd.DataFrame(rows)


def _char_windows(texts: Sequence[str], seq_len: int) -> tuple[torch.Tensor, int, int]:
    """Character windows of the concatenated texts (characters outside the 65-character vocabulary dropped)."""
    from .text import shakespeare_tokenizer

    tok = shakespeare_tokenizer()
    joined = "\n".join(texts)
    ids = tok.encode(joined, errors="skip")
    return text_windows(torch.tensor(ids), seq_len, stride=seq_len // 2), len(joined), len(ids)


@experiment("smollm2_blackbox", "Black-box distillation from SmolLM2-135M into the character student S")
def smollm2_blackbox(steps: int = 80, held_out: int = 32) -> pd.DataFrame:
    """Fine-tune the shipped student S on SmolLM2's text and measure how far it moves towards its teacher.

    SmolLM2 (49,152 BPE tokens) and S (65 characters) share no vocabulary, so no token-level loss applies; the
    student can still train on SmolLM2's text (sequence-level distillation [Kim & Rush 2016]). S is
    fine-tuned for ``steps`` steps (16 × 128 characters, lr 1e-3) on the continuations of 128 passages and
    evaluated, before and after, on ``held_out`` other continuations (the teacher's distribution) and on
    Tiny Shakespeare's validation text. The continuations are kept in ``data/distill/smollm2_continuations.csv``
    and reused when present (generating them is the slow part). Rows: ``model`` (before/after), ``teacher_text_loss``,
    ``shakespeare_val_loss`` (nats/char), plus the characters dropped as out of vocabulary.
    Introduced in Chapter 4.
    """
    from .zoo import card, load

    torch.set_num_threads(EXPERIMENT_THREADS)
    saved = _checkpoint_dir() / "smollm2_continuations.csv"
    t0 = time.perf_counter()
    if saved.is_file():  # generating is the slow part (SmolLM2 on a CPU): reuse the shipped continuations
        conts = pd.read_csv(saved, keep_default_na=False)
    else:
        conts = smollm2_continuations()
        saved.parent.mkdir(parents=True, exist_ok=True)
        conts.to_csv(saved, index=False)
    gen_time = time.perf_counter() - t0
    texts = conts.continuation.tolist()
    train, _, _ = _char_windows(texts[held_out:], TINY_SEQ_LEN)
    test, chars, kept = _char_windows(texts[:held_out], TINY_SEQ_LEN)
    _, val = tiny_data()
    student = load("S")
    rows = []

    def evaluate(label: str, model) -> None:
        with torch.inference_mode():
            logits = model(test[:, :-1])
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), test[:, 1:].reshape(-1)).item()
        rows.append({"model": label, "teacher_text_loss": nll, "shakespeare_val_loss": tiny_val_loss(model, val),
                     "generation_time_s": gen_time, "train_windows": len(train),
                     "dropped_char_fraction": 1 - kept / chars, "student_sha256": card("S")["weights_sha256"]})

    evaluate("S before", student)
    settings = replace(TINY_BASE, steps=steps, lr=1e-3, warmup_fraction=0.1)
    distill(student, train, settings, progress=True)
    evaluate("S after black-box distillation from SmolLM2", student)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Small tables for the chapter
# --------------------------------------------------------------------------------------------------


def model_table(models: dict[str, torch.nn.Module]) -> pd.DataFrame:
    """Shape and size of each model: layers, width, heads, parameters and weight bytes in fp16.

    Introduced in Chapter 4.
    """
    rows = []
    for name, m in models.items():
        c = m.config
        rows.append({"model": name, "num_layers": c.num_layers, "hidden_size": c.hidden_size, "num_heads": c.num_heads,
                     "num_kv_heads": c.num_kv_heads, "vocab_size": c.vocab_size, "parameters": m.num_parameters(),
                     "weights_bytes_fp16": 2 * m.num_parameters(),
                     "kv_bytes_per_token_fp16": 2 * 2 * c.num_layers * c.num_kv_heads * c.head_dim})
    return pd.DataFrame(rows)


@torch.inference_mode()
def next_token_table(models: dict[str, torch.nn.Module], tokenizer, context: str, k: int = 5) -> pd.DataFrame:
    """The ``k`` most likely next tokens of each model after ``context`` (one column per model).

    Cells read ``'token' probability``. Shows on real text what the divergences do: a mode-seeking student
    puts more mass on the teacher's favourite, a mode-covering one keeps the alternatives. Introduced in
    Chapter 4.
    """
    k = check_int("k", k)
    ids = torch.tensor([tokenizer.encode(context)])
    out = {}
    for name, m in models.items():
        probs = m(ids)[0, -1].float().softmax(-1)
        top = torch.topk(probs, k)
        out[name] = [f"{tokenizer.decode([int(i)])!r} {float(p):.3f}" for p, i in zip(top.values, top.indices,
                                                                                      strict=True)]
    return pd.DataFrame(out, index=pd.RangeIndex(1, k + 1, name="rank"))


def cost_points(curves: pd.DataFrame, costs: pd.DataFrame, shared_by: int = 5) -> pd.DataFrame:
    """Final validation loss of each tiny run against its training cost, in units of a plain 400-step run.

    ``costs`` is :func:`step_costs`'s table (measured ratios to the plain step). A run with the live teacher
    costs ``steps × ratio``; a cached run costs its steps plus the teacher passes that built the cache, once
    if the run pays for it alone (``cache: own``) or divided among the ``shared_by`` runs that read the same
    cache (``cache: shared``). Black-box and on-policy runs are left out (their costs are of another kind:
    sampling). ``data_frontier`` is the loss plain training reaches at the same cost, interpolated linearly
    between the data-only runs (NaN outside their range): a run below it beats plain training at equal cost.
    Introduced in Chapter 4.
    """
    ratio = costs.set_index("mode").ratio_to_plain
    last = curves.groupby("run").tail(1).set_index("run")
    base = TINY_BASE.steps
    rows = []
    for name, spec in TINY_RUNS.items():
        if name not in last.index or spec.data != "text" or spec.settings.on_policy_fraction > 0:
            continue
        s = spec.settings
        val = float(last.loc[name, "val_loss"])
        if s.alpha == 0:
            rows.append({"run": name, "method": spec.method, "val_loss": val, "cost_plain_steps": s.steps / base})
        elif s.teacher_mode == "online":
            rows.append({"run": name, "method": spec.method, "val_loss": val,
                         "cost_plain_steps": s.steps * ratio["live teacher"] / base})
        else:
            teacher = ratio["teacher pass (cache build)"]
            rows.append({"run": f"{name} (cache: own)", "method": spec.method, "val_loss": val,
                         "cost_plain_steps": s.steps * (ratio["cached top-k"] + teacher) / base})
            rows.append({"run": f"{name} (cache: shared)", "method": spec.method, "val_loss": val,
                         "cost_plain_steps": s.steps * (ratio["cached top-k"] + teacher / shared_by) / base})
    out = pd.DataFrame(rows)
    data = out[out.method == "data only"].sort_values("cost_plain_steps")
    lo, hi = data.cost_plain_steps.min(), data.cost_plain_steps.max()
    out["data_frontier"] = [float(np.interp(c, data.cost_plain_steps, data.val_loss)) if lo <= c <= hi else np.nan
                            for c in out.cost_plain_steps]
    return out


def with_settings(settings: DistillSettings, **changes) -> DistillSettings:
    """A copy of ``settings`` with some fields changed (validated again)."""
    return replace(settings, **changes)
