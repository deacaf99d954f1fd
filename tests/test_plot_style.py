"""The book-wide chart helpers of unveiled.plots.style: legible text colours, label placement, compact data."""

from __future__ import annotations

import altair as alt
import pandas as pd
import pytest

from unveiled.plots.style import THEME, contrast_ratio, csv_data, label_layout, legible


@pytest.mark.parametrize("colour", ["#f58518", "#72b7b2", "#2ca02c", "#ff7f0e", "#1f77b4", "#bab0ac"])
def test_legible_colours_reach_the_contrast_text_needs(colour):
    dark = legible(colour)
    assert contrast_ratio(dark) >= 4.5
    if contrast_ratio(colour) >= 4.5:
        assert dark == colour  # already legible: unchanged
    with pytest.raises(ValueError, match="#rrggbb"):
        legible("red")


def test_contrast_ratio_matches_wcag():
    assert contrast_ratio("#000000") == pytest.approx(21.0)
    assert contrast_ratio("#ffffff") == pytest.approx(1.0)
    assert contrast_ratio("#767676") == pytest.approx(4.54, abs=0.01)


def test_labels_do_not_overlap():
    xs, ys = [100, 104, 108, 300], [50, 52, 54, 50]
    texts = ["batch 256", "batch 1024", "batch 4096", "far"]
    spots = label_layout(xs, ys, texts, width=440, height=300)
    boxes = []
    for (dx, dy, align), x, y, t in zip(spots, xs, ys, texts, strict=True):
        w = 6.2 * len(t)
        left = x + dx if align == "left" else x + dx - w
        boxes.append((left, y + dy - 6.5, left + w, y + dy + 6.5))
    for i in range(len(boxes)):
        for j in range(i):
            a, b = boxes[i], boxes[j]
            assert a[2] <= b[0] or a[0] >= b[2] or a[3] <= b[1] or a[1] >= b[3], (texts[i], texts[j])


def test_csv_data_keeps_types_and_is_compact():
    df = pd.DataFrame({"d": [0, 1] * 200, "ms": [1.5, 2.25] * 200, "fits": [True, False] * 200, "k": ["16", "8"] * 200})
    data = csv_data(df)
    assert data.format.parse == {"d": "number", "ms": "number", "fits": "boolean"}
    assert data.values.splitlines()[:3] == ["d,ms,fits,k", "0,1.5,true,16", "1,2.25,false,8"]
    records = alt.Chart(df).mark_point().to_dict()["datasets"]
    assert len(data.values) < 0.5 * len(str(next(iter(records.values()))))


def test_the_book_theme_is_enabled():
    assert alt.theme.active == THEME
    config = alt.theme.get()()["config"]
    assert config["legend"]["labelLimit"] == 0 and config["axis"]["labelSeparation"] > 0
