"""torch_threads: the one way the library and tests change PyTorch's thread count, always restored."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from unveiled.threads import torch_threads  # noqa: E402


def test_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_restores_after_an_exception():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_none_leaves_the_count_alone_and_bad_counts_are_explained():
    before = torch.get_num_threads()
    with torch_threads(None) as n:
        assert n == before == torch.get_num_threads()
    with pytest.raises(ValueError, match="threads must be >= 1"), torch_threads(0):
        pass
    with pytest.raises(TypeError, match="threads must be an int"), torch_threads(1.5):
        pass
    assert torch.get_num_threads() == before


# Where a bare torch.set_num_threads may still appear: the context manager itself, and code another engineer
# is refactoring (quant/gptq.py restores the count in a try/finally; it moves to torch_threads with the shared
# Hessian machinery). Process entry points need no exception: their main() uses torch_threads too.
_ALLOWED = {"lib/unveiled/threads.py", "lib/unveiled/quant/gptq.py"}


def test_no_bare_set_num_threads_in_the_library_tests_or_benchmarks():
    import ast

    from conftest import ROOT

    hits = []
    for folder in ("lib/unveiled", "tests", "benchmarks", "tools"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = str(f.relative_to(ROOT))
            if rel in _ALLOWED:
                continue
            for node in ast.walk(ast.parse(f.read_text())):  # calls only: messages may name the function
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "set_num_threads"):
                    hits.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not hits, "use `with unveiled.threads.torch_threads(n):` (it restores the count):\n" + "\n".join(hits)
