"""Lab checks of Chapter 4 (knowledge distillation).

The reader implements two functions on PyTorch logits ``[..., V]``:

* ``reverse_kl(student_logits, teacher_logits, temperature=1.0)``: MiniLLM's divergence with Hinton's
  temperature, τ² · mean over positions of KL(q‖p), with q = softmax(student/τ) and p = softmax(teacher/τ);
* ``acceptance(target_logits, draft_logits)``: the expected acceptance rate of speculative sampling,
  the mean over positions of Σ_v min(p, q), with p = softmax(target) and q = softmax(draft).

Each check compares values *and gradients* with the library's reference (:mod:`unveiled.distill`) on fixed
cases and recognises the classic mistakes with a targeted hint: the forward KL instead of the reverse one, a
forgotten τ² or a forgotten division of the logits, a sum instead of a mean over positions, ``log(softmax)``
overflowing where ``log_softmax`` does not, a result detached from the graph (``.item()``, NumPy), a gradient
leaking into the frozen teacher, ``max`` for ``min``. Introduced in Chapter 4.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..distill import expected_acceptance, forward_kl
from ..distill import reverse_kl as _reference_rkl
from . import Case, LabReport, run_cases

__all__ = ["CHECKS", "check_acceptance", "check_reverse_kl"]

# The chapter sections the hints point at (headings without their numbers).
_KL = "Forward or reverse KL: covering the modes or seeking one"
_DRAFT = "Distillation for decoding: a draft that agrees with its target"
_KL_HINT = ("Write the divergence as a sum over the vocabulary first: which distribution weighs the log-ratio in the "
            "reverse KL, and where does the temperature enter?")
_ALPHA_HINT = ("Turn both sets of logits into distributions first; the acceptance rate at one position is the "
               "probability mass the two share. Check which axis you reduce, and which you average.")


def _logits(seed: int, shape: tuple[int, ...], scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(shape, generator=g, dtype=torch.float64)


def _as_array(result) -> np.ndarray:
    if isinstance(result, torch.Tensor):
        return result.detach().double().cpu().numpy()
    return np.asarray(result, dtype=float)


def _show_tensor(result) -> str:
    if isinstance(result, torch.Tensor):
        return f"a tensor of shape {tuple(result.shape)} " + ("with a gradient" if result.grad_fn is not None else
                                                             "without a gradient (grad_fn is None)")
    return f"a {type(result).__name__} (no gradient)"


def _value_judge(expected: float, mistakes: dict[str, float], rtol: float = 1e-6, atol: float = 1e-9):
    """Accept a scalar close to ``expected``; name the known mistakes whose value the result matches."""

    def judge(result) -> str | None:
        try:
            got = _as_array(result)
        except (TypeError, ValueError):
            return f"expected a number (a 0-d tensor), got {type(result).__name__}"
        if got.size != 1:
            return (f"expected one number (the mean over positions), got an array of shape {got.shape}: reduce over "
                    "the vocabulary with .sum(-1), then average over positions with .mean()")
        got = float(got.reshape(()))
        if not np.isfinite(got):
            return (f"got {got}: log(softmax(x)) underflows to log(0) = -inf for very negative logits; use "
                    "torch.log_softmax, which is computed stably")
        if np.isclose(got, expected, rtol=rtol, atol=atol):
            return None
        hits = [msg for msg, wrong in mistakes.items() if np.isclose(got, wrong, rtol=1e-6, atol=1e-12)]
        return " Or: ".join(hits) if hits else f"off by {got - expected:+.4g}"

    return judge


def check_reverse_kl(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``reverse_kl(student_logits, teacher_logits, temperature=1.0)`` (Lab 4.1): values and gradients."""

    def ref(s, t, tau=1.0):
        return float(_reference_rkl(s, t, temperature=tau))

    def fkl(s, t, tau=1.0):
        return float(forward_kl(s, t, temperature=tau))

    cases = []
    s = _logits(0, (4, 6))
    cases.append(Case("equal distributions give 0 (logits differing by a constant)", (s, s + 3.0),
                      judge=_value_judge(0.0, {}, atol=1e-10), expected=0.0, section=_KL,
                      hint="Adding a constant to every logit does not change the softmax: what is the divergence "
                           "of a distribution from itself?"))
    one_s = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    one_t = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    cases.append(Case("one position, 3 tokens, τ = 1", (one_s, one_t), {"temperature": 1.0},
                      judge=_value_judge(ref(one_s, one_t), {
                          "You computed the forward KL(p‖q); the reverse KL weighs by the student: Σ q (log q − log p).":
                              fkl(one_s, one_t)}),
                      expected=ref(one_s, one_t), hint=_KL_HINT, section=_KL))
    bs, bt = _logits(2, (2, 3, 5)), _logits(3, (2, 3, 5))
    cases.append(Case("a batch [2, 3, 5]: average over the 6 positions", (bs, bt),
                      judge=_value_judge(ref(bs, bt), {
                          "You summed over positions; average them (sum over the vocabulary only).": 6 * ref(bs, bt),
                          "You averaged over every element; sum over the vocabulary, then average over positions.":
                              ref(bs, bt) / 5,
                          "You computed the forward KL(p‖q) instead of the reverse KL(q‖p).": fkl(bs, bt)}),
                      expected=ref(bs, bt), section=_KL,
                      hint="Sum over the vocabulary (the last axis), then average over every other axis."))
    ts, tt = _logits(4, (3, 7)), _logits(5, (3, 7))
    tau = 2.0
    cases.append(Case("temperature τ = 2: divide the logits by τ, multiply the KL by τ²", (ts, tt),
                      {"temperature": tau},
                      judge=_value_judge(ref(ts, tt, tau), {
                          "You forgot Hinton's τ² factor.": ref(ts, tt, tau) / tau**2,
                          "You multiplied by τ² but did not divide the logits by τ.": tau**2 * ref(ts, tt, 1.0),
                          "You ignored the temperature altogether.": ref(ts, tt, 1.0),
                          "You divided by τ² instead of multiplying.": ref(ts, tt, tau) / tau**4}),
                      expected=ref(ts, tt, tau), hint=_KL_HINT, section=_KL))
    big_s = torch.tensor([[1000.0, -1000.0, 0.0], [-900.0, 950.0, 10.0]], dtype=torch.float64)
    big_t = torch.tensor([[800.0, -300.0, 750.0], [0.0, 960.0, -40.0]], dtype=torch.float64)
    cases.append(Case("very large logits (±1000) stay finite", (big_s, big_t),
                      judge=_value_judge(ref(big_s, big_t), {}, rtol=1e-6), expected=ref(big_s, big_t),
                      section=_KL, hint="exp(−1000) underflows to 0 and log(0) is −inf: PyTorch has a function that "
                                        "computes log-probabilities without forming the probabilities first."))

    gs = _logits(6, (3, 5)).requires_grad_(True)
    gt = _logits(7, (3, 5))
    want = gs.detach().clone().requires_grad_(True)
    _reference_rkl(want, gt, temperature=1.5).backward()

    def grad_judge(result) -> str | None:
        if not isinstance(result, torch.Tensor) or result.grad_fn is None:
            return ("the result carries no gradient: return the torch tensor itself (no .item(), float() or NumPy), "
                    "so that loss.backward() can train the student")
        gs.grad = None
        result.backward()
        if gs.grad is None:
            return "no gradient reached student_logits"
        if not torch.allclose(gs.grad, want.grad, rtol=1e-6, atol=1e-9):
            err = float((gs.grad - want.grad).abs().max())
            return f"the gradient with respect to student_logits differs from the reference (max error {err:.3g})"
        return None

    cases.append(Case("gradient with respect to the student's logits (autograd, τ = 1.5)", (gs, gt),
                      {"temperature": 1.5}, judge=grad_judge, section=_KL,
                      expected="a 0-d tensor whose .backward() gives the reference gradient",
                      show_result=_show_tensor,
                      hint="The loss trains the student: keep every step in PyTorch so autograd can follow it."))
    fs, ft = _logits(8, (2, 4)).requires_grad_(True), _logits(9, (2, 4)).requires_grad_(True)

    def frozen_judge(result) -> str | None:
        if not isinstance(result, torch.Tensor) or result.grad_fn is None:
            return "the result carries no gradient (see the previous case)"
        result.backward()
        if ft.grad is not None and float(ft.grad.abs().max()) > 0:
            return ("a gradient flowed into teacher_logits: the teacher is frozen, treat its logits as constants "
                    "(teacher_logits.detach())")
        return None

    cases.append(Case("the teacher is a constant: no gradient reaches teacher_logits", (fs, ft), judge=frozen_judge,
                      expected="no gradient in teacher_logits.grad", show_result=_show_tensor, section=_KL,
                      hint="The teacher is frozen: its logits are data, not parameters of the loss."))
    return run_cases(fn, cases, "Lab 4.1: reverse_kl", raise_on_fail=raise_on_fail, show=show)


