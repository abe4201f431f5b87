"""``layerwise train`` on the parts compare uses: task files, the task's partition, its ``Dataset`` data
and how it steps (gradient accumulation, clipping, precision)."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

from layerwise import cli
from layerwise.bench.train import train
from layerwise.tasks import load_task_file
from test_dataset_task import Sentences, sentence_task

TASK_FILE = """
from layerwise.groups import by_patterns
from test_dataset_task import sentence_task


def two_groups(model, sample):
    return by_patterns(model, {r"^(pool|fc1)\\.": "features", r"^fc2\\.": "head"})


def make_task():
    return sentence_task("sentences-file", partition=two_groups, epochs=2)
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "sentences_task.py"
    path.write_text(textwrap.dedent(TASK_FILE))
    return f"{path}:make_task"


def test_train_runs_a_dataset_task_file_end_to_end(spec, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", "--task", spec, "--recipe", "discriminative", "--policy", "constant", "--out", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["task"] == "sentences-file" and result["groups"] == ["features", "head"]  # the task's partition
    assert result["train_size"] == 96 and result["steps"] == 2 * 6 and len(result["history"]) == 2
    assert 0.0 <= result["test_accuracy"] <= 1.0 and result["test_loss"] > 0
    assert (out / "lr.png").stat().st_size > 0
    assert "sentences-file | discriminative x constant" in capsys.readouterr().out


def test_the_lrs_returned_are_the_task_partitions_groups(spec):
    task = load_task_file(spec)
    result = train(task, recipe="discriminative", policy="constant", progress=False)
    assert result["groups"] == list(task.partition_of(task.make_model()).names) == ["features", "head"]
    features, head = result["lr_by_group"]
    assert len(features) == len(head) == result["steps"]
    assert features == pytest.approx([0.1 / 2.6] * 12) and head == pytest.approx([0.1] * 12)


def _constant(task) -> dict:
    """``task`` trained at its own LR, every group alike."""
    return train(task, recipe="constant", policy="constant", progress=False)


def _counting_task(seen: list[int], **fields):
    def batch_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if model.training:  # evaluation's batches go through it too
            seen.append(len(batch["label"]))
        return nn.functional.cross_entropy(model(batch["tokens"], batch["mask"]), batch["label"])

    return sentence_task("sentences-counted", batch_loss=batch_loss, **fields)


def test_train_accumulates_the_tasks_micro_batches():
    whole, halves = [], []
    one = _constant(_counting_task(whole))
    two = _constant(_counting_task(halves, accumulate=2))
    assert whole == [16] * 18 and halves == [8] * 36  # 96 examples, batches of 16, 3 epochs
    # the micro-batches' weighted gradients are the batch's: the same run up to rounding
    assert two["final_train_loss"] == pytest.approx(one["final_train_loss"], rel=1e-4)
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4)


def test_train_clips_the_gradients_as_the_task_says():
    free = _constant(sentence_task("sentences-free"))
    clipped = _constant(sentence_task("sentences-clipped", clip_grad_norm=1e-9))
    torch.manual_seed(0)
    model = sentence_task().make_model()
    batch = sentence_task().collate_fn([Sentences(40, seed=1)[i] for i in range(40)])
    with torch.no_grad():
        untrained = float(nn.functional.cross_entropy(model(batch["tokens"], batch["mask"]), batch["label"]))
    assert clipped["test_loss"] == pytest.approx(untrained, rel=1e-5)  # steps of norm 1e-9 * lr move nothing
    assert abs(free["test_loss"] - untrained) > 1e-3


def test_train_runs_the_tasks_forwards_in_its_precision():
    full = _constant(sentence_task("sentences-fp32"))
    half = _constant(sentence_task("sentences-bf16", precision="bf16"))
    assert half["final_train_loss"] != full["final_train_loss"]  # bfloat16 autocast rounds every forward
    assert half["final_train_loss"] == pytest.approx(full["final_train_loss"], rel=0.1)


@pytest.mark.parametrize("task", ["nope", "nope.py", "tasks.txt:make_task"])
def test_an_unknown_task_is_one_line_naming_task_and_its_forms(task, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["train", "--task", task, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"layerwise train: error: --task: unknown {task!r}")
    assert "fashion-mnist" in err and "PATH.py:FACTORY" in err
    assert not out.exists()
