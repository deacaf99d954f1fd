"""Argument checking, data-file access and the environment report (the library's plumbing)."""

from __future__ import annotations

import numpy as np
import pytest

import unveiled as uv
from unveiled._validate import check_int, check_number, check_positive, suggest, unknown_name


def test_suggest_finds_typos_and_prefixes():
    assert suggest("a600", ["a6000", "a100", "h100-sxm"])[0] == "a6000"
    assert "h100-sxm" in suggest("h100", ["a6000", "h100-sxm", "h100-pcie"])
    assert suggest("zzzz", ["a6000"]) == []


def test_unknown_name_lists_known_names():
    err = unknown_name("device", "a600", ["a6000", "v100"])
    assert isinstance(err, ValueError)
    assert "Did you mean 'a6000'" in str(err) and "v100" in str(err)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "1", None, True])
def test_check_number_rejects_non_finite_and_non_numbers(bad):
    with pytest.raises((TypeError, ValueError)):
        check_number("x", bad)


def test_check_positive_scalars_and_arrays():
    assert check_positive("x", 2) == 2.0
    np.testing.assert_array_equal(check_positive("x", [1, 2], allow_array=True), [1.0, 2.0])
    with pytest.raises(ValueError, match="x must be > 0"):
        check_positive("x", 0)
    with pytest.raises(ValueError, match=">= 0"):
        check_positive("x", [-1, 2], allow_array=True, allow_zero=True)
    assert check_positive("x", 0, allow_zero=True) == 0.0


def test_check_int():
    assert check_int("n", 3) == 3
    assert check_int("n", np.int64(3)) == 3
    with pytest.raises(TypeError, match="write 3"):
        check_int("n", 3.0)
    with pytest.raises(TypeError):
        check_int("n", True)
    with pytest.raises(ValueError, match=">= 1"):
        check_int("n", 0)
    with pytest.raises(ValueError, match="<= 8"):
        check_int("n", 9, maximum=8)


def test_data_files_are_listed_and_readable():
    files = uv.list_data_files()
    assert "hardware.csv" in files
    assert uv.data_file("hardware.csv").read_text().startswith("name,")
    with pytest.raises(ValueError, match=r"Did you mean 'hardware\.csv'"):
        uv.data_file("hardwre.csv")
    with pytest.raises(TypeError):
        uv.data_file(3)


def test_environment_report_and_machine_description():
    report = uv.environment_report()
    assert list(report.columns) == ["component", "version"]
    assert {"python", "numpy", "unveiled"} <= set(report["component"])
    assert "cores" in uv.machine_description()
