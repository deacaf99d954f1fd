"""The survey's map of LLM quantization methods (its Fig. 10 timeline) as data, with citations.

``data/quant_methods.csv`` transcribes the survey's timeline of quantization methods from July 2022 to
January 2024 [Yuan et al. 2024, Fig. 10]: one row per method with its month, the figure's class (PTQ, QAT or
Q-PEFT, from the figure's colours), a family (weight-only, weight-activation, KV cache, Q-PEFT: from the
survey's text where it says so, otherwise our reading of the paper, as the ``family_source`` column states),
whether the figure draws a box around it, the first author, the arXiv id and the BibTeX key of the book's
bibliography. Introduced in Chapter 3.
"""

from __future__ import annotations

import io

import pandas as pd

from .._validate import check_choice
from ..datafiles import data_file

__all__ = ["FAMILIES", "FIGURE_CLASSES", "quant_methods"]

FIGURE_CLASSES = ("PTQ", "QAT", "Q-PEFT")
FAMILIES = ("weight-only", "weight-activation", "KV cache", "Q-PEFT")


def quant_methods(figure_class: str | None = None) -> pd.DataFrame:
    """The survey's Fig. 10 timeline: one row per method, with a ``date`` column (first day of the month).

    ``figure_class`` filters to ``"PTQ"``, ``"QAT"`` or ``"Q-PEFT"``. Introduced in Chapter 3.
    """
    df = pd.read_csv(io.StringIO(data_file("quant_methods.csv").read_text()), dtype={"arxiv": str})
    df["date"] = pd.to_datetime(dict(year=df["year"], month=df["month"], day=1))
    if figure_class is not None:
        check_choice("figure_class", figure_class, FIGURE_CLASSES)
        df = df[df["figure_class"] == figure_class].reset_index(drop=True)
    return df
