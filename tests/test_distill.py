"""Distillation losses: zero at equality, non-negative, closed forms, gradients, JSD limits, top-k bounds, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unveiled import distill as d

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd", "tv"]


def logits_pair(seed: int, shape=(3, 4, 7), scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g, dtype=dtype), scale * torch.randn(shape, generator=g, dtype=dtype))


def bernoulli_logits(a: float) -> torch.Tensor:
    return torch.tensor([math.log(a), math.log(1 - a)], dtype=torch.float64)


def kl_bern(a: float, b: float) -> float:
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


def binary_entropy(b: float) -> float:
    return -b * math.log(b) - (1 - b) * math.log(1 - b)


# --- zero at equality, non-negativity -------------------------------------------------------------------


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_zero_when_the_distributions_match(name, temperature):
    s, _ = logits_pair(0)
    shifted = s + 5.0  # same softmax: logits are defined up to a constant
    assert float(d.distillation_loss(name, s, shifted, temperature=temperature)) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 20.0), temperature=st.floats(0.2, 5.0),
       beta=st.floats(0.0, 1.0))
def test_every_divergence_is_non_negative(seed, scale, temperature, beta):
    s, t = logits_pair(seed, scale=scale)
    for name in DIVERGENCES:
        value = d.distillation_loss(name, s, t, temperature=temperature, beta=beta, reduction="none")
        assert torch.all(value >= -1e-12), (name, value.min())
    raw = d.generalized_jsd(s, t, beta=beta, temperature=temperature, scaled=False, reduction="none")
    # 0 <= JSD_beta <= h(beta) (times the tau^2 factor)
    bound = temperature**2 * (binary_entropy(beta) if 0 < beta < 1 else 0.0)
    assert torch.all(raw >= -1e-12) and torch.all(raw <= bound + 1e-9)


# --- closed forms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("a", "b"), [(0.3, 0.6), (0.9, 0.2), (0.5, 0.01)])
def test_kl_equals_the_bernoulli_closed_form(a, b):
    teacher, student = bernoulli_logits(a), bernoulli_logits(b)
    assert float(d.forward_kl(student, teacher)) == pytest.approx(kl_bern(a, b), rel=1e-12)
    assert float(d.reverse_kl(student, teacher)) == pytest.approx(kl_bern(b, a), rel=1e-12)
    assert float(d.total_variation(student, teacher)) == pytest.approx(abs(a - b), rel=1e-12)


def test_temperature_divides_the_logits_and_multiplies_by_tau_squared():
    s, t = logits_pair(1)
    for fn in (d.forward_kl, d.reverse_kl, d.total_variation):
        assert float(fn(s, t, temperature=2.5)) == pytest.approx(2.5**2 * float(fn(s / 2.5, t / 2.5)), rel=1e-12)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.8])
def test_jsd_of_disjoint_distributions_is_the_binary_entropy(beta):
    # p on token 0, q on token 1 (the other logits far below): M = beta p + (1 - beta) q, JSD = h(beta).
    teacher = torch.tensor([0.0, -1e4, -1e4], dtype=torch.float64)
    student = torch.tensor([-1e4, 0.0, -1e4], dtype=torch.float64)
    raw = float(d.generalized_jsd(student, teacher, beta=beta, scaled=False))
    assert raw == pytest.approx(binary_entropy(beta), rel=1e-10)
    scaled = float(d.generalized_jsd(student, teacher, beta=beta))
    assert scaled == pytest.approx(binary_entropy(beta) / (beta * (1 - beta)), rel=1e-10)


def test_jsd_closed_form_on_a_small_case():
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.1, 0.6, 0.3])
    beta = 0.3
    m = beta * p + (1 - beta) * q
    want = beta * np.sum(p * np.log(p / m)) + (1 - beta) * np.sum(q * np.log(q / m))
    got = d.generalized_jsd(torch.tensor(np.log(q)), torch.tensor(np.log(p)), beta=beta, scaled=False)
    assert float(got) == pytest.approx(want, rel=1e-12)


# --- generalized JSD: limits and symmetry ---------------------------------------------------------------


def test_scaled_jsd_reduces_to_forward_and_reverse_kl_at_its_ends():
    s, t = logits_pair(2)
    fkl, rkl = float(d.forward_kl(s, t)), float(d.reverse_kl(s, t))
    assert float(d.generalized_jsd(s, t, beta=0.0)) == fkl
    assert float(d.generalized_jsd(s, t, beta=1.0)) == rkl
    # ... and is continuous there: the interior formula tends to the same values (error O(beta)).
    for eps in (1e-3, 1e-5):
        assert float(d.generalized_jsd(s, t, beta=eps)) == pytest.approx(fkl, rel=20 * eps)
        assert float(d.generalized_jsd(s, t, beta=1 - eps)) == pytest.approx(rkl, rel=20 * eps)
    # the raw divergence vanishes at both ends, as defined
    assert float(d.generalized_jsd(s, t, beta=0.0, scaled=False)) == 0.0
    assert float(d.generalized_jsd(s, t, beta=1.0, scaled=False)) == 0.0
    assert float(d.generalized_jsd(s, t, beta=1e-6, scaled=False)) == pytest.approx(1e-6 * fkl, rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_scaled_jsd_keeps_its_precision_next_to_the_ends(dtype):
    # Regression: the textbook form divided a rounding error of ~eps·|log m| by beta (1 - beta) and, at
    # beta = 1 - 1e-16, returned values of order 1, some negative (found by the non-negativity property test).
    s, t = logits_pair(5, scale=3.0, dtype=dtype)
    fkl = d.forward_kl(s, t, reduction="none")
    rkl = d.reverse_kl(s, t, reduction="none")
    for eps in (1e-30, 1e-16, 1e-13):
        # the true value moves by O(eps): its slope in beta is a chi-square-like sum, ~1e4 for these logits
        tol = 1e5 * eps + (1e-12 if dtype == torch.float64 else 1e-5)
        near0 = d.generalized_jsd(s, t, beta=eps, reduction="none")
        near1 = d.generalized_jsd(s, t, beta=1 - eps, reduction="none")
        assert torch.allclose(near0, fkl, rtol=tol, atol=tol) and torch.allclose(near1, rkl, rtol=tol, atol=tol)
    # continuous across the switch between the two formulas (at beta = 1e-3 and 1 - 1e-3)
    for b in (1e-3, 1 - 1e-3):
        below = d.generalized_jsd(s, t, beta=b * (1 - 1e-9) if b < 0.5 else 1 - (1 - b) * (1 - 1e-9))
        above = d.generalized_jsd(s, t, beta=b * (1 + 1e-9) if b < 0.5 else 1 - (1 - b) * (1 + 1e-9))
        assert float(below) == pytest.approx(float(above), rel=1e-6 if dtype == torch.float64 else 1e-4)


def test_jsd_is_symmetric_at_one_half_and_swaps_ends():
    s, t = logits_pair(3)
    assert float(d.generalized_jsd(s, t, 0.5)) == pytest.approx(float(d.generalized_jsd(t, s, 0.5)), rel=1e-12)
    assert float(d.generalized_jsd(s, t, 0.2)) == pytest.approx(float(d.generalized_jsd(t, s, 0.8)), rel=1e-12)


# --- gradients ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gradient_matches_finite_differences(name, temperature):
    s, t = logits_pair(4, shape=(2, 3, 5))
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: d.distillation_loss(name, x, t, temperature=temperature, beta=0.3),
                                     (s,), eps=1e-6, atol=1e-8)


def test_total_variation_gradient_matches_finite_differences_away_from_ties():
    s, t = logits_pair(5, shape=(2, 5))
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: d.total_variation(x, t), (s,), eps=1e-7, atol=1e-7)


def test_kl_gradients_equal_their_closed_forms():
    s, t = logits_pair(6, shape=(4, 6))
    p, q = t.softmax(-1), s.softmax(-1)
    x = s.clone().requires_grad_(True)
    d.forward_kl(x, t, reduction="sum").backward()
    assert torch.allclose(x.grad, q - p, atol=1e-12)
    x = s.clone().requires_grad_(True)
    d.reverse_kl(x, t, reduction="sum").backward()
    kl = (q * (q.log() - p.log())).sum(-1, keepdim=True)
    assert torch.allclose(x.grad, q * (q.log() - p.log() - kl), atol=1e-12)


def test_no_gradient_reaches_the_teacher():
    s, t = logits_pair(7)
    t.requires_grad_(True)
    s.requires_grad_(True)
    for name in DIVERGENCES:
        d.distillation_loss(name, s, t).backward()
    assert t.grad is None and s.grad is not None


# --- masking and reductions -----------------------------------------------------------------------------


def test_mask_excludes_positions_and_mean_counts_only_kept_ones():
    s, t = logits_pair(8, shape=(2, 5, 4))
    mask = torch.tensor([[True, True, False, False, False], [True, False, False, False, True]])
    per = d.forward_kl(s, t, reduction="none")
    assert float(d.forward_kl(s, t, mask=mask)) == pytest.approx(float(per[mask].mean()), rel=1e-12)
    assert float(d.forward_kl(s, t, mask=mask, reduction="sum")) == pytest.approx(float(per[mask].sum()), rel=1e-12)


# --- cached top-k teacher -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIVERGENCES)
def test_topk_with_k_equal_vocab_is_exact(name):
    s, t = logits_pair(9)
    full = float(d.distillation_loss(name, s, t, temperature=1.5))
    cached = float(d.distillation_loss(name, s, d.topk_targets(t, t.shape[-1], temperature=1.5), temperature=1.5))
    assert cached == pytest.approx(full, rel=1e-10, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 6), scale=st.floats(0.5, 8.0))
def test_topk_divergence_never_exceeds_the_full_one(seed, k, scale):
    """Coarsening both distributions to k + 1 buckets cannot increase an f-divergence (data processing)."""
    s, t = logits_pair(seed, scale=scale)
    targets = d.topk_targets(t, k)
    for name in DIVERGENCES:
        full = d.distillation_loss(name, s, t, reduction="none")
        coarse = d.distillation_loss(name, s, targets, reduction="none")
        assert torch.all(coarse <= full + 1e-10), name


def test_topk_targets_hold_the_teacher_mass_and_gradients_are_finite():
    s, t = logits_pair(10)
    targets = d.topk_targets(t, 3)
    assert torch.allclose(targets.log_probs.exp().sum(-1), torch.ones(3, 4, dtype=torch.float64))
    assert targets.k == 3 and targets.shape == (3, 4) and targets.vocab_size == 7
    for k in (3, 7):
        x = s.clone().requires_grad_(True)
        d.reverse_kl(x, d.topk_targets(t, k)).backward()
        assert torch.isfinite(x.grad).all()
    assert targets[0].shape == (4,)


# --- bad inputs -----------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors():
    s, t = logits_pair(11)
    with pytest.raises(ValueError, match="shape mismatch"):
        d.forward_kl(s, t[:2])
    with pytest.raises(ValueError, match=r"vocabulary mismatch.*sequence-level"):
        d.reverse_kl(s, torch.randn(3, 4, 9, dtype=torch.float64))
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        d.forward_kl(s, d.topk_targets(torch.randn(3, 4, 9), 2))
    for tau in (0, -1.0):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            d.forward_kl(s, t, temperature=tau)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        d.generalized_jsd(s, t, beta=1.5)
    with pytest.raises(ValueError, match="Did you mean 'reverse_kl'"):
        d.distillation_loss("reverse_k", s, t)
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        d.forward_kl(s.numpy(), t)
    with pytest.raises(TypeError, match="floating-point"):
        d.forward_kl(s.long(), t)
    with pytest.raises(ValueError, match="NaN"):
        d.forward_kl(s, t.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match=r"temperature 1\.0, not 2\.0"):
        d.forward_kl(s, d.topk_targets(t, 2), temperature=2.0)
    with pytest.raises(ValueError, match="mask must be a tensor of shape"):
        d.forward_kl(s, t, mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="selects no position"):
        d.forward_kl(s, t, mask=torch.zeros(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="reduction"):
        d.forward_kl(s, t, reduction="avg")


# --- the bimodal example ---------------------------------------------------------------------------------


def test_forward_kl_covers_both_modes_and_reverse_kl_picks_one():
    df = d.bimodal_fit(("forward_kl", "reverse_kl"), separation=8.0, weight=0.5)
    fits = df[df.model != "teacher"].groupby("model")[["mean", "std"]].first()
    # forward KL = moment matching: mean 0, std sqrt(1 + 4^2)
    assert fits.loc["forward_kl", "mean"] == pytest.approx(0.0, abs=1e-3)
    assert fits.loc["forward_kl", "std"] == pytest.approx(math.sqrt(17.0), rel=2e-3)
    # reverse KL sits on one mode with the mode's own width
    assert fits.loc["reverse_kl", "mean"] == pytest.approx(4.0, abs=1e-2)
    assert fits.loc["reverse_kl", "std"] == pytest.approx(1.0, abs=1e-2)
    teacher = df[df.model == "teacher"]
    assert teacher.density.sum() == pytest.approx(1.0)


def test_scaled_jsd_keeps_its_precision_for_subnormal_beta():
    """beta = 5e-324 (the smallest float64) once gave negative values: dividing a log1p of beta·z by beta kept one
    significant bit. The scaled JSD must reach the forward KL at beta -> 0 and the reverse KL at beta -> 1."""
    s, t = logits_pair(0, scale=2.0)
    fkl = d.distillation_loss("forward_kl", s, t, temperature=3.0, reduction="none")
    rkl = d.distillation_loss("reverse_kl", s, t, temperature=3.0, reduction="none")
    for beta in (5e-324, 1e-310, 1e-200, 1e-17):
        jsd = d.distillation_loss("jsd", s, t, temperature=3.0, beta=beta, reduction="none")
        assert torch.allclose(jsd, fkl, rtol=0, atol=1e-12), beta
    jsd = d.distillation_loss("jsd", s, t, temperature=3.0, beta=1 - 2**-53, reduction="none")
    assert torch.allclose(jsd, rkl, rtol=0, atol=1e-12)
