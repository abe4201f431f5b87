"""A user's own training job: task files the run store tells apart, models returning output objects, any optimizer."""

import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from blobs import blobs_task, mlp
from layerwise import cli
from layerwise.compare import compare
from layerwise.compare.runner import run_one
from layerwise.compare.store import RunStore, config_changes
from layerwise.tasks import Task, load_task_file, make_optimizer, optimizer_preset

TASK_FILE = """
import torch
from torch import nn
from layerwise.tasks import Task, TaskData

def data(data_dir, quick):
    x = torch.randn(96, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(96) % 2
    return TaskData((x[:64], y[:64]), (x[64:], y[64:]))

def make_task():
    return Task(name="edited", make_model=lambda: nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)),
                sample_input=lambda: torch.zeros(2, 6), load_data=data, batch_size=16, epochs=1, lr={lr})
"""


def _compare_file(capsys, spec, out):
    argv = ["compare", "--task", spec, "--methods", "baseline", "--budget", "steps", "--out", str(out)]
    code = cli.main([*argv, "--no-progress", "--eval-points", "1"])
    return code, capsys.readouterr()


def test_an_edited_task_file_never_reuses_the_old_runs(tmp_path, capsys):
    path, out = tmp_path / "job.py", tmp_path / "out"
    path.write_text(textwrap.dedent(TASK_FILE).format(lr=0.05))
    code, _ = _compare_file(capsys, f"{path}:make_task", out)
    assert code == 0
    path.write_text(textwrap.dedent(TASK_FILE).format(lr=0.01))
    code, captured = _compare_file(capsys, f"{path}:make_task", out)
    assert code == 2 and "| baseline |" not in captured.out  # the old LR's runs are not reported
    assert captured.err.count("\n") == 1
    assert f"--out: {out} holds runs of a different configuration" in captured.err
    assert "task_settings.lr: 0.05 -> 0.01" in captured.err and "task_settings.source_sha256" in captured.err


def test_a_task_file_fingerprints_its_source(tmp_path):
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(TASK_FILE).format(lr=0.05))
    before = load_task_file(f"{path}:make_task").source_sha256
    path.write_text(textwrap.dedent(TASK_FILE).format(lr=0.05) + "# a comment\n")
    after = load_task_file(f"{path}:make_task").settings()["source_sha256"]
    assert len(before) == 64 and after != before


def test_config_changes_name_every_difference():
    stored = {"task": "t", "budget": "time", "task_settings": {"lr": 0.05, "head": True}}
    wanted = {"task": "t", "budget": "steps", "task_settings": {"lr": 0.05}}
    assert config_changes(stored, wanted) == ['budget: "time" -> "steps"', "task_settings.head: true -> (unset)"]


def test_a_comparison_that_fails_before_any_run_leaves_out_reusable(tmp_path):
    def no_data(data_dir, quick):
        raise RuntimeError("the data is not there yet")

    options = {"methods": ["baseline"], "out": tmp_path, "budget": "steps", "progress": False, "eval_points": 1}
    with pytest.raises(RuntimeError, match="not there yet"):
        compare(blobs_task("reusable", load_data=no_data), **options)
    assert not (tmp_path / "runs.sqlite").exists()
    result = compare(blobs_task("reusable", lr=0.02), **options)
    assert result["outcomes"]["baseline"]["records"]


def test_a_store_with_a_finished_run_survives_a_later_failure(tmp_path):
    key = RunStore.key("baseline", {}, 0)
    with pytest.raises(KeyboardInterrupt), RunStore(tmp_path / "runs.sqlite", {"task": "x"}) as store:
        store.save(key, {"method": "baseline", "seed": 0})
        raise KeyboardInterrupt
    assert RunStore(tmp_path / "runs.sqlite", {"task": "x"}).finished(key) == {"method": "baseline", "seed": 0}


def test_a_task_file_imports_a_module_beside_it(tmp_path):
    (tmp_path / "job_helpers.py").write_text("LR = 0.03\n")
    path = tmp_path / "job.py"
    path.write_text("import job_helpers\n" + textwrap.dedent(TASK_FILE).format(lr="job_helpers.LR"))
    assert load_task_file(f"{path}:make_task").lr == 0.03
    assert str(tmp_path) not in sys.path  # only while it loads


@dataclass
class Output:
    """What a Hugging Face model returns: an object holding ``logits`` (and more)."""

    logits: torch.Tensor
    hidden: torch.Tensor


class OutputModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = mlp()

    def forward(self, x: torch.Tensor) -> Output:
        return Output(logits=self.body(x), hidden=x)


def test_a_model_returning_an_output_object_needs_no_hooks(tmp_path):
    task = blobs_task("output-object", make_model=OutputModel)
    methods = ["baseline", "freezeout", "hidlr"]
    result = compare(task, methods, out=tmp_path, budget="steps", progress=False, eval_points=2, policy="constant")
    for method in methods:
        (record,) = result["outcomes"][method]["records"]
        assert record["test_metric"] > 0.5, method  # the blobs are easy: the logits were read


def test_an_optimizer_class_with_its_options():
    task = blobs_task("adadelta", optimizer=torch.optim.Adadelta, optimizer_options={"rho": 0.8}, weight_decay=1e-4)
    optimizer = make_optimizer(task, [{"params": list(mlp().parameters())}])
    assert isinstance(optimizer, torch.optim.Adadelta) and task.optimizer_name == "Adadelta"
    assert optimizer.defaults["rho"] == 0.8 and optimizer.defaults["lr"] == task.lr == 0.05
    assert optimizer.defaults["weight_decay"] == 1e-4
    assert task.settings()["optimizer"] == "torch.optim.adadelta.Adadelta"
    assert optimizer_preset(task).class_path == "torch.optim.Adadelta"
    sgd = blobs_task("sgd-options", optimizer_options={"momentum": 0.5})
    preset = make_optimizer(sgd, [{"params": [nn.Parameter(torch.zeros(1))]}])
    assert preset.defaults["momentum"] == 0.5 and preset.defaults["nesterov"]


def test_a_run_trains_with_the_tasks_optimizer_class():
    task = blobs_task("adadelta-run", optimizer=torch.optim.Adadelta, lr=1.0)
    for method in ("baseline", "freezeout"):
        record = run_one(task, method, seed=0, eval_points=1)
        assert record["optimizer"] == "Adadelta" and record["test_metric"] > 0.5
    assert run_one(blobs_task("hidlr-sgd"), "hidlr", seed=0, steps=4, eval_points=1)["optimizer"] == "HiDLR(SGD)"


def test_a_comparison_trains_every_method_with_the_tasks_optimizer_class(tmp_path):
    task = blobs_task("adadelta-compare", optimizer=torch.optim.Adadelta, lr=1.0)
    methods = ["baseline", "freezeout", "multirate", "hidlr"]
    result = compare(task, methods, out=tmp_path, budget="steps", eval_points=1, progress=False)
    optimizers = {label: o["records"][0]["optimizer"] for label, o in result["outcomes"].items()}
    assert optimizers["baseline"] == optimizers["freezeout"] == "Adadelta" and optimizers["hidlr"] == "HiDLR(Adadelta)"
    assert "Adadelta at LR 1" in result["setting"] and "torch.optim.Adadelta" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"optimizer": "adadeltaa"}, r"optimizer: expected one of \[.*'adadelta'.*\] \(any case\) or a torch\.optim\."),
        ({"optimizer": "lbfgs"}, r"optimizer: torch\.optim\.LBFGS takes no weight_decay"),
        ({"optimizer": nn.Linear}, r"optimizer: expected one of .* got <class 'torch\.nn\.modules\.linear\.Linear'>"),
        ({"optimizer": torch.optim.LBFGS}, r"optimizer: .*taking lr and weight_decay"),
        ({"optimizer_options": {"rho": 0.9}}, "optimizer_options: SGD got an unexpected keyword argument 'rho'"),
        ({"optimizer_options": {"lr": 0.1}}, r"optimizer_options: \['lr'\] are the task's own fields"),
    ],
)
def test_a_bad_optimizer_is_one_value_error_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        Task(name="bad", make_model=mlp, sample_input=lambda: torch.zeros(1, 20), load_data=None, **fields)


@pytest.mark.parametrize("name", ["adadelta", "Adadelta", "RMSprop", "SGD"])
def test_a_task_names_any_torch_optimizer_in_any_case(name):
    task = blobs_task("named-optimizer", optimizer=name, lr=0.5)
    made = make_optimizer(task, [{"params": [nn.Parameter(torch.zeros(2))]}])
    expected = {"adadelta": torch.optim.Adadelta, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}
    assert type(made) is expected[name.lower()] and made.param_groups[0]["lr"] == 0.5
