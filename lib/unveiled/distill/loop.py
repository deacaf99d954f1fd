"""The distillation training loop: seeded, counted in steps, with the teacher live, cached or sampled.

:class:`DistillSettings` names a run: the book's training recipe (:mod:`unveiled.training`: AdamW, warm-up
and cosine decay, clipping), the loss mix and how the teacher is consulted. :func:`distill` trains a student
in place and logs every step. Introduced in Chapter 4.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import pandas as pd
import torch
import torch.nn.functional as F

from .._validate import check_choice, check_int, check_number, unknown_name
from ..generation import generate
from ..session import progress_bar
from ..training import TrainingRecipe, make_optimizer, optimizer_step
from .data import TeacherCache, batch_schedule
from .divergences import LOSSES, _check_temperature, _reduce, distillation_loss, topk_targets

__all__ = [
    "DistillResult",
    "DistillSettings",
    "distill",
    "with_settings",
]

# --------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistillSettings(TrainingRecipe):
    """A distillation run: the book's training recipe (:class:`~unveiled.training.TrainingRecipe`: steps,
    AdamW, schedule, clipping, seed), the batch shape, the loss mix and how the teacher is consulted.

    The loss is (1 − ``alpha``)·CE(data) + ``alpha``·``loss``(teacher‖student) at ``temperature``;
    ``alpha = 0`` is plain training on the data (no teacher). ``top_k`` = None consults the teacher's full
    logits during the step (``teacher_mode="online"`` only); an int uses its top-k summary, computed during
    the step (``"online"``) or read from a precomputed cache (``"cached"``). ``on_policy_fraction`` λ is the
    share of steps whose sequences the student writes itself (continuing ``prompt_len`` tokens of a window by
    ``seq_len - prompt_len`` sampled tokens) and the teacher scores (GKD [Agarwal et al. 2024]); those steps
    use the divergence only. Introduced in Chapter 4.
    """

    steps: int = 400
    batch_size: int = 16
    alpha: float = 0.0
    loss: str = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    top_k: int | None = 16
    teacher_mode: str = "cached"
    on_policy_fraction: float = 0.0
    prompt_len: int = 32
    eval_every: int = 100
    eval_chars: int = 16_384

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("batch_size", self.batch_size)
        check_int("prompt_len", self.prompt_len)
        check_int("eval_every", self.eval_every)
        for name in ("alpha", "beta", "on_policy_fraction"):
            check_number(name, getattr(self, name))
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


def _masked_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return _reduce(ce.reshape(targets.shape), mask, "mean")


def _student_samples(student, x: torch.Tensor, prompt_len: int, seed: int) -> torch.Tensor:

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
    Each step computes the loss of its batch (:func:`_off_policy_loss`, or :func:`_on_policy_loss` on the
    student's own text) and applies the book's optimiser step (:func:`unveiled.training.optimizer_step`).
    Introduced in Chapter 4.
    """
    s = settings
    schedule = _check_run(student, windows, s, teacher, cache, mask, schedule)
    on_policy = torch.rand(s.steps, generator=torch.Generator().manual_seed(s.seed + 1)) < s.on_policy_fraction
    student.train()
    opt = make_optimizer(student, s)
    rows, elapsed, teacher_time = [], 0.0, 0.0
    bar = _progress_bar(s) if progress else None
    for step in range(s.steps):
        t0 = time.perf_counter()
        ids = schedule[step]
        if on_policy[step]:
            loss, ce, kd, t_teacher = _on_policy_loss(student, teacher, windows[ids], s, step)
        else:
            m = None if mask is None else mask[ids]
            loss, ce, kd, t_teacher = _off_policy_loss(student, teacher, cache, windows[ids], ids, m, s)
        lr = optimizer_step(student, opt, loss, s, step)
        teacher_time += t_teacher
        elapsed += time.perf_counter() - t0
        row = {"step": step + 1, "lr": lr, "loss": loss.item(), "ce": float("nan") if ce is None else ce.item(),
               "kd": float("nan") if kd is None else kd.item(), "on_policy": bool(on_policy[step]),
               "time_s": elapsed, "val_loss": float("nan")}
        if val_loss is not None and ((step + 1) % s.eval_every == 0 or step + 1 == s.steps):
            row["val_loss"] = _evaluate(student, val_loss)
        rows.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}")
    if bar is not None:
        bar.close()
    student.eval()
    cache_time = cache.time_s if (cache is not None and s.teacher_mode == "cached" and s.alpha > 0) else 0.0
    return DistillResult(student, pd.DataFrame(rows), s, elapsed, teacher_time, cache_time)


