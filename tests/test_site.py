"""The built site in a real browser, as a reader sees it: Playwright drives Debian's Chromium (never a downloaded
browser) over every page at 1366 px and at 390 px wide.

Every request that does not go to the loopback server is blocked, so any CDN dependency shows up as a failure.
On every page and at both widths: zero console errors and zero Vega warnings; every Vega view draws non-empty
marks; no visible raw ``$``, ``\\(``, ``{cite}`` or ``NaN``; no two identical consecutive output blocks; nothing
wider than the column (code blocks excepted); every chart and image has an accessible name; no ipywidgets
control (it would do nothing without a kernel); the title first; no progress bars, stderr or blank output areas;
the page's first visit within its weight budget. Each check is shown to fail on a mutated copy of a real page
that has the defect (``test_check_catches_its_defect``), so none passes vacuously.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import pathlib
import re
import shutil
import threading
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.site]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHECKS_JS = (pathlib.Path(__file__).parent / "site_checks.js").read_text()
WIDTHS = {"desktop": (1366, 900), "phone": (390, 844)}
PAGE_LIMIT_BYTES = 1_000_000  # the HTML of one page, without the shared assets
MB = 1_000_000
# First visit of a page (HTML + every script, style, font and image it loads), raw bytes as served.
WEIGHT_BUDGET = {"intro.html": 1 * MB}
DEFAULT_WEIGHT_BUDGET = 3 * MB
CHECKS = ("console_errors", "vega_warnings", "empty_marks", "raw_text", "duplicate_outputs", "overflow",
          "accessible_names", "dead_controls", "title_first", "build_noise", "contrast", "page_weight", "network")
# Pages whose defect belongs to another issue and has not landed on main yet: {(page, check): reason}.
KNOWN_DEFECTS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def server(built_site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(built_site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: `apt-get install chromium` (tools/test.sh does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield b
        b.close()


def site_pages(site: pathlib.Path) -> list[str]:
    pages = ["intro.html", "instructors.html", "bibliography.html"]
    pages += [str(p.relative_to(site)) for p in sorted((site / "chapters").glob("*.html"))]
    pages += [str(p.relative_to(site)) for p in sorted((site / "appendix").glob("*.html"))]
    return pages


class Visit:
    """One first visit of a page (fresh browser context: nothing cached) at one viewport size.

    ``replace`` maps a URL to HTML served in its place: a mutated copy of a real page for the fixture tests."""

    def __init__(self, browser, url: str, viewport: tuple[int, int] = WIDTHS["desktop"],
                 replace: dict[str, str] | None = None):
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.vega_warnings: list[str] = []
        self.replace = replace or {}
        self.context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        self.page = self.context.new_page()
        self.page.route("**/*", self._route)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.goto(url, wait_until="load")
        with contextlib.suppress(Exception):  # a page that keeps polling still gets checked
            self.page.wait_for_load_state("networkidle", timeout=15_000)
        with contextlib.suppress(Exception):  # charts re-fitted to the column (vega-fit.js) are drawn again
            self.page.wait_for_function("() => !window.vegaFitPending", timeout=20_000)
        self.page.wait_for_timeout(800)  # let Vega, MathJax and the chart fitting settle

    def _console(self, m):
        if m.type == "error":
            self.errors.append(f"console: {m.text}")
        elif re.match(r"(WARN|ERROR)\b", m.text) or "[Vega" in m.text:
            self.vega_warnings.append(m.text)

    def _route(self, route):
        url = route.request.url
        if url in self.replace:
            route.fulfill(status=200, content_type="text/html; charset=utf-8", body=self.replace[url])
            return
        host = urlparse(url).hostname
        if host in ("127.0.0.1", "localhost") or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def weight(self) -> int:
        """Raw bytes of the page and everything it loaded (http.server sends them uncompressed)."""
        return int(self.page.evaluate(
            "() => performance.getEntries().filter(e => 'encodedBodySize' in e)"
            ".reduce((s, e) => s + (e.encodedBodySize || e.transferSize || 0), 0)"))

    def problems(self, page: str) -> dict[str, list[str]]:
        found = self.page.evaluate(CHECKS_JS)
        found["console_errors"] = self.errors
        found["vega_warnings"] = self.vega_warnings
        found["network"] = [f"requested the network: {u}" for u in self.blocked]
        budget = WEIGHT_BUDGET.get(page, DEFAULT_WEIGHT_BUDGET)
        weight = self.weight()
        found["page_weight"] = [f"first visit loads {weight / MB:.2f} MB (budget {budget / MB:.1f} MB)"] if weight > budget else []
        return found

    def close(self):
        self.context.close()


def check_page(browser, server: str, page: str, width: str, replace: dict[str, str] | None = None):
    visit = Visit(browser, f"{server}/{page}", WIDTHS[width], replace)
    try:
        return visit.problems(page), visit.weight()
    finally:
        visit.close()


@pytest.fixture(scope="module")
def site_report(server, browser, built_site):
    """Every page at both widths: {(page, width): (problems by check, page weight)}. Computed once per module."""
    return {(page, width): check_page(browser, server, page, width)
            for page in site_pages(built_site) for width in WIDTHS}


@pytest.mark.parametrize("check", CHECKS)
def test_every_page_at_both_widths(site_report, check):
    failures, expected = [], []
    for (page, width), (problems, _) in sorted(site_report.items()):
        for p in problems[check]:
            line = f"{page} at {WIDTHS[width][0]} px: {p}"
            (expected if (page, check) in KNOWN_DEFECTS else failures).append(line)
    assert not failures, f"{len(failures)} problems ({check}):\n" + "\n".join(failures[:40])
    if expected:
        reasons = {KNOWN_DEFECTS[k] for k in KNOWN_DEFECTS if k[1] == check}
        pytest.xfail(f"{len(expected)} known problems ({'; '.join(sorted(reasons))}):\n" + "\n".join(expected[:10]))


def test_page_weights_are_reported(site_report, capsys):
    """Not a check: prints each page's first-visit weight (raw bytes) for the record."""
    with capsys.disabled():
        for (page, width), (_, weight) in sorted(site_report.items()):
            if width == "desktop":
                print(f"\n  {page:38s} {weight / MB:5.2f} MB")
    assert all(w > 0 for _, w in site_report.values())


