"""What a task is (a model factory plus its data) and the registry every command reads tasks from.

Register your own task and every benchmark and command can run it:

Examples:
    >>> from layerwise.tasks import Task, register_task
    >>> register_task(Task(name="my-task", make_model=..., sample_input=..., load_data=...))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import nn

from .._checks import one_of
from .._registry import Registry
from ..groups import Partition, by_layer

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_PRESETS",
    "REGIMES",
    "TASKS",
    "OptimizerPreset",
    "Task",
    "TaskData",
    "check_labels",
    "get_task",
    "make_optimizer",
    "register_task",
]

Split = tuple[torch.Tensor, torch.Tensor]

Regime = Literal["scratch", "fine-tuning"]
"""How a task's model starts: from a random initialisation, or from pretrained weights."""
REGIMES = get_args(Regime)
Metric = Literal["accuracy", "loss"]
"""``accuracy`` (classification, higher is better) or ``loss`` (lower is better)."""
METRICS = get_args(Metric)


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
        score: with ``"accuracy"``: ``score(outputs, targets)`` gives each example's accuracy in [0, 1]
            (default: 1 where the argmax is the label); e.g. the mean over binary tasks.
        partition: ``partition(model, sample_input) -> Partition``; default: the layers in data-flow order.
        head: the last group is an output head (what Multirate trains fast by default).
        train_size: examples ``layerwise compare`` trains on by default (None: all).
        quick_train_size: examples it trains on with ``--quick`` (None: all of the quick slice).
        regime: ``"scratch"`` (trained from a random start) or ``"fine-tuning"`` (pretrained weights);
            a comparison's default methods are those that make sense in the regime.
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
    metric: Metric = "accuracy"
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    partition: Callable[[nn.Module, Any], Partition] | None = None
    head: bool = True
    train_size: int | None = None
    quick_train_size: int | None = None
    regime: Regime = "scratch"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZER_PRESETS:
            raise ValueError(f"optimizer: unknown {self.optimizer!r}; choose from {list(OPTIMIZER_PRESETS)}")
        one_of("metric", self.metric, METRICS)
        one_of("regime", self.regime, REGIMES)

    def partition_of(self, model: nn.Module) -> Partition:
        """The task's partition of ``model`` (layers in data-flow order unless the task says otherwise)."""
        sample = self.sample_input()
        return by_layer(model, sample_input=sample) if self.partition is None else self.partition(model, sample)

    def groups(self, model: nn.Module) -> Partition:
        """Deprecated name of :meth:`partition_of` (``partition`` is the field that builds it)."""
        warnings.warn("Task.groups(model) is now Task.partition_of(model)", DeprecationWarning, stacklevel=2)
        return self.partition_of(model)


_IGNORED_LABEL = -100
"""``cross_entropy``'s default ``ignore_index``: a label it skips."""


def check_labels(task: Task, outputs: Any, labels: torch.Tensor) -> None:
    """Refuse class labels the model's ``outputs`` cannot score under the task's cross-entropy.

    ``outputs`` is the model's output on a batch (its dim 1 holds the classes); ``labels`` any
    integer class labels of the task (a whole split). Tasks with another loss, or with soft or
    float targets, are not checked.

    Raises:
        ValueError: naming the task, the labels' range and the model's output width.
    """
    if task.loss is not nn.functional.cross_entropy or not isinstance(outputs, torch.Tensor) or outputs.dim() < 2:
        return
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        return
    labels = labels[labels != _IGNORED_LABEL]
    if labels.numel() == 0:
        return
    width, low, high = outputs.shape[1], int(labels.min()), int(labels.max())
    if low < 0 or high >= width:
        raise ValueError(
            f"task {task.name!r}: labels range over [{low}, {high}] but the model outputs {width} classes; "
            f"labels must lie in [0, {width - 1}] (or the model's last layer needs {high + 1} outputs)"
        )


@dataclass(frozen=True)
class OptimizerPreset:
    """A task's optimizer: a class and the options it is built with (besides ``lr`` and ``weight_decay``)."""

    name: str
    cls: type[torch.optim.Optimizer]
    options: Mapping[str, Any]
    description: str = ""

    def build(self, param_groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """The optimizer over ``param_groups`` (their own ``lr`` and ``weight_decay`` win)."""
        return self.cls(param_groups, lr=lr, weight_decay=weight_decay, **self.options)


OPTIMIZER_PRESETS: Registry[OptimizerPreset] = Registry("optimizer")
"""The optimizers a :class:`Task` can name."""
for _preset in (
    OptimizerPreset("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, "SGD with Nesterov momentum 0.9"),
    OptimizerPreset("adamw", torch.optim.AdamW, {}, "AdamW"),
    OptimizerPreset("gd", torch.optim.SGD, {"momentum": 0.0}, "plain gradient descent"),
):
    OPTIMIZER_PRESETS.register(_preset.name, _preset, description=_preset.description)
OPTIMIZERS = tuple(OPTIMIZER_PRESETS)
"""The preset names: ``sgd`` (Nesterov momentum 0.9), ``adamw``, ``gd`` (plain gradient descent)."""


def make_optimizer(task: Task, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The task's optimizer over ``param_groups`` (their ``lr`` and ``weight_decay`` win)."""
    return OPTIMIZER_PRESETS.get(task.optimizer).build(param_groups, task.lr, task.weight_decay)


TASKS: Registry[Task] = Registry("task")
"""Every registered task by name (the built-in ones are registered when ``layerwise.tasks`` is imported)."""


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (a task of the same name is replaced, with a warning)."""
    if not isinstance(task, Task):
        raise TypeError(f"task: expected a Task, got {type(task).__name__}")
    return TASKS.register(task.name, task, description=task.description)


def get_task(name: str) -> Task:
    """The registered task called ``name`` (ValueError naming the known ones otherwise)."""
    return TASKS.get(name)
