"""The book's own Sphinx extension (listed in _config.yml under sphinx.local_extensions).

1. **It marks the build**: ``UNVEILED_BOOK_BUILD=1`` is set in the build process before any notebook runs, so
   every kernel Jupyter Book starts inherits it. The library then shows no progress bars and turns live
   ipywidgets explorers into stills (``unveiled.session``, ``unveiled.explorers.live``).
2. **Each page loads only what it uses** (the first visit of a chapter stays under 3 MB, the introduction
   under 1 MB): Vega (``_extra/offline/vega-offline.js``) and the chart fitting (``vega-fit.js``) only on
   pages with an Altair chart; MathJax only on pages whose own body has maths (Sphinx also loads it on a
   page whose toctree includes maths, such as the introduction); the ipywidgets manager only on a page that embeds widget state (none should: see
   ``unveiled.explorers.live``). MathJax is assembled from its components without the context menu
   (``tools/vendor_assets.py``). The theme's FontAwesome JavaScript (1.5 MB, which redraws the icons as
   SVG) is dropped: the theme's CSS already draws the same icons with its web fonts; so are the search index
   (100 kB and growing) on every page but the search page, the unused sphinx-design assets, the brands icon
   font (the repository button gets a solid icon) and the theme's rules for icons no page uses.
3. **No console errors**: the unused Thebe configuration script (emitted twice by Jupyter Book 1, a
   ``THEBE_JS_URL`` redeclaration error) is dropped, the theme gets a default colour mode (an empty mode
   logs "Got invalid theme mode"), and the site has a favicon.
4. **Run-time claims come from the build**: the role ``{notebook-times}`chapters``` writes the range of
   execution times of the notebooks under ``chapters/`` in this build (the numbers of the status page's
   table, which shows "ok"/"failed" in words rather than emoji that need an emoji font), e.g. "40 s to
   2.1 minutes on 2 CPU cores", followed by the range of the CPU-limited (AVX2) run when CI measured one
   (``_build/exec-times-avx2.json``, also shown on the status page). It is resolved after every notebook ran.

The vendored files live in ``_extra/`` (copied to the site root, never injected into every page the way
Jupyter Book injects every ``.js`` under ``_static/``); scripts reach them as ``_static/../offline/...``.
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

from docutils import nodes

#: Same name as ``unveiled.session.BOOK_BUILD_ENV`` (a test keeps them equal; tools do not import the library).
BOOK_BUILD_ENV = "UNVEILED_BOOK_BUILD"
VEGA = ("../offline/vega-offline.js", "../offline/vega-fit.js")
WIDGETS = ("../offline/mathjax2-shim.js", "../offline/html-manager/embed.js")
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
#: What MathJax's loader (``mathjax_path``: ``_extra/mathjax/startup.js``) fetches; the rest loads on demand.
MATHJAX_COMPONENTS = ["input/tex", "output/chtml", "a11y/assistive-mml"]
FONTAWESOME_JS = re.compile(r'\s*<script defer src="[^"]*_static/scripts/fontawesome\.js[^"]*"></script>')
# The theme loads Sphinx's search index on every page for a search-as-you-type box the book does not enable
# (search_as_you_type is false: the search box opens search.html, which loads the index itself).
SPHINX_DESIGN = re.compile(r'\s*(?:<link rel="stylesheet" type="text/css" href="[^"]*sphinx-design\.min\.css[^"]*" />'
                           r'|<script [^>]*src="[^"]*design-tabs\.js[^"]*"></script>)')
ICON_RULE = re.compile(r'((?:\.fa-[a-z0-9-]+:before,?)+)(\{content:"[^"]*"\})')
#: Icons the theme's scripts switch to at run time (kept even if no page names them).
ICONS_ALWAYS = ("fa-compress", "fa-expand", "fa-xmark", "fa-sun", "fa-moon", "fa-circle-half-stroke")
SEARCH_JS = re.compile(r'\s*<script src="[^"]*(?:_static/searchtools\.js|_static/language_data\.js|searchindex\.js)"></script>')


def describe_runtimes(seconds: list[float], cores: int) -> str:
    """The phrase the ``notebook-times`` role writes: the range of ``seconds`` on ``cores`` CPU cores."""
    if not seconds:
        return "(no notebook ran in this build)"

    def fmt(s: float) -> str:
        return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} minutes"

    lo, hi = min(seconds), max(seconds)
    span = fmt(hi) if round(lo) == round(hi) else f"{fmt(lo)} to {fmt(hi)}"
    return f"{span} on {cores} CPU core{'s' if cores != 1 else ''}"


def build_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class NotebookTimes(nodes.Inline, nodes.TextElement):
    """Placeholder for the ``notebook-times`` role, replaced once every notebook has run."""


def _notebook_times_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    node = NotebookTimes(rawtext, "")
    node["prefix"] = text.strip().rstrip("/") + "/"
    return [node], []


#: Written by CI before the build (tools/colab_twin.py --isa avx2 --times ...); the status page shows it too.
LIMITED_TIMES = pathlib.Path("_build") / "exec-times-avx2.json"


def notebook_times_phrase(build_times: list[float], limited: dict | None, prefix: str) -> str:
    """The ``notebook-times`` phrase: this build's range, then the CPU-limited run's range when there is one."""
    phrase = describe_runtimes(build_times, build_cores())
    rows = [r for r in (limited or {}).get("notebooks", []) if r["notebook"].startswith(prefix) and not r["error"]]
    if rows:
        capped = describe_runtimes([r["seconds"] for r in rows], int(limited.get("cores", build_cores())))
        phrase += f" ({capped} with PyTorch limited to {limited.get('torch_cpu_capability', 'AVX2')})"
    return phrase


def _resolve_notebook_times(app: Any, doctree: Any, docname: str) -> None:
    import json

    from myst_nb.sphinx_ import NbMetadataCollector

    data = NbMetadataCollector.get_doc_data(app.env)
    path = pathlib.Path(app.srcdir) / LIMITED_TIMES
    limited = json.loads(path.read_text()) if path.exists() else None
    for node in list(doctree.findall(NotebookTimes)):
        # rounded as the status page prints them (0.01 s), so that the phrase and the table always agree
        times = [float(f'{d["exec_data"]["runtime"]:.2f}') for doc, d in sorted(data.items())
                 if doc.startswith(node["prefix"]) and d.get("exec_data") and d["exec_data"].get("runtime")]
        node.replace_self(nodes.Text(notebook_times_phrase(times, limited, node["prefix"])))


def _status_in_words() -> None:
    """The execution table says "ok"/"failed" (its ✅/❌ need an emoji font) and keeps three columns (document,
    run time, status) so that it fits a phone; the file dates and the execution method said nothing to a reader."""
    from myst_nb.ext import execution_tables

    execution_tables._key2transform["succeeded"] = lambda ok: "ok" if ok is True else "failed"
    for key in ("mtime", "method"):
        execution_tables._key2header.pop(key, None)


def mark_book_build() -> None:
    """Mark this process, and the notebook kernels it starts, as the book build."""
    os.environ[BOOK_BUILD_ENV] = "1"


def page_needs(body: str) -> dict[str, bool]:
    """Which optional scripts a page body uses: Altair charts, ipywidgets state, maths."""
    return {"vega": "vegaEmbed(" in body, "widgets": WIDGET_STATE in body,
            "math": bool(re.search(r'class="math[ "]', body))}


def _unused(js: Any, needs: dict[str, bool]) -> bool:
    name = str(getattr(js, "filename", None) or "")
    body = getattr(js, "attributes", {}).get("body", "") if hasattr(js, "attributes") else ""
    if name.endswith("sphinx-thebe.js") or "THEBE_JS_URL" in body:
        return True
    # Sphinx counts the maths of every page a page's toctree includes (the introduction includes the book)
    return not needs["math"] and ("mathjax" in name.lower() or body.startswith("window.MathJax"))


def _page_context(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    if app.builder.format != "html":
        return
    needs = page_needs(context.get("body", ""))
    if needs["vega"]:
        for i, path in enumerate(VEGA):
            app.add_js_file(path, priority=300 + i)
    if needs["widgets"]:
        for i, path in enumerate(WIDGETS):
            app.add_js_file(path, priority=310 + i)
    files = context.get("script_files")
    if files is not None:
        files[:] = [js for js in files if not _unused(js, needs)]


def _config_inited(app: Any, config: Any) -> None:
    context = dict(config.html_context or {})  # the theme reads its default colour mode from the page context
    context.setdefault("default_mode", "light")
    config.html_context = context
    mj = dict(config.mathjax3_config or {})
    loader = dict(mj.get("loader", {}))
    loader.setdefault("load", list(MATHJAX_COMPONENTS))
    mj["loader"] = loader
    config.mathjax3_config = mj
    here = pathlib.Path(__file__).resolve().parent
    if not config.html_favicon:
        config.html_favicon = str(here / "favicon.svg")


def _trim_pages(app: Any, exception: Exception | None) -> None:
    """After the build, lighten what the theme's templates wrote into every page (after the per-page asset lists):
    no FontAwesome JavaScript; no search scripts but on the search page; no sphinx-design stylesheet and script
    where no ``sd-`` element is used; the repository button's GitHub logo replaced by a solid icon (so the
    120 kB brands font never loads); the solid icons drawn as inline SVG and the icons of admonition titles and
    external links as SVG masks (so the 150 kB solid font does not load either); and the theme stylesheet's icon
    rules cut down to the icons the site uses."""
    if exception is not None or app.builder.format != "html":
        return
    out = pathlib.Path(app.outdir)
    used: set[str] = set(ICONS_ALWAYS)
    fa_js = out / "_static" / "scripts" / "fontawesome.js"
    icons = solid_icons(fa_js.read_text(encoding="utf-8")) if fa_js.exists() else {}
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        new = FONTAWESOME_JS.sub("", text).replace('class="fab fa-github"', 'class="fas fa-code-branch"')
        new = inline_icons(new, icons)
        if page != out / "search.html":
            new = SEARCH_JS.sub("", new)
        if 'class="sd-' not in new:
            new = SPHINX_DESIGN.sub("", new)
        used |= set(re.findall(r"fa-[a-z0-9-]+", new))
        if new != text:
            page.write_text(new, encoding="utf-8")
    for js in ("scripts/pydata-sphinx-theme.js", "scripts/sphinx-book-theme.js"):
        if (out / "_static" / js).exists():
            used |= set(re.findall(r"fa-[a-z0-9-]+", (out / "_static" / js).read_text(encoding="utf-8")))
    css = out / "_static" / "styles" / "pydata-sphinx-theme.css"
    if css.exists():
        theme = css.read_text(encoding="utf-8")
        css.write_text(trim_icon_rules(theme, used), encoding="utf-8")
        book_css = out / "_static" / "book.css"
        if book_css.exists() and icons:
            book_css.write_text(book_css.read_text(encoding="utf-8") + "\n/* Generated by tools/book_assets.py: the "
                                "theme's font icons in pseudo-elements, as SVG masks. */\n"
                                + icon_mask_css(theme, icons) + "\n", encoding="utf-8")


def solid_icons(fontawesome_js: str) -> dict[str, tuple[int, int, str]]:
    """The solid icons defined in the theme's FontAwesome JavaScript: name -> (width, height, SVG path)."""
    start = fontawesome_js.find('"fas"===c&&d("fa",l)}var p={')
    end = fontawesome_js.find('d("fas",p),d("fa-solid",p)')
    if start < 0 or end < start:
        return {}
    block = fontawesome_js[start:end]
    pattern = r'(?:"([a-z0-9-]+)"|\b([a-z0-9]+)):\[(\d+),(\d+),\[[^\]]*\],"([0-9a-f]+)","(M[^"]+)"\]'
    icons = {}
    for m in re.finditer(pattern, block):
        icons[m.group(1) or m.group(2)] = (int(m.group(3)), int(m.group(4)), m.group(6))
        icons[f"U+{m.group(5)}"] = icons[m.group(1) or m.group(2)]  # also by code point
    return icons


