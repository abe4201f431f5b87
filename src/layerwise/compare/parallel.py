"""The value type of a data-parallel run: one rank's place in its process group and the engine.

:class:`Parallel` is what a run needs to train as one rank of ``layerwise compare --nproc N``: its
contiguous slice of every global batch (weighted so the averaged gradient is the global batch's),
the model to train through (DDP or FSDP2) and the global mean loss. :func:`check_parallel` checks
``--nproc`` / ``--fsdp`` before anything loads. The processes themselves come from
:mod:`.engines`.

What equality with one process needs: a loss that is a mean over the batch (every built-in task's),
and no batch statistics or per-example randomness in the model: BatchNorm normalises each rank's
slice (running statistics follow rank 0, as with any DDP) and dropout draws its masks per rank.

Examples:
    >>> Parallel(rank=1, world=2).split({"ids": torch.arange(4), "labels": torch.arange(4)})
    ({'ids': tensor([2, 3]), 'labels': tensor([2, 3])}, 1.0)
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import fsdp
from .._checks import positive_int
from ..distributed import wrap
from ..tasks import Task
from ..training import batch_rows, slice_batch
from .methods import METHODS

__all__ = ["ENGINES", "Parallel", "check_parallel", "engine_of", "launched_world"]

ENGINES = ("ddp", "fsdp")
"""``ddp``: :func:`layerwise.distributed.wrap`; ``fsdp``: FSDP2 through :func:`layerwise.fsdp.shard`."""


def launched_world() -> int | None:
    """The world size of a process group this process was launched into (torchrun), else None."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        try:
            return int(os.environ["WORLD_SIZE"])
        except ValueError:
            text = os.environ["WORLD_SIZE"]
            raise ValueError(f"WORLD_SIZE: expected an int (torchrun sets it), got {text!r}") from None
    return None


def engine_of(nproc: int | None, fsdp: bool) -> str | None:
    """``"fsdp"``, ``"ddp"`` or None (one process, no process group) for a configuration."""
    if fsdp:
        return "fsdp"
    return "ddp" if nproc is not None and nproc > 1 else None


def check_parallel(
    nproc: int | None, fsdp: bool, task: Task | None = None, methods: Sequence[str] = ()
) -> tuple[int | None, str | None]:
    """``(nproc, engine)`` checked before anything loads: ValueError naming ``--nproc`` / ``--fsdp``.

    Under torchrun ``nproc`` defaults to its world size and must equal it when given.
    """
    if nproc is not None:
        positive_int("--nproc", nproc)
    if not isinstance(fsdp, bool):
        raise TypeError(f"--fsdp: expected True or False, got {fsdp!r}")
    world = launched_world()
    if world is not None:
        if nproc is not None and nproc != world:
            raise ValueError(
                f"--nproc: {nproc}, but this process is one of a group of {world} (torchrun's WORLD_SIZE, or a "
                "process group already initialised); drop --nproc or make them equal"
            )
        nproc = world
    elif fsdp and nproc is None:
        raise ValueError("--fsdp: needs --nproc N (FSDP2 shards over a process group of N processes), or torchrun")
    engine = engine_of(nproc, fsdp)
    if engine is None:
        return nproc, None
    flag = "--fsdp" if engine == "fsdp" else "--nproc"
    if not dist.is_available():
        raise ValueError(f"{flag}: this torch build has no torch.distributed")
    if world is None and "fork" not in multiprocessing.get_all_start_methods():
        raise ValueError(f"{flag}: starting the processes needs the fork start method; launch with torchrun instead")
    if task is not None and task.batch_size < nproc:
        size = task.batch_size
        raise ValueError(f"{flag}: {nproc} processes share each batch of {size} examples; use at most {size}")
    for name in methods:
        method = METHODS.get(name)
        reason = method.not_parallel.get(engine)
        if reason is not None:
            raise ValueError(f"{flag}: method {name!r} cannot run data-parallel with {engine}: {reason}")
    return nproc, engine


@dataclass(frozen=True)
class Parallel:
    """One rank of a data-parallel run: its place in the default process group and the engine."""

    rank: int
    world: int
    engine: str = "ddp"

    def split(self, batch: Any) -> tuple[Any, float]:
        """This rank's contiguous slice of a global batch and the weight of its loss.

        ``batch``: a tensor, or tuples, lists and dicts of them (``(inputs, targets)``, a tokenized
        dict), every tensor sliced along its first dimension. The weight ``n_rank * world / n`` makes
        the average of the ranks' weighted mean losses the global batch's mean loss (and so the
        averaged gradient its gradient). A rank left without an example (a last batch smaller than
        the world) takes the first one with weight 0: it still joins every collective.
        """
        n = batch_rows(batch)
        start, stop = n * self.rank // self.world, n * (self.rank + 1) // self.world
        if start == stop:
            return slice_batch(batch, slice(0, 1)), 0.0
        return slice_batch(batch, slice(start, stop)), (stop - start) * self.world / n

    def shard(self, model: nn.Module) -> None:
        """FSDP2: shard ``model`` in place (before its optimizer is built); DDP: nothing."""
        if self.engine == "fsdp":
            fsdp.shard(model)

    def prepare(self, model: nn.Module) -> nn.Module:
        """The module to train through: ``distributed.wrap(model)`` for DDP, the sharded model itself for FSDP."""
        return model if self.engine == "fsdp" else wrap(model)

    def mean(self, weighted_loss: torch.Tensor) -> float:
        """The global batch's mean loss from each rank's weighted mean loss (one all-reduce)."""
        total = weighted_loss.detach().reshape(1).to(torch.float64)
        dist.all_reduce(total)
        return float(total) / self.world

    def slowest(self, seconds: float) -> float:
        """The most seconds any rank took (one all-reduce): every rank then keeps one pace and stops together."""
        most = torch.tensor([seconds], dtype=torch.float64)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        return float(most)
