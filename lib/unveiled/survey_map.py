"""The survey's map: which section of the book treats each section of the survey, and how deeply.

The survey [Yuan et al. 2024] sorts efficient LLM inference in its Fig. 2 into levels: parameters (§3),
algorithms (§4), systems (§5), hardware (§6), and a discussion (§7), after the background of §1-2.
``data/survey_map.csv`` turns that taxonomy into a reading guide: one row per survey section (per topic where
the book treats the parts of a section in different places), with the book section that treats it, the depth
of the treatment (:data:`DEPTHS`), the survey figures and tables the book recomputes from code and where, and a
short note. The book's front page renders it (:func:`survey_map_html`) and states what is reproduced
(:func:`reproduction_summary`); a test keeps it in sync with the table of contents. When a chapter lands, its
rows change in one line each (``book`` and ``depth``). Introduced on the book's front page.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping

import pandas as pd

from ._validate import check_choice
from .datafiles import data_file

__all__ = ["DEPTHS", "LEVELS", "SURVEY_FIGURES", "SURVEY_TABLES", "check_survey_map", "reproduced_items",
           "reproduction_summary", "survey_map", "survey_map_html"]

#: How deeply the book treats a survey section, deepest first.
DEPTHS = ("runs on a real model", "tiny models", "roofline analysis only", "prose", "not yet")
#: The survey's Fig. 2 levels, in the survey's order (the background of §1-2 first).
LEVELS = ("Background", "Parameter level", "Algorithm level", "System level", "Hardware level", "Discussion")
#: The survey (v6) has Figures 1-20 and Tables 1-4.
SURVEY_FIGURES, SURVEY_TABLES = 20, 4
COLUMNS = ["section", "topic", "level", "book", "depth", "reproduced", "note"]
_ITEM = re.compile(r"^(Fig\.|Table) (\d+): (Figure \d+\.\d+|§\d+\.\d+)$")
_DEPTH_COLOURS = {"runs on a real model": "#1b7837", "tiny models": "#5aae61", "roofline analysis only": "#2166ac",
                  "prose": "#878787", "not yet": "#bdbdbd"}


def survey_map() -> pd.DataFrame:
    """The map as a table (``data/survey_map.csv``), checked by :func:`check_survey_map`."""
    table = pd.read_csv(io.StringIO(data_file("survey_map.csv").read_text()), dtype=str, keep_default_na=False)
    return check_survey_map(table)


def check_survey_map(table: pd.DataFrame) -> pd.DataFrame:
    """Check a map: its columns, known levels and depths, a book section exactly when the depth is not
    "not yet", and well-formed reproduction entries ("Fig. 6: Figure 3.2" or "Table 1: §2.2", separated by
    "; "). Returns the table; raises ValueError saying which row is wrong and what is accepted."""
    if list(table.columns) != COLUMNS:
        raise ValueError(f"survey_map.csv must have the columns {COLUMNS}, found {list(table.columns)}")
    for row in table.itertuples():
        where = f"survey_map.csv, §{row.section} ({row.topic})"
        check_choice(f"{where}: level", row.level, LEVELS)
        check_choice(f"{where}: depth", row.depth, DEPTHS)
        if (row.depth == "not yet") != (row.book == ""):
            raise ValueError(f"{where}: a row names a book section exactly when its depth is not 'not yet'")
        if row.book and not re.fullmatch(r"\d+\.\d+", row.book):
            raise ValueError(f"{where}: book section {row.book!r} must read like '3.4'")
        for item in filter(None, row.reproduced.split("; ")):
            if not _ITEM.match(item):
                raise ValueError(f"{where}: reproduction {item!r} must read like 'Fig. 6: Figure 3.2' or "
                                 f"'Table 1: §2.2'")
    return table


def reproduced_items(table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (survey figure or table, book figure or section that recomputes it): columns ``kind``
    ("Fig." or "Table"), ``number``, ``where`` ("Figure 3.2" or "§2.2") and the map row's ``section``."""
    table = survey_map() if table is None else table
    rows = []
    for row in table.itertuples():
        for item in filter(None, row.reproduced.split("; ")):
            kind, number, where = _ITEM.match(item).groups()
            rows.append({"kind": kind, "number": int(number), "where": where, "section": row.section})
    return pd.DataFrame(rows, columns=["kind", "number", "where", "section"])


