"""Reader-facing tables: rounded, dashed, narrow enough for a phone."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from unveiled.tables import DASH, MAX_COLUMNS, format_number, format_si, reader_table


@pytest.mark.parametrize("value, text", [
    (0, "0"), (12288, "12,288"), (np.int64(7), "7"), (1.5, "1.5"), (0.0123456, "0.0123"), (2049.6, "2,050"),
    (99.96, "100"), (np.float64(3.14159), "3.14"), (1e-7, "1.00e-07"), (float("nan"), DASH), (None, DASH),
    (pd.NA, DASH), (math.inf, "∞"), (True, "True"), ("x", "x"),
])
def test_format_number(value, text):
    assert format_number(value) == text


def test_reader_table_selects_scales_renames_and_dashes():
    df = pd.DataFrame({"op": ["q_proj", "softmax"], "time_s": [1.234e-4, np.nan], "flops": [1e12, 3e6]})
    out = reader_table(df, {"op": "operator", "time_s": "time (ms)", "flops": "GFLOP"},
                       scale={"time_s": 1e3, "flops": 1e-9})
    assert out.index.name == "operator" and list(out.index) == ["q_proj", "softmax"]
    assert list(out.columns) == ["time (ms)", "GFLOP"]
    assert out.loc["q_proj", "time (ms)"] == "0.123" and out.loc["softmax", "time (ms)"] == DASH
    assert out.loc["q_proj", "GFLOP"] == "1,000" and "NaN" not in out.to_html()
    filtered = reader_table(df[df.op == "softmax"], ["op", "flops"])  # index 1, not 0: still labelled by op
    assert list(filtered.index) == ["softmax"]


def test_reader_table_refuses_wide_tables_and_unknown_columns():
    wide = pd.DataFrame({f"c{i}": [1.0] for i in range(MAX_COLUMNS + 1)})
    with pytest.raises(ValueError, match="long format"):
        reader_table(wide)
    with pytest.raises(ValueError, match="no column"):
        reader_table(wide, ["nope"])
    with pytest.raises(ValueError, match="not shown"):
        reader_table(wide, ["c0", "c1"], scale={"c2": 2})
    with pytest.raises(ValueError, match="index"):
        reader_table(wide, ["c0", "c1"], index="c3")


def test_book_tables_hide_row_numbers_dash_missing_values_and_wrap_names():
    from unveiled.tables import book_table_html

    df = pd.DataFrame({"time_per_token_s": [0.5, np.nan], "name": ["a", None]})
    html = book_table_html(df)
    assert "NaN" not in html and "None" not in html and html.count(DASH) == 2
    assert "<th>0</th>" not in html and "time_<wbr>per_<wbr>token_<wbr>s" in html
    labelled = book_table_html(df.set_index("name"))
    assert ">a</th>" in labelled


def test_book_tables_are_installed_only_in_the_book_build(monkeypatch):
    import IPython
    from IPython.core.interactiveshell import InteractiveShell

    from unveiled import tables
    from unveiled.session import BOOK_BUILD_ENV

    shell = InteractiveShell.instance()
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    html = shell.display_formatter.formatters["text/html"]
    monkeypatch.delenv(BOOK_BUILD_ENV, raising=False)
    assert not tables.install_book_tables()
    monkeypatch.setenv(BOOK_BUILD_ENV, "1")
    try:
        assert tables.install_book_tables()
        assert DASH in html(pd.DataFrame({"x": [np.nan]}))
    finally:
        html.pop(pd.DataFrame, None)
        InteractiveShell.clear_instance()


def test_format_si():
    assert format_si(1.61e9, "B") == "1.61 GB" and format_si(4194304000.0) == "4.19 G"
    assert format_si(0.2007) == "0.201" and format_si(999) == "999" and format_si(float("nan")) == DASH
