"""The built site in a real browser: Playwright drives Debian's Chromium (never a downloaded browser).

Every request that does not go to the loopback server is blocked, so any CDN dependency shows up as a failure.
"""

from __future__ import annotations

import functools
import http.server
import pathlib
import re
import shutil
import threading
from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.site]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Harmless console noise of Jupyter Book 1 and its theme (see the project's stack notes).
HARMLESS = [
    re.compile(r"Identifier 'THEBE_JS_URL' has already been declared"),
    re.compile(r"Got invalid theme mode"),
    re.compile(r"favicon\.ico"),
    re.compile(r"strict mode: use allowUnionTypes"),
]
PAGE_LIMIT_BYTES = 1_000_000


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
    def __init__(self, browser, url: str):
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context = browser.new_context()
        self.page = self.context.new_page()
        self.page.route("**/*", self._route)
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.goto(url, wait_until="load")
        self.page.wait_for_timeout(1500)  # let Vega, the widget manager and MathJax render

    def _route(self, route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(h.search(e) for h in HARMLESS)]

    def close(self):
        self.context.close()


def test_every_page_renders_offline_without_errors(server, browser, built_site):
    problems = []
    for page in site_pages(built_site):
        visit = Visit(browser, f"{server}/{page}")
        try:
            if visit.blocked:
                problems.append(f"{page}: requested the network: {visit.blocked[:3]}")
            if visit.unexpected_errors():
                problems.append(f"{page}: console errors: {visit.unexpected_errors()[:3]}")
            p = visit.page
            n_charts = p.locator("div.vega-embed").count()
            if n_charts and p.locator(".vega-embed svg, .vega-embed canvas").count() < n_charts:
                problems.append(f"{page}: an Altair chart did not render")
            if p.locator(".math").count() and p.locator("mjx-container").count() == 0:
                problems.append(f"{page}: math did not render (MathJax)")
            has_widgets = p.locator("script[type='application/vnd.jupyter.widget-state+json']").count()
            if has_widgets and p.locator(".jupyter-widgets, .widget-box, .widget-slider").count() == 0:
                problems.append(f"{page}: ipywidgets did not render")
            if "Error loading script" in p.locator("body").inner_text():  # Altair's visible failure text
                problems.append(f"{page}: a script failed to load")
        finally:
            visit.close()
    assert not problems, "\n".join(problems)


def test_an_altair_slider_changes_its_chart(server, browser, built_site):
    page_name = "chapters/01_roofline.html"
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
        assert not visit.unexpected_errors(), visit.unexpected_errors()
    finally:
        visit.close()


def test_chapter_pages_stay_small(built_site):
    for page in site_pages(built_site):
        size = (built_site / page).stat().st_size
        assert size < PAGE_LIMIT_BYTES, f"{page} is {size / 1e6:.2f} MB (limit 1 MB without shared assets)"


def test_site_serves_its_own_assets(built_site):
    assert (built_site / "_static" / "offline" / "vega-offline.js").exists()
    assert (built_site / "_static" / "offline" / "html-manager" / "embed.js").exists()
    assert (built_site / "mathjax" / "tex-svg-full.js").exists()
    html = (built_site / "chapters" / "01_roofline.html").read_text()
    assert "cdn.jsdelivr.net/npm/vega" not in html or "VEGA_DEBUG" in (
        built_site / "_static" / "offline" / "vega-offline.js").read_text()
    for cdn in ("cdnjs.cloudflare.com", "unpkg.com/@jupyter-widgets", "cdn.jsdelivr.net/npm/mathjax"):
        assert cdn not in html, f"the page references {cdn}"
