"""The book's text as data, for the tests that read it (cross-references, claims, the survey map).

Pages come in table-of-contents order; a chapter's number is the N of its title ``# Chapter N — ...``; its
sections are its ``## N.M ...`` headings. Prose is the text of markdown cells plus, for a computed paragraph (a
code cell ending in ``Markdown(...)``), the typed literal parts of its strings, with ``{}`` where a value is
computed. Claim zones are the parts of a page that sum up the book's results: Takeaway admonitions, the
Summary, figure and table captions, and every computed paragraph.
"""

from __future__ import annotations

import ast
import json
import pathlib
import re
from dataclasses import dataclass, field

from conftest import ROOT, toc_files

TITLE = re.compile(r"^# +Chapter +(\d+) +— +(.+?)\s*$", re.M)
HEADING = re.compile(r"^## +(.+?)\s*$", re.M)
SECTION_HEADING = re.compile(r"^(\d+)\.(\d+) +(.+)$")
SPECIAL_SECTIONS = {"learning objectives", "check your understanding", "lab", "summary", "further reading",
                    "exercises"}


def cell_text(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def rel(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def toc_pages() -> list[pathlib.Path]:
    """Every page of the table of contents that exists, in order (``.ipynb`` or ``.md``)."""
    pages = []
    for entry in toc_files():
        for ext in (".ipynb", ".md"):
            if (ROOT / f"{entry}{ext}").exists():
                pages.append(ROOT / f"{entry}{ext}")
                break
    return pages


def load_cells(path: pathlib.Path) -> list[dict]:
    """A notebook's cells; a markdown page is one markdown cell."""
    if path.suffix == ".ipynb":
        return json.loads(path.read_text())["cells"]
    return [{"cell_type": "markdown", "source": path.read_text()}]


@dataclass
class Chapter:
    number: int
    path: pathlib.Path
    title: str
    sections: dict[str, str] = field(default_factory=dict)  # "3.4" -> "Better rounding: GPTQ and AWQ"
    headings: list[str] = field(default_factory=list)  # every "## " heading, in order
    figures: set[str] = field(default_factory=set)  # "3.2", from the captions "**Figure 3.2.**"
    tables: set[str] = field(default_factory=set)
    labs: set[str] = field(default_factory=set)


CAPTION = re.compile(r"\*\*(Figures?|Table) +(\d+\.\d+)(?: +and +(\d+\.\d+))?")


def chapters() -> list[Chapter]:
    """The chapters of the table of contents, in its order, with their numbered sections, figures and labs."""
    out = []
    for path in toc_pages():
        if path.suffix != ".ipynb":
            continue
        cells = load_cells(path)
        md = "\n\n".join(cell_text(c) for c in cells if c["cell_type"] == "markdown")
        m = TITLE.search(md)
        if not m:
            continue
        ch = Chapter(int(m.group(1)), path, m.group(2))
        for h in HEADING.findall(md):
            ch.headings.append(h)
            s = SECTION_HEADING.match(h)
            if s:
                ch.sections[f"{s.group(1)}.{s.group(2)}"] = s.group(3)
        for kind, a, b in CAPTION.findall(md):
            (ch.tables if kind == "Table" else ch.figures).update(x for x in (a, b) if x)
        for c in cells:  # computed captions: Markdown(f"**Figure 3.7.** ...")
            if c["cell_type"] == "code":
                for kind, a, b in CAPTION.findall(cell_text(c)):
                    (ch.tables if kind == "Table" else ch.figures).update(x for x in (a, b) if x)
        ch.labs.update(re.findall(r"^### +Lab +(\d+\.\d+)", md, flags=re.M))
        out.append(ch)
    return out


def section_text(path: pathlib.Path, number: str) -> str:
    """The markdown and typed prose of one numbered section ("2.2") of a chapter."""
    out, inside = [], False
    for cell in load_cells(path):
        src = cell_text(cell)
        heading = HEADING.search(src) if cell["cell_type"] == "markdown" else None
        if heading:
            inside = heading.group(1).startswith(f"{number} ")
        if inside:
            out.append(src if cell["cell_type"] == "markdown" else " ".join(string_constants(src)))
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------------------------
# Prose


def ends_in_markdown(source: str) -> bool:
    """Is this code cell a computed paragraph (its last statement a ``Markdown(...)`` call)?"""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    last = body[-1] if body else None
    return (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
            and getattr(last.value.func, "id", None) == "Markdown")


def _literal_text(node: ast.AST) -> str:
    """An f-string or string with ``{}`` in place of every computed value."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return "{}"


def typed_strings(source: str) -> list[str]:
    """The typed prose of a code cell: its f-strings and its strings of three words or more, with ``{}`` for
    computed values. Strings that the data choose between (the branches of ``a if cond else b`` or of an
    ``if`` statement), table labels
    (subscripts), comparisons and format specifications are computed, not typed, and are left out."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    skip: set[int] = set()
    for node in ast.walk(tree):  # docstrings document code, they are no prose of the page
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skip.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, (ast.IfExp, ast.If)):  # the data choose the branch: its words are computed
            for part in ([node.test, node.body, node.orelse] if isinstance(node, ast.IfExp)
                         else [node.test, *node.body, *node.orelse]):
                skip.update(id(n) for n in ast.walk(part))
        elif isinstance(node, (ast.Subscript, ast.Compare, ast.FormattedValue)):
            skip.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            skip.update(id(n) for n in ast.walk(node))
            out.append(_literal_text(node))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.count(" ") >= 2:
            out.append(node.value)
    return out


def string_constants(source: str) -> list[str]:
    """Every string a code cell writes (f-strings with ``{}`` for values); the raw source if it does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [source]
    out, inside = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inside.update(id(v) for v in node.values)
            out.append(_literal_text(node))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside:
            out.append(node.value)
    return out


def page_prose(path: pathlib.Path) -> list[tuple[str, str]]:
    """(where, text) for every markdown cell and every string of every code cell of a page."""
    out = []
    for i, cell in enumerate(load_cells(path)):
        src = cell_text(cell)
        if cell["cell_type"] == "markdown":
            out.append((f"cell {i}", src))
        elif cell["cell_type"] == "code":
            out.extend((f"cell {i} (code)", s) for s in string_constants(src))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Claim zones


@dataclass
class Zone:
    page: str  # "chapters/03_quantization.ipynb"
    where: str  # "cell 52 (Takeaway of '3.4 Better rounding: GPTQ and AWQ')"
    kind: str  # takeaway | summary | caption | computed
    text: str  # normalised: emphasis stripped, whitespace collapsed


def normalize(text: str) -> str:
    """What claims are matched on: no markdown emphasis, no admonition fences, one space between words."""
    text = re.sub(r"^:{3,}\{admonition\}.*$|^:class:.*$|^:{3,}\s*$", " ", text, flags=re.M)
    text = text.replace("*", "")
    return re.sub(r"\s+", " ", text).strip()


TAKEAWAY = re.compile(r"^:{3,}\{admonition\} *Takeaway *\n(?::class:[^\n]*\n)?(.*?)^:{3,} *$", re.M | re.S)


def claim_zones(path: pathlib.Path) -> list[Zone]:
    """The parts of a notebook that sum up the book's results: Takeaways, the Summary, captions (the first
    paragraph of a cell that opens with **Figure/**Table), and the typed words of every computed paragraph."""
    zones, section = [], None
    page = rel(path)
    for i, cell in enumerate(load_cells(path)):
        src = cell_text(cell)
        if cell["cell_type"] == "markdown":
            for m in TAKEAWAY.finditer(src):
                zones.append(Zone(page, f"cell {i} (Takeaway of '{section}')", "takeaway", normalize(m.group(1))))
            rest = TAKEAWAY.sub(" ", src)
            for part in re.split(r"^(## +.+)$", rest, flags=re.M):
                heading = re.match(r"## +(.+?)\s*$", part)
                if heading:
                    section = heading.group(1).strip()
                elif section and section.lower() == "summary" and part.strip():
                    zones.append(Zone(page, f"cell {i} (Summary)", "summary", normalize(part)))
            if re.match(r"\s*\*\*(Figures?|Table) ", src):
                zones.append(Zone(page, f"cell {i} (caption)", "caption", normalize(src.split("\n\n")[0])))
        elif cell["cell_type"] == "code" and ends_in_markdown(src):
            for s in typed_strings(src):
                zones.append(Zone(page, f"cell {i} (computed paragraph, typed words)", "computed", normalize(s)))
    return zones


def claim_pages() -> list[pathlib.Path]:
    """Every notebook of the table of contents (chapters and appendix pages, present and future)."""
    return [p for p in toc_pages() if p.suffix == ".ipynb"]
