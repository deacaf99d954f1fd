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
