"""Cached experiment results: expensive sweeps run once by a command, their tables shipped under data/results/.

Some experiments take longer than a chapter's time budget (GPTQ on every layer of SmolLM2, a long distillation
run, a perplexity sweep over dozens of settings). They are library functions registered with
:func:`experiment`; ``python -m unveiled.results run <name>`` runs one and writes ``data/results/<name>.csv``
plus ``<name>.json`` with its provenance (command, machine, versions, date, duration). A chapter loads the table
with :func:`cached` and, where it can afford it, reruns one setting live next to the cached number.

Experiment names are ``<module>.<name>``, where ``<module>`` is the ``unveiled`` sub-module that defines it
(e.g. ``kvcache.experiments.smollm2_kv_quant`` lives in :mod:`unveiled.kvcache.experiments`; the
quant and distill packages register theirs under the package name, e.g. ``quant.smollm2_rtn``). Introduced in Chapter 3.

    python -m unveiled.results list
    python -m unveiled.results run quant.smollm2_rtn
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import pathlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from ._validate import unknown_name
from .datafiles import data_file, list_data_files
from .environment import provenance_record

__all__ = ["Experiment", "cached", "experiment", "provenance", "registered", "run"]


@dataclass(frozen=True)
class Experiment:
    name: str
    fn: Callable[[], pd.DataFrame]
    description: str


_REGISTRY: dict[str, Experiment] = {}


def experiment(name: str, description: str, *, module: str | None = None) -> Callable:
    """Decorator registering ``fn() -> DataFrame`` as the cached experiment ``<module>.<name>``.

    ``module`` defaults to the sub-module of ``unveiled`` that defines ``fn`` (``kvcache.experiments``). A
    package that keeps its experiments in a sub-module may register them under the package's name instead
    (``module="quant"``), provided importing the package imports that sub-module.
    """

    def wrap(fn: Callable[[], pd.DataFrame]) -> Callable[[], pd.DataFrame]:
        full = f"{module or fn.__module__.removeprefix('unveiled.')}.{name}"
        _REGISTRY[full] = Experiment(full, fn, description)
        return fn

    return wrap


def _load_module_of(name: str) -> None:
    module = name.rsplit(".", 1)[0]
    try:
        importlib.import_module(f"unveiled.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"unveiled.{module}":  # the module exists but one of its imports is missing
            raise


def registered() -> dict[str, Experiment]:
    """Experiments known so far (importing the modules that define the cached tables)."""
    for f in list_data_files():
        if f.startswith("results/") and f.endswith(".csv"):
            _load_module_of(f[len("results/"):-len(".csv")])
    return dict(_REGISTRY)


def provenance(name: str) -> dict:
    """Where a cached table came from: command, machine (CPU, PyTorch's instruction set, threads), versions,
    git commit, date, duration. Tables cached before the record grew keep the fields they had."""
    return json.loads(data_file(f"results/{name}.json").read_text())


def cached(name: str) -> pd.DataFrame:
    """The cached table of experiment ``name``; its provenance is in ``df.attrs["provenance"]``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str such as 'quant.smollm2_rtn', got {type(name).__name__}")
    files = [f[len("results/"):-len(".csv")] for f in list_data_files() if f.startswith("results/") and f.endswith(".csv")]
    if name not in files:
        raise unknown_name("cached result", name, files)
    df = pd.read_csv(io.StringIO(data_file(f"results/{name}.csv").read_text()))
    df.attrs["provenance"] = provenance(name)
    return df


def run(name: str, out_dir: pathlib.Path | None = None) -> pd.DataFrame:
    """Run experiment ``name`` now and (with ``out_dir``) write its table and provenance there."""
    _load_module_of(name)
    if name not in _REGISTRY:
        raise unknown_name("experiment", name, registered())
    # The record (git state included) is taken before the run: it describes the code that runs, and a table
    # written over its own earlier version would otherwise mark every re-run as coming from a dirty tree.
    meta = provenance_record(f"python -m unveiled.results run {name}", name=name,
                             description=_REGISTRY[name].description, duration_s=None, rows=None)
    start = time.perf_counter()
    df = _REGISTRY[name].fn()
    meta.update(duration_s=round(time.perf_counter() - start, 1), rows=len(df))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        df.to_csv(out_dir / f"{name}.csv", index=False)
        (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return df


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unveiled.results", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list cached experiments")
    p_run = sub.add_parser("run", help="run experiments and write data/results/<name>.{csv,json}")
    p_run.add_argument("names", nargs="+")
    p_run.add_argument("--out", type=pathlib.Path, default=pathlib.Path("data") / "results",
                       help="output folder (default: data/results, run from the repository root)")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for name, exp in sorted(registered().items()):
            print(f"{name:40s} {exp.description}")
        return 0
    for name in args.names:
        print(f"running {name} ...", flush=True)
        df = run(name, args.out)
        print(f"wrote {args.out / (name + '.csv')} ({len(df)} rows)")
    return 0


if __name__ == "__main__":
    # Run the package's copy of this module: experiments register themselves in `unveiled.results`, which is a
    # different module object from `__main__` when this file is run with `python -m unveiled.results`.
    from unveiled.results import main as _main

    sys.exit(_main())
