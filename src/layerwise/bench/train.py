"""A seeded training run of a task under a layer-wise schedule, with timing (``layerwise train``).

It stands on the parts ``layerwise compare`` uses: the task is resolved as compare resolves it (a
registered name, ``PATH.py:FACTORY`` or a :class:`~layerwise.tasks.Task`), its groups are the task's
partition, its optimizer the task's over a method's param groups (:class:`~layerwise.compare.methods.Build`),
and every step is the runner's (:func:`~layerwise.compare.runner.train_step`: the task's loss hook,
precision, gradient clipping and accumulation) on the seeded batches of :mod:`layerwise.tasks.loop`
(tensors or a ``Dataset`` through the task's collate function, transform and workers).

Examples:
    >>> import torch
    >>> from layerwise.tasks import Task, TaskData
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> task = Task(
    ...     name="tiny",
    ...     make_model=lambda: torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
    ...     sample_input=lambda: torch.zeros(1, 4),
    ...     load_data=lambda data_dir, quick: TaskData((x, y), (x, y)),
    ...     batch_size=16,
    ...     epochs=1,
    ... )
    >>> result = train(task, recipe="discriminative", policy="constant", progress=False)
    >>> result["groups"], result["steps"]
    (['0', '2'], 4)
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .. import recipes
from .._checks import positive_int
from ..compare.methods import Build, Setup
from ..compare.runner import group_lrs, train_step
from ..freezeout import FreezeOut
from ..scheduler import LayerwiseLR
from ..tasks import Task, TaskData, resolve_task
from ..tasks.base import split_examples, split_size
from ..tasks.loop import Batch, evaluate, loader_options, seeded_loop
from ..training import progress_bar, steps_per_epoch
from .timing import peak_memory_mb, summarize_ms

__all__ = ["optimizer_state_mb", "train"]


def train(
    task: str | Task = "fashion-mnist",
    *,
    recipe: str = "llr",
    policy: str = "onecycle",
    recipe_options: dict[str, Any] | None = None,
    epochs: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    quick: bool = False,
    data_dir: str | None = None,
    data: TaskData | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``task`` once with a layer-wise schedule; return a JSON-ready result.

    The groups are the task's partition (its layers in data-flow order unless the task says
    otherwise), the optimizer is the task's, weight decay off for biases and norms; the schedule
    steps every batch. ``recipe="freezeout"`` runs :class:`FreezeOut` (real freezing);
    ``train_size`` keeps the first examples. ``lr_by_group`` holds each group's LR before every
    step, in the partition's order.
    """
    task = resolve_task(task)
    recipes.RECIPES.get(recipe)  # unknown names refused before anything loads
    recipes.POLICIES.get(policy)
    if recipe == "freezeout" and policy not in ("constant", "cosine"):
        raise ValueError("policy: FreezeOut brings its own per-layer cosine; use 'constant'")
    epochs = positive_int("epochs", (task.quick_epochs if quick else task.epochs) if epochs is None else epochs)
    data = data or task.load_data(data_dir, quick)
    examples = split_examples(data.train, train_size)
    per_epoch = steps_per_epoch(split_size(examples), task.batch_size)
    total = epochs * per_epoch
    torch.manual_seed(seed)
    net = task.make_model()
    partition = task.partition_of(net)
    optimizer = Build(task, net, partition, total, policy).optimizer()
    setup = Setup(optimizer, _scheduler(net, optimizer, len(partition), total, recipe, policy, recipe_options or {}))
    step_times: list[float] = []
    losses: list[float] = []
    history: list[dict[str, Any]] = []
    lr_trace: list[dict[str, float]] = []

    def sample_lrs(batch: Batch) -> None:  # bookkeeping, not timed
        lr_trace.append(group_lrs(optimizer))

    def step(batch: Batch) -> torch.Tensor:
        return train_step(net, setup, task, batch.data)

    def after(batch: Batch, loss: torch.Tensor, seconds: float) -> None:
        step_times.append(seconds)
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if batch.step % 25 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=batch.epoch + 1, refresh=False)
        if (batch.step + 1) % per_epoch == 0 or batch.step + 1 == total:
            metrics = evaluate(net, data.test, task)
            history.append(
                {
                    "epoch": batch.epoch + 1,
                    "seconds": time.perf_counter() - start,
                    "test_loss": metrics["loss"],
                    "test_accuracy": metrics.get("accuracy"),
                }
            )

    start = time.perf_counter()
    net.train()
    with progress_bar(total, f"{task.name} {recipe}", progress) as bar:
        hooks = {"before": sample_lrs, "after": after, **loader_options(task)}
        seeded_loop(examples, task.batch_size, step, seed=seed, steps=total, **hooks)
    wall = time.perf_counter() - start
    tail = losses[-max(1, per_epoch // 10) :]  # mean over the last tenth of an epoch
    return {
        "task": task.name,
        "recipe": recipe,
        "policy": policy,
        "seed": seed,
        "epochs": epochs,
        "steps": total,
        "train_size": split_size(examples),
        "model": type(net).__name__,
        "groups": list(partition.names),
        "frozen_at": setup.scheduler.frozen_at if isinstance(setup.scheduler, FreezeOut) else None,
        "wall_clock_s": round(wall, 3),
        "train_seconds": round(sum(step_times), 3),
        "step_time": summarize_ms(step_times[min(10, len(step_times) - 1) :]),
        "final_train_loss": sum(tail) / len(tail),
        "metric": task.metric,
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "history": history,
        "lr_by_group": [[row[name] for row in lr_trace] for name in partition.names],
        "memory": {**peak_memory_mb(), "optimizer_state_mb_at_end": round(optimizer_state_mb(optimizer), 4)},
    }


def _scheduler(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    groups: int,
    total: int,
    recipe: str,
    policy: str,
    options: dict[str, Any],
) -> LayerwiseLR | FreezeOut:
    """``recipe``'s schedule over ``total`` steps: :class:`FreezeOut` (real freezing) or a :class:`LayerwiseLR`."""
    if recipe == "freezeout":
        return FreezeOut(net, optimizer, total, **options)
    schedule = recipes.build(recipe, groups, policy=recipes.make_policy(policy), **options)
    return LayerwiseLR(optimizer, total, schedule=schedule)


def optimizer_state_mb(optimizer: torch.optim.Optimizer) -> float:
    """Size of the optimizer's per-parameter state tensors (momentum buffers, moments)."""
    return (
        sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
        / 2**20
    )
