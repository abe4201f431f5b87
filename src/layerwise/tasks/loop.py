"""The one seeded training loop and ``evaluate``, shared by ``layerwise compare`` and the benchmarks.

:func:`seeded_loop` walks the batches of :func:`~layerwise.training.seeded_indices` (reshuffled
every epoch by a generator seeded with the run's seed), times only the training step it is given,
and calls the hooks around it: ``before`` (untimed bookkeeping, e.g. sampling the LRs) and
``after`` (the loss, evaluations, progress; it may stop the run). :func:`train_step` is the
standard step: forward, loss, ``zero_grad``, backward, ``optimizer.step`` (with a loss closure for
the optimizers that probe losses), ``scheduler.step``.

A split of tensors is cut with ``x[index]``; a ``Dataset`` (or tensors with a train transform)
gives ``collate([example(i) for i in index])`` for the same index tensors (:func:`seeded_batches_of`),
through a ``DataLoader`` when it has workers, so every method of one seed sees the same batches.

Examples:
    >>> import torch
    >>> x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    >>> model = torch.nn.Linear(3, 2)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> step = lambda batch: train_step(model, optimizer, torch.nn.functional.cross_entropy, batch.x, batch.y)
    >>> seconds = seeded_loop((x, y), 4, step, seed=0, steps=5)
"""

from __future__ import annotations

import hashlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, default_collate

from ..training import batch_rows, seeded_indices, slice_batch
from .base import Data, Task, batch_examples, batch_targets, example_accuracy, is_tensor_pair, split_size

__all__ = [
    "Batch",
    "batch_step",
    "evaluate",
    "example_seed",
    "loader_options",
    "ordered_batches",
    "seeded_batches_of",
    "seeded_loop",
    "train_step",
]

LossFn = Callable[[Any, torch.Tensor], torch.Tensor]
"""``loss(outputs, targets)``: a mean over the batch."""
BatchLoss = Callable[[torch.nn.Module, Any], torch.Tensor]
"""``batch_loss(model, batch)``: the batch's mean loss."""


@dataclass(frozen=True)
class Batch:
    """One step's batch: its step and epoch, the example indices and the batch itself (``data``).

    ``data`` is ``(inputs, targets)`` for a split of tensors, else what the collate function made.
    """

    step: int
    epoch: int
    index: torch.Tensor
    data: Any

    @property
    def x(self) -> Any:
        """The inputs of an ``(inputs, targets)`` batch, else the whole batch."""
        return self.data[0] if isinstance(self.data, (tuple, list)) and len(self.data) == 2 else self.data

    @property
    def y(self) -> Any:
        """The batch's targets (:func:`~layerwise.tasks.base.batch_targets`)."""
        return batch_targets(self.data)


def example_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of example ``index``'s random draws in ``epoch`` of a run seeded ``seed`` (a 63-bit hash).

    Examples:
        >>> example_seed(0, 1, 2) == example_seed(0, 1, 2) != example_seed(1, 1, 2)
        True
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _Examples(torch.utils.data.Dataset):
    """A split's examples keyed by ``(epoch, index)``: ``(x[i], y[i])`` of tensors or ``dataset[i]``,
    through the train transform with a generator seeded by :func:`example_seed`."""

    def __init__(self, split: Data, transform: Callable[[Any, torch.Generator], Any] | None, seed: int) -> None:
        self.split, self.transform, self.seed, self.pair = split, transform, seed, is_tensor_pair(split)

    def __len__(self) -> int:
        return split_size(self.split)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, i = key
        example = (slice_batch(self.split[0], i), self.split[1][i]) if self.pair else self.split[i]
        if self.transform is None:
            return example
        return self.transform(example, torch.Generator().manual_seed(example_seed(self.seed, epoch, i)))


class _Collate:
    """The task's collate function (default: ``default_collate``), its failure one ValueError naming it."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None) -> None:
        self.collate_fn = collate_fn

    def __call__(self, examples: list[Any]) -> Any:
        try:
            return default_collate(examples) if self.collate_fn is None else self.collate_fn(examples)
        except Exception as err:
            name = "collate_fn" if self.collate_fn is not None else "collate_fn (default_collate)"
            raise ValueError(f"{name}: cannot batch the examples: {type(err).__name__}: {err}") from err


class _Keys:
    """A batch sampler: each step's ``[(epoch, i), ...]`` of :func:`~layerwise.training.seeded_indices`."""

    def __init__(self, examples: int, batch_size: int, seed: int, steps: int) -> None:
        self.args = (examples, batch_size, seed, steps)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        examples, batch_size, seed, steps = self.args
        for _, epoch, index in seeded_indices(examples, batch_size, seed=seed, steps=steps):
            yield [(epoch, i) for i in index.tolist()]