def icon_mask_css(theme_css: str, icons: dict[str, tuple[int, int, str]]) -> str:
    """CSS that draws the theme's font icons in pseudo-elements (admonition titles, external links) as SVG masks
    in the same colour, so that no page needs the icon font: one rule per theme rule that sets such content."""
    chars = dict(re.findall(r'--pst-icon-([a-z-]+):"(.)"', theme_css))
    chars.update({f"admonition-{t}": chars.get(n, "") for t, n in
                  re.findall(r'--pst-icon-admonition-([a-z-]+):var\(--pst-icon-([a-z-]+)\)', theme_css)})
    rules, urls = [], {}
    for selector, body, var in re.findall(r'([^{}]+)\{([^{}]*content:var\(--pst-icon-([a-z-]+)\)[^{}]*)\}', theme_css):
        code = f"{ord(chars[var]):x}" if chars.get(var) else ""
        icon = icons.get(f"U+{code}")
        if icon is None:
            continue
        w, h, path = icon
        urls[code] = ("url(\"data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 "
                      f"{w} {h}'%3E%3Cpath d='{path}'/%3E%3C/svg%3E\")")
        size = "" if "width:" in body else "display:inline-block;width:.8em;height:.8em;vertical-align:-.05em;"
        mask = f"var(--book-icon-{code}) center/contain no-repeat"
        rules.append(f'{selector.strip()}{{content:"";font:inherit;background-color:currentColor;{size}'
                     f"-webkit-mask:{mask};mask:{mask}}}")
    if not rules:
        return ""
    root = ":root{" + ";".join(f"--book-icon-{code}:{url}" for code, url in urls.items()) + "}"
    return "\n".join([root, *rules])


