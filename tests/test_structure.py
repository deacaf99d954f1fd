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


def _is_shown(cell: dict) -> bool:
    tags = cell.get("metadata", {}).get("tags", [])
    return "remove-cell" not in tags


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_a_page_opens_with_its_title(path):
    """The reader sees the `# ` title first: no visible cell (imports included) above it."""
    cells = load_nb(path)["cells"]
    title = next((i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                  and re.search(r"^# ", cell_source(c), flags=re.M)), None)
    assert title is not None, f"{path.name} has no `# ` title"
    shown = [i for i, c in enumerate(cells[:title]) if _is_shown(c)]
    assert not shown, f"{path.name}: cells {shown} are shown above the title (move them below the objectives)"


@pytest.mark.parametrize("path", CHAPTERS, ids=ids(CHAPTERS))
def test_chapter_imports_follow_the_objectives(path):
    """Title, learning objectives and expected background come first; the imports cell follows them."""
    cells = load_nb(path)["cells"]
    objectives = next((i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                       and re.search(r"^## +Learning objectives", cell_source(c), flags=re.M)), None)
    assert objectives is not None, f"{path.name}: missing '## Learning objectives'"
    early = [i for i, c in enumerate(cells[:objectives]) if c["cell_type"] == "code" and _is_shown(c)]
    assert not early, f"{path.name}: code cells {early} come before the learning objectives"
    first_code = next(c for c in cells[objectives:] if c["cell_type"] == "code")
    assert "import unveiled as uv" in cell_source(first_code), (
        f"{path.name}: the first code cell after the objectives imports the library (`import unveiled as uv`)")


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


# ---------------------------------------------------------------------------------------------------------------
# Cross-references: every "Chapter N", "§N.M", "section N.M", "Figure N.M", "Table N.M" and "Lab N.M" points at
# something in the table of contents. The survey's sections are written "survey §5.1" (or "survey's §5.1",
# "§5.1 of the survey", "§5.1 of {cite}`yuan2024llm`"); a bare "§N.M" or "section N.M" is the book's own.

import booktext  # noqa: E402  (after the fixtures above; tests/ is on sys.path)

# Chapters that other pages may mention before they are in the table of contents, each landing together with
# its mentions. Remove a number when its chapter is in _toc.yml (a test below says when).
PENDING_CHAPTERS: dict[int, str] = {}

CHAPTER_MENTION = re.compile(r"\bChapters?\s+(\d+)((?:\s*(?:,|and|or|to|–|-)\s*\d+\b)*)")
SECTION_MENTION = re.compile(
    r"(?P<kind>§§?|\b[Ss]ections?)\s?(?P<first>\d+(?:\.\d+)*)(?P<more>(?:\s?(?:–|-|,|and|or|to)\s?\d+(?:\.\d+)+)*)")
SURVEY_BEFORE = re.compile(r"\bsurvey(?:'s)?\s*$", re.I)
SURVEY_AFTER = re.compile(r"^\s*of\s+(?:the survey|\{cite\}`yuan2024llm`)")
FIGURE_MENTION = re.compile(r"\b(Figures?|Figs?\.?|Tables?)\s+(\d+\.\d+)((?:\s*(?:,|and|–|-)\s*\d+\.\d+)*)")
LAB_MENTION = re.compile(r"\bLab\s+(\d+\.\d+)")


def _numbers(first: str, more: str) -> list[str]:
    """'3.4' + '–3.6' -> ['3.4', '3.5', '3.6']; lists ('3.4, 3.6 and 3.7') expand to their items."""
    out = [first]
    for sep, num in re.findall(r"(–|-|,|and|or|to)\s?(\d+(?:\.\d+)*)", more):
        if sep in ("–", "-", "to") and "." in num and "." in out[-1] and num.split(".")[0] == out[-1].split(".")[0]:
            a, b = int(out[-1].split(".")[-1]), int(num.split(".")[-1])
            prefix = out[-1].rsplit(".", 1)[0]
            out.extend(f"{prefix}.{k}" for k in range(a + 1, b + 1))
        elif sep in ("–", "-", "to") and "." not in num and "." not in out[-1]:
            out.extend(str(k) for k in range(int(out[-1]) + 1, int(num) + 1))
        else:
            out.append(num)
    return out