# ------------------------------------------------------------------------------------------------------------
# Each check fails on a copy of a real page that has its defect (served in place of the real page).
# ------------------------------------------------------------------------------------------------------------

def _altair_snippet(chart) -> str:
    return chart.to_html(fullhtml=False, template="universal")  # what the book's pages hold


def _log_zero_chart():
    import altair as alt
    import pandas as pd

    data = pd.DataFrame({"method": ["RTN", "GPTQ", "AWQ"], "error": [0.0, 0.0, 0.0]})
    return alt.Chart(data, title="injected").mark_bar().encode(
        x="method:N", y=alt.Y("error:Q", scale=alt.Scale(type="log")))


def _wide_chart():
    import altair as alt
    import pandas as pd

    data = pd.DataFrame({"x": [1, 2, 3], "y": [1, 4, 9]})
    panel = alt.Chart(data).mark_line().encode(x="x:Q", y="y:Q").properties(width=300, height=120)
    return alt.hconcat(panel, panel, panel, title="three panels side by side")


def _unnamed_chart():
    import altair as alt
    import pandas as pd

    return alt.Chart(pd.DataFrame({"x": [1, 2], "y": [3, 4]})).mark_point().encode(x="x:Q", y="y:Q")


def _pale_text_chart():
    import altair as alt
    import pandas as pd

    data = pd.DataFrame({"x": [1, 2], "y": [3, 4], "label": ["ridge", "peak"]})
    return alt.Chart(data, title="pale labels").mark_text(color="#f58518").encode(x="x:Q", y="y:Q", text="label:N")


FIRST_SECTION = re.compile(r"(<section[^>]*>\s*<h2)")


def _inject(html: str, snippet: str) -> str:
    """Insert ``snippet`` before the page's first ``##`` section (inside the article)."""
    m = FIRST_SECTION.search(html)
    assert m, "no second-level section to inject before"
    return html[:m.start()] + snippet + html[m.start():]


def _output(inner: str) -> str:
    return f'<div class="cell docutils container"><div class="cell_output docutils container">{inner}</div></div>'


def _duplicate_output(html: str) -> str:
    """A cell that prints its report and echoes it as its value too (the defect of issue 13, item 4)."""
    block = ('<div class="output stream highlight-myst-ansi notranslate"><div class="highlight"><pre><span></span>'
             "Lab 1.1 attainable(): 6/6 passed (all cases pass)</pre></div></div>")
    return _inject(html, _output(block + block))


