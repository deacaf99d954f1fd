"""Structure lints: the mechanical parts of the chapter contract (CONTRIBUTING.md) and repository hygiene."""

from __future__ import annotations

import ast
import re
import subprocess
import tomllib

import pytest

import setup_cell
from conftest import ROOT, cell_source, chapter_paths, load_nb, notebook_paths, toc_files

NOTEBOOKS = notebook_paths()
CHAPTERS = chapter_paths()
SPECIAL_SECTIONS = {"learning objectives", "check your understanding", "lab", "summary", "further reading",
                    "exercises"}


def ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def sections(nb: dict) -> list[tuple[str, list[dict]]]:
    """Split a notebook into its `## ` sections: [(title, cells), ...]."""
    out: list[tuple[str, list[dict]]] = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            m = re.search(r"^## +(.+?)\s*$", cell_source(cell), flags=re.M)
            if m:
                out.append((m.group(1).strip(), []))
        if out:
            out[-1][1].append(cell)
    return out


def test_there_are_chapters():
    assert CHAPTERS, "no chapter notebooks under chapters/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_outputs_stripped(path):
    for i, cell in enumerate(load_nb(path)["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} cell {i} has outputs (commit notebooks without outputs)"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_first_code_cell_is_the_setup_cell(path):
    code = [c for c in load_nb(path)["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cell"
    assert cell_source(code[0]) == setup_cell.source(), (
        f"{path.name}: the first code cell differs from the Colab set-up cell; run `python tools/setup_cell.py --write`"
    )
    assert code[0]["metadata"].get("tags") == setup_cell.TAGS


def test_setup_cell_reads_the_single_repository_setting():
    import yaml

    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    url, ref = cfg["repository"]["url"], cfg["repository"]["branch"]
    assert f"git+{url}@{ref}" in setup_cell.source()
    # the URL is written nowhere else in the book's sources
    for f in tracked_files():
        if f.endswith((".ipynb", ".md", ".py", ".yml", ".toml")) and f not in ("_config.yml",):
            text = (ROOT / f).read_text(errors="ignore")
            if url in text:
                assert f.endswith(".ipynb"), f"{f} repeats the repository URL; read it from _config.yml"


def test_setup_cell_is_quiet_and_colab_only():
    src = setup_cell.source()
    assert 'if "google.colab" in sys.modules:' in src
    assert "-q" in src
    for heavy in ("torch", "numpy"):
        assert not re.search(rf'"{heavy}[=<>"]', src), f"the set-up cell must not (re)install {heavy} on Colab"


def test_every_notebook_is_in_the_toc_and_every_toc_entry_exists():
    toc = toc_files()
    for path in NOTEBOOKS:
        assert str(path.relative_to(ROOT).with_suffix("")) in toc, f"{path.relative_to(ROOT)} is not in _toc.yml"
    for entry in toc:
        assert any((ROOT / f"{entry}{ext}").exists() for ext in (".md", ".ipynb")), f"_toc.yml lists missing {entry}"


@pytest.mark.parametrize("path", CHAPTERS, ids=ids(CHAPTERS))
def test_chapter_file_name(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: chapters are named NN_slug.ipynb"


@pytest.mark.parametrize("path", CHAPTERS, ids=ids(CHAPTERS))
def test_chapter_template(path):
    nb = load_nb(path)
    md = "\n".join(cell_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert re.search(r"^# .+", md, flags=re.M), "a chapter starts with a `# ` title"
    assert re.search(r"^## +Learning objectives", md, flags=re.M), "missing '## Learning objectives'"
    assert "Expected background" in md, "missing the expected background"
    secs = sections(nb)
    titles = [t.lower() for t, _ in secs]
    for needed in ("check your understanding", "lab", "summary", "further reading"):
        assert needed in titles, f"missing the section '## {needed.title()}' (sections: {titles})"
    content = [(t, cells) for t, cells in secs if t.lower() not in SPECIAL_SECTIONS]
    assert len(content) >= 2, "a chapter has at least two content sections"
    for title, cells in content:
        last_md = [c for c in cells if c["cell_type"] == "markdown"][-1]
        assert re.search(r"\{admonition\}\s*Takeaway", cell_source(last_md)), (
            f"section '{title}' must end with a Takeaway admonition (see CONTRIBUTING.md)"
        )
    assert "{cite}" in dict((t.lower(), "".join(cell_source(c) for c in cells)) for t, cells in secs)["further reading"]


@pytest.mark.parametrize("path", CHAPTERS, ids=ids(CHAPTERS))
def test_check_your_understanding_answers_are_computed(path):
    nb = load_nb(path)
    cells = dict((t.lower(), cells) for t, cells in sections(nb))["check your understanding"]
    exercises = [c for c in cells if "{exercise}" in cell_source(c)]
    assert len(exercises) >= 3, "at least three numbered questions in 'Check your understanding'"
    inside, n_code, n_solutions = False, 0, 0
    for cell in cells:
        src = cell_source(cell)
        if "{solution-start}" in src:
            assert not inside, "nested solution-start"
            inside, n_code = True, 0
            assert ":class: dropdown" in src, "answers sit in dropdowns (:class: dropdown)"
            continue
        if "{solution-end}" in src:
            assert n_code >= 1, "each answer is computed by a code cell inside its gated solution"
            inside, n_solutions = False, n_solutions + 1
            continue
        if inside and cell["cell_type"] == "code":
            n_code += 1
        if inside and cell["cell_type"] == "markdown":
            prose = re.sub(r"\$[^$]*\$|`[^`]*`|\{[a-z-]+\}`[^`]*`", "", src)
            assert not re.search(r"(?<![\w.])\d+\.\d+|(?<![\w.])\d{3,}", prose), (
                f"hand-typed number in an answer's text: {src[:120]!r} (compute it in a code cell)"
            )
    assert n_solutions >= len(exercises), "every question has a gated solution"


@pytest.mark.parametrize("path", CHAPTERS, ids=ids(CHAPTERS))
def test_lab_has_solution_cells_followed_by_checks(path):
    nb = load_nb(path)
    cells = dict((t.lower(), cells) for t, cells in sections(nb))["lab"]
    code = [c for c in cells if c["cell_type"] == "code"]
    sol = [i for i, c in enumerate(code) if "solution" in c["metadata"].get("tags", [])]
    assert sol, "the Lab has at least one cell tagged `solution`"
    for i in sol:
        nxt = code[i + 1] if i + 1 < len(code) else None
        assert nxt is not None and "uv.labs." in cell_source(nxt), (
            "each solution cell is followed by a cell that calls a check from unveiled.labs"
        )


LAB_HEADING = re.compile(r"^### +Lab (\d+)\.(\d+) — \S.*$", flags=re.M)
LAB_GOAL = re.compile(r"^\*\*Goal:\*\* (?P<goal>\S[^\n]*?) \*\*Time:\*\* about (?P<minutes>\d+) minutes\.$", flags=re.M)


@pytest.mark.parametrize("path", CHAPTERS, ids=ids(CHAPTERS))
def test_at_least_two_labs_each_with_a_one_line_goal_and_a_time(path):
    """Every chapter has >= 2 labs (`### Lab N.M — title`, numbered after the chapter), each stating its learning
    goal in one line and its size, 15 to 45 minutes: `**Goal:** ... **Time:** about 20 minutes.`"""
    nb = load_nb(path)
    title = next(m for c in nb["cells"] if c["cell_type"] == "markdown"
                 for m in re.findall(r"^# +Chapter (\d+)\b", cell_source(c), flags=re.M))
    cells = dict((t.lower(), cells) for t, cells in sections(nb))["lab"]
    labs = [(cell_source(c), m) for c in cells if c["cell_type"] == "markdown"
            for m in LAB_HEADING.finditer(cell_source(c))]
    assert len(labs) >= 2, f"{path.name} has {len(labs)} lab(s) (`### Lab N.M — ...` in its Lab section); at least two"
    numbers = [(int(m.group(1)), int(m.group(2))) for _, m in labs]
    assert numbers == [(int(title), i) for i in range(1, len(labs) + 1)], (
        f"labs are numbered {int(title)}.1, {int(title)}.2, ... after the chapter's title; got {numbers}")
    for text, m in labs:
        goals = LAB_GOAL.findall(text)
        assert len(goals) == 1, (f"{m.group(0)}: state the learning goal in one line under the heading: "
                                 "`**Goal:** <what the student learns>. **Time:** about <15-45> minutes.`")
        goal, minutes = goals[0]
        assert 15 <= int(minutes) <= 45, f"{m.group(0)}: a lab takes 15-45 minutes, not {minutes}"
        assert len(goal) <= 200, f"{m.group(0)}: keep the goal to one short line"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_solution_tag_only_in_lab(path):
    nb = load_nb(path)
    for title, cells in sections(nb):
        if title.lower() != "lab":
            for c in cells:
                assert "solution" not in c.get("metadata", {}).get("tags", []), f"`solution` cell outside the Lab ({title})"


def _ends_in_markdown_call(source: str) -> bool:
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    last = body[-1] if body else None
    return (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
            and getattr(last.value.func, "id", None) == "Markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_computed_prose_hides_its_code(path):
    """A cell whose output is a paragraph or caption (it ends in ``Markdown(...)``) reads as text in the book: its
    f-string source is folded away (``hide-input``), one click from the reader."""
    nb = load_nb(path)
    for i, c in enumerate(nb["cells"]):
        if c["cell_type"] == "code" and _ends_in_markdown_call(cell_source(c)):
            assert "hide-input" in c.get("metadata", {}).get("tags", []), f"cell {i} renders prose: tag it hide-input"


FORBIDDEN = re.compile(
    r"(from_pretrained\(|hf_hub_download|snapshot_download|load_dataset\(|huggingface\.co/api|"
    r"/root/|/home/\w|/work/main|[A-Z]:\\\\Users)"
)


def test_no_absolute_paths_or_hub_downloads():
    bad = []
    for f in tracked_files():
        if f.startswith(("tests/", "_static/", "_extra/")) or not f.endswith(
            (".py", ".ipynb", ".md", ".yml", ".yaml", ".toml", ".txt", ".cfg", ".sh", ".json", ".csv")
        ) or f.startswith("data/tinyshakespeare"):
            continue
        text = (ROOT / f).read_text(errors="ignore")
        for m in FORBIDDEN.finditer(text):
            bad.append(f"{f}: {m.group(0)!r}")
    assert not bad, "absolute machine paths or hub downloads:\n" + "\n".join(bad)


def test_no_build_outputs_or_caches_committed():
    for f in tracked_files():
        parts = f.split("/")
        assert not {"_build", ".venv", "__pycache__", ".ipynb_checkpoints", ".pytest_cache", "student"} & set(parts), f
        assert not f.endswith((".pyc", ".egg-info")), f


def test_pyproject_lists_every_subpackage_and_data_folder():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    lib = ROOT / "lib" / "unveiled"
    want = {"unveiled", "unveiled.data"}
    want |= {"unveiled." + ".".join(p.parent.relative_to(lib).parts) for p in lib.rglob("__init__.py") if p.parent != lib}
    want |= {"unveiled.data." + ".".join(p.relative_to(ROOT / "data").parts)
             for p in (ROOT / "data").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert want <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(want - listed)}"
    assert listed <= want, f"pyproject.toml lists packages that do not exist: {sorted(listed - want)}"


def test_package_keeps_loose_dependency_bounds():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for dep in cfg["project"]["dependencies"]:
        assert "==" not in dep and "<" not in dep, f"{dep}: the package must install next to Colab's stack"
        assert not dep.lower().startswith("torch"), "torch is optional (an extra), never a core dependency"


def test_requirements_pin_everything():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    assert all("==" in ln for ln in lines), [ln for ln in lines if "==" not in ln]
    names = {ln.split("==")[0].lower() for ln in lines}
    for needed in ("jupyter-book", "sphinx", "myst-nb", "torch", "altair", "pandas", "numpy", "playwright"):
        assert needed in names, f"requirements.txt must pin {needed}"


def test_data_files_are_documented():
    readme = (ROOT / "data" / "README.md").read_text()
    for f in tracked_files():
        if f.startswith("data/") and not f.endswith(("__init__.py", "README.md")):
            name = f[len("data/"):]
            top = name.split("/")[0]
            assert name in readme or f"{top}/" in readme, f"data/README.md must describe {name} (source, licence)"


def test_readme_has_exactly_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"## Set-up\n(.*?)\n## ", readme, flags=re.S)
    assert m, "README.md needs a '## Set-up' section"
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", m.group(1), flags=re.S)
    cmds = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines() if ln.split("#")[0].strip()]
    assert cmds == ["bash tools/build.sh", "bash tools/test.sh"], cmds
    for script in ("tools/build.sh", "tools/test.sh"):
        assert (ROOT / script).exists()


def test_ci_runs_the_readme_test_command_and_the_full_build():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash tools/test.sh" in ci and "bash tools/build.sh" in ci
    assert "jupyter-book build" in (ROOT / "tools" / "build_book.py").read_text()
    assert '"-W", "-n", "--keep-going"' in (ROOT / "tools" / "build_book.py").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_is_valid_nbformat_with_cell_ids(path):
    import nbformat

    nb = nbformat.reads(path.read_text(), as_version=4)
    nbformat.validate(nb)
    cell_ids = [c.get("id") for c in nb.cells]
    assert all(cell_ids) and len(set(cell_ids)) == len(cell_ids), f"{path.name}: every cell needs a unique id"