def _lib_texts():
    for folder in ("lib", "tools", "benchmarks"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            yield str(f.relative_to(ROOT)), f.read_text()


def test_chapter_numbers_follow_the_table_of_contents():
    chapters = booktext.chapters()
    numbers = [c.number for c in chapters]
    assert numbers == sorted(set(numbers)), f"chapter titles must number the chapters in _toc.yml order: {numbers}"
    for c in chapters:
        if c.path.parent.name == "chapters":
            assert int(c.path.name[:2]) == c.number, f"{c.path.name}: its title says Chapter {c.number}"


@pytest.mark.parametrize("path", CHAPTERS, ids=ids(CHAPTERS))
def test_sections_figures_and_labs_carry_their_chapter_number(path):
    chapter = next(c for c in booktext.chapters() if c.path == path)
    n, numbered = chapter.number, []
    for h in chapter.headings:
        if h.lower() in SPECIAL_SECTIONS:
            continue
        m = booktext.SECTION_HEADING.match(h)
        assert m, f"section '{h}' of Chapter {n}: content sections are numbered '## {n}.k Title'"
        numbered.append((int(m.group(1)), int(m.group(2))))
    assert numbered == [(n, k) for k in range(1, len(numbered) + 1)], (
        f"Chapter {n}'s sections must be numbered {n}.1, {n}.2, ... in order: {numbered}")
    for kind, items in (("Figure", chapter.figures), ("Table", chapter.tables), ("Lab", chapter.labs)):
        wrong = sorted(x for x in items if x.split(".")[0] != str(n))
        assert not wrong, f"Chapter {n} numbers its {kind.lower()}s {n}.k, not {wrong}"


def _book_reference_errors(chapters, where, text, own: int | None) -> list[str]:
    """Errors of the book references in one text of chapter `own` (None: a page that is no chapter)."""
    by_number = {c.number: c for c in chapters}
    errors = []
    for m in SECTION_MENTION.finditer(text):
        if SURVEY_BEFORE.search(text[:m.start()]) or SURVEY_AFTER.match(text[m.end():]):
            continue
        for num in _numbers(m.group("first"), m.group("more")):
            head = num.split(".")
            if len(head) != 2 or int(head[0]) not in by_number or num not in by_number[int(head[0])].sections:
                errors.append(f"{where}: '{m.group(0)}' is not a section of the book (the survey's sections are "
                              f"written 'survey §{num}' or '§{num} of the survey')")
            elif int(head[0]) != own and not re.search(rf"\bChapters? {head[0]}\b", text[max(0, m.start() - 80):m.start()]):
                errors.append(f"{where}: '{m.group(0)}' is a section of another chapter: write 'Chapter {head[0]}' "
                              f"before it, or 'survey §{num}' if the survey's section is meant")
    for m in FIGURE_MENTION.finditer(text):
        kind = "tables" if m.group(1).startswith("Table") else "figures"
        for num in _numbers(m.group(2), m.group(3)):
            ch = by_number.get(int(num.split(".")[0]))
            if ch is None or num not in getattr(ch, kind):
                errors.append(f"{where}: '{m.group(0)}' names no {kind[:-1]} of the book")
    for m in LAB_MENTION.finditer(text):
        ch = by_number.get(int(m.group(1).split(".")[0]))
        if ch is None or m.group(1) not in ch.labs:
            errors.append(f"{where}: 'Lab {m.group(1)}' is not a lab of the book")
    return errors


def test_every_cross_reference_resolves():
    chapters = booktext.chapters()
    known = {c.number for c in chapters}
    errors = []
    texts = [(f"{booktext.rel(p)} {w}", t) for p in booktext.toc_pages() for w, t in booktext.page_prose(p)]
    for where, text in [*texts, *_lib_texts()]:
        for m in CHAPTER_MENTION.finditer(text):
            for num in _numbers(m.group(1), m.group(2)):
                if int(num) not in known and int(num) not in PENDING_CHAPTERS:
                    errors.append(f"{where}: '{m.group(0)}' names no chapter of _toc.yml (chapters {sorted(known)})")
    owner = {c.path: c.number for c in chapters}
    for p in booktext.toc_pages():
        for w, text in booktext.page_prose(p):
            errors += _book_reference_errors(chapters, f"{booktext.rel(p)} {w}", text, owner.get(p))
    assert not errors, "cross-references that point at nothing:\n" + "\n".join(errors)


def test_pending_chapters_are_still_pending():
    known = {c.number for c in booktext.chapters()}
    for n, what in PENDING_CHAPTERS.items():
        assert n not in known, f"Chapter {n} is in _toc.yml now: remove it from PENDING_CHAPTERS ({what})"
    texts = [t for p in booktext.toc_pages() for _, t in booktext.page_prose(p)]
    mentioned = {int(num) for t in texts for m in CHAPTER_MENTION.finditer(t) for num in _numbers(m.group(1), m.group(2))}
    stale = sorted(set(PENDING_CHAPTERS) - mentioned)
    assert not stale, f"no page mentions chapters {stale} any more: remove them from PENDING_CHAPTERS"


def test_survey_references_name_real_figures_tables_and_sections():
    """The survey (v6) has Figures 1-20, Tables 1-4 and Sections 1-8."""
    for p in booktext.toc_pages():
        for where, text in booktext.page_prose(p):
            for m in re.finditer(r"\bsurvey(?:'s)? (Fig\.|Figure|Table|§)\s?(\d+)", text):
                limit = {"Fig.": 20, "Figure": 20, "Table": 4, "§": 8}[m.group(1)]
                assert 1 <= int(m.group(2)) <= limit, f"{booktext.rel(p)} {where}: '{m.group(0)}'"


def display_math_problems(markdown: str) -> list[str]:
    """Lines where `$$` display maths is glued to a paragraph (MyST then reads it as inline maths and swallows the
    following prose): a `$$` block must start after a blank line and be followed by one."""
    lines = markdown.split("\n")
    problems, inside = [], False
    for j, line in enumerate(lines):
        s = line.strip()
        n = s.count("$$")
        if not n:
            continue
        opens = not inside and s.startswith("$$")
        if not inside and not opens:
            problems.append(f"line {j + 1}: `$$` inside a paragraph: {s[:60]!r}")
            continue
        if opens and j > 0 and lines[j - 1].strip():
            problems.append(f"line {j + 1}: no blank line before `$$`: {s[:60]!r}")
        closes = (opens and n >= 2) or (inside and n >= 1)
        inside = opens and n == 1
        if closes and not s.endswith("$$"):
            problems.append(f"line {j + 1}: text after the closing `$$`: {s[-60:]!r}")
        if closes and j + 1 < len(lines) and lines[j + 1].strip():
            problems.append(f"line {j + 2}: no blank line after `$$`: {lines[j + 1].strip()[:60]!r}")
    return problems


def test_display_math_problems_are_found():
    assert display_math_problems("a\n\n$$x$$\n\nb") == []
    assert display_math_problems("a\n\n$$\nx\n$$\n\nb") == []
    assert len(display_math_problems("a so\n$$x$$\nb")) == 2
    assert display_math_problems("see $$x$$ here")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_display_math_stands_in_its_own_paragraph(path):
    for i, cell in enumerate(load_nb(path)["cells"]):
        if cell["cell_type"] == "markdown":
            problems = display_math_problems(cell_source(cell))
            assert not problems, f"{path.name} cell {i}: {problems}"
