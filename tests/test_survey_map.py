"""The survey's map (data/survey_map.csv, rendered on the front page) stays in sync with the book: every survey
section is in it, every book section it links exists, every chapter of the table of contents appears, and every
reproduction it claims is a figure whose caption names that survey figure (and the other way round)."""

from __future__ import annotations

import re

import pytest

import booktext
from conftest import ROOT
from unveiled import survey_map as sm

# The survey's outline (v6; /work/shared/research notes, its §1): every section the map must cover, down to the
# sub-sections the book treats separately.
SURVEY_SECTIONS = ["1", "2.1", "2.2", "2.3", "3.1.1", "3.1.2", "3.1.3", "3.1.4", "3.2", "3.3", "3.4", "4.1.1",
                   "4.1.2", "4.1.3", "4.1.4", "4.2.1", "4.2.2", "5.1", "5.2", "5.3", "6.1", "6.2", "6.3", "6.4",
                   "7.1", "7.2", "7.3", "7.4", "7.5"]


@pytest.fixture(scope="module")
def table():
    return sm.survey_map()


@pytest.fixture(scope="module")
def chapters():
    return {c.number: c for c in booktext.chapters()}


def test_every_survey_section_is_mapped_once_per_topic(table):
    for section in SURVEY_SECTIONS:
        assert any(s == section or s.startswith(section + ".") for s in table.section), f"survey §{section} missing"
    assert not table.duplicated(["section", "topic"]).any()
    level = {"1": "Background", "2": "Background", "3": "Parameter level", "4": "Algorithm level",
             "5": "System level", "6": "Hardware level", "7": "Discussion"}
    for r in table.itertuples():
        assert r.level == level[r.section.split(".")[0]], f"§{r.section} sits at the survey's {level[r.section[0]]}"


def test_every_linked_section_exists_and_every_chapter_appears(table, chapters):
    for r in table.itertuples():
        if r.book:
            ch = chapters.get(int(r.book.split(".")[0]))
            assert ch is not None and r.book in ch.sections, (
                f"survey §{r.section} ({r.topic}) links book §{r.book}, which the table of contents does not have")
        for ref in re.findall(r"§(\d+\.\d+)", r.note):
            ch = chapters.get(int(ref.split(".")[0]))
            assert ch is not None and ref in ch.sections, f"the note of survey §{r.section} names §{ref}"
    mapped = {int(b.split(".")[0]) for b in table.book if b}
    for number in chapters:
        assert number in mapped, f"Chapter {number} is in _toc.yml but no row of data/survey_map.csv links it"


def _captions(chapters) -> list[tuple[tuple[str, ...], str]]:
    """(book figure numbers, caption text) of every caption (markdown and computed; "Figures 3.5 and 3.6" is
    one caption of two figures)."""
    out = []
    for ch in chapters.values():
        for zone in booktext.claim_zones(ch.path):
            m = re.match(r"(?:Figures? (\d+\.\d+)(?: and (\d+\.\d+))?|Table (\d+\.\d+))", zone.text)
            if m:
                out.append((tuple(filter(None, m.groups())), zone.text))
    return out


def _names(caption: str, number: int) -> bool:
    """Does a caption name the survey's figure `number` ("the survey's Fig. 8", "survey's Figs 8 and 9")?"""
    return any(number in {int(x) for x in m.groups() if x}
               for m in re.finditer(r"survey's (?:Figure|Figs?\.?) (\d+)(?: and (\d+))?", caption))


def test_reproductions_point_at_captions_that_name_the_survey_figure(table, chapters):
    captions = _captions(chapters)
    for item in sm.reproduced_items(table).itertuples():
        if item.where.startswith("Figure"):
            number = item.where.split()[1]
            texts = [text for numbers, text in captions if number in numbers]
            assert texts, f"{item.kind} {item.number}: {item.where} has no caption in the book"
            assert item.kind == "Fig." and _names(texts[0], item.number), (
                f"the caption of {item.where} does not name the survey's {item.kind} {item.number}")
        else:
            section = item.where[1:]
            text = booktext.section_text(chapters[int(section.split(".")[0])].path, section)
            assert f"{item.kind} {item.number}" in text, f"§{section} does not name the survey's {item.kind} {item.number}"


def test_every_caption_that_reproduces_a_survey_figure_is_in_the_map(table, chapters):
    listed = {(r.where.split()[1], r.number) for r in sm.reproduced_items(table).itertuples() if r.kind == "Fig."}
    for numbers, caption in _captions(chapters):
        for fig in range(1, sm.SURVEY_FIGURES + 1):
            if _names(caption, fig):
                assert any((n, fig) in listed for n in numbers), (
                    f"Figure {' and '.join(numbers)} reproduces the survey's Fig. {fig}: add it to data/survey_map.csv")


def test_the_summary_counts_what_is_reproduced(table):
    text = sm.reproduction_summary(table)
    items = sm.reproduced_items(table)
    n = items.drop_duplicates(["kind", "number"]).shape[0]
    assert f"recomputes {n} from code" in text
    assert "Not reproduced (yet): Figures 1–3." in text  # what the map says is not reproduced (yet)
    for column, value, error in (("depth", "deep", "depth"), ("level", "Kernel level", "level"),
                                 ("book", "3", "book section"), ("reproduced", "Fig. 6 in Figure 3.2", "reproduction")):
        bad = table.copy()
        bad.loc[1, column] = value
        with pytest.raises(ValueError, match=error):
            sm.check_survey_map(bad)
    bad = table.copy()
    bad.loc[bad.depth == "not yet", "book"] = "3.4"
    with pytest.raises(ValueError, match="exactly when"):
        sm.check_survey_map(bad)


def test_the_html_links_every_treated_section_and_only_those(table):
    links = {b: f"chapters/x.html#s{b}" for b in table.book if b}
    page = sm.survey_map_html(table, links, {1: "chapters/01_roofline.html"})
    for r in table.itertuples():
        if r.book:
            assert f'href="chapters/x.html#s{r.book}"' in page
    assert page.count("<tr><td>") == len(table)
    assert len(page.encode()) < 50_000 and "<script" not in page  # light: the front page stays small
    assert page.count(">–<") == (table.depth == "not yet").sum()  # "not yet" rows link nothing


def test_the_front_page_renders_the_map_and_drops_the_false_claim():
    intro = (ROOT / "intro.md").read_text()
    assert "```{survey-map}\n:show: reproduced\n```" in intro and "```{survey-map}\n```" in intro
    assert "Every figure and table of the survey is reproduced" not in intro
    assert "survey_map_ext" in (ROOT / "_config.yml").read_text()


@pytest.mark.slow
@pytest.mark.site
def test_the_built_front_page_links_every_treated_section(built_site, table):
    html = (built_site / "intro.html").read_text()
    assert len(html.encode()) < 1_000_000
    for r in table[table.book != ""].itertuples():
        m = re.search(rf'<a href="([^"#]+)(#[^"]*)?">§{re.escape(r.book)}</a>', html)
        assert m, f"intro.html has no link to §{r.book}"
        target = (built_site / m.group(1)).read_text()
        assert m.group(2) and f'id="{m.group(2)[1:]}"' in target, f"§{r.book}: {m.group(0)} points at no section"
