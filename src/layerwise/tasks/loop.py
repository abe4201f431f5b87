"""The one seeded training loop and ``evaluate``, shared by ``layerwise compare`` and the benchmarks.

:func:`seeded_loop` walks the batches of :func:`~layerwise.training.seeded_indices` (reshuffled
every epoch by a generator seeded with the run's seed), times only the training step it is given,
and calls the hooks around it: ``before`` (untimed bookkeeping, e.g. sampling the LRs) and
``after`` (the loss, evaluations, progress; it may stop the run). :func:`train_step` is the
standard step: forward, loss, ``zero_grad``, backward, ``optimizer.step`` (with a loss closure for
the optimizers that probe losses), ``scheduler.step``.

Examples:
    >>> import torch
    >>> x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    >>> model = torch.nn.Linear(3, 2)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> step = lambda batch: train_step(model, optimizer, torch.nn.functional.cross_entropy, batch.x, batch.y)
    >>> seconds = seeded_loop((x, y), 4, step, seed=0, steps=5)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..training import seeded_indices, slice_batch
from .base import Task, logits_of

__all__ = ["Batch", "evaluate", "seeded_loop", "train_step"]

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
"""``loss(outputs, targets)``: a mean over the batch."""


@dataclass(frozen=True)
class Batch:
    """One step's batch: its step and epoch, the example indices, inputs and targets."""

    step: int
    epoch: int
    index: torch.Tensor
    x: Any
    y: torch.Tensor


def seeded_loop(
    train: tuple[Any, torch.Tensor],
    batch_size: int,
    step: Callable[[Batch], torch.Tensor],
    *,
    seed: int,
    steps: int,
    before: Callable[[Batch], None] | None = None,
    after: Callable[[Batch, torch.Tensor, float], bool | None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Run ``step`` on ``steps`` seeded batches of ``train``; return the seconds the steps took.

    ``before(batch)`` runs untimed before each step; ``after(batch, loss, seconds)`` after it, with
    the step's loss and seconds, and ends the run by returning True. ``clock``: seconds (a fake
    clock in tests).
    """
    x, y = train
    spent = 0.0
    for at, epoch, index in seeded_indices(len(y), batch_size, seed=seed, steps=steps):
        batch = Batch(at, epoch, index, x[index], y[index])
        if before is not None:
            before(batch)
        start = clock()
        loss = step(batch)
        seconds = clock() - start
        spent += seconds
        if after is not None and after(batch, loss, seconds):
            break
    return spent


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    x: Any,
    y: torch.Tensor,
    *,
    scheduler: Any = None,
    weight: float = 1.0,
    closure: bool = False,
) -> torch.Tensor:
    """One training step on a batch; returns its loss (before the step).

    ``weight`` scales the loss that is differentiated and probed (a data-parallel rank's share of
    the global batch); the loss returned is the batch's own. ``closure``: ``optimizer.step`` gets
    ``probe(fraction=1.0)``, the loss on the batch's first ``fraction`` of examples (Hi-DLR's probes).
    """
    loss = loss_fn(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    (loss if weight == 1.0 else loss * weight).backward()
    if closure:

        def probe(fraction: float = 1.0) -> torch.Tensor:
            n = math.ceil(len(y) * fraction)
            xs, ys = (x, y) if n == len(y) else (slice_batch(x, slice(0, n)), y[:n])
            probed = loss_fn(model(xs), ys)
            return probed if weight == 1.0 else probed * weight

        optimizer.step(probe)
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: tuple[torch.Tensor, torch.Tensor],
    task: Task,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Mean loss (and accuracy, for classification tasks) of ``model`` on ``split``.

    The accuracy is the task's ``score`` of the model's outputs, or where the argmax of their logits
    (:func:`~layerwise.tasks.base.logits_of`) is the label. The model is in eval mode meanwhile and
    goes back to its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    x, y = split
    loss_sum, correct = 0.0, 0.0
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(task.loss(out, target)) * len(target)
        if task.metric == "accuracy":
            hits = (logits_of(out).argmax(1) == target) if task.score is None else task.score(out, target)
            correct += float(hits.sum())
    model.train(was_training)
    result = {"loss": loss_sum / len(x)}
    if task.metric == "accuracy":
        result["accuracy"] = correct / len(x)
    return result
