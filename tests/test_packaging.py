"""The package installs from a wheel, outside the repository, and reads every data file from there."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

PROBE = r"""
import json, sys
import unveiled
from unveiled import data_file, list_data_files
sizes = {name: len(data_file(name).read_bytes()) for name in list_data_files()}
unveiled.hardware_table()  # parses data/hardware.csv from the installed package
print(json.dumps({"file": unveiled.__file__, "sizes": sizes}))
"""


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_reads_every_data_file(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
                   check=True, cwd=tmp_path)
    (wheel,) = wheel_dir.glob("unveiled-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the package's own (loose) dependencies come from PyPI or the pip cache, as on Colab
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, cwd=tmp_path)
    out = subprocess.run([str(py), "-c", PROBE], check=True, capture_output=True, text=True, cwd=tmp_path)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert str(ROOT) not in result["file"], "the probe imported the repository, not the installed wheel"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "data"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    expected = {f[len("data/"):]: (ROOT / f).stat().st_size for f in tracked
                if (ROOT / f).is_file() and not f.endswith("__init__.py")}
    assert result["sizes"] == expected
