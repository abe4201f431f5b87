"""Task files (`--task PATH.py:FACTORY`) that fail: one line naming the file and factory, rc 2, nothing written."""

import textwrap

import pytest
import torch

from layerwise import cli
from layerwise.tasks import Task, TaskData, load_task_file
from layerwise.tasks.base import check_labels

HEADER = """
import torch
from torch import nn
from layerwise.tasks import Task, TaskData

def data(data_dir, quick, labels=2):
    x = torch.randn(96, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(96) % labels
    return TaskData((x[:64], y[:64]), (x[64:], y[64:]))

def task(**fields):
    base = dict(name="file-task", make_model=lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),
                sample_input=lambda: torch.zeros(2, 6), load_data=data, batch_size=16, epochs=1)
    return Task(**{**base, **fields})
"""

FACTORIES = """
def raises():
    raise RuntimeError("no data here")

def model_raises():
    def broken():
        raise RuntimeError("model ctor failed")
    return task(make_model=broken)

def five_labels():
    return task(load_data=lambda data_dir, quick: data(data_dir, quick, labels=5))

def fine():
    return task()
"""


def _file(tmp_path, text=HEADER + FACTORIES):
    path = tmp_path / "tasks.py"
    path.write_text(textwrap.dedent(text))
    return path


def _compare(capsys, tmp_path, spec):
    out = tmp_path / "out"
    argv = ["compare", "--task", spec, "--methods", "baseline", "--budget", "steps", "--out", str(out)]
    code = cli.main([*argv, "--no-progress", "--eval-points", "1"])
    error = capsys.readouterr().err
    return code, error, out


def test_a_factory_that_raises_is_one_line_naming_file_and_factory(tmp_path, capsys):
    spec = f"{_file(tmp_path)}:raises"
    code, error, out = _compare(capsys, tmp_path, spec)
    assert code == 2 and not out.exists()
    assert error == f"layerwise compare: error: --task: {spec}: raises() raised RuntimeError: no data here\n"
    with pytest.raises(ValueError, match="raises\\(\\) raised RuntimeError") as caught:
        load_task_file(spec)
    assert isinstance(caught.value.__cause__, RuntimeError)  # the original stays chained


def test_a_syntax_error_is_one_line_naming_the_file(tmp_path, capsys):
    path = _file(tmp_path, HEADER + "def broken(:\n    pass\n")
    spec = f"{path}:broken"
    code, error, out = _compare(capsys, tmp_path, spec)
    assert code == 2 and not out.exists()
    assert error.startswith(f"layerwise compare: error: --task: {spec}: importing the file raised SyntaxError")
    assert error.count("\n") == 1


def test_a_make_model_that_raises_names_the_task_and_the_file(tmp_path, capsys):
    spec = f"{_file(tmp_path)}:model_raises"
    code, error, out = _compare(capsys, tmp_path, spec)
    assert code == 2 and not out.exists()
    expected = f"--task: {spec}: task 'file-task''s make_model() raised RuntimeError: model ctor failed\n"
    assert error == f"layerwise compare: error: {expected}"


def test_labels_outside_the_models_classes_are_refused_before_anything_is_written(tmp_path, capsys):
    spec = f"{_file(tmp_path)}:five_labels"
    code, error, out = _compare(capsys, tmp_path, spec)
    assert code == 2
    assert "task 'file-task': labels range over [0, 4] but the model outputs 2 classes" in error
    assert error.count("\n") == 1
    assert not (out / "runs.sqlite").exists()


def test_a_good_task_file_loads_its_data_once(tmp_path, capsys):
    task = load_task_file(f"{_file(tmp_path)}:fine")
    assert task.load_data(None, True) is task.load_data(None, True)
    code, error, out = _compare(capsys, tmp_path, f"{_file(tmp_path)}:fine")
    assert code == 0, error
    assert (out / "runs.sqlite").exists()


def _no_data(data_dir, quick):
    split = (torch.zeros(1, 4), torch.zeros(1))
    return TaskData(split, split)


def _linear_task(**fields):
    return Task(
        name="labels",
        make_model=lambda: torch.nn.Linear(4, 3),
        sample_input=lambda: torch.zeros(1, 4),
        load_data=_no_data,
        **fields,
    )


def test_check_labels_refuses_only_what_cross_entropy_cannot_score():
    task, outputs = _linear_task(), torch.zeros(8, 3)
    check_labels(task, outputs, torch.tensor([0, 1, 2, -100]))  # -100: cross_entropy's ignore_index
    check_labels(task, outputs, torch.rand(8, 3))  # class probabilities
    with pytest.raises(ValueError, match=r"labels range over \[0, 3\] but the model outputs 3 classes"):
        check_labels(task, outputs, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels range over \[-1, 2\]"):
        check_labels(task, outputs, torch.tensor([-1, 2]))
    check_labels(_linear_task(loss=torch.nn.functional.mse_loss, metric="loss"), outputs, torch.tensor([7]))


def test_schedule_warmup_out_of_range_names_the_flag(capsys):
    for bad in ("2", "1", "-0.1", "nan"):
        assert cli.main(["schedule", "llr", "--steps", "10", "--warmup", bad]) == 2
        error = capsys.readouterr().err
        assert error.startswith("layerwise schedule: error: --warmup: must be a fraction of training in [0, 1)"), error
    assert cli.main(["schedule", "constant", "--steps", "10", "--warmup", "0.5", "--json"]) == 0
