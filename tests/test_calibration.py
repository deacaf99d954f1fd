"""Predicted vs measured: operator classes, the prediction split, the fit, and the shipped campaign."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import unveiled as uv
from unveiled import calibration as cal
from unveiled.models import Decoder, DecoderConfig


def test_operator_classes():
    assert cal.classify_op("q_proj") == cal.classify_op("lm_head") == "gemm"
    assert cal.classify_op("qk_matmul") == cal.classify_op("softmax") == "attention"
    assert cal.classify_op("attn_norm") == cal.classify_op("rope") == cal.classify_op("mlp_act") == "elementwise"
    with pytest.raises(TypeError):
        cal.classify_op(3)


def test_prediction_split_adds_up_to_the_analyzer_time():
    dev = uv.get_device("i9-13900k")
    df = pd.DataFrame([{"model": "S", "stage": "decode", "batch": 1, "seq_len": 64},
                       {"model": "SmolLM2", "stage": "prefill", "batch": 2, "seq_len": 128}])
    out = cal.predict_scenarios(df, dev)
    parts = out[["gemm_s", "attention_s", "elementwise_s"]].sum(axis=1)
    np.testing.assert_allclose(parts, out["roofline_s"], rtol=1e-12)
    a = uv.analyze("smollm2-135m", dev, stage="prefill", batch=2, seq_len=128, w_bits=32, a_bits=32, logits="all")
    assert out.loc[1, "roofline_s"] == pytest.approx(a.time_s)
    assert out.loc[0, "ops"] == 2 * 17 + 3  # 17 operators per block, then embedding, final norm and head
    with pytest.raises(ValueError, match="needs a 'stage' column"):
        cal.predict_scenarios(df.drop(columns="stage"), dev)


def synthetic(coef, n=24, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "gemm_s": rng.uniform(1e-5, 1e-1, n), "attention_s": rng.uniform(1e-6, 1e-2, n),
        "elementwise_s": rng.uniform(1e-6, 1e-2, n), "ops": rng.integers(20, 600, n), "passes": 1,
        "model": rng.choice(["S", "M"], n),
    })
    df["roofline_s"] = df[["gemm_s", "attention_s", "elementwise_s"]].sum(axis=1)
    df["measured_s"] = (df[list(cal.FEATURES)].to_numpy(float) @ np.array(coef)) * (1 + noise * rng.standard_normal(n))
    return df


def test_fit_recovers_known_coefficients():
    coef = [1.7, 3.0, 12.0, 8e-6, 2e-4]
    fit = cal.fit_calibration(synthetic(coef))
    np.testing.assert_allclose(fit.coefficients, coef, rtol=1e-6)
    assert fit.points == 24
    table = fit.table()
    assert table.loc[0, "meaning"].startswith("reach 58.8 %")


def test_fit_is_non_negative_and_errors_shrink():
    df = synthetic([2.0, 0.0, 5.0, 1e-5, 0.0], noise=0.05, seed=3)
    fit = cal.fit_calibration(df)
    assert np.all(fit.coefficients >= 0)
    err = cal.prediction_errors(df, fit)
    summary = cal.error_summary(err).set_index(["models", "predictor"])
    before = summary.loc[("all", "roofline (no fit)"), "median_abs_err_pct"]
    after = summary.loc[("all", "calibrated (in-sample)"), "median_abs_err_pct"]
    loo = summary.loc[("all", "calibrated (leave-one-out)"), "median_abs_err_pct"]
    assert after < 10 < before and after <= loo < 20


def test_fit_rejects_bad_tables():
    df = synthetic([1, 1, 1, 0, 0], n=4)
    with pytest.raises(ValueError, match="at least 5 measurements"):
        cal.fit_calibration(df)
    bad = synthetic([1, 1, 1, 0, 0])
    bad.loc[0, "measured_s"] = 0.0
    with pytest.raises(ValueError, match="positive and finite"):
        cal.fit_calibration(bad)
    with pytest.raises(ValueError, match="run predict_scenarios first"):
        cal.fit_calibration(synthetic([1, 1, 1, 0, 0]).drop(columns="ops"))


def test_measure_pass_leaves_the_cache_consistent():
    m = Decoder(DecoderConfig(vocab_size=17, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                              intermediate_size=32)).eval()
    for stage in ("prefill", "decode"):
        r = cal.measure_pass(m, stage, batch=2, seq_len=12, repeats=2)
        assert r["repeats"] == 2 and 0 < r["measured_s"] <= r["measured_median_s"]
    with pytest.raises(ValueError, match="stage must be one of"):
        cal.measure_pass(m, "train", 1, 4)


def test_default_grid():
    grid = cal.default_scenarios()
    assert len(grid) == 3 * 10
    assert {(s.stage, s.batch) for s in grid} >= {("decode", 1), ("decode", 16), ("prefill", 4)}
    with pytest.raises(ValueError, match="model must be one of"):
        cal.default_scenarios(["L"])


def test_shipped_campaign_has_provenance_and_a_useful_fit():
    df = cal.load_measurements()
    prov = df.attrs["provenance"]
    for key in ("date", "machine", "versions", "roofline", "repeats"):
        assert prov[key]
    assert set(df.model) == {"S", "M", "SmolLM2"} and len(df) == 30
    assert (df.measured_s > 0).all() and (df.measured_s <= df.measured_median_s).all()
    dev = cal.stored_device(prov)
    assert dev.bandwidth == prov["roofline"]["bandwidth_b_s"]
    pred = cal.predict_scenarios(df, dev)
    err = cal.prediction_errors(pred, loo=False)
    # The calibrated model must beat the plain roofline on the data it was fitted to.
    assert err.calibrated_err.abs().median() < err.roofline_err.abs().median()


def test_thread_clock_needs_one_thread():
    from unveiled.threads import torch_threads

    m = Decoder(DecoderConfig(vocab_size=9, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                              intermediate_size=16)).eval()
    with torch_threads(2), pytest.raises(ValueError, match="torch_threads"):
        cal.measure_pass(m, "decode", 1, 8, clock="thread")
    with torch_threads(1):
        assert cal.measure_pass(m, "decode", 1, 8, repeats=2, clock="thread")["measured_s"] > 0
        with pytest.raises(ValueError, match="clock must be one of"):
            cal.measure_pass(m, "decode", 1, 8, clock="cpu")


def test_charts_of_the_appendix_build():
    from unveiled import zoo
    from unveiled.plots import models as mplots

    df = cal.load_measurements()
    err = cal.prediction_errors(cal.predict_scenarios(df, cal.stored_device(df.attrs["provenance"])), loo=False)
    spec = mplots.predicted_vs_measured(err).to_dict()
    assert len(spec["hconcat"]) == 2
    curves = mplots.training_curves({n: zoo.card(n) for n in ("S", "M")}).to_dict()
    assert curves["encoding"]["y"]["field"] == "loss"
