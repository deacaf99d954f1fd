"""Chapter 2's claims, asserted with the analyzer (tests/claims.py explains the registry)."""

from __future__ import annotations

from claims import claim
from unveiled.analyzer import survey

PAGE = "chapters/02_llm_inference.ipynb"


@claim(PAGE, "Quantized weights help only for short prompts; the FP16 curve joins the others near 2⁸ tokens")
def test_figure_9_quantized_weights_help_only_short_prompts():
    fig9 = survey.figure9_data("paper").pivot_table(index="seq_len", columns="setting", values="time_s")
    relative = fig9.drop(columns="FP16").div(fig9["FP16"], axis=0)
    assert (relative.loc[relative.index <= 32, "W4"] < 0.3).all()  # short prompts: the weight bytes rule
    joined = relative[(relative > 0.99).all(axis=1)].index.min()  # every setting within 1 % of FP16
    assert 2**7.5 < joined < 2**8.5, joined
    assert (relative.loc[relative.index >= joined] > 0.99).all().all()


@claim(PAGE, "which the library reproduces exactly")
def test_table_1_is_reproduced_in_every_entry():
    t1 = survey.table1(conventions="paper")
    assert t1.match.all() and len(t1) == 24