def loader_options(task: Task) -> dict[str, Any]:
    """The task's fields that decide how :func:`seeded_batches_of` cuts its training batches."""
    return {"collate_fn": task.collate_fn, "transform": task.train_transform, "num_workers": task.num_workers}


def seeded_batches_of(
    train: Data,
    batch_size: int,
    *,
    seed: int,
    steps: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    transform: Callable[[Any, torch.Generator], Any] | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[int, int, torch.Tensor, Any]]:
    """``(step, epoch, example indices, batch)`` for ``steps`` steps of :func:`~layerwise.training.seeded_indices`.

    Tensors without a transform: ``(x[index], y[index])``. Otherwise ``collate([example(epoch, i) for i
    in index])``, where an example goes through ``transform(example, generator)`` with a generator
    seeded by :func:`example_seed`; with ``num_workers`` a ``DataLoader`` collates the same batches.

    Examples:
        >>> data = [{"v": torch.tensor([float(i)])} for i in range(5)]
        >>> [b["v"].flatten().tolist() for *_, b in seeded_batches_of(data, 2, seed=0, steps=2)]
        [[4.0, 0.0], [1.0, 3.0]]
    """
    order = seeded_indices(split_size(train), batch_size, seed=seed, steps=steps)
    if transform is None and is_tensor_pair(train):
        x, y = train
        for at, epoch, index in order:
            yield at, epoch, index, (x[index] if isinstance(x, torch.Tensor) else slice_batch(x, index), y[index])
        return
    examples, collate = _Examples(train, transform, seed), _Collate(collate_fn)
    keys = _Keys(len(examples), batch_size, seed, steps)
    if num_workers == 0:
        batches: Any = (collate([examples[key] for key in chunk]) for chunk in keys)
    else:
        batches = DataLoader(examples, batch_sampler=keys, collate_fn=collate, num_workers=num_workers)
    for (at, epoch, index), batch in zip(order, batches):
        yield at, epoch, index, batch


def seeded_loop(
    train: Data,
    batch_size: int,
    step: Callable[[Batch], torch.Tensor],
    *,
    seed: int,
    steps: int,
    before: Callable[[Batch], None] | None = None,
    after: Callable[[Batch, torch.Tensor, float], bool | None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    **loader: Any,
) -> float:
    """Run ``step`` on ``steps`` seeded batches of ``train``; return the seconds the steps took.

    ``before(batch)`` runs untimed before each step; ``after(batch, loss, seconds)`` after it, with
    the step's loss and seconds, and ends the run by returning True. ``clock``: seconds (a fake
    clock in tests). ``loader``: ``collate_fn``, ``transform``, ``num_workers`` of
    :func:`seeded_batches_of` (:func:`loader_options` of a task).
    """
    spent = 0.0
    for at, epoch, index, data in seeded_batches_of(train, batch_size, seed=seed, steps=steps, **loader):
        batch = Batch(at, epoch, index, data)
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
    """:func:`batch_step` on the batch ``(x, y)`` with the loss ``loss_fn(model(x), y)``."""

    def pair_loss(net: torch.nn.Module, batch: tuple[Any, torch.Tensor]) -> torch.Tensor:
        return loss_fn(net(batch[0]), batch[1])

    return batch_step(model, optimizer, pair_loss, (x, y), scheduler=scheduler, weight=weight, closure=closure)


def batch_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_loss: BatchLoss,
    batch: Any,
    *,
    scheduler: Any = None,
    weight: float = 1.0,
    closure: bool = False,
    precision: str = "fp32",
    clip_grad_norm: float | None = None,
    accumulate: int = 1,
) -> torch.Tensor:
    """One training step on a batch; returns its loss ``batch_loss(model, batch)`` (before the step).

    ``weight`` scales the loss that is differentiated and probed (a data-parallel rank's share of
    the global batch); the loss returned is the batch's own. ``closure``: ``optimizer.step`` gets
    ``probe(fraction=1.0)``, the loss on the batch's first ``fraction`` of examples (Hi-DLR's
    probes), every tensor of the batch sliced along its first dimension. ``precision``,
    ``clip_grad_norm``, ``accumulate``: as :class:`~layerwise.tasks.base.Task`'s fields, for every
    forward (the probes' too) and before the optimizer steps.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = _accumulated(model, batch_loss, batch, weight, precision, accumulate)
    if clip_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
    if closure:
        rows = batch_rows(batch)

        def probe(fraction: float = 1.0) -> torch.Tensor:
            n = math.ceil(rows * fraction)
            with autocast(model, precision):
                probed = batch_loss(model, batch if n == rows else slice_batch(batch, slice(0, n)))
            return probed if weight == 1.0 else probed * weight

        optimizer.step(probe)
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss


def autocast(model: torch.nn.Module, precision: str) -> Any:
    """``torch.autocast`` in bfloat16 on ``model``'s device for ``"bf16"``; nothing for ``"fp32"``."""
    if precision == "fp32":
        return nullcontext()
    device = next((p.device.type for p in model.parameters()), "cpu")
    return torch.autocast(device, dtype=torch.bfloat16)