ICON_TAG = re.compile(r'<(i|span) class="([^"]*\bfa(?:s|-solid)\b[^"]*)"([^>]*)></\1>')


def inline_icons(html: str, icons: dict[str, tuple[int, int, str]]) -> str:
    """Draw the page's solid icons as inline SVG (what FontAwesome's JavaScript does at run time), so that the
    150 kB icon font is not needed; an icon the JavaScript does not define keeps its font glyph."""
    def svg(m: re.Match) -> str:
        classes = m.group(2).split()
        names = [c[3:] for c in classes if c.startswith("fa-") and c[3:] in icons]
        if not names:
            return m.group(0)
        w, h, path = icons[names[0]]
        keep = [c for c in classes if c not in ("fas", "fa-solid", f"fa-{names[0]}")] + ["svg-inline--fa"]
        return (f'<svg class="{" ".join(keep)}"{m.group(3)} aria-hidden="true" focusable="false" role="img" '
                f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}"><path fill="currentColor" d="{path}"/>'
                "</svg>")

    return ICON_TAG.sub(svg, html)


def trim_icon_rules(css: str, used: set[str]) -> str:
    """``css`` without the FontAwesome ``.fa-NAME:before{content:...}`` rules of icons not in ``used``."""
    def keep(m: re.Match) -> str:
        names = re.findall(r"\.(fa-[a-z0-9-]+):before", m.group(1))
        kept = [n for n in names if n in used]
        return "" if not kept else ",".join(f".{n}:before" for n in kept) + m.group(2)

    return ICON_RULE.sub(keep, css)


def setup(app: Any) -> dict[str, Any]:
    mark_book_build()
    _status_in_words()
    app.add_node(NotebookTimes)
    app.add_role("notebook-times", _notebook_times_role)
    app.connect("doctree-resolved", _resolve_notebook_times)
    app.connect("config-inited", _config_inited)
    app.connect("html-page-context", _page_context, priority=900)
    app.connect("build-finished", _trim_pages)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
