"""Public names that cannot be confused: every sub-package is an attribute of `unveiled`, the renamed names are
the ones the book uses, and the old spellings still work (silently) for older notebooks."""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
import warnings

import pytest

import unveiled as uv
from conftest import ROOT


def _public_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(uv.__path__) if not m.name.startswith("_"))


@pytest.mark.parametrize("name", _public_modules())
def test_every_sub_package_is_an_attribute_of_unveiled(name):
    # in a fresh interpreter `uv.distill` must work without `import unveiled.distill` first
    assert name in uv._SUBMODULES or isinstance(vars(uv).get(name), types.ModuleType), (
        f"add {name!r} to _SUBMODULES in lib/unveiled/__init__.py")
    assert getattr(uv, name) is importlib.import_module(f"unveiled.{name}")
    assert name in dir(uv)


def test_the_hardware_module_is_not_shadowed():
    import unveiled.hardware as registry

    assert isinstance(uv.hardware, types.ModuleType) and registry is uv.hardware
    assert registry.get_device is uv.get_device


def test_old_spellings_keep_working_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert uv.hardware("a6000") is uv.get_device("a6000")
        assert uv.hardware("a6000", "llm-viewer") is uv.get_device("a6000", preset="llm-viewer")
        from unveiled.hardware import hardware
        assert hardware("h100") is uv.get_device("h100")
        assert uv.model("llama-2-7b") is uv.model_spec("llama-2-7b")
        assert uv.generate is uv.estimate_generation
        assert uv.analyzer.model is uv.model_spec and uv.analyzer.generate is uv.estimate_generation
        assert uv.analyzer.Generation is uv.GenerationEstimate
    assert "model" not in uv.__all__ and "generate" not in uv.__all__ and "hardware" not in uv.__all__


# The book's own sources (chapters, appendix, library, tests, benchmarks, tools) use the new names only.
_OLD = re.compile(r"\b(uv|unveiled)\.(model|generate|hardware)\(|\b(uv|unveiled)\.analyzer\.(model|generate)\(|"
                  r"from unveiled(\.analyzer)?(\.configs)? import [^\n]*\bmodel\b(?!_)|"
                  r"from unveiled\.hardware import [^\n]*\bhardware\b")
_ALLOWED = {"tests/test_names.py"}  # this file checks that the old spellings still work


def test_the_book_uses_the_new_names():
    files = [*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("appendix/*.ipynb"), *ROOT.glob("lib/unveiled/**/*.py"),
             *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("tools/*.py"), *ROOT.glob("*.md"), *ROOT.glob("data/**/*.md"), *ROOT.glob("appendix/*.md")]
    hits = []
    for f in files:
        rel = str(f.relative_to(ROOT))
        if rel in _ALLOWED:
            continue
        for i, line in enumerate(f.read_text(errors="ignore").splitlines(), 1):
            if _OLD.search(line) and "deprecated" not in line.lower():
                hits.append(f"{rel}:{i}: {line.strip()[:100]}")
    assert not hits, ("use uv.get_device, uv.model_spec and uv.estimate_generation:\n" + "\n".join(hits))