def check_acceptance(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``acceptance(target_logits, draft_logits)`` -> mean of Σ min(p, q) over positions (Lab 4.2)."""

    def ref(t, d):
        return float(expected_acceptance(t, d, temperature=1.0))

    def overlap_max(t, d):
        return float(torch.maximum(t.softmax(-1), d.softmax(-1)).sum(-1).mean())

    cases = []
    t, d = _logits(10, (5, 8)), _logits(11, (5, 8))
    cases.append(Case("a draft identical to the target is always accepted (α = 1)", (t, t.clone()),
                      judge=_value_judge(1.0, {}, rtol=1e-9), expected=1.0, hint=_ALPHA_HINT, section=_DRAFT))
    far = torch.full((2, 4), -1e4, dtype=torch.float64)
    tp, dq = far.clone(), far.clone()
    tp[:, 0], dq[:, 1] = 0.0, 0.0
    cases.append(Case("a draft that never proposes the target's token is never accepted (α = 0)", (tp, dq),
                      judge=_value_judge(0.0, {}, atol=1e-9), expected=0.0, hint=_ALPHA_HINT, section=_DRAFT))
    cases.append(Case("random target and draft, 5 positions of 8 tokens", (t, d),
                      judge=_value_judge(ref(t, d), {
                          "You used max instead of min: accepted mass is where both agree, Σ min(p, q).":
                              overlap_max(t, d),
                          "You summed over positions; average them.": 5 * ref(t, d),
                          "You returned the rejection rate 1 − α.": 1 - ref(t, d)}),
                      expected=ref(t, d), hint=_ALPHA_HINT, section=_DRAFT))
    bt, bd = _logits(12, (2, 3, 6), scale=4.0), _logits(13, (2, 3, 6), scale=4.0)
    cases.append(Case("a batch [2, 3, 6]", (bt, bd), judge=_value_judge(ref(bt, bd), {
        "You averaged over every element; sum over the vocabulary, then average over positions.": ref(bt, bd) / 6}),
        expected=ref(bt, bd), section=_DRAFT,
        hint="Sum over the vocabulary (the last axis), then average over every other axis."))
    return run_cases(fn, cases, "Lab 4.2: acceptance", raise_on_fail=raise_on_fail, show=show)


CHECKS: dict[str, Callable] = {
    "reverse_kl": check_reverse_kl,
    "acceptance": check_acceptance,
}