CHAPTER = "chapters/01_roofline.html"
NO_FIT = re.compile(r'<script src="[^"]*vega-fit\.js[^"]*"></script>')
MUTATIONS = {
    # case: (the check that must fail, page, width, mutation of the page's HTML)
    "console error": ("console_errors", "intro.html", "desktop",
                      lambda h: _inject(h, "<script>console.error('injected')</script>")),
    "log scale with zero": ("vega_warnings", CHAPTER, "desktop", lambda h: _inject(h, _altair_snippet(_log_zero_chart()))),
    "zero-size bars": ("empty_marks", CHAPTER, "desktop", lambda h: _inject(h, _altair_snippet(_log_zero_chart()))),
    "raw dollar": ("raw_text", "intro.html", "desktop", lambda h: _inject(h, "<p>the scale $s$ is small</p>")),
    "NaN in a table": ("raw_text", CHAPTER, "desktop", lambda h: _inject(h, _output(
        '<div class="output text_html"><table><tr><th>ppl</th><td>NaN</td></tr></table></div>'))),
    "raw \\(": ("raw_text", "intro.html", "desktop", lambda h: _inject(h, r"<p>inline \(x^2\) maths</p>")),
    "raw {cite}": ("raw_text", "intro.html", "desktop", lambda h: _inject(h, "<p>as shown by {cite}`yuan2024`</p>")),
    "output twice": ("duplicate_outputs", CHAPTER, "desktop", _duplicate_output),
    "wide table on a phone": ("overflow", CHAPTER, "phone", lambda h: _inject(h, _output(
        '<div class="output text_html"><table><tr><td style="min-width:600px">a wide table</td></tr></table></div>'))),
    "scrolled table": ("overflow", CHAPTER, "desktop", lambda h: _inject(h, _output(
        '<div class="output text_html" style="overflow-x:auto"><table><tr><td style="min-width:1500px">wide'
        "</td></tr></table></div>"))),
    # without the book's chart fitting (vega-fit.js), three 300 px panels overflow a phone's column
    "wide chart on a phone": ("overflow", CHAPTER, "phone",
                              lambda h: _inject(NO_FIT.sub("", h), _altair_snippet(_wide_chart()))),
    "image named by its hash": ("accessible_names", "intro.html", "desktop", lambda h: _inject(
        h, '<img src="_images/x.png" alt="2f1a8c3d9e4b5a6c7d8e">')),
    "chart without a title": ("accessible_names", CHAPTER, "desktop", lambda h: _inject(h, _altair_snippet(_unnamed_chart()))),
    "widget state": ("dead_controls", CHAPTER, "desktop", lambda h: _inject(
        h, '<script type="application/vnd.jupyter.widget-state+json">{"state": {}, "version_major": 2, '
           '"version_minor": 0}</script>')),
    "imports above the title": ("title_first", CHAPTER, "desktop", lambda h: h.replace(
        "<section", '<div class="cell docutils container"><pre>import unveiled as uv</pre></div><section', 1)),
    "progress bar": ("build_noise", CHAPTER, "desktop", lambda h: _inject(h, _output(
        '<div class="output stream highlight-myst-ansi notranslate"><div class="highlight"><pre><span></span>'
        "measuring this machine: 100%|██████████| 2/2 [04:27&lt;00:00, 156.84s/it]</pre></div></div>"))),
    "blank output gap": ("build_noise", CHAPTER, "desktop", lambda h: _inject(h, _output(
        '<div class="output text_html" style="height:300px"></div>'))),
    "stderr block": ("build_noise", CHAPTER, "desktop", lambda h: _inject(h, _output(
        '<div class="output stderr highlight-myst-ansi notranslate"><div class="highlight"><pre>UserWarning: x'
        "</pre></div></div>"))),
    "pale text": ("contrast", CHAPTER, "desktop", lambda h: _inject(h, _output(
        '<div class="output text_html"><p style="color:#72b7b2">compute-bound</p></div>'))),
    "pale chart labels": ("contrast", CHAPTER, "desktop", lambda h: _inject(h, _altair_snippet(_pale_text_chart()))),
    "heavy script": ("page_weight", "intro.html", "desktop", lambda h: _inject(
        h, '<script src="offline/html-manager/embed.js"></script>')),
    "CDN image": ("network", "intro.html", "desktop", lambda h: _inject(
        h, '<img alt="remote" src="https://cdn.jsdelivr.net/x.png">')),
}


def test_every_check_has_a_mutation():
    assert {m[0] for m in MUTATIONS.values()} == set(CHECKS)


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_check_catches_its_defect(server, browser, built_site, case):
    check, page, width, mutate = MUTATIONS[case]
    clean, _ = check_page(browser, server, page, width)
    assert not clean[check], f"the real {page} already fails {check}: {clean[check][:3]}"
    html = (built_site / page).read_text(encoding="utf-8")
    mutated = mutate(html)
    assert mutated != html
    found, _ = check_page(browser, server, page, width, replace={f"{server}/{page}": mutated})
    assert found[check], f"{check} missed the injected defect ({case}) on {page}"


