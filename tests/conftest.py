"""Shared fixtures: the repository root, the notebooks of the book, the built site, lab options."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
import yaml
from hypothesis import settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

# Property tests draw the same examples on every run ("ci", the default), so a submission's result never depends
# on luck; `pytest --hypothesis-profile=explore` draws fresh ones, more of them, to hunt for new failures (that
# is how the JSD's precision bug next to beta = 1 was found).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=500, print_blob=True)
settings.load_profile("ci")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--lab-notebook",
        action="append",
        default=[],
        help="grade this notebook's lab instead of the book's solutions (matched to a chapter by its NN_ prefix); "
        "repeatable",
    )


def toc_files() -> list[str]:
    """Every file listed in _toc.yml (without extension), in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def notebook_paths() -> list[pathlib.Path]:
    return sorted([*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("appendix/*.ipynb")])


def chapter_paths() -> list[pathlib.Path]:
    return sorted(ROOT.glob("chapters/*.ipynb"))


def load_nb(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def cell_source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


@pytest.fixture(scope="session")
def root() -> pathlib.Path:
    return ROOT


@pytest.fixture(scope="session")
def built_site() -> pathlib.Path:
    """The built HTML site: reuses _build/html when it was built from exactly the current sources
    (tools/build_book.py writes that stamp), otherwise runs the full clean -W build first."""
    import build_book

    if not build_book.is_fresh():
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py")], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"the book build failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return ROOT / "_build" / "html"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests on one torch thread, as the cached experiments and tiny-model cards did: tiny models
    are fastest there, and on a shared 2-core machine two spinning OpenMP threads mostly wait on each other."""
    from unveiled.threads import torch_threads

    with torch_threads(1):
        yield
