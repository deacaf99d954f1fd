"""The distillation training loop, the teacher cache, teacher samples and the acceptance-rate helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unveiled import distill as d
from unveiled.models import Decoder, DecoderConfig

VOCAB = 11


def tiny(hidden=16, layers=1, vocab=VOCAB, seed=0, name="tiny"):
    cfg = DecoderConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=2, num_kv_heads=1,
                        intermediate_size=32, max_seq_len=64, name=name)
    return Decoder(cfg, seed=seed)


@pytest.fixture(scope="module")
def windows():
    g = torch.Generator().manual_seed(0)
    # a learnable stream: a noisy counter modulo VOCAB
    steps = torch.randint(1, 3, (2000,), generator=g)
    return d.text_windows(torch.cumsum(steps, 0) % VOCAB, seq_len=16)


@pytest.fixture(scope="module")
def teacher():
    return tiny(hidden=24, layers=2, seed=1, name="teacher").eval()


def run(windows, teacher=None, cache=None, **changes):
    settings = d.DistillSettings(**{"steps": 6, "batch_size": 4, "lr": 1e-2, "eval_every": 3, **changes})
    return d.distill(tiny(), windows, settings, teacher=teacher, cache=cache, progress=False,
                     val_loss=lambda m: float(m(windows[:2, :-1]).mean()))


def test_text_windows_and_schedule(windows):
    w = d.text_windows(torch.arange(50), seq_len=8, stride=4)
    assert w.shape == (11, 9) and w[1, 0] == 4 and torch.equal(w[0], torch.arange(9))
    sched = d.batch_schedule(len(windows), steps=5, batch_size=3, seed=7)
    assert sched.shape == (5, 3) and torch.equal(sched, d.batch_schedule(len(windows), 5, 3, seed=7))
    with pytest.raises(ValueError, match="seq_len \\+ 1"):
        d.text_windows(torch.arange(5), seq_len=8)


@pytest.mark.parametrize("changes", [
    {"alpha": 0.0},
    {"alpha": 0.5, "loss": "reverse_kl", "teacher_mode": "online", "top_k": None},
    {"alpha": 0.5, "loss": "jsd", "teacher_mode": "cached", "top_k": 4},
    {"alpha": 0.5, "on_policy_fraction": 0.5, "teacher_mode": "online", "top_k": None, "prompt_len": 4},
])
def test_training_is_deterministic_for_a_fixed_seed(windows, teacher, changes):
    cache = None
    if changes.get("teacher_mode") == "cached":
        cache = d.build_teacher_cache(teacher, windows, torch.arange(len(windows)), k=4, progress=False)
    a = run(windows, teacher, cache, **changes)
    b = run(windows, teacher, cache, **changes)
    cols = ["loss", "ce", "kd", "val_loss"]
    pd_equal = np.array_equal(a.log[cols].to_numpy(), b.log[cols].to_numpy(), equal_nan=True)
    assert pd_equal
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert list(a.log.step) == list(range(1, 7)) and a.log.val_loss.notna().sum() == 2
    c = run(windows, teacher, cache, **{**changes, "seed": 1})
    assert not np.allclose(a.log.loss, c.log.loss)


def test_the_loss_mix_is_what_the_settings_say(windows, teacher):
    res = run(windows, teacher, alpha=0.3, teacher_mode="online", top_k=None)
    log = res.log
    assert np.allclose(log.loss, 0.7 * log.ce + 0.3 * log.kd, rtol=1e-6)
    assert res.teacher_time_s > 0 and res.cache_time_s == 0
    plain = run(windows, alpha=0.0)
    assert plain.log.kd.isna().all() and np.allclose(plain.log.loss, plain.log.ce)


def test_cached_top_k_equals_online_top_k_up_to_fp16_storage(windows, teacher):
    sched = d.batch_schedule(len(windows), 6, 4, seed=0)
    cache = d.build_teacher_cache(teacher, windows, sched, k=VOCAB, progress=False)
    assert cache.targets.log_probs.dtype == torch.float16 and cache.time_s > 0
    cached = run(windows, teacher, cache, alpha=1.0, teacher_mode="cached", top_k=VOCAB)
    online = run(windows, teacher, None, alpha=1.0, teacher_mode="online", top_k=None)
    assert np.allclose(cached.log.kd, online.log.kd, rtol=2e-3, atol=2e-3)
    assert cached.cache_time_s == cache.time_s and cached.teacher_time_s == 0


def test_on_policy_steps_use_the_divergence_on_generated_positions_only(windows, teacher):
    res = run(windows, teacher, alpha=0.5, on_policy_fraction=1.0, teacher_mode="online", top_k=None, prompt_len=4)
    assert res.log.on_policy.all() and res.log.ce.isna().all() and np.allclose(res.log.loss, res.log.kd)


def test_teacher_samples_are_reproducible_and_masked(teacher, windows):
    prompts = windows[:5, :4]
    seqs, mask = d.teacher_samples(teacher, prompts, new_tokens=6, seed=3, batch_size=2, progress=False)
    again, _ = d.teacher_samples(teacher, prompts, new_tokens=6, seed=3, batch_size=2, progress=False)
    assert seqs.shape == (5, 10) and mask.shape == (5, 9) and torch.equal(seqs, again)
    assert torch.equal(seqs[:, :4], prompts)
    assert not mask[:, :3].any() and mask[:, 3:].all()  # position 3 predicts the first generated token
    # black-box (sequence-level) distillation: plain cross-entropy on the samples, prompt masked
    res = d.distill(tiny(), seqs, d.DistillSettings(steps=3, batch_size=2), mask=mask, progress=False)
    assert np.isfinite(res.log.loss).all()


def test_bad_training_inputs_give_clear_errors(windows, teacher):
    with pytest.raises(ValueError, match="teacher_mode='cached' needs cache"):
        run(windows, alpha=0.5, teacher_mode="cached")
    with pytest.raises(ValueError, match="pass teacher"):
        run(windows, alpha=0.5, teacher_mode="online")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        run(windows, tiny(vocab=VOCAB + 3), alpha=0.5, teacher_mode="online")
    with pytest.raises(ValueError, match="give top_k"):
        d.DistillSettings(top_k=None, teacher_mode="cached")
    with pytest.raises(ValueError, match="Did you mean 'forward_kl'"):
        d.DistillSettings(loss="forward")
    with pytest.raises(ValueError, match="alpha must be in"):
        d.DistillSettings(alpha=2.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        d.DistillSettings(temperature=0.0)
    with pytest.raises(ValueError, match="windows must be"):
        d.distill(tiny(), windows[0], d.DistillSettings(steps=1))
    sched = d.batch_schedule(len(windows), 6, 4, seed=0)
    cache = d.build_teacher_cache(teacher, windows, sched[:1], k=4, progress=False)
    with pytest.raises(ValueError, match="not in the teacher cache"):
        run(windows, teacher, cache, alpha=0.5, top_k=4)
    with pytest.raises(ValueError, match=r"top-4 at temperature 1\.0"):
        run(windows, teacher, cache, alpha=0.5, top_k=8)


# --- acceptance --------------------------------------------------------------------------------------------


def test_expected_acceptance_is_one_minus_total_variation():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(4, 9, generator=g, dtype=torch.float64), torch.randn(4, 9, generator=g, dtype=torch.float64)
    acc = d.expected_acceptance(p, q, reduction="none")
    assert torch.allclose(acc.double(), 1 - d.total_variation(q, p, reduction="none"), atol=1e-6)
    assert float(d.expected_acceptance(p, p)) == pytest.approx(1.0, abs=1e-6)
    far = torch.full((9,), -1e4)
    disjoint_p, disjoint_q = far.clone(), far.clone()
    disjoint_p[0], disjoint_q[1] = 0.0, 0.0
    assert float(d.expected_acceptance(disjoint_p, disjoint_q)) == 0.0
    # greedy: 1 where the arg-maxes agree, else 0
    greedy = d.expected_acceptance(p, q, temperature=0.0, reduction="none")
    assert torch.equal(greedy, (p.argmax(-1) == q.argmax(-1)).float())


def test_acceptance_rate_of_a_model_with_itself_is_one(teacher, windows):
    assert d.acceptance_rate(teacher, teacher, windows[:3].flatten(), window=16) == pytest.approx(1.0, abs=1e-6)
    other = tiny(seed=5)
    a = d.acceptance_rate(teacher, other, windows[:3, :-1], batch_size=2)
    assert 0 < a < 1


def test_expected_tokens_per_pass():
    assert d.expected_tokens_per_pass(0.0, 4) == 1.0
    assert d.expected_tokens_per_pass(1.0, 4) == 5.0
    assert d.expected_tokens_per_pass(0.5, 2) == pytest.approx(1.75)
    got = d.expected_tokens_per_pass(np.array([0.0, 0.5, 1.0]), 2)
    assert np.allclose(got, [1.0, 1.75, 3.0])
    with pytest.raises(ValueError, match=r"alpha \(acceptance rate\) must be in"):
        d.expected_tokens_per_pass(1.5, 2)


def test_measure_decode_reports_positive_times(teacher):
    m = d.measure_decode(teacher, batch=2, prompt_len=8, new_tokens=4, repeats=1)
    assert m["ttft_s"] > 0 and m["tpot_s"] > 0 and math.isclose(m["tokens_per_s"], 2 / m["tpot_s"])
    assert m["weight_bytes"] == 4 * teacher.num_parameters()
