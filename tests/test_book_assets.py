"""The book's Sphinx extension (tools/book_assets.py) on small inputs: which scripts a page needs, the icon and
stylesheet trimming, the run-time phrase. The built site itself is checked in tests/test_site.py."""

from __future__ import annotations

import book_assets
import pytest


def test_page_needs():
    assert book_assets.page_needs('<div id="a"></div><script>vegaEmbed(el, spec)</script>')["vega"]
    assert not book_assets.page_needs("<p>no chart</p>")["vega"]
    assert book_assets.page_needs('<span class="math notranslate nohighlight">\\(x\\)</span>')["math"]
    assert not book_assets.page_needs('<section class="tex2jax_ignore mathjax_ignore">')["math"]
    assert book_assets.page_needs('<script type="application/vnd.jupyter.widget-state+json">')["widgets"]


@pytest.mark.parametrize("seconds, cores, phrase", [
    ([41.2, 130.5, 60.0], 2, "41 s to 2.2 minutes on 2 CPU cores"),
    ([30.0, 30.2], 1, "30 s on 1 CPU core"),
    ([], 2, "(no notebook ran in this build)"),
])
def test_describe_runtimes(seconds, cores, phrase):
    assert book_assets.describe_runtimes(seconds, cores) == phrase


def test_notebook_times_phrase_adds_the_cpu_limited_run(monkeypatch):
    monkeypatch.setattr(book_assets, "build_cores", lambda: 2)
    limited = {"cores": 4, "torch_cpu_capability": "AVX2", "notebooks": [
        {"notebook": "chapters/01_a", "seconds": 50.0, "error": ""},
        {"notebook": "chapters/02_b", "seconds": 500.0, "error": "CellTimeoutError"},  # failed runs are left out
        {"notebook": "appendix/c", "seconds": 900.0, "error": ""}]}
    assert book_assets.notebook_times_phrase([30.0, 90.0], limited, "chapters/") == (
        "30 s to 1.5 minutes on 2 CPU cores (50 s on 4 CPU cores with PyTorch limited to AVX2)")
    assert book_assets.notebook_times_phrase([30.0], None, "chapters/") == "30 s on 2 CPU cores"


def test_icon_rules_are_cut_to_the_icons_used():
    css = ('.a{color:red}.fa-bars:before{content:"\\f0c9"}.fa-x:before,.fa-xmark:before{content:"\\f00d"}'
           '.fa-zzz:before{content:"\\f000"}')
    out = book_assets.trim_icon_rules(css, {"fa-bars", "fa-xmark"})
    assert out == '.a{color:red}.fa-bars:before{content:"\\f0c9"}.fa-xmark:before{content:"\\f00d"}'


def test_icons_become_inline_svg():
    icons = {"bars": (448, 512, "M0 96h448"), "U+f0c9": (448, 512, "M0 96h448")}
    html = ('<span class="fa-solid fa-bars"></span><i class="theme-switch fas fa-bars fa-lg" data-mode="light"></i>'
            '<i class="fa-solid fa-unknown"></i>')
    out = book_assets.inline_icons(html, icons)
    assert out.count("<svg") == 2 and 'viewBox="0 0 448 512"' in out and 'd="M0 96h448"' in out
    assert 'class="theme-switch fa-lg svg-inline--fa" data-mode="light"' in out
    assert '<i class="fa-solid fa-unknown"></i>' in out  # an icon the script does not define keeps its glyph


def test_font_icons_in_pseudo_elements_become_masks():
    css = (':root{--pst-icon-lightbulb:"\uf0eb";--pst-icon-admonition-tip:var(--pst-icon-lightbulb)}'
           '.admonition.tip>.admonition-title:after{color:green;content:var(--pst-icon-admonition-tip);width:1rem}'
           'a.external:after{content:var(--pst-icon-lightbulb);font:var(--fa-font-solid)}')
    icons = {"U+f0eb": (384, 512, "M0 0h10")}
    out = book_assets.icon_mask_css(css, icons)
    lines = out.splitlines()
    assert lines[0].count("url(") == 1 and "viewBox='0 0 384 512'" in lines[0]  # each icon drawn once
    assert lines[1].startswith('.admonition.tip>.admonition-title:after{content:"";')
    assert lines[1].count("var(--book-icon-f0eb)") == 2 and "width:.8em" not in lines[1]
    assert "display:inline-block;width:.8em" in lines[2]  # sized where the theme did not size it


def test_pages_drop_unused_theme_scripts():
    html = ('<script defer src="_static/scripts/fontawesome.js?digest=1"></script>'
            '<script src="_static/searchtools.js"></script><script src="searchindex.js"></script>')
    assert book_assets.FONTAWESOME_JS.sub("", html).count("<script") == 2
    assert book_assets.SEARCH_JS.sub("", html).count("<script") == 1


def test_the_bibliography_parses_entry_by_entry():
    # A missing closing brace swallows the next entry (and stops the book build): every `@type{key,` line must
    # come out of the parser as its own entry.
    import pathlib
    import re

    from pybtex.database import parse_file

    path = pathlib.Path(__file__).resolve().parents[1] / "references.bib"
    keys = re.findall(r"^@\w+\{([^,\s]+),", path.read_text(), flags=re.M)
    parsed = parse_file(str(path)).entries
    assert len(keys) == len(set(keys)), "duplicate keys in references.bib"
    assert sorted(parsed.keys()) == sorted(keys)
