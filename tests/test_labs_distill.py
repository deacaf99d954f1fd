"""The Chapter 4 lab checks: a correct function passes; the classic mistakes fail with the right hint."""

from __future__ import annotations

import pytest
import torch

from unveiled.labs import LabCheckFailed
from unveiled.labs import distill as lab

pytestmark = pytest.mark.lab_distill


def good_rkl(student_logits, teacher_logits, temperature=1.0):
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return temperature**2 * (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def failures(check, fn) -> str:
    report = check(fn, raise_on_fail=False, show=False)
    assert not report.passed
    return str(report)


def test_correct_reverse_kl_passes():
    assert lab.check_reverse_kl(good_rkl, show=False).passed


def no_detach(student_logits, teacher_logits, temperature=1.0):
    log_q = torch.log_softmax(student_logits / temperature, dim=-1)
    log_p = torch.log_softmax(teacher_logits / temperature, dim=-1)
    return temperature**2 * (log_q.exp() * (log_q - log_p)).sum(-1).mean()


def summed(student_logits, teacher_logits, temperature=1.0):
    positions = student_logits.numel() // student_logits.shape[-1]
    return positions * good_rkl(student_logits, teacher_logits, temperature)


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda s, t, temperature=1.0: good_rkl(t, s, temperature), "forward KL"),
    (lambda s, t, temperature=1.0: good_rkl(s, t, temperature) / temperature**2, "τ² factor"),
    (lambda s, t, temperature=1.0: temperature**2 * good_rkl(s, t, 1.0), "did not divide the logits"),
    (summed, "summed over positions"),
    (lambda s, t, temperature=1.0: good_rkl(s, t, temperature).item(), "carries no gradient"),
    (no_detach, "flowed into teacher_logits"),
])
def test_classic_reverse_kl_mistakes_get_their_hint(wrong, message):
    assert message in failures(lab.check_reverse_kl, wrong)


def test_naive_log_of_softmax_is_caught_on_large_logits():
    def naive(s, t, temperature=1.0):
        q, p = (s / temperature).softmax(-1), (t.detach() / temperature).softmax(-1)
        return temperature**2 * (q * (q.log() - p.log())).sum(-1).mean()

    text = failures(lab.check_reverse_kl, naive)
    assert "log_softmax" in text and "large logits" in text
    assert "[PASS] one position" in text  # right everywhere else


def test_acceptance_check():
    def good(t, d):
        return torch.minimum(t.softmax(-1), d.softmax(-1)).sum(-1).mean()

    assert lab.check_acceptance(good, show=False).passed
    assert "max instead of min" in failures(lab.check_acceptance,
                                            lambda t, d: torch.maximum(t.softmax(-1), d.softmax(-1)).sum(-1).mean())
    assert "rejection rate" in failures(lab.check_acceptance, lambda t, d: 1 - good(t, d))
    with pytest.raises(LabCheckFailed, match="not implemented yet"):
        lab.check_acceptance(lambda t, d: (_ for _ in ()).throw(NotImplementedError()), show=False)


def test_checks_table_names_the_reader_functions():
    assert set(lab.CHECKS) == {"reverse_kl", "acceptance"}
