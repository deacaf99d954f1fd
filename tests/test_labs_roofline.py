"""The Chapter 1 lab checks: right answers pass, the classic wrong ones fail with the right message."""

from __future__ import annotations

import numpy as np
import pytest

import unveiled as uv
from unveiled.labs import LabCheckFailed
from unveiled.labs import roofline as lab

pytestmark = pytest.mark.lab_roofline


def attainable(intensity, bandwidth, peak):
    return np.minimum(peak, bandwidth * np.asarray(intensity, dtype=float))


def op_time(flops, nbytes, bandwidth, peak):
    return max(flops / peak, nbytes / bandwidth)


def matmul_intensity(m, k, n, bytes_per_element):
    return 2 * m * k * n / ((m * k + k * n + m * n) * bytes_per_element)


def critical_tokens(k, n, bandwidth, peak, bytes_per_element):
    ridge = peak / bandwidth
    if 2 * k * n / ((k + n) * bytes_per_element) <= ridge:
        return None
    m = 1
    while matmul_intensity(m, k, n, bytes_per_element) < ridge:
        m += 1
    return m


def run(check, fn):
    return check(fn, raise_on_fail=False, show=False)


def failure_text(report) -> str:
    return "\n".join(r.message for r in report.results if not r.passed)


def test_checks_cover_the_four_tasks():
    assert {"attainable": lab.check_attainable, "op_time": lab.check_op_time,
                          "matmul_intensity": lab.check_matmul_intensity,
                          "critical_tokens": lab.check_critical_tokens} == lab.CHECKS


@pytest.mark.parametrize(("name", "fn"), [("attainable", attainable), ("op_time", op_time),
                                          ("matmul_intensity", matmul_intensity),
                                          ("critical_tokens", critical_tokens)])
def test_reference_solutions_pass(name, fn):
    report = lab.CHECKS[name](fn, show=False)
    assert report.passed and report.n_passed == len(report.results) >= 4


def test_reachable_as_uv_labs_roofline():
    assert uv.labs.roofline.check_attainable is lab.check_attainable


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda i, bw, p: np.maximum(p, bw * np.asarray(i)), "max() where the roofline takes the min()"),
    (lambda i, bw, p: bw * np.asarray(i, dtype=float), "without the compute ceiling"),
    (lambda i, bw, p: p * np.ones_like(np.asarray(i, dtype=float)), "You returned the peak"),
    (lambda i, bw, p: np.minimum(p, bw / 1e9 * np.asarray(i)), "keep SI units"),
    (lambda i, bw, p: min(p, bw * i), "use np.minimum (elementwise)"),
])
def test_attainable_mistakes_are_named(wrong, message):
    report = run(lab.check_attainable, wrong)
    assert not report.passed and message in failure_text(report)


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda f, q, bw, p: f / p + q / bw, "You added the compute and memory times"),
    (lambda f, q, bw, p: min(f / p, q / bw), "the slower of memory and compute"),
    (lambda f, q, bw, p: 1e3 * max(f / p, q / bw), "milliseconds"),
    (lambda f, q, bw, p: f / (f / q * bw) if f / q * bw < p else f / p, "ZeroDivisionError"),
])
def test_op_time_mistakes_are_named(wrong, message):
    report = run(lab.check_op_time, wrong)
    assert not report.passed and message in failure_text(report)


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda m, k, n, b: m * k * n / ((m * k + k * n + m * n) * b), "counts as 2 operations"),
    (lambda m, k, n, b: 2 * m * k * n / ((m * k + k * n) * b), "the output m×n is written"),
    (lambda m, k, n, b: 2 * m * k * n / ((m * k + k * n + m * n) * b * 8), "in bytes, not bits"),
    (lambda m, k, n, b: 2 * m * k * n / (m * k + k * n + m * n), "Ignored bytes_per_element"),
])
def test_matmul_intensity_mistakes_are_named(wrong, message):
    report = run(lab.check_matmul_intensity, wrong)
    assert not report.passed and message in failure_text(report)


def test_critical_tokens_mistakes_are_named():
    def off_by_one(*args):
        m = critical_tokens(*args)
        return None if m is None else m - 1

    assert "round up" in failure_text(run(lab.check_critical_tokens, off_by_one))

    def approximation(k, n, bw, peak, b):
        import math

        return math.ceil(peak / bw * b / 2)

    text = failure_text(run(lab.check_critical_tokens, approximation))
    assert "large-layer approximation" in text and "return None" in text
    assert "return an int" in failure_text(run(lab.check_critical_tokens, lambda *a: 300.0))


def test_a_wrong_number_says_by_what_factor():
    report = run(lab.check_matmul_intensity, lambda m, k, n, b: 3 * m * k * n / ((m * k + k * n + m * n) * b))
    assert "wrong by a factor 1.5" in failure_text(report)
    first = report.first_failure
    assert first.input == "m=1, k=4096, n=4096, b=2" and first.expected == "0.999512" and first.got == "1.49927"


def test_an_unfinished_task_says_so_and_raises():
    def stub(*args):
        raise NotImplementedError("write the body")

    with pytest.raises(LabCheckFailed, match="not implemented yet"):
        lab.check_attainable(stub, show=False)
