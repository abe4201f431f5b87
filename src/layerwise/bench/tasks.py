"""Task registry: a task is a model factory plus its data.

Register your own task and every benchmark and command can run it:

Example:
    >>> from layerwise.bench.tasks import Task, register_task
    >>> register_task(Task(name="my-task", make_model=..., sample_input=..., load_data=...))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .fashion_mnist import load_fashion_mnist
from .models import ResNetCNN

__all__ = ["TASKS", "Task", "TaskData", "get_task", "register_task"]

Split = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TaskData:
    """In-memory train and test splits as (inputs, targets) tensors."""

    train: Split
    test: Split


@dataclass(frozen=True)
class Task:
    """What a benchmark needs to train something.

    Attributes:
        make_model: builds a fresh model (called after seeding).
        sample_input: a small input batch for tracing execution order.
        load_data: ``load_data(data_dir, quick) -> TaskData``.
        loss: loss function ``loss(outputs, targets)``.
        epochs: default epochs; ``quick_epochs`` for ``--quick``.
        batch_size, lr, weight_decay: default training settings (SGD with Nesterov momentum).
    """

    name: str
    make_model: Callable[[], nn.Module]
    sample_input: Callable[[], Any]
    load_data: Callable[[str | None, bool], TaskData]
    description: str = ""
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy
    epochs: int = 2
    quick_epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (replacing one of the same name)."""
    if not isinstance(task, Task):
        raise TypeError(f"task: expected a Task, got {type(task).__name__}")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task: unknown {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name]


def _fashion_data(data_dir: str | None, quick: bool) -> TaskData:
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir)
    if quick:  # a fixed, class-balanced-enough slice: the first images of each split
        x_train, y_train, x_test, y_test = (
            x_train[:6000],
            y_train[:6000],
            x_test[:2000],
            y_test[:2000],
        )
    return TaskData((x_train, y_train), (x_test, y_test))


register_task(
    Task(
        name="fashion-mnist",
        description="Fashion-MNIST (60k/10k 28x28 images), small ResNet trained from scratch",
        make_model=ResNetCNN,
        sample_input=lambda: torch.zeros(2, 1, 28, 28),
        load_data=_fashion_data,
    )
)

from . import pretrained_tasks  # noqa: E402, F401  (registers the pretrained-model tasks; imports no heavy library)
