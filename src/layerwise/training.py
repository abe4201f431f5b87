"""The seeded training-data order and the progress bar every built-in loop shares.

``layerwise compare``, ``layerwise train`` and the benchmarks draw batches the same way: a
generator seeded with the run's seed reshuffles the training examples at every epoch, and a run
of any length walks through those epochs in order, so two runs with the same seed see the same
batches for as long as both train.

Examples:
    >>> import torch
    >>> x, y = torch.arange(10.0), torch.arange(10)
    >>> [(step, epoch, len(yb)) for step, epoch, _, yb in seeded_batches(x, y, 4, seed=0, steps=4)]
    [(0, 0, 4), (1, 0, 4), (2, 0, 2), (3, 1, 4)]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from typing import Any

import torch

from ._checks import positive_int

__all__ = ["batch_rows", "progress_bar", "seeded_batches", "seeded_indices", "slice_batch", "steps_per_epoch"]


def slice_batch(x: Any, part: slice | int | torch.Tensor) -> Any:
    """``part`` of every tensor in a batch's inputs (a tensor, or tuples, lists and dicts of them):
    a slice, an example's position or an index tensor along the first dimension.

    Examples:
        >>> slice_batch({"ids": torch.arange(4), "mask": torch.ones(4)}, slice(0, 2))["ids"]
        tensor([0, 1])
    """
    if isinstance(x, torch.Tensor):
        return x[part]
    if isinstance(x, (list, tuple)):
        return type(x)(slice_batch(item, part) for item in x)
    if isinstance(x, Mapping):
        return {key: slice_batch(value, part) for key, value in x.items()}
    raise TypeError(f"batch: cannot slice inputs of type {type(x).__name__} (tensors, tuples, lists or dicts)")


def batch_rows(batch: Any) -> int:
    """The examples in a batch: the length of its first tensor (a tensor, or tuples, lists and dicts of them).

    Examples:
        >>> batch_rows({"ids": torch.zeros(3, 7), "labels": torch.zeros(3)})
        3
    """
    if isinstance(batch, torch.Tensor):
        return len(batch)
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        if isinstance(item, (torch.Tensor, Mapping, list, tuple)):
            return batch_rows(item)
    raise TypeError(f"batch: no tensor in a batch of type {type(batch).__name__} to count its examples")


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Batches in one pass over ``examples`` (the last one may be smaller)."""
    return -(-examples // batch_size)


def seeded_indices(examples: int, batch_size: int, *, seed: int, steps: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(step, epoch, example indices)`` for ``steps`` steps, reshuffled every epoch by a generator seeded ``seed``.

    Examples:
        >>> [index.tolist() for _, _, index in seeded_indices(5, 2, seed=0, steps=3)]
        [[4, 0], [1, 3], [2]]
    """
    positive_int("batch_size", batch_size)
    positive_int("steps", steps)
    per_epoch = steps_per_epoch(examples, batch_size)
    order = torch.Generator().manual_seed(seed)
    step, epoch = 0, 0
    while step < steps:
        perm = torch.randperm(examples, generator=order)
        for i in range(min(per_epoch, steps - step)):
            yield step, epoch, perm[i * batch_size : (i + 1) * batch_size]
            step += 1
        epoch += 1


def seeded_batches(
    x: Any, y: torch.Tensor, batch_size: int, *, seed: int, steps: int
) -> Iterator[tuple[int, int, Any, torch.Tensor]]:
    """``(step, epoch, inputs, targets)`` for ``steps`` steps: the batches of :func:`seeded_indices`."""
    for step, epoch, index in seeded_indices(len(y), batch_size, seed=seed, steps=steps):
        yield step, epoch, x[index], y[index]


def progress_bar(total: int, desc: str, enabled: bool, *, unit: str = "step", leave: bool = False):
    """A tqdm bar (outer with ``leave``, nested otherwise), or a null context when disabled or tqdm is missing."""
    if not enabled:
        return nullcontext(None)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return nullcontext(None)
    position = 0 if leave else 1
    return tqdm(total=total, desc=desc, unit=unit, position=position, leave=leave, dynamic_ncols=True, mininterval=1.0)
