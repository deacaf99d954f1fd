"""Access to the book's data files (hardware table, model configs, corpora, weights, measurements).

The files live in the repository's ``data/`` folder and are shipped inside the installed package as
``unveiled.data``, so the same code works from a checkout, an editable install and a wheel on Colab.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from importlib.resources.abc import Traversable

from ._validate import suggest

__all__ = ["data_file", "list_data_files", "sha256_of"]


def _root() -> Traversable:
    return resources.files("unveiled.data")


def list_data_files() -> list[str]:
    """All data files shipped with the package, as paths relative to the data folder (introduced in Chapter 1)."""
    out: list[str] = []

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            rel = f"{prefix}{child.name}"
            if child.is_dir():
                if child.name != "__pycache__":
                    walk(child, rel + "/")
            elif child.name != "__init__.py" and not child.name.endswith(".pyc"):
                out.append(rel)

    walk(_root(), "")
    return sorted(out)


def data_file(name: str) -> Traversable:
    """Return a readable handle on the data file ``name`` (e.g. ``"hardware.csv"``).

    Use ``.read_text()`` / ``.read_bytes()`` / ``.open()`` on the result; wrap it in
    :func:`importlib.resources.as_file` where a real filesystem path is needed. Introduced in Chapter 1.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'hardware.csv', got {type(name).__name__}")
    node = _root()
    for part in name.split("/"):
        node = node / part
    if not node.is_file():
        names = list_data_files()
        close = suggest(name, names)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"no data file {name!r}.{hint} See unveiled.list_data_files() for all {len(names)} files.")
    return node


def sha256_of(name: str) -> str:
    """SHA-256 hex digest of a data file, for provenance checks."""
    return hashlib.sha256(data_file(name).read_bytes()).hexdigest()
