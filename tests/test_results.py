"""Cached experiments: registration, running with provenance, and clear errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from unveiled import results


@results.experiment("tiny_table", "a two-row table for the tests")
def _tiny_table() -> pd.DataFrame:
    return pd.DataFrame({"bits": [4, 8], "ppl": [5.0, 4.9]})


def test_experiments_register_under_their_module_name():
    name = f"{__name__}.tiny_table".removeprefix("unveiled.")
    assert name in results.registered()


def test_run_writes_table_and_provenance(tmp_path):
    name = f"{__name__}.tiny_table"
    df = results.run(name, tmp_path)
    assert list(df["bits"]) == [4, 8]
    assert pd.read_csv(tmp_path / f"{name}.csv").equals(df)
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert meta["command"] == f"python -m unveiled.results run {name}"
    assert meta["rows"] == 2 and "numpy" in meta["versions"]
    machine = meta["machine"]
    assert machine["usable_cores"] >= 1 and machine["cpu"] and "torch_cpu_capability" in machine
    assert machine["torch_cpu_capability"] in {"DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "SVE256", "NEON"} or \
        machine["torch_cpu_capability"] is None
    # The code that produced it: this test runs in a git checkout, so the commit is known.
    assert len(meta["git"]["commit"]) == 40 and isinstance(meta["git"]["dirty"], bool)


def test_provenance_is_taken_before_the_table_is_written(tmp_path, monkeypatch):
    """Re-running an experiment overwrites its own cached table: the git state must be read before that, or
    every re-run would record a dirty tree."""
    name = f"{__name__}.tiny_table"
    table = tmp_path / f"{name}.csv"
    # a stand-in for git: the tree is dirty once the table is there
    monkeypatch.setattr("unveiled.environment.git_revision", lambda *a, **k: {"commit": "a" * 40,
                                                                               "dirty": table.exists()})
    results.run(name, tmp_path)
    meta = json.loads((tmp_path / f"{name}.json").read_text())
    assert meta["git"]["dirty"] is False and meta["rows"] == 2 and meta["duration_s"] >= 0


def test_unknown_names_are_explained():
    with pytest.raises(ValueError, match="unknown experiment"):
        results.run("quant.no_such_experiment")
    with pytest.raises(ValueError, match="unknown cached result"):
        results.cached("no_such_table")
    with pytest.raises(TypeError):
        results.cached(3)


def test_every_cached_table_has_provenance():
    for name in [f[len("results/"):-4] for f in results.list_data_files()
                 if f.startswith("results/") and f.endswith(".csv")]:
        meta = results.provenance(name)
        assert {"command", "machine", "versions", "date"} <= set(meta), name
        assert len(results.cached(name)) == meta["rows"]