def _check_run(student, windows, s: DistillSettings, teacher, cache, mask, schedule) -> torch.Tensor:
    """Check a run's inputs against its settings; return its batch schedule ``[steps, batch_size]``."""
    _check_decoder("student", student)
    if not isinstance(s, DistillSettings):
        raise TypeError(f"settings must be a DistillSettings, got {type(s).__name__}")
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError("windows must be a [N, seq_len + 1] tensor of token ids (see text_windows)")
    n_win, t = windows.shape[0], windows.shape[1] - 1
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (n_win, t)):
        raise ValueError(f"mask must be a bool tensor [{n_win}, {t}] (one entry per predicted position)")
    if schedule is None:
        schedule = batch_schedule(n_win, s.steps, s.batch_size, s.seed)
    elif tuple(schedule.shape) != (s.steps, s.batch_size):
        raise ValueError(f"schedule must be [{s.steps}, {s.batch_size}], got {tuple(schedule.shape)}")
    if s.uses_teacher and (s.teacher_mode == "online" or s.on_policy_fraction > 0):
        if teacher is None:
            raise ValueError("these settings consult the teacher during training: pass teacher=...")
        _check_decoder("teacher", teacher)
        vocab = getattr(getattr(student, "config", None), "vocab_size", None)
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
    return schedule


def _progress_bar(s: DistillSettings):
    return progress_bar(total=s.steps, desc=f"distilling ({s.loss}, α={s.alpha:g})" if s.uses_teacher else "training",
                leave=False)


def _teacher_target(teacher, x: torch.Tensor, s: DistillSettings) -> tuple[object, float]:
    """The live teacher's target for inputs ``x`` (full logits, or their top-k) and the seconds its pass took."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = teacher(x)
    seconds = time.perf_counter() - t0
    return (logits.clone() if s.top_k is None else topk_targets(logits, s.top_k, s.temperature)), seconds


def _off_policy_loss(student, teacher, cache, batch, ids, mask, s: DistillSettings) -> tuple:
    """Cross-entropy on the batch's text, mixed with the divergence from the teacher (cached or live) when
    ``alpha`` > 0. Returns ``(loss, ce, kd or None, teacher seconds)``."""
    x, y = batch[:, :-1], batch[:, 1:]
    logits = student(x)
    ce = _masked_ce(logits, y, mask)
    if s.alpha == 0:
        return ce, ce, None, 0.0
    seconds = 0.0
    if s.teacher_mode == "cached":
        target = cache.lookup(ids)
    else:
        target, seconds = _teacher_target(teacher, x, s)
    kd = distillation_loss(s.loss, logits, target, s.temperature, s.beta, mask=mask)
    return (1 - s.alpha) * ce + s.alpha * kd, ce, kd, seconds


def _on_policy_loss(student, teacher, batch, s: DistillSettings, step: int) -> tuple:
    """GKD's on-policy branch: the student continues the batch's prompts itself and the live teacher grades
    every generated position (the divergence only). Returns ``(loss, None, kd, teacher seconds)``."""
    with torch.no_grad():
        batch = _student_samples(student, batch[:, :-1], s.prompt_len, s.seed * 100_003 + step)
    x = batch[:, :-1]
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, min(s.prompt_len, x.shape[1] - 1) - 1 :] = True
    logits = student(x)
    target, seconds = _teacher_target(teacher, x, s)
    kd = distillation_loss(s.loss, logits, target, s.temperature, s.beta, mask=mask)
    return kd, None, kd, seconds


def _evaluate(student: torch.nn.Module, val_loss: Callable[[torch.nn.Module], float]) -> float:
    student.eval()
    with torch.no_grad():
        value = float(val_loss(student))
    student.train()
    return value


def with_settings(settings: DistillSettings, **changes) -> DistillSettings:
    """A copy of ``settings`` with some fields changed (validated again)."""
    return replace(settings, **changes)