def _ranges(numbers: list[int]) -> str:
    """[4, 5, 6, 8] -> '4–6 and 8'."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    parts = [f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def reproduction_summary(table: pd.DataFrame | None = None) -> str:
    """One sentence, from the map, of what the book recomputes from code: which of the survey's figures and
    tables, and which not (yet)."""
    items = reproduced_items(table)
    figs = sorted(set(items[items.kind == "Fig."].number))
    tabs = sorted(set(items[items.kind == "Table"].number))
    missing_figs = [n for n in range(1, SURVEY_FIGURES + 1) if n not in figs]
    missing_tabs = [n for n in range(1, SURVEY_TABLES + 1) if n not in tabs]

    def name(kind: str, numbers: list[int]) -> str:
        word = {"Fig.": ("Figure", "Figures"), "Table": ("Table", "Tables")}[kind][len(numbers) > 1]
        return f"{word} {_ranges(numbers)}"

    done = ", and ".join(name(k, n) for k, n in (("Table", tabs), ("Fig.", figs)) if n)
    todo = ", and ".join(name(k, n) for k, n in (("Fig.", missing_figs), ("Table", missing_tabs)) if n)
    text = (f"Of the survey's {SURVEY_FIGURES} figures and {SURVEY_TABLES} tables, the book recomputes "
            f"{len(figs) + len(tabs)} from code: {done or 'none yet'}.")
    return text + (f" Not reproduced (yet): {todo}." if todo else "")


def survey_map_html(table: pd.DataFrame | None = None, sections: Mapping[str, str] | None = None,
                    chapters: Mapping[int, str] | None = None) -> str:
    """The map as a compact HTML table grouped by the survey's levels, for a static page.

    ``sections`` maps a book section ("3.4") to its link (``chapters/03_quantization.html#...``) and
    ``chapters`` a chapter number to its page's link, for the reproduced figures. A section or chapter without
    a link is written as plain text. No script and no style sheet: the table fits any page."""
    table = survey_map() if table is None else table
    sections, chapters = sections or {}, chapters or {}

    def link(text: str, href: str | None) -> str:
        return f'<a href="{html.escape(href)}">{html.escape(text)}</a>' if href else html.escape(text)

    def made(reproduced: str) -> str:
        """'Fig. 11: Figure 2.6; Fig. 11: Figure 3.4' -> 'Fig. 11 → 2.6, 3.4', each book place linked."""
        places: dict[str, list[str]] = {}
        for item in filter(None, reproduced.split("; ")):
            kind, number, place = _ITEM.match(item).groups()
            places.setdefault(f"{kind} {number}", []).append(place)
        lines = []
        for name, where in places.items():
            links = ", ".join(link(p, sections.get(p[1:])) if p.startswith("§")
                              else link(p.split()[1], chapters.get(int(p.split()[1].split(".")[0]))) for p in where)
            lines.append(f'<span style="white-space:nowrap">{name} →</span> {links}')
        return "<br>".join(lines)

    head = "".join(f"<th>{h}</th>" for h in ("Survey", "Topic", "In this book", "Depth",
                                              "Reproduced (survey → book figure)"))
    out = ["<style>table.survey-map{border-collapse:collapse;font-size:90%}"
           "table.survey-map td,table.survey-map th{padding:2px 6px;vertical-align:top;text-align:left;"
           "border-bottom:1px solid #e0e0e0}table.survey-map th.level{padding-top:10px}"
           # on a phone the five columns fit only if a long word may break (names such as unveiled.quant)
           "@media (max-width:600px){table.survey-map{font-size:80%}table.survey-map td{overflow-wrap:anywhere}}"
           "</style>",
           '<div style="overflow-x:auto"><table class="survey-map">', f"<thead><tr>{head}</tr></thead><tbody>"]
    for level in LEVELS:
        rows = table[table.level == level]
        if rows.empty:
            continue
        out.append(f'<tr><th class="level" colspan="5">{html.escape(level)}</th></tr>')
        for r in rows.itertuples():
            note = f'<br><small style="color:#555">{html.escape(r.note)}</small>' if r.note else ""
            book = link(f"§{r.book}", sections.get(r.book)) if r.book else "–"
            colour = _DEPTH_COLOURS[r.depth]
            depth = f'<span style="border-left:6px solid {colour};padding-left:4px">{html.escape(r.depth)}</span>'
            out.append(f"<tr><td>§{html.escape(r.section)}</td><td>{html.escape(r.topic)}{note}</td>"
                       f"<td>{book}</td><td>{depth}</td><td>{made(r.reproduced)}</td></tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)
