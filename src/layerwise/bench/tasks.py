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

from ..groups import Partition, by_layer
from .fashion_mnist import load_fashion_mnist
from .models import ResNetCNN

__all__ = ["OPTIMIZERS", "TASKS", "Task", "TaskData", "get_task", "make_optimizer", "register_task"]

OPTIMIZERS = ("sgd", "adamw", "gd")
"""``sgd``: SGD with Nesterov momentum 0.9; ``adamw``: AdamW; ``gd``: plain gradient descent."""

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
        batch_size, lr, weight_decay: default training settings.
        optimizer: one of :data:`OPTIMIZERS`.
        metric: ``"accuracy"`` (classification, higher is better) or ``"loss"`` (lower is better).
        partition: ``partition(model, sample_input) -> Partition``; default: the layers in data-flow order.
        head: the last group is an output head (what Multirate trains fast by default).
        train_size: examples ``layerwise compare`` trains on by default (None: all).
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
    optimizer: str = "sgd"
    metric: str = "accuracy"
    partition: Callable[[nn.Module, Any], Partition] | None = None
    head: bool = True
    train_size: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown {self.optimizer!r}; choose from {list(OPTIMIZERS)}")
        if self.metric not in ("accuracy", "loss"):
            raise ValueError(f"metric: expected 'accuracy' or 'loss', got {self.metric!r}")

    def groups(self, model: nn.Module) -> Partition:
        """The task's partition of ``model`` (layers in data-flow order unless the task says otherwise)."""
        sample = self.sample_input()
        return by_layer(model, sample_input=sample) if self.partition is None else self.partition(model, sample)


def make_optimizer(task: Task, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The task's optimizer over ``param_groups`` (their ``lr`` and ``weight_decay`` win)."""
    if task.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=task.lr, weight_decay=task.weight_decay)
    momentum = 0.9 if task.optimizer == "sgd" else 0.0
    return torch.optim.SGD(param_groups, lr=task.lr, momentum=momentum, nesterov=momentum > 0)


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
        train_size=16000,
    )
)

register_task(
    Task(
        name="fashion-mnist-plain",
        description="Fashion-MNIST, the same network without its residual shortcuts (a plain CNN), from scratch",
        make_model=lambda: ResNetCNN(residual=False),
        sample_input=lambda: torch.zeros(2, 1, 28, 28),
        load_data=_fashion_data,
        train_size=16000,
    )
)

from . import hidlr_tasks, pretrained_tasks  # noqa: E402, F401  (register more tasks; import no heavy library)
