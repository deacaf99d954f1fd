"""Every notebook of the book executes without errors (checked on the executed copies of the -W build)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT, notebook_paths

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: str(p.relative_to(ROOT)))
def test_notebook_executed_cleanly(built_site, path):
    executed = ROOT / "_build" / "jupyter_execute" / path.relative_to(ROOT)
    assert executed.exists(), f"the build did not execute {path.relative_to(ROOT)}"
    nb = json.loads(executed.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code if "".join(c["source"]).strip()), "a cell did not run"
    for i, cell in enumerate(code):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"cell {i} raised {out.get('ename')}: {out.get('evalue')}"
            text = "".join(out.get("text", "")) if out["output_type"] == "stream" else ""
            assert not re.search(r"Traceback \(most recent call last\)|Warning:", text), (
                f"cell {i} printed a warning or traceback: {text[:300]}"
            )


def test_status_page_reports_every_notebook_ok(built_site):
    html = (built_site / "appendix" / "status.html").read_text()
    for path in notebook_paths():
        name = str(path.relative_to(ROOT).with_suffix(""))
        assert name in html, f"the status page does not list {name}"
    assert "❌" not in html and "<p>failed</p>" not in html, "the status page reports a failed notebook"