def _accumulated(
    model: torch.nn.Module, batch_loss: BatchLoss, batch: Any, weight: float, precision: str, accumulate: int
) -> torch.Tensor:
    """Backward of the batch's loss (times ``weight``), in ``accumulate`` micro-batches each weighted by
    its share of the rows; returns the batch's loss (detached when split)."""
    rows = batch_rows(batch) if accumulate > 1 else 1
    if accumulate == 1 or rows < 2:
        with autocast(model, precision):
            loss = batch_loss(model, batch)
        (loss if weight == 1.0 else loss * weight).backward()
        return loss
    bounds = [round(rows * i / accumulate) for i in range(accumulate + 1)]
    total = torch.zeros(())
    for start, stop in itertools.pairwise(bounds):
        if stop == start:
            continue
        with autocast(model, precision):
            part = batch_loss(model, slice_batch(batch, slice(start, stop)))
        share = (stop - start) / rows
        (part * (share * weight)).backward()
        total = total + part.detach().float() * share
    return total


def ordered_batches(split: Data, task: Task, batch_size: int) -> Iterator[Any]:
    """A split's batches in order: ``(x[a:b], y[a:b])`` of tensors, else the task's collate of a Dataset's examples."""
    if is_tensor_pair(split):
        x, y = split
        for start in range(0, len(y), batch_size):
            yield slice_batch(x, slice(start, start + batch_size)), y[start : start + batch_size]
        return
    collate = _Collate(task.collate_fn)
    for start in range(0, len(split), batch_size):
        yield collate([split[i] for i in range(start, min(start + batch_size, len(split)))])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: Data,
    task: Task,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Mean loss (and accuracy, for classification tasks) of ``model`` on ``split`` (tensors or a Dataset).

    Each batch's outputs and targets are the task's :meth:`~layerwise.tasks.base.Task.outputs_on`; its
    loss is the task's ``batch_loss`` when it has one, else :meth:`~layerwise.tasks.base.Task.loss_of`
    those outputs, weighted by the batch's examples (:func:`~layerwise.tasks.base.batch_examples`).
    The accuracy is the mean of :func:`~layerwise.tasks.base.example_accuracy` (the task's ``score``,
    or the argmax of the logits against the label, or a single logit's sign), which refuses shapes it
    would have to broadcast. The model is in eval mode meanwhile and goes back to its previous mode
    afterwards.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, examples = 0.0, 0.0, 0
    for batch in ordered_batches(split, task, batch_size):
        with autocast(model, task.precision):
            out, target = task.outputs_on(model, batch)
            loss = task.loss_of(out, target) if task.batch_loss is None else task.loss_on(model, batch)
        n = batch_examples(batch, task.collate_fn)
        loss_sum += float(loss) * n
        examples += n
        if task.metric == "accuracy":
            correct += float(example_accuracy(task, out, target, n).sum())
    model.train(was_training)
    result = {"loss": loss_sum / examples}
    if task.metric == "accuracy":
        result["accuracy"] = correct / examples
    return result
