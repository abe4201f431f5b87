"""The from-scratch Fashion-MNIST tasks: the small ResNet (the default task), the same network
without shortcuts, FreezeOut's DenseNet-BC, and the ResNet on 10 one-vs-rest binary tasks sharing
its last layer, one learning-rate group per task (Hi-DLR's CelebA setting, §4.3, at our scale).

Examples:
    >>> from layerwise.tasks import get_task
    >>> get_task("fashion-mnist").train_size
    16000
"""

from __future__ import annotations

import torch

from ..groups import Partition
from ..row_groups import by_rows
from .base import Task, TaskData
from .fashion_mnist import load_fashion_mnist
from .models import DenseNetBC, ResNetCNN, dense_layer_groups

__all__ = ["default_tasks", "fashion_data", "one_vs_rest_loss", "task_accuracy"]


def fashion_data(data_dir: str | None, quick: bool) -> TaskData:
    """Standardized Fashion-MNIST; ``quick``: the first 6000 train and 2000 test images."""
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir)
    if quick:  # a fixed, class-balanced-enough slice: the first images of each split
        x_train, y_train, x_test, y_test = x_train[:6000], y_train[:6000], x_test[:2000], y_test[:2000]
    return TaskData((x_train, y_train), (x_test, y_test))


def _dense_layers(model: torch.nn.Module, sample: torch.Tensor) -> Partition:
    return dense_layer_groups(model, sample)  # the dense layers and transitions, as the FreezeOut bench


def one_vs_rest_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of each output against "is this the class", averaged over tasks and examples."""
    targets = torch.nn.functional.one_hot(labels, outputs.shape[1]).to(outputs.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets)


def task_accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each example's accuracy over the binary tasks (an output > 0 says "this class")."""
    targets = torch.nn.functional.one_hot(labels, outputs.shape[1]).bool()
    return ((outputs > 0) == targets).float().mean(1)


def _per_task(model: torch.nn.Module, sample: torch.Tensor) -> Partition:
    del sample
    return by_rows(model, "fc")  # the body, then one group per task: a row of the output layer


def _sample() -> torch.Tensor:
    return torch.zeros(2, 1, 28, 28)


def default_tasks() -> list[Task]:
    """The small ResNet (the default), the plain CNN and DenseNet-BC, all trained from scratch with SGD."""
    return [
        Task(
            name="fashion-mnist",
            description="Fashion-MNIST (60k/10k 28x28 images), small ResNet trained from scratch",
            make_model=ResNetCNN,
            sample_input=_sample,
            load_data=fashion_data,
            train_size=16000,  # lr 0.1 (Task's default): the best of x0.3, x1, x3 (BENCHMARKS.md, "The baselines' LR")
        ),
        Task(
            name="fashion-mnist-plain",
            description="Fashion-MNIST, the same network without its residual shortcuts (a plain CNN), from scratch",
            make_model=lambda: ResNetCNN(residual=False),
            sample_input=_sample,
            load_data=fashion_data,
            train_size=16000,
        ),
        Task(
            name="fashion-densenet",
            description="Fashion-MNIST, FreezeOut's DenseNet-BC (growth 12, 3 blocks x 4 bottleneck layers, "
            "16 groups, the final BatchNorm with the classifier as in the FreezeOut authors' code) from scratch",
            make_model=DenseNetBC,
            sample_input=_sample,
            load_data=fashion_data,
            epochs=3,
            train_size=6000,
            partition=_dense_layers,
        ),
        Task(
            name="fashion-mnist-tasks",
            description="Fashion-MNIST as 10 one-vs-rest binary tasks sharing the small ResNet's last layer, from "
            "scratch: binary cross-entropy per task, mean task accuracy; groups: the body and one per task (a row of "
            "the output layer, layerwise.by_rows)",
            make_model=ResNetCNN,
            sample_input=_sample,
            load_data=fashion_data,
            loss=one_vs_rest_loss,
            score=task_accuracy,
            partition=_per_task,
            train_size=16000,
        ),
    ]
