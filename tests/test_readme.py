"""The README stays a short front door whose programs run as written; the guide's code compiles; every
relative link of the README, the guide and the docs' home page leads to a file; the home page holds the
measured decision table (its intervals as BENCHMARKS.md gives them) and a picture that exists."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
HOME = ROOT / "docs" / "index.md"
GUIDE = sorted((ROOT / "docs" / "guide").glob("*.md"))
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
PROGRAMS = {block.splitlines()[0]: block for block in BLOCKS if block.startswith(("import ", "# my_task.py"))}
PYTHON = re.compile(r"```python\n(.*?)```", re.S)
FRAGMENTS = [("README", block) for block in BLOCKS if block not in PROGRAMS.values()] + [
    (f"docs/guide/{page.name}", block) for page in GUIDE for block in PYTHON.findall(page.read_text())
]
"""The Python blocks that are not complete programs: the README's and the guide's."""
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    return [url for url in LINK.findall(path.read_text()) if not re.match(r"[a-z]+:|#", url)]


def test_the_readme_has_its_complete_programs():
    assert "import torch, layerwise" in PROGRAMS and "# my_task.py" in PROGRAMS


def test_the_readme_is_a_few_screens_long():
    assert len(README.read_text().splitlines()) < 200


def test_the_readme_first_command_runs_the_main_job_and_the_second_the_tests():
    commands = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    assert [c.strip() for c in commands[:2]] == ["make main", "make test"]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")  # CI runs the README's test command
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text() and "torch 2.13.0" in README.read_text()


def test_quick_start_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it saves ckpt.pt
    namespace: dict = {}
    exec(compile(PROGRAMS["import torch, layerwise"], "README quick start", "exec"), namespace)
    assert (tmp_path / "ckpt.pt").stat().st_size > 0 and namespace["sched"].last_epoch == namespace["steps"]


def test_the_task_file_example_makes_a_task_that_compares(tmp_path):
    path = tmp_path / "my_task.py"
    path.write_text(PROGRAMS["# my_task.py"])
    from layerwise.compare import compare

    task_spec = f"{path}:make_task"
    result = compare(task_spec, ["baseline"], budget="steps", epochs=1, out=tmp_path / "o", progress=False)
    assert result["rows"][0]["runs"] == 1


@pytest.mark.parametrize("where,block", FRAGMENTS, ids=[f"{where}-{i}" for i, (where, _) in enumerate(FRAGMENTS)])
def test_fragments_at_least_compile(where, block):
    compile(block, where, "exec")  # a SyntaxError fails


@pytest.mark.parametrize("path", [README, HOME, *GUIDE], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files(path):
    missing = [url for url in _relative_links(path) if not (path.parent / url.partition("#")[0]).exists()]
    assert not missing, f"{path.name}: {missing}"


def test_the_readme_links_every_guide_page():
    linked = {(README.parent / url.partition("#")[0]).resolve() for url in _relative_links(README)}
    assert not [page.name for page in GUIDE if page.resolve() not in linked]


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables of ``text``: rows of cells, header first, the separator row left out."""
    tables, rows = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(set(cell) <= set("-: ") for cell in cells):
                rows.append(cells)
        elif rows:
            tables.append(rows)
            rows = []
    return tables


def test_the_home_page_holds_the_measured_decision_table():
    text = HOME.read_text()
    tables = [t for t in _tables(text) if t[0][0] == "technique"]
    assert tables, "the decision table is missing from docs/index.md"
    header = " ".join(tables[0][0])
    for column in ("effect", "interval", "decided", "seeds", "command"):
        assert column in header, column
    rows = [row for table in tables for row in table[1:]]
    techniques = {row[0].split(" (")[0] for row in rows}
    assert {"FreezeOut", "Multirate", "Hi-DLR", "SecantLR", "discriminative LRs"} <= techniques
    assert "Fine-tuning" in text and "from scratch" in text
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    intervals = [interval for row in rows for interval in re.findall(r"\[[-+]\d[^]]*\]", " ".join(row))]
    assert len(intervals) >= 8
    assert not [i for i in intervals if i not in benchmarks], "every interval is BENCHMARKS.md's, verbatim"
    assert "make main" in text and "pip install" in text  # the install line


def test_the_home_page_shows_a_picture_that_exists():
    images = re.findall(r"!\[[^]]*\]\(([^)\s]+)\)", HOME.read_text())
    assert images and all((HOME.parent / image).is_file() for image in images)
