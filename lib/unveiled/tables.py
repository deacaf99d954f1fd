"""Tables as a reader sees them: few columns, rounded numbers, units in the names, a dash for "nothing".

A library table carries every column at full precision (unit-bearing names like ``time_s``, ``bytes``); the
page shows a reader a short, rounded one that fits the column of a phone. :func:`reader_table` makes that
one: it picks and renames columns, scales numbers into the unit its new name says, rounds them to a few
significant digits with thousands separators, writes a dash where a value is missing (never ``NaN``), and
refuses more than :data:`MAX_COLUMNS` columns (reshape to long format instead). In the book build every
DataFrame is shown by :func:`book_table_html` (a dash for missing values, no 0, 1, 2... row numbers), so a
chapter's plain tables follow the same rules. Introduced in Chapter 1.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence

import pandas as pd

__all__ = ["DASH", "MAX_COLUMNS", "book_table_html", "format_number", "format_si", "install_book_tables",
           "reader_table"]

#: The most columns a reader-facing table may have (with the index); a wider table does not fit a phone.
MAX_COLUMNS = 7
#: What a missing value looks like.
DASH = "–"


def format_number(value: object, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` significant digits, with thousands separators; a dash if missing.

    Integers print whole (``12,288``); floats keep ``digits`` significant digits without trailing zeros
    (``0.0123``, ``1.5``), large ones print as rounded integers (``2,050``), tiny ones in scientific notation;
    booleans and strings pass through. Introduced in Chapter 1."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value is pd.NaT:
        return DASH
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    x = float(value)
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    exponent = math.floor(math.log10(abs(x)))
    if exponent >= digits - 1:
        return f"{round(x):,}"
    if exponent < -4:
        return f"{x:.{digits - 1}e}"
    decimals = max(0, digits - 1 - exponent)
    return f"{x:,.{decimals}f}".rstrip("0").rstrip(".") if decimals else f"{x:,.0f}"


def format_si(value: object, unit: str = "", digits: int = 3) -> str:
    """``value`` with a decimal SI prefix and ``digits`` significant digits: ``format_si(1.61e9, "B")`` is
    ``"1.61 GB"``; values under 1,000 print as :func:`format_number`. Introduced in Chapter 2."""
    if not isinstance(value, numbers.Number) or isinstance(value, bool):
        return format_number(value, digits)
    x = float(value)
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{format_number(x / scale, digits)} {prefix}{unit}"
    return f"{format_number(x, digits)} {unit}".strip()


def reader_table(df: pd.DataFrame, columns: Mapping[str, str] | Sequence[str] | None = None, *,
                 scale: Mapping[str, float] | None = None, digits: int = 3, index: str | None = None,
                 max_columns: int = MAX_COLUMNS) -> pd.DataFrame:
    """A short, rounded copy of ``df`` for the page: the columns to show, renamed, scaled and formatted.

    ``columns`` lists the columns to keep, or maps them to the names the reader sees (put the unit in the
    name: ``{"time_s": "time (ms)"}``); ``scale`` multiplies a column (by its original name) into that unit
    (``{"time_s": 1e3}``). ``index`` names the column that labels the rows (default: the first column when
    ``df``'s index is unnamed, such as 0, 1, 2... or what is left of it after a filter; else ``df``'s own). Numbers are rounded by
    :func:`format_number`; missing values print as a dash. Raises ``ValueError`` for a column that does not
    exist or for more than ``max_columns`` columns (index included): show fewer, or reshape to long format.
    Introduced in Chapter 1.
    """
    if columns is None:
        names = {c: c for c in df.columns}
    elif isinstance(columns, Mapping):
        names = dict(columns)
    else:
        names = {c: c for c in columns}
    missing = [c for c in names if c not in df.columns]
    if missing:
        raise ValueError(f"reader_table: no column {missing} in the table; it has {list(df.columns)}")
    scale = dict(scale or {})
    unknown = [c for c in scale if c not in names]
    if unknown:
        raise ValueError(f"reader_table: scale names columns that are not shown: {unknown}")
    out = df[list(names)].copy()
    for col, factor in scale.items():
        out[col] = out[col] * factor
    if index is None and df.index.name is None and not isinstance(df.index, pd.MultiIndex) and len(names) > 1:
        index = next(iter(names))  # row numbers mean nothing to a reader: the first column labels the rows
    if index is not None:
        if index not in names:
            raise ValueError(f"reader_table: index {index!r} is not among the columns shown {list(names)}")
        out = out.set_index(index)
        out.index = [format_number(v, digits) for v in out.index]
        out.index.name = names[index]
    width = len(out.columns) + 1
    if width > max_columns:
        raise ValueError(f"reader_table: {width} columns (with the index) do not fit a phone; show at most "
                         f"{max_columns} or reshape the table to long format (one row per item and quantity)")
    out = out.rename(columns=names)
    for col in out.columns:
        out[col] = [format_number(v, digits) for v in out[col]]
    return out


def book_table_html(df: pd.DataFrame) -> str:
    """How the built book shows a DataFrame: pandas' own HTML table (rounded by ``display.float_format``),
    without the 0, 1, 2... row numbers of a plain index, with a dash for missing values, and with line-break
    opportunities after the underscores of long column names (``time_per_token_s`` may wrap on a phone).
    Introduced in Chapter 1."""
    plain = isinstance(df.index, pd.RangeIndex) and df.index.start == 0 and df.index.step == 1
    html = df.to_html(notebook=True, na_rep=DASH, index=not plain, border=0,
                      max_rows=pd.get_option("display.max_rows"), max_cols=pd.get_option("display.max_columns"),
                      show_dimensions=False)

    def breakable(m: re.Match) -> str:
        return m.group(1) + m.group(2).replace("_", "_<wbr>") + m.group(3)

    return re.sub(r"(<th[^>]*>)([^<]*)(</th>)", breakable, html)


def install_book_tables() -> bool:
    """In the book build, show every DataFrame through :func:`book_table_html` (live sessions keep pandas'
    own display). Called by ``import unveiled``; returns whether it installed the formatter."""
    from .session import book_build

    if not book_build():
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, book_table_html)
    return True
