"""The book's own Sphinx extension (listed in _config.yml under sphinx.local_extensions).

1. **It marks the build**: ``UNVEILED_BOOK_BUILD=1`` is set in the build process before any notebook runs, so
   every kernel Jupyter Book starts inherits it. The library then shows no progress bars and turns live
   ipywidgets explorers into stills (``unveiled.session``, ``unveiled.explorers.live``).
2. **Each page loads only what it uses** (the first visit of a chapter stays under 3 MB, the introduction
   under 1 MB): Vega (``_extra/offline/vega-offline.js``) and the chart fitting (``vega-fit.js``) only on
   pages with an Altair chart; MathJax only on pages with maths (Sphinx's own rule, which this extension
   does not widen); the ipywidgets manager only on a page that embeds widget state (none should: see
   ``unveiled.explorers.live``). MathJax is assembled from its components without the context menu
   (``tools/vendor_assets.py``). The theme's FontAwesome JavaScript (1.5 MB, which redraws the icons as
   SVG) is dropped: the theme's CSS already draws the same icons with its web fonts; so is the search index
   (100 kB and growing) on every page but the search page.
3. **No console errors**: the unused Thebe configuration script (emitted twice by Jupyter Book 1, a
   ``THEBE_JS_URL`` redeclaration error) is dropped, the theme gets a default colour mode (an empty mode
   logs "Got invalid theme mode"), and the site has a favicon.
4. **Run-time claims come from the build**: the role ``{notebook-times}`chapters``` writes the range of
   execution times of the notebooks under ``chapters/`` in this build (the numbers of the status page's
   table, which shows "ok"/"failed" in words rather than emoji that need an emoji font), e.g. "40 s to
   2.1 minutes on 2 CPU cores". It is resolved after every notebook has run.

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


def _resolve_notebook_times(app: Any, doctree: Any, docname: str) -> None:
    from myst_nb.sphinx_ import NbMetadataCollector

    data = NbMetadataCollector.get_doc_data(app.env)
    for node in list(doctree.findall(NotebookTimes)):
        times = [d["exec_data"]["runtime"] for doc, d in sorted(data.items())
                 if doc.startswith(node["prefix"]) and d.get("exec_data") and d["exec_data"].get("runtime")]
        node.replace_self(nodes.Text(describe_runtimes(times, build_cores())))


def _status_in_words() -> None:
    """The execution table says "ok"/"failed" (its ✅/❌ need an emoji font)."""
    from myst_nb.ext import execution_tables

    execution_tables._key2transform["succeeded"] = lambda ok: "ok" if ok is True else "failed"


def mark_book_build() -> None:
    """Mark this process, and the notebook kernels it starts, as the book build."""
    os.environ[BOOK_BUILD_ENV] = "1"


def page_needs(body: str) -> dict[str, bool]:
    """Which optional scripts a page body uses: Altair charts, ipywidgets state."""
    return {"vega": "vegaEmbed(" in body, "widgets": WIDGET_STATE in body}


def _unused(js: Any) -> bool:
    name = getattr(js, "filename", None) or str(js)
    body = getattr(js, "attributes", {}).get("body", "") if hasattr(js, "attributes") else ""
    return name.endswith("sphinx-thebe.js") or "THEBE_JS_URL" in body


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
        files[:] = [js for js in files if not _unused(js)]


def _config_inited(app: Any, config: Any) -> None:
    options = dict(config.html_theme_options or {})
    options.setdefault("default_mode", "light")
    config.html_theme_options = options
    mj = dict(config.mathjax3_config or {})
    loader = dict(mj.get("loader", {}))
    loader.setdefault("load", list(MATHJAX_COMPONENTS))
    mj["loader"] = loader
    config.mathjax3_config = mj
    here = pathlib.Path(__file__).resolve().parent
    if not config.html_favicon:
        config.html_favicon = str(here / "favicon.svg")


def _drop_unused_scripts(app: Any, exception: Exception | None) -> None:
    """Remove the theme's FontAwesome JavaScript from every page and the search scripts from every page but the
    search page (both are written by the theme's templates, after the per-page asset lists)."""
    if exception is not None or app.builder.format != "html":
        return
    out = pathlib.Path(app.outdir)
    for page in out.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        new = FONTAWESOME_JS.sub("", text)
        if page != out / "search.html":
            new = SEARCH_JS.sub("", new)
        if new != text:
            page.write_text(new, encoding="utf-8")


def setup(app: Any) -> dict[str, Any]:
    mark_book_build()
    _status_in_words()
    app.add_node(NotebookTimes)
    app.add_role("notebook-times", _notebook_times_role)
    app.connect("doctree-resolved", _resolve_notebook_times)
    app.connect("config-inited", _config_inited)
    app.connect("html-page-context", _page_context, priority=900)
    app.connect("build-finished", _drop_unused_scripts)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
