"""Live explorers and progress bars: live in a reader's session, still and silent in the book build.

Every ``*_explorer`` function of :mod:`unveiled.explorers` (found by name, so a new chapter's explorer is
covered without editing this file) must return a widget in a live session and, in the book build, a still
of its initial state without creating a single widget (the page then embeds no widget state: no control
that moves and changes nothing). Every progress bar of the library goes through
:func:`unveiled.session.progress_bar`, which is silent in the book build.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import sys

import pytest

import unveiled.explorers
from conftest import ROOT
from unveiled.explorers.live import LIVE_HINT, ExplorerStill, fit_svg, live_or_still
from unveiled.session import BOOK_BUILD_ENV, book_build, progress_bar


def explorer_functions() -> list:
    found = []
    for info in pkgutil.iter_modules(unveiled.explorers.__path__):
        module = importlib.import_module(f"unveiled.explorers.{info.name}")
        for name, obj in vars(module).items():
            if name.endswith("_explorer") and inspect.isfunction(obj) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


EXPLORERS = explorer_functions()


@pytest.fixture
def book(monkeypatch):
    monkeypatch.setenv(BOOK_BUILD_ENV, "1")


def test_explorers_are_found():
    names = {f.__name__ for f in EXPLORERS}
    assert {"roofline_explorer", "analyzer_explorer", "quant_explorer", "teacher_student_explorer", "kv_explorer",
            "decoding_explorer"} <= names


@pytest.mark.parametrize("value, expected", [("1", True), ("yes", True), ("", False), ("0", False),
                                             ("false", False), (None, False)])
def test_book_build_reads_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(BOOK_BUILD_ENV, raising=False)
    else:
        monkeypatch.setenv(BOOK_BUILD_ENV, value)
    assert book_build() is expected


@pytest.mark.parametrize("explorer", EXPLORERS, ids=lambda f: f.__name__)
def test_every_explorer_is_a_widget_in_a_live_session(monkeypatch, explorer):
    import ipywidgets

    monkeypatch.delenv(BOOK_BUILD_ENV, raising=False)
    assert isinstance(explorer(), ipywidgets.Widget)


@pytest.mark.parametrize("explorer", EXPLORERS, ids=lambda f: f.__name__)
def test_every_explorer_is_a_still_in_the_book_without_creating_a_widget(book, monkeypatch, explorer):
    # With ipywidgets unimportable, any widget the explorer tried to create would raise ImportError.
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    still = explorer()
    assert isinstance(still, ExplorerStill), f"{explorer.__name__} must return through live_or_still"
    page = still._repr_html_()
    assert LIVE_HINT.split(":")[0] in page and still.call in page.replace("&#x27;", "'")
    assert still.settings and still.description and still.figure_html
    assert not re.search(r"<(input|select|button|textarea)\b", page), "a still has no controls"
    for svg in re.findall(r"<svg\b[^>]*>", page):
        assert 'role="img"' in svg and "aria-label=" in svg, f"an SVG without an accessible name: {svg[:120]}"


def test_live_or_still_calls_only_what_it_needs(monkeypatch):
    calls = []

    def build():
        calls.append("build")
        return "widget"

    def still():
        calls.append("still")
        return "<p>figure</p>"

    monkeypatch.delenv(BOOK_BUILD_ENV, raising=False)
    assert live_or_still(build, still, title="t", call="f()", settings={"a": 1}, description="d") == "widget"
    assert calls == ["build"]
    monkeypatch.setenv(BOOK_BUILD_ENV, "1")
    out = live_or_still(build, still, title="t", call="f()", settings={"a": [1, 2], "x": 0.5}, description="d")
    assert calls == ["build", "still"]
    assert out.settings == (("a", "1, 2"), ("x", "0.5")) and "<p>figure</p>" in out._repr_html_()


def test_fit_svg_scales_to_the_column_and_names_the_figure():
    out = fit_svg('<svg xmlns="http://www.w3.org/2000/svg" width="560" height="330"><rect/></svg>', "a roofline")
    head = re.match(r"<svg[^>]*>", out).group(0)
    assert 'viewBox="0 0 560 330"' in head and "max-width:100%" in head
    assert 'role="img"' in head and 'aria-label="a roofline"' in head
    out = fit_svg("<svg width='420' height='200' style='font-family:sans-serif'></svg>", "x")
    assert "style='max-width:100%;height:auto;font-family:sans-serif'" in out
    with pytest.raises(ValueError, match="starts with an <svg"):
        fit_svg("<div></div>", "x")
    with pytest.raises(ValueError, match="numeric width and height"):
        fit_svg('<svg width="100%"></svg>', "x")


def test_progress_bars_show_live_and_stay_silent_in_the_book(monkeypatch):
    monkeypatch.delenv(BOOK_BUILD_ENV, raising=False)
    assert not progress_bar(total=3, desc="x").disable
    assert progress_bar(total=3, desc="x", enabled=False).disable
    monkeypatch.setenv(BOOK_BUILD_ENV, "1")
    bar = progress_bar(range(3), desc="x")
    assert bar.disable and list(bar) == [0, 1, 2]
    bar.update(1)
    bar.set_postfix_str("still fine")
    bar.close()


def test_only_the_session_module_creates_progress_bars():
    """A tqdm bar created anywhere else would print into the built book; use unveiled.session.progress_bar."""
    offenders = []
    for path in sorted((ROOT / "lib" / "unveiled").rglob("*.py")):
        if path.name == "session.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            if any(m == "tqdm" or m.startswith("tqdm.") for m in mods):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, f"import tqdm only in unveiled/session.py (use progress_bar): {offenders}"


def test_the_book_build_marks_its_kernels():
    """The Sphinx extension sets the flag in the build process, so the kernels it starts inherit it."""
    import os

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import book_assets
    finally:
        sys.path.remove(str(ROOT / "tools"))
    before = os.environ.get(BOOK_BUILD_ENV)
    try:
        book_assets.mark_book_build()
        assert book_build()
    finally:
        if before is None:
            os.environ.pop(BOOK_BUILD_ENV, None)
        else:
            os.environ[BOOK_BUILD_ENV] = before
