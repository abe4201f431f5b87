"""The Hi-DLR paper's problems as tasks: NAM synthetic regression and the two 2-D toy functions.

* ``nam-synthetic``: a neural additive model (one MLP per feature) on App. B.3's data; groups are
  the bias and the ten sub-networks; plain gradient descent, MSE.
* ``ellipse`` and ``beale-rosenbrock``: the 2-D functions of App. A.1 as a model with two
  parameters ``x`` and ``y`` (one group each); every "batch" is the same deterministic function,
  so a step is one gradient-descent iteration and the test metric is the function's value.

Examples:
    >>> from layerwise.tasks import get_task
    >>> task = get_task("ellipse")
    >>> float(task.make_model()(None).detach())
    2600.0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..groups import Partition, by_patterns
from .base import Task, TaskData
from .hidlr_problems import NAM, TOYS, nam_synthetic_data

__all__ = ["ToyModel", "default_tasks"]


class ToyModel(nn.Module):
    """The parameters ``x`` and ``y`` of a 2-D test function; ``forward`` returns its value."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.toy = TOYS[name]
        self.x, self.y = (nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in self.toy.start)

    def forward(self, _inputs: Any) -> Tensor:
        return self.toy.loss(self.x, self.y)


def _value(output: Tensor, _target: Tensor) -> Tensor:
    return output


def _toy_data(data_dir: str | None, quick: bool) -> TaskData:
    """100 placeholder examples (one step each at batch size 1): the function needs no data."""
    del data_dir, quick
    placeholder = (torch.zeros(100, 1), torch.zeros(100))
    return TaskData(placeholder, (torch.zeros(1, 1), torch.zeros(1)))


def _xy(model: nn.Module, _sample: Any) -> Partition:
    return by_patterns(model, [(r"^x$", "x"), (r"^y$", "y")])


def _nam_data(data_dir: str | None, quick: bool) -> TaskData:
    del data_dir
    train, test = nam_synthetic_data(1000 if quick else 3000, seed=0), nam_synthetic_data(1000, seed=100)
    return TaskData(train, test)


def _nam_groups(model: nn.Module, _sample: Any) -> Partition:
    return by_patterns(model, [(r"^beta$", "beta"), *((rf"^features\.{k}\.", f"f{k + 1}") for k in range(10))])


def _mse(output: Tensor, target: Tensor) -> Tensor:
    return nn.functional.mse_loss(output, target)


def default_tasks() -> list[Task]:
    """The Hi-DLR paper's problems: NAM synthetic regression and the two 2-D toy functions."""
    nam = Task(
        name="nam-synthetic",
        description="NAM synthetic regression (App. B.3: 3000 points, 10 features, 6 with an effect), "
        "one group per feature network, gradient descent",
        make_model=NAM,
        sample_input=lambda: torch.zeros(2, 10),
        load_data=_nam_data,
        loss=_mse,
        epochs=20,
        quick_epochs=5,
        batch_size=256,
        lr=1e-3,
        weight_decay=0.0,
        optimizer="gd",
        metric="loss",
        partition=_nam_groups,
        head=False,
    )
    toys = [
        Task(
            name=name,
            description=f"the 2-D {name} function of the Hi-DLR paper (App. A.1), groups x and y, gradient descent",
            make_model=lambda name=name: ToyModel(name),
            sample_input=lambda: None,
            load_data=_toy_data,
            loss=_value,
            epochs=1,
            quick_epochs=1,
            batch_size=1,
            lr=1e-3,
            weight_decay=0.0,
            optimizer="gd",
            metric="loss",
            partition=_xy,
            head=False,
        )
        for name in ("ellipse", "beale-rosenbrock")
    ]
    return [nam, *toys]
