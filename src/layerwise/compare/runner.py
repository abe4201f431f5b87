"""One training run of a task with one method: the seeded data order every method shares.

The loop is the standard one (``loss.backward(); optimizer.step(); scheduler.step()``), with a
loss closure for the methods that probe losses. Only the training steps are timed; the test
evaluations in between are not. A run trains the task's epochs, or exactly ``steps`` steps (an
equal-cost plan): past the first epoch the same seeded generator reshuffles every epoch, so every
method sees the same batches in the same order for as long as it trains.

Examples:
    >>> from layerwise.compare.runner import run_one
    >>> record = run_one("ellipse", "hidlr", seed=0)  # doctest: +SKIP
    >>> record["test_metric"], record["wall_clock_s"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._checks import positive_int
from ..bench.train import evaluate
from ..hidlr import HiDLR
from ..param_groups import group_names
from ..prefix_cache import FrozenPrefixCache
from ..secant import SecantLR
from ..tasks import Task, TaskData, resolve_task
from ..telemetry import LayerMonitor
from ..training import seeded_indices, slice_batch, steps_per_epoch
from .methods import METHODS, Build, Setup, build_setup, resolve_settings

if TYPE_CHECKING:
    from .parallel import Parallel

__all__ = [
    "attach_cache",
    "eval_steps",
    "evaluate_setup",
    "group_lrs",
    "new_run",
    "param_norms",
    "run_one",
    "train_step",
]

LR_SAMPLES = 200
"""At most this many sampled steps of every group's LR are kept per run."""


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Each named group's current LR (param-group dicts sharing a name report the first one's)."""
    lrs: dict[str, float] = {}
    for name, group in zip(group_names(optimizer.param_groups), optimizer.param_groups):
        lrs.setdefault(name, float(group["lr"]))
    return lrs


def param_norms(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Each named group's parameter L2 norm (sharded parameters gathered: every rank must call it)."""
    squares: dict[str, float] = {}
    for name, group in zip(group_names(optimizer.param_groups), optimizer.param_groups):
        for p in group["params"]:
            whole = p.full_tensor() if hasattr(p, "full_tensor") else p
            squares[name] = squares.get(name, 0.0) + float(whole.detach().double().square().sum())
    return {name: math.sqrt(total) for name, total in squares.items()}


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def new_run(
    task: Task,
    method: str,
    settings: Mapping[str, Any],
    total_steps: int,
    policy: str,
    seed: int,
    parallel: Parallel | None = None,
):
    """A fresh seeded model of ``task`` and ``method``'s setup for a run of ``total_steps`` steps.

    With FSDP (``parallel.engine == "fsdp"``) the model is sharded before the setup is built; the
    task's partition, found on the whole model, gives the sharded parameters (``Group.params``
    reads them from their modules).
    """
    torch.manual_seed(seed)
    model = task.make_model()
    partition = task.partition_of(model)
    if parallel is not None and parallel.engine == "fsdp":
        parallel.shard(model)
    build = Build(task, model, partition, total_steps, policy)
    return model, build_setup(build, method, settings)


def attach_cache(model: nn.Module, setup: Setup, examples: int) -> FrozenPrefixCache | None:
    """The :class:`FrozenPrefixCache` a ``+cache`` method asks for (``setup.cache``), on ``model``; or None.

    The built-in tasks have no random augmentation, so every example index gives the same input.
    """
    if setup.cache is None:
        return None
    return FrozenPrefixCache(model, setup.freezer, examples, same_inputs=True, shallower="allow", **setup.cache)


def train_step(
    model: nn.Module, setup: Setup, task: Task, xb: Any, yb: torch.Tensor, weight: float = 1.0
) -> torch.Tensor:
    """One training step of ``setup`` on a batch; returns the loss (before the step).

    ``weight`` scales the loss that is differentiated and probed (a data-parallel rank's share
    of the global batch, :meth:`~layerwise.compare.parallel.Parallel.split`); the loss returned
    is the batch's own.
    """
    loss = task.loss(model(xb), yb)
    setup.optimizer.zero_grad(set_to_none=True)
    (loss if weight == 1.0 else loss * weight).backward()
    if setup.wants_closure:

        def probe(fraction: float = 1.0) -> torch.Tensor:  # Hi-DLR's probe_fraction: the first examples
            n = math.ceil(len(yb) * fraction)
            x, y = (xb, yb) if n == len(yb) else (slice_batch(xb, slice(0, n)), yb[:n])
            loss = task.loss(model(x), y)
            return loss if weight == 1.0 else loss * weight

        setup.optimizer.step(probe)
    else:
        setup.optimizer.step()
    if setup.scheduler is not None:
        setup.scheduler.step()
    return loss


def evaluate_setup(model: nn.Module, setup: Setup, split: tuple[Any, torch.Tensor], task: Task) -> dict[str, float]:
    """Evaluate ``model`` on ``split`` at the weights ``setup`` evaluates (``eval_mode``), then back to training."""
    if setup.eval_mode is not None:
        setup.eval_mode()
    try:
        return evaluate(model, split, task)
    finally:
        if setup.train_mode is not None:
            setup.train_mode()


def eval_steps(total: int, points: int) -> set[int]:
    """``points`` evaluation steps spread evenly over ``total`` steps, the last at the end.

    Examples:
        >>> sorted(eval_steps(10, 4))
        [2, 5, 8, 10]
    """
    return {max(1, round(total * i / points)) for i in range(1, points + 1)}


