"""Comparisons end to end: a longer run's data order, bad budget options refused before the data loads, task
files, the regimes' default methods, the snippets in a plain loop (the time budget's runs: test_rounds.py)."""

import json
import textwrap

import pytest
import torch
from torch import nn

import layerwise.compare.session as session
from blobs import blobs, blobs_task, mlp
from layerwise import cli
from layerwise.compare import compare
from layerwise.compare.methods import METHODS, Build, method_snippet, resolve_settings
from layerwise.tasks import load_task_file, register_task


def _task(name="timed-blobs", load_data=blobs):
    return blobs_task(name, load_data=load_data, regime="fine-tuning")


register_task(_task())


def test_more_steps_than_the_baseline_see_the_same_data_order():
    base = session.run_one("timed-blobs", "baseline", seed=2, policy="constant", eval_points=1)
    longer = session.run_one("timed-blobs", "baseline", seed=2, policy="constant", eval_points=1, steps=20)
    assert longer["steps"] == 20 and longer["epochs"] == 2.5
    assert longer["train_loss"][:16] == pytest.approx(base["train_loss"], rel=1e-6)


def _no_data(data_dir, quick):
    raise AssertionError("the data was loaded")


register_task(_task("refusing-blobs", _no_data))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"budget": "money"}, r"--budget: must be one of \('steps', 'time'\)"),
        ({"budget_seconds": 0}, "--budget-seconds: a finite number of seconds > 0"),
        ({"budget_seconds": -3.0}, "--budget-seconds"),
        ({"budget_seconds": float("nan")}, "--budget-seconds"),
        ({"budget": "steps", "budget_seconds": 10.0}, "only with --budget time"),
        ({"target": 85.0}, r"--target: an accuracy is a fraction in \(0, 1\]"),
        ({"target_tolerance": -1}, "--target-tolerance"),
        ({"eval_points": 0}, "eval_points: must be an int >= 1"),
        ({"bogus": 1}, "compare: unknown option 'bogus'"),
    ],
    ids=[
        "budget",
        "zero-seconds",
        "negative-seconds",
        "nan-seconds",
        "seconds-with-steps",
        "target",
        "tolerance",
        "eval-points",
        "unknown-option",
    ],
)
def test_bad_budget_options_are_refused_before_any_data_is_loaded(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        compare("refusing-blobs", ["baseline"], out=tmp_path, progress=False, **options)
    assert not (tmp_path / "runs.sqlite").exists()


TASK_FILE = """
import torch
from torch import nn
from layerwise.tasks import Task, TaskData


def _data(data_dir, quick):
    x = torch.randn(128, 6, generator=torch.Generator().manual_seed(0))
    y = (x.sum(1) > 0).long()
    return TaskData((x[:96], y[:96]), (x[96:], y[96:]))


def make_task():
    return Task(name="from-a-file", make_model=lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),
                sample_input=lambda: torch.zeros(2, 6), load_data=_data, batch_size=16, lr=0.1, epochs=1)


def not_a_task():
    return 42
"""


def test_a_task_loaded_from_a_file_runs(tmp_path, capsys):
    path = tmp_path / "my_task.py"
    path.write_text(textwrap.dedent(TASK_FILE))
    assert load_task_file(f"{path}:make_task").name == "from-a-file"
    argv = [
        "compare",
        "--task",
        f"{path}:make_task",
        "--methods",
        "baseline,freezeout",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
        "--eval-points",
        "2",
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| freezeout | 1 |" in out
    record = json.loads((tmp_path / "o" / "runs" / "freezeout-seed0.json").read_text())
    assert record["task"] == "from-a-file" and record["budget"]["mode"] == "time"


def test_bad_task_files_are_refused(tmp_path, capsys):
    path = tmp_path / "my_task.py"
    path.write_text(textwrap.dedent(TASK_FILE))
    with pytest.raises(ValueError, match="no such file"):
        load_task_file(f"{tmp_path / 'missing.py'}:make_task")
    with pytest.raises(ValueError, match="has no callable 'nope'"):
        load_task_file(f"{path}:nope")
    with pytest.raises(TypeError, match=r"returned int, expected a layerwise\.tasks\.Task"):
        load_task_file(f"{path}:not_a_task")
    assert cli.main(["compare", "--task", f"{path}:not_a_task", "--out", str(tmp_path / "o")]) == 2
    assert "returned int" in capsys.readouterr().err


def test_regimes_pick_their_default_methods():
    from layerwise.compare import default_methods
    from layerwise.tasks import get_task

    scratch_task = get_task("fashion-mnist")
    scratch = default_methods(scratch_task, scratch_task.partition_of(scratch_task.make_model()))
    assert "discriminative" not in scratch and "multirate" not in scratch and "head-only" not in scratch
    assert {"baseline", "freezeout", "hidlr", "llr"} <= set(scratch)
    tuned = _task()
    finetune = default_methods(tuned, tuned.partition_of(tuned.make_model()))
    assert finetune == [
        "baseline",
        "head-only",
        "discriminative",
        "gradual-unfreezing",
        "freezeout",
        "autofreeze",
        "multirate",
        "multirate-block",
        "hidlr",
    ]


def test_every_snippet_runs_in_a_plain_loop():
    task = _task()
    data = blobs(None, False)
    loader = [(data.train[0][i : i + 32], data.train[1][i : i + 32]) for i in range(0, 96, 32)]
    for name, method in METHODS.items():
        if method.snippet is None or method.applies(task, task.partition_of(task.make_model())):
            continue
        model = mlp()
        text = method_snippet(Build(task, model, task.partition_of(model), 3, "cosine"), name, resolve_settings(name))
        x = loader[0][0]
        namespace = {
            "model": model,
            "loader": loader,
            "x": x,
            "loss_fn": nn.functional.cross_entropy,
            "num_examples": 96,
            "indexed_loader": [(torch.arange(i, i + 32), x_, y_) for i, (x_, y_) in zip(range(0, 96, 32), loader)],
        }
        before = [p.detach().clone() for p in model.parameters()]
        exec(compile(text, f"<snippet {name}>", "exec"), namespace)
        assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters())), name
