"""Chapter 4's claims, asserted against the cached distillation tables, the analyzer and PyTorch's FLOP counter
(tests/claims.py explains the registry)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import unveiled as uv
from claims import claim
from unveiled import distill, zoo
from unveiled.threads import torch_threads

PAGE = "chapters/04_distillation.ipynb"
WHITE_BOX = ["fkl-online", "fkl", "rkl", "jsd", "tv"]


@pytest.fixture(scope="module")
def report():
    return uv.results.cached("distill.tiny_eval").set_index("student")


@pytest.fixture(scope="module")
def final():
    return uv.results.cached("distill.tiny_runs").groupby("run").tail(1).set_index("run")


@pytest.fixture(scope="module")
def limits():
    return distill.teacher_student_limits()


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@claim(PAGE, "At equal steps a forward-KL student beats one trained on data alone",
       "the teacher's forward pass costs more than the student's step",
       "On the book's models the forward KL beats training on data alone at equal steps; the mode-seeking "
       "divergences write text the teacher prefers but cover real text worse")
def test_forward_kl_beats_data_at_equal_steps_and_the_teacher_costs_more_than_a_step(final, report):
    for run in ("fkl", "fkl-online"):
        assert final.val_loss[run] < final.val_loss["data-400"], run
    for run in ("rkl", "jsd", "tv"):  # mode seeking: likelier to the teacher, worse on real text
        assert report.teacher_nll[run] < report.teacher_nll["fkl"] and report.val_loss[run] > report.val_loss["fkl"]
    teacher, student = zoo.load("M"), zoo.load("S")
    x = torch.randint(0, student.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch_threads(1):
        with torch.no_grad():
            teacher_forward = _flops(lambda: teacher(x))
        student_step = _flops(lambda: student(x).logsumexp(-1).mean().backward())  # forward + backward
    student.zero_grad(set_to_none=True)
    assert teacher_forward > student_step  # in operations, before any clock is read


@claim(PAGE, "every white-box draft is accepted more often than the data-only one",
       "training twice as long on data alone raised acceptance more than distillation did: distillation is one way "
       "to a better draft, not the only one",
       "a white-box-distilled draft agrees with its target more often than a data-only one",
       "trained twice as long on data alone agrees more often still")
def test_distillation_and_longer_training_both_raise_acceptance(report):
    alpha = report.acceptance_samples
    for run in WHITE_BOX:
        assert alpha[run] > alpha["data-400"], run
        assert alpha["data-800"] > alpha[run], run


@claim(PAGE, "a draft pays in wall-clock time only if it is also cheap to run")
def test_a_better_accepted_draft_can_still_lose_when_it_is_costly():
    """Chapter 7's SmolLM2 measurements: layer skip is accepted more often than the distilled small draft, but
    costs most of a target step and runs slower."""
    tab = uv.results.cached("decoding.experiments.smollm2_speculative")
    best = tab[tab.prompt == "Shakespeare continuation"].groupby("draft")
    alpha, speedup, cost = best.acceptance_rate.max(), best.speedup.max(), best.cost_ratio.min()
    assert alpha["layer skip"] > alpha["small model"] and speedup["layer skip"] < speedup["small model"] < 1
    assert cost["layer skip"] > 10 * cost["small model"]


@claim(PAGE, "In memory-bound decoding a student is faster in proportion to the bytes it reads",
       "depends on its KV cache per token as much as on its weights",
       "On the roofline a student decodes faster roughly in proportion to the bytes it reads")
def test_students_are_faster_by_the_bytes_and_their_batch_depends_on_the_kv_cache(limits):
    one = limits[(limits.device == "a6000") & (limits.seq_len == 2048)]
    gains = {}
    for pair, rows in one.groupby("pair"):
        r = rows.set_index("role")
        if r.max_batch["teacher"] == 0:
            continue
        read = r.weights_bytes + r.kv_cache_bytes
        assert r.tpot_s["teacher"] / r.tpot_s["student"] == pytest.approx(read["teacher"] / read["student"], rel=0.15)
        gains[pair] = (r.max_batch["student"] / r.max_batch["teacher"]) / (r.weights_bytes["teacher"]
                                                                          / r.weights_bytes["student"])
    # the batch a smaller model buys is not set by its weights: it differs between pairs by a large factor
    assert max(gains.values()) > 5 * min(gains.values()), gains


@claim(PAGE, "depends on the device's memory as much as on the models")
def test_what_fits_depends_on_the_device(limits):
    at = limits[limits.seq_len == limits.seq_len.max()].pivot_table(index=["pair", "role"], columns="device",
                                                                   values="max_batch")
    assert (at.max(axis=1) > 2 * at.min(axis=1).clip(lower=1)).all()  # every model: the device sets the batch
    teacher70 = at.loc[("Llama-3 70B → 8B", "teacher")]
    assert (teacher70 == 0).any() and (teacher70 > 0).any()  # whether it fits at all depends on the device


@claim(PAGE, "At equal cost the teacher's forward pass must be paid for: caching its top-k outputs once and reusing "
             "them is what makes a distillation step cheap, and plain training for more steps is a strong baseline")
def test_a_cached_teacher_leaves_the_loop_and_more_plain_steps_are_strong(final):
    assert final.teacher_time_s["fkl-online"] > 0
    assert all(final.teacher_time_s[r] == 0 for r in ("fkl", "rkl", "jsd", "tv"))  # cached top-16: no teacher pass
    assert all(final.val_loss["data-800"] < final.val_loss[r] for r in WHITE_BOX)
