"""The cached distillation experiments: the chapter's claims hold on them, they agree with each other, the shipped
students reproduce them, and the chapter's short live rerun matches its cached row."""

from __future__ import annotations

import pytest

import unveiled as uv
from unveiled import distill as d
from unveiled.threads import torch_threads

WHITE_BOX = ["fkl-online", "fkl", "rkl", "jsd", "tv"]
MODE_SEEKING = ["rkl", "jsd", "tv"]


@pytest.fixture(scope="module")
def curves():
    return uv.results.cached("distill.tiny_runs")


@pytest.fixture(scope="module")
def final(curves):
    return curves.groupby("run").tail(1).set_index("run")


@pytest.fixture(scope="module")
def report():
    return uv.results.cached("distill.tiny_eval").set_index("student")


def test_every_run_was_trained_for_its_steps(curves):
    assert set(curves.run) == set(d.TINY_RUNS)
    for run, spec in d.TINY_RUNS.items():
        assert curves[curves.run == run].step.max() == spec.settings.steps


def test_forward_kl_beats_data_alone_at_equal_steps_and_full_logits_beat_the_top16(final):
    """Section 4.3: data only > forward KL from the cached top-16 > forward KL from the full live logits."""
    assert final.val_loss["data-400"] > final.val_loss["fkl"] > final.val_loss["fkl-online"]
    assert final.val_loss["data-800"] < final.val_loss["fkl-online"]  # more plain steps are a strong baseline


def test_mode_seeking_students_trade_coverage_for_precision(report):
    """Section 4.2: every divergence makes the student more confident and likelier under the teacher than the
    data-only one; the mode-seeking ones go further on both but lose on validation loss (coverage)."""
    for run in WHITE_BOX:
        assert report.entropy[run] < report.entropy["data-400"], run
        assert report.teacher_nll[run] < report.teacher_nll["data-400"], run
    for run in MODE_SEEKING:
        assert report.entropy[run] < report.entropy["fkl"], run
        assert report.teacher_nll[run] < report.teacher_nll["fkl"], run
        assert report.val_loss[run] > report.val_loss["fkl"], run
    assert report.entropy["rkl"] == min(report.entropy[r] for r in WHITE_BOX)


def test_black_box_and_on_policy_runs_do_not_beat_data_alone_here(report):
    """Section 4.4's honest negative result (sampled targets; an on-policy student from scratch)."""
    for run in ("seqkd", "gkd"):
        assert report.val_loss[run] > report.val_loss["data-400"], run
        assert report.acceptance_samples[run] < report.acceptance_samples["data-400"], run


def test_distilled_drafts_are_accepted_more_often(report):
    for run in WHITE_BOX:
        assert report.acceptance_samples[run] > report.acceptance_samples["data-400"], run
        assert report.acceptance_text[run] > report.acceptance_text["data-400"], run
    assert report.acceptance_samples["teacher"] == pytest.approx(1.0, abs=1e-6)


def test_the_two_cached_tables_agree(final, report):
    # tiny_eval reloads the fp16 checkpoints; tiny_runs evaluated the fp32 weights at the end of training.
    for run in d.TINY_RUNS:
        assert report.val_loss[run] == pytest.approx(final.val_loss[run], abs=5e-3), run
        assert report.time_s[run] == pytest.approx(final.time_s[run])


def test_shipped_students_reproduce_the_cached_loss(report):
    _, val = d.tiny_data()
    with torch_threads(2):
        for run in ("data-400", "fkl"):
            model = d.load_student(run)
            assert d.tiny_val_loss(model, val) == pytest.approx(report.val_loss[run], abs=1e-5), run


def test_live_rerun_matches_its_cached_row():
    """Seeded runs, so only float32 rounding differs between machines; but 60 steps of training amplify it.
    Measured, not guessed: the cached table came from an Intel Xeon (fkl-60 2.5009); an AMD EPYC gives 2.4969
    with AVX-512 and 2.5106 with AVX2 only; and distill.live_rounding reran both runs under seeded rounding-level
    perturbations, which moved fkl-60 by up to 0.014 and data-60 by up to 0.005. The tolerance is twice that
    measured spread, still six times smaller than the distillation gain checked last."""
    spread = uv.results.cached("distill.live_rounding").set_index("run").spread
    with torch_threads(d.EXPERIMENT_THREADS):  # as the cached table was made
        live = d.live_runs(progress=False).set_index("run")
    cached = uv.results.cached("distill.live_check").set_index("run")
    for run in cached.index:
        assert live.val_loss_8k[run] == pytest.approx(cached.val_loss_8k[run], abs=2 * spread[run]), run
    gain = cached.val_loss_8k["data-60"] - cached.val_loss_8k["fkl-60"]
    assert gain > 6 * 2 * spread.max()
    assert live.val_loss_8k["fkl-60"] < live.val_loss_8k["data-60"]


def test_the_rounding_study_saw_what_crossing_cpus_does():
    r = uv.results.cached("distill.live_rounding").set_index("run")
    cached = uv.results.cached("distill.live_check").set_index("run")
    assert list(r.index) == list(cached.index) and (r.perturbed_runs == d.ROUNDING_SEEDS).all()
    for run in r.index:  # the unperturbed run of the study is the cached run, within the spread
        assert abs(r.val_loss_8k[run] - cached.val_loss_8k[run]) <= 2 * r.spread[run]
        assert r.val_loss_min[run] <= r.val_loss_8k[run] + r.spread[run] and r.spread[run] > 0


def test_black_box_distillation_from_smollm2_moves_the_student_towards_it():
    df = uv.results.cached("distill.smollm2_blackbox").set_index("model")
    before, after = df.iloc[0], df.iloc[1]
    assert after.teacher_text_loss < before.teacher_text_loss
    assert after.shakespeare_val_loss > before.shakespeare_val_loss  # a different distribution (Section 4.4)
    assert 0 <= before.dropped_char_fraction < 0.05
    assert before.student_sha256 == uv.zoo.card("S")["weights_sha256"], "S changed: rerun distill.smollm2_blackbox"


def test_cached_tables_were_made_with_the_shipped_teacher(curves):
    sha = uv.zoo.card("M")["weights_sha256"]
    assert set(curves.teacher_sha256) == {sha}, "teacher M changed: rerun distill.tiny_runs, tiny_eval, live_check"
    assert set(uv.results.cached("distill.live_check").teacher_sha256) == {sha}
