"""Where the book's code runs: a reader's live session (Jupyter, Colab, a script) or the book's build.

The same chapter code serves two audiences. A reader running it live wants feedback while something slow
runs (a progress bar) and controls that recompute (a live explorer); the built book is a document, so it
wants results only: no progress bars, no controls that would do nothing without a kernel. The book build
marks its kernels with the environment variable ``UNVEILED_BOOK_BUILD=1`` (set by the book's Sphinx
extension ``tools/book_assets.py`` and by ``tools/build_book.py``); :func:`book_build` reads it, and
:func:`progress_bar` is the library's only way to show a tqdm bar. Introduced in Chapter 1.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

__all__ = ["BOOK_BUILD_ENV", "book_build", "progress_bar"]

#: The environment variable that marks the kernels executing the book's notebooks during its build.
BOOK_BUILD_ENV = "UNVEILED_BOOK_BUILD"


def book_build() -> bool:
    """True while the book's build executes this code (``UNVEILED_BOOK_BUILD`` set to anything but ``""``/``0``).

    Chapter code never needs to call it: progress bars and explorers consult it themselves.
    """
    return os.environ.get(BOOK_BUILD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def progress_bar(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
                 enabled: bool = True, leave: bool = False) -> Any:
    """A tqdm progress bar in a live session; a silent one (same methods, no output) in the book build.

    ``enabled`` is the usual ``progress=`` argument of the library's slow functions (``False`` silences the
    bar everywhere). The bar clears itself when done (``leave=False``), so a live notebook keeps its results,
    not its bars. In the book build the bar is created disabled: tqdm's notebook bar then displays nothing at
    all (no widget, no blank gap on the page, no red stderr text).
    """
    from tqdm.auto import tqdm

    show = bool(enabled) and not book_build()
    return tqdm(iterable, total=total, desc=desc, leave=leave, disable=not show)