# ------------------------------------------------------------------------------------------------------------
# Behaviour
# ------------------------------------------------------------------------------------------------------------

def test_an_altair_slider_changes_its_chart(server, browser, built_site):
    page_name = CHAPTER
    assert (built_site / page_name).exists()
    visit = Visit(browser, f"{server}/{page_name}")
    try:
        p = visit.page
        embeds = p.locator("div.vega-embed")
        found = False
        for i in range(embeds.count()):
            embed = embeds.nth(i)
            slider = embed.locator("input[type=range]")
            if slider.count() == 0:
                continue
            found = True
            embed.scroll_into_view_if_needed()
            before = embed.locator("svg").first.inner_html()
            old_value = slider.first.input_value()
            slider.first.evaluate(
                "el => { el.value = (Number(el.value) === Number(el.max)) ? el.min : el.max;"
                " el.dispatchEvent(new Event('input', {bubbles: true})); }"
            )
            p.wait_for_timeout(500)
            after = embed.locator("svg").first.inner_html()
            assert slider.first.input_value() != old_value
            assert after != before, "moving the slider did not redraw the chart"
            break
        assert found, f"no Altair chart with a slider on {page_name}"
        assert not visit.errors, visit.errors
    finally:
        visit.close()


def test_wide_charts_are_stacked_to_fit_a_phone(server, browser, built_site):
    """vega-fit.js: side-by-side panels wider than a phone's column are drawn one under the other and fit."""
    html = _inject((built_site / CHAPTER).read_text(encoding="utf-8"), _altair_snippet(_wide_chart()))
    visit = Visit(browser, f"{server}/{CHAPTER}", WIDTHS["phone"], replace={f"{server}/{CHAPTER}": html})
    try:
        sizes = visit.page.evaluate(
            "() => Array.from(document.querySelectorAll('.vega-embed')).filter(e => ((e.matches(\"[role='graphics-"
            "document']\") ? e : e.querySelector(\"[role='graphics-document']\")).getAttribute('aria-label') || '')"
            ".includes('three panels')).map(e => {"
            "const b = e.querySelector('svg.marks').getBoundingClientRect(); const c = document.querySelector("
            "'article.bd-article').getBoundingClientRect(); return [b.width, b.height, c.width]; })")
        assert len(sizes) == 1
        width, height, column = sizes[0]
        assert width <= column and height > 3 * 100, f"not stacked to fit: {width}x{height} in {column} px"
    finally:
        visit.close()


def test_chapter_pages_stay_small(built_site):
    for page in site_pages(built_site):
        size = (built_site / page).stat().st_size
        assert size < PAGE_LIMIT_BYTES, f"{page} is {size / 1e6:.2f} MB (limit 1 MB without shared assets)"


def test_site_serves_its_own_assets(built_site):
    assert (built_site / "offline" / "vega-offline.js").exists()
    assert (built_site / "offline" / "vega-fit.js").exists()
    assert (built_site / "mathjax").is_dir()
    html = (built_site / CHAPTER).read_text()
    assert "cdn.jsdelivr.net/npm/vega" not in html or "VEGA_DEBUG" in (
        built_site / "offline" / "vega-offline.js").read_text()
    for cdn in ("cdnjs.cloudflare.com", "unpkg.com/@jupyter-widgets", "cdn.jsdelivr.net/npm/mathjax"):
        assert cdn not in html, f"the page references {cdn}"


def test_pages_load_only_the_scripts_they_need(built_site):
    """Vega only where there is a chart, MathJax only where there is maths, the widget manager, FontAwesome's
    JavaScript, Thebe and (but on the search page) the search index nowhere."""
    for page in site_pages(built_site):
        html = (built_site / page).read_text(encoding="utf-8")
        has_chart = "vegaEmbed(" in html.split("</head>", 1)[1]
        has_math = bool(re.search(r'class="math[ "]', html))
        assert ("vega-offline.js" in html) == has_chart, f"{page}: Vega loaded {'without' if has_chart else 'with'}"
        assert ("mathjax" in html.lower().split("</head>", 1)[0]) == has_math, f"{page}: MathJax mismatch"
        assert "html-manager" not in html, f"{page} loads the ipywidgets manager"
        assert "fontawesome.js" not in html, f"{page} loads FontAwesome's JavaScript (the CSS draws the icons)"
        assert "searchindex.js" not in html, f"{page} loads the search index (only search.html needs it)"
        assert "THEBE_JS_URL" not in html, f"{page} carries the unused Thebe configuration"
    assert "searchindex.js" in (built_site / "search.html").read_text(encoding="utf-8")


