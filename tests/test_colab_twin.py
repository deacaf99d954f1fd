"""The book on Colab: the set-up cell leaves Colab's packages alone, and every chapter runs in a twin of its runtime.

The twin (tools/colab_twin.py) is a virtual environment with Colab's versions of the packages that matter
(ipywidgets 7.7.1, IPython 7.34, pandas 2.2, NumPy 2.1, Altair 5.5, ...). CI builds it before the book, runs the
chapters' own set-up cell there and executes every notebook with the CPU features limited to AVX2; this test
reads that run's report when it was made from exactly the current sources, and otherwise makes it (slow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import colab_twin  # tools/ (conftest puts it on the path)
from budgets import budget_of, toc_notebooks
from conftest import ROOT

TWIN = ROOT / ".colab-twin"


@pytest.fixture(scope="module")
def twin_report() -> dict:
    report = TWIN / "report.json"
    fresh = report.exists() and json.loads(report.read_text()).get("source_hash") == colab_twin.source_hash()
    if not fresh or json.loads(report.read_text()).get("times") is None:
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "colab_twin.py"), "--venv", str(TWIN), "--isa",
                               "avx2", "--times", str(ROOT / "_build" / "exec-times-avx2.json")],
                              cwd=ROOT, capture_output=True, text=True)
        if not report.exists():
            pytest.fail(f"the Colab twin could not be built:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return json.loads(report.read_text())


@pytest.mark.slow
@pytest.mark.colab
def test_the_setup_cell_changes_none_of_colabs_packages(twin_report):
    assert twin_report["changed"] == {}, f"the set-up cell changed Colab's pins: {twin_report['changed']}"
    pins = colab_twin.colab_pins()
    for name in ("ipywidgets", "ipython", "pandas", "numpy", "altair", "tqdm"):
        assert twin_report["versions"][name] == pins[name], f"the twin's {name} is not Colab's"
    assert twin_report["versions"]["unveiled"], "the set-up cell did not install the library"


@pytest.mark.slow
@pytest.mark.colab
def test_every_notebook_runs_in_the_twin_within_twice_its_budget(twin_report):
    run = twin_report["times"]
    assert run["isa"] == "avx2", "the twin's notebooks ran without the CPU features limited"
    done = {row["notebook"]: row for row in run["notebooks"]}
    expected = {str(p.relative_to(ROOT).with_suffix("")) for p in toc_notebooks()}
    assert expected <= set(done), f"not executed in the twin: {sorted(expected - set(done))}"
    for name, row in done.items():
        assert not row["error"], f"{name} failed in the twin: {row['error']}"
        assert row["seconds"] <= 2 * budget_of(name), f"{name}: {row['seconds']} s > 2 x {budget_of(name)} s"


def test_pins_are_read_from_colabs_list_and_changes_are_found():
    pins = colab_twin.colab_pins()
    assert pins["ipywidgets"] == "7.7.1" and pins["ipython"] == "7.34.0" and "torch" not in pins  # a URL line
    before = {"ipywidgets": "7.7.1", "numpy": "2.1.3", "left-alone": "1.0"}
    after = {"ipywidgets": "8.1.9", "numpy": "2.1.3", "unveiled": "0.1.0"}
    assert colab_twin.changed_pins(before, after, pins) == {"ipywidgets": ("7.7.1", "8.1.9")}


def test_the_setup_cell_explains_a_failed_install(tmp_path):
    """No network or a wrong ref: a clear message, not a bare CalledProcessError."""
    code = ("import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"
            + colab_twin.setup_cell_source(f"file://{tmp_path}/no-such-repo", "no-such-ref"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PIP_NO_INDEX": "1"})
    assert proc.returncode != 0
    assert "Could not install" in proc.stderr and "does the ref exist?" in proc.stderr
    assert "CalledProcessError" not in proc.stderr
