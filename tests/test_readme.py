"""The README's Python blocks that are complete programs run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
PROGRAMS = {block.splitlines()[0]: block for block in BLOCKS if block.startswith(("import ", "# my_task.py"))}


def test_the_readme_has_its_complete_programs():
    assert "import torch, layerwise" in PROGRAMS and "# my_task.py" in PROGRAMS


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


@pytest.mark.parametrize("block", [b for b in BLOCKS if b not in PROGRAMS.values()], ids=lambda b: b.split()[0])
def test_fragments_at_least_compile(block):
    compile(block, "README fragment", "exec")  # a SyntaxError fails
