"""The book's own Sphinx extension (listed in _config.yml under sphinx.local_extensions).

1. It marks the build: ``UNVEILED_BOOK_BUILD=1`` is set in the build process before any notebook runs, so
   every kernel Jupyter Book starts inherits it. The library then shows no progress bars and turns live
   ipywidgets explorers into stills (``unveiled.session``, ``unveiled.explorers.live``).
"""

from __future__ import annotations

import os
from typing import Any

#: Same name as ``unveiled.session.BOOK_BUILD_ENV`` (a test keeps them equal; tools do not import the library).
BOOK_BUILD_ENV = "UNVEILED_BOOK_BUILD"


def mark_book_build() -> None:
    """Mark this process, and the notebook kernels it starts, as the book build."""
    os.environ[BOOK_BUILD_ENV] = "1"


def setup(app: Any) -> dict[str, Any]:
    mark_book_build()
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
