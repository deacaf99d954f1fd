"""How many threads PyTorch uses, set for a block of code and always put back.

``torch.set_num_threads`` changes a process-wide setting. A function that calls it and leaves it changed makes
every later result depend on what ran before (a test suite's order, a notebook's cell order). The one way the
library and its tests change the thread count is :func:`torch_threads`, which restores the previous value on
exit, also when the block raises. Introduced in the appendix "The models in this book".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ._validate import check_int

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """Run the ``with`` block on ``n`` PyTorch intra-op threads, then restore the previous count.

    ``n=None`` leaves the count as it is (handy for an optional ``threads=`` argument). Yields the count in
    force inside the block::

        with torch_threads(1):
            perplexity(model, tokens)
    """
    import torch

    before = torch.get_num_threads()
    if n is None:
        yield before
        return
    n = check_int("threads", n, minimum=1)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