def test_known_defects_name_a_reason():
    for key, reason in KNOWN_DEFECTS.items():
        assert key[1] in CHECKS and len(reason) > 20, key


def test_checks_script_reports_every_check():
    names = set(re.findall(r"^\s+(\w+): \[\],?", CHECKS_JS.split("const out = {", 1)[1].split("};", 1)[0], re.M))
    names |= set(re.findall(r"(\w+): \[\]", CHECKS_JS.split("const out = {", 1)[1].split("};", 1)[0]))
    assert names | {"console_errors", "vega_warnings", "page_weight", "network"} == set(CHECKS), names
    json.dumps(CHECKS)


# ------------------------------------------------------------------------------------------------------------
# Live explorers on a phone: their widgets, rendered by the ipywidgets HTML manager, fit 390 px with usable sliders
# ------------------------------------------------------------------------------------------------------------

def explorer_widgets():
    import test_explorers

    return test_explorers.EXPLORERS


@pytest.mark.parametrize("explorer", explorer_widgets(), ids=lambda f: f.__name__)
def test_live_explorer_fits_a_phone(browser, tmp_path, monkeypatch, explorer):
    from ipywidgets.embed import embed_minimal_html

    from unveiled.session import BOOK_BUILD_ENV

    root = pathlib.Path(__file__).resolve().parents[1]
    monkeypatch.delenv(BOOK_BUILD_ENV, raising=False)
    shutil.copytree(root / "_extra" / "offline" / "html-manager", tmp_path / "html-manager")
    embed_minimal_html(tmp_path / "index.html", views=[explorer()], requirejs=False,
                       embed_url="html-manager/embed.js", title=explorer.__name__)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        visit = Visit(browser, f"http://127.0.0.1:{httpd.server_address[1]}/index.html", WIDTHS["phone"])
        try:
            p = visit.page
            p.wait_for_selector(".jupyter-widgets", state="attached", timeout=15_000)
            sizes = p.evaluate(
                "() => ({page: document.documentElement.scrollWidth, view: window.innerWidth,"
                " tracks: Array.from(document.querySelectorAll('.widget-slider .slider-container'))"
                ".filter(s => s.checkVisibility()).map(s => Math.round(s.getBoundingClientRect().width))})")
            assert sizes["page"] <= sizes["view"] + 1, f"the explorer is {sizes['page']} px wide on a 390 px screen"
            assert all(t >= 100 for t in sizes["tracks"]), f"slider tracks too short to use: {sizes}"
            assert not [e for e in visit.errors if "favicon" not in e], visit.errors
        finally:
            visit.close()
    finally:
        httpd.shutdown()


def status_table(built_site: pathlib.Path) -> dict[str, tuple[float, str]]:
    """The status page's execution table: {document: (run time in s, status)}."""
    html = (built_site / "appendix" / "status.html").read_text(encoding="utf-8")
    table = html[html.find("<tbody>"):html.find("</tbody>")]
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S):
        doc = re.search(r'<span class="doc">([^<]+)</span>', row)
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, flags=re.S)]
        times = [c for c in cells if re.fullmatch(r"[0-9.]+", c)]
        if doc and times:  # columns: document, [modified, method,] run time, status
            rows.append((doc.group(1), float(times[-1]), cells[-1]))
    return {doc: (t, status) for doc, t, status in rows}


def test_status_table_says_ok_in_words(built_site):
    table = status_table(built_site)
    assert table and all(status in ("ok", "failed") for _, status in table.values()), table


def test_run_time_claims_come_from_the_status_table(built_site):
    """The introduction's and the instructors' run-time sentences quote the chapters' times of this build."""
    import book_assets

    table = status_table(built_site)
    times = [t for doc, (t, _) in table.items() if doc.startswith("chapters/")]
    assert times, "no chapter in the status table"
    # the status page rounds to 0.01 s; the phrase rounds to seconds or tenths of minutes
    limited = built_site.parents[1] / book_assets.LIMITED_TIMES
    phrase = book_assets.notebook_times_phrase(times, json.loads(limited.read_text()) if limited.exists() else None,
                                               "chapters/")
    for page in ("intro.html", "instructors.html"):
        text = re.sub(r"<[^>]+>|\s+", " ", (built_site / page).read_text(encoding="utf-8"))
        assert phrase in text, f"{page} does not say '{phrase}'"
    intro = (built_site / "intro.html").read_text(encoding="utf-8")
    assert "about a minute" not in intro and "one to two minutes" not in (built_site / "instructors.html").read_text()
