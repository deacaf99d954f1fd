"""Claims of the appendix "The models in this book", asserted against the shipped text and the cached CPU
measurements (tests/claims.py explains the registry)."""

from __future__ import annotations

import pytest

from claims import claim
from unveiled import calibration, text

PAGE = "appendix/models.ipynb"


@pytest.fixture(scope="module")
def predicted():
    measured = calibration.load_measurements()
    return calibration.predict_scenarios(measured, calibration.stored_device(measured.attrs["provenance"]))


@claim(PAGE, "close for a large model's batch-1 decode, ten times too optimistic for tiny models; five fitted "
             "numbers (three efficiencies and two overheads) close most of the gap")
def test_the_roofline_bounds_cpu_passes_and_the_calibration_closes_most_of_the_gap(predicted):
    ratio = (predicted.measured_s / predicted.roofline_s).set_axis(
        predicted.set_index(["model", "stage", "batch", "seq_len"]).index).sort_index()
    assert (ratio >= 1).all()  # a lower bound on the time
    assert (ratio["SmolLM2", "decode", 1] < 2).all()  # close for the large model's batch-1 decode
    for tiny in ("S", "M"):  # an order of magnitude for the tiny models' decode steps
        assert ratio[tiny, "decode", 1].between(5, 15).all(), tiny
    errors = calibration.error_summary(calibration.prediction_errors(predicted, calibration.fit_calibration(predicted)))
    by = errors[errors.models == "all"].set_index("predictor").median_abs_err_pct
    assert by["calibrated (leave-one-out)"] < by["roofline (no fit)"] / 2  # most of the gap closed


@claim(PAGE, "first 90 % train, last 10 % validation")
def test_the_split_is_ninety_ten():
    train, val = text.corpus_split("train"), text.corpus_split("val")
    assert len(train) / (len(train) + len(val)) == pytest.approx(0.9, abs=1e-3)