def run_one(
    task: str | Task,
    method: str,
    settings: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    epochs: int | None = None,
    steps: int | None = None,
    train_size: int | None = None,
    policy: str = "cosine",
    quick: bool = False,
    data: TaskData | None = None,
    eval_points: int = 10,
    telemetry_every: int | None = None,
    tensorboard: str | Path | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    parallel: Parallel | None = None,
) -> dict[str, Any]:
    """Train ``task`` with ``method`` once and return a JSON-ready record of the run.

    Args:
        settings: overrides of the method's default settings.
        epochs: default: the task's (its quick epochs with ``quick``).
        steps: train exactly this many steps instead (an equal-cost plan); the data is reshuffled
            every epoch as usual, with the same seeded order as a run of ``epochs``.
        train_size: keep the first examples of the train split (default: all).
        policy: the global LR policy every scheduled method shares.
        eval_points: test evaluations, evenly spaced over the run (the last one at its end).
        telemetry_every: attach a :class:`LayerMonitor` recording every this many steps
            (its records go to ``record["telemetry"]``).
        tensorboard: also log the telemetry there (a ``SummaryWriter`` log directory).
        on_step: ``on_step(step, total, loss)`` after every step (progress bars).
        parallel: this process's rank of a data-parallel run (:mod:`.parallel`), which every rank
            calls alike: each trains on its slice of every global batch and evaluates; the
            losses recorded are the global batch's. None: this process trains alone.
    """
    task = resolve_task(task)
    settings = resolve_settings(method, settings)
    epochs = epochs or (task.quick_epochs if quick else task.epochs)
    positive_int("epochs", epochs)
    if steps is not None:
        positive_int("steps", steps)
    data = data or task.load_data(None, quick)
    x_train, y_train = data.train
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    per_epoch = steps_per_epoch(len(y_train), task.batch_size)
    total = epochs * per_epoch if steps is None else steps
    model, setup = new_run(task, method, settings, total, policy, seed, parallel)
    if setup.cache is not None and parallel is not None:
        raise ValueError(f"{method}: {METHODS[method].not_parallel.get(parallel.engine, 'runs in one process')}")
    cache = attach_cache(model, setup, len(y_train))
    forward = model if parallel is None else parallel.prepare(model)
    optimizer = setup.optimizer
    names = list(group_lrs(optimizer))
    writer = None
    if tensorboard is not None:
        if telemetry_every is None:
            raise ValueError("tensorboard: needs telemetry_every (what to log, how often)")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(tensorboard))
    monitor = None if telemetry_every is None else LayerMonitor(optimizer, every=telemetry_every, writer=writer)
    evaluate_at = eval_steps(total, eval_points)
    lr_every = max(1, total // LR_SAMPLES)

    losses: list[float | None] = []
    curve: list[dict[str, float]] = []
    lr_steps: list[int] = []
    lr_trace: dict[str, list[float]] = {n: [] for n in names}
    frozen_at: dict[str, int] = {}
    seconds, diverged_at = 0.0, None
    forward.train()
    if setup.train_mode is not None:
        setup.train_mode()
    weight = 1.0
    for step, _, index in seeded_indices(len(y_train), task.batch_size, seed=seed, steps=total):
        xb, yb = x_train[index], y_train[index]
        if step % lr_every == 0:
            lr_steps.append(step)
            for name, lr in group_lrs(optimizer).items():
                lr_trace[name].append(lr)
        if parallel is not None:
            xb, yb, weight = parallel.split(xb, yb)
        start = time.perf_counter()
        with nullcontext() if cache is None else cache.batch(index):
            loss = train_step(forward, setup, task, xb, yb, weight)
        seconds += time.perf_counter() - start
        value = loss.item() if parallel is None else parallel.mean(loss * weight)
        losses.append(value if math.isfinite(value) else None)
        if setup.freezer is not None:
            for name in set(setup.freezer.frozen) - set(frozen_at):
                frozen_at[name] = step + 1
        if on_step is not None:
            on_step(step + 1, total, value)
        if not math.isfinite(value):
            diverged_at = step + 1
            break
        if step + 1 in evaluate_at:
            metrics = evaluate_setup(model, setup, data.test, task)
            curve.append({"step": step + 1, "seconds": seconds, **{f"test_{k}": v for k, v in metrics.items()}})
    final = curve[-1] if curve and diverged_at is None else {}
    tail = [v if v is not None else math.nan for v in losses[-max(1, per_epoch // 10) :]]
    record: dict[str, Any] = {
        "task": task.name,
        "method": method,
        "settings": dict(settings),
        "seed": seed,
        "epochs": round(total / per_epoch, 4),
        "steps": total,
        "train_size": len(x_train),
        "test_examples": len(data.test[1]),
        "policy": policy,
        "metric": task.metric,
        "groups": names,
        "wall_clock_s": seconds,
        "test_metric": _finite_or_none(final.get(f"test_{task.metric}")),
        "test_loss": _finite_or_none(final.get("test_loss")),
        "final_train_loss": _finite_or_none(sum(tail) / len(tail)),
        "diverged_at": diverged_at,
        "curve": curve,
        "train_loss": losses,
        "lr_steps": lr_steps,
        "lr": lr_trace,
        "frozen_at": frozen_at,
        "param_norms": param_norms(optimizer),
        "nproc": 1 if parallel is None else parallel.world,
        "engine": "single" if parallel is None else parallel.engine,
    }
    if isinstance(optimizer, (HiDLR, SecantLR)):
        record["found_lr_stats"] = dict(optimizer.stats)
    if cache is not None:
        record["cache"] = {**cache.stats, "boundary": cache.boundary}
        cache.remove()
    if monitor is not None:
        monitor.remove()
        if writer is not None:
            writer.close()
        record["telemetry"] = monitor.to_dict()
    return record
