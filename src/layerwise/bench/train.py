"""A seeded training run of a task under a layer-wise schedule, with timing (the loop of :mod:`layerwise.tasks.loop`).

Examples:
    >>> from layerwise.bench.train import train
    >>> result = train("fashion-mnist", recipe="llr", policy="onecycle", quick=True)  # doctest: +SKIP
    >>> result["test_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .. import recipes
from ..freezeout import FreezeOut
from ..groups import by_block, by_layer
from ..scheduler import LayerwiseLR
from ..tasks import Task, TaskData, get_task, make_optimizer
from ..tasks.loop import Batch, evaluate, seeded_loop, train_step
from ..tasks.models import build_model
from ..training import progress_bar
from .timing import peak_memory_mb, summarize_ms

__all__ = ["optimizer_state_mb", "train"]


def train(
    task: str | Task = "fashion-mnist",
    *,
    recipe: str = "llr",
    policy: str = "onecycle",
    recipe_options: dict[str, Any] | None = None,
    model: str | None = None,
    depth: int | None = None,
    epochs: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    quick: bool = False,
    data_dir: str | None = None,
    data: TaskData | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``task`` once with a layer-wise schedule; return a JSON-ready result.

    Groups are the model's layers in traced execution order (or its modules at ``depth``);
    the optimizer is the task's (SGD with Nesterov momentum by default), weight decay off for
    biases and norms;
    the schedule steps every batch. ``recipe="freezeout"`` runs :class:`FreezeOut` (real
    freezing); ``model`` swaps in a built-in model; ``train_size`` keeps the first images.
    """
    task = get_task(task) if isinstance(task, str) else task
    epochs = epochs or (task.quick_epochs if quick else task.epochs)
    if epochs < 1:
        raise ValueError(f"epochs: must be >= 1, got {epochs}")
    data = data or task.load_data(data_dir, quick)
    torch.manual_seed(seed)
    if model is None:
        net, sample = task.make_model(), task.sample_input()
    else:
        net, sample = build_model(model)
    partition = by_layer(net, sample_input=sample) if depth is None else by_block(net, depth, sample_input=sample)
    optimizer = make_optimizer(
        task, partition.param_groups(lr=task.lr, weight_decay=task.weight_decay, no_decay=("bias", "norm"))
    )
    x_train, y_train = data.train
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    steps_per_epoch = -(-len(x_train) // task.batch_size)
    total = epochs * steps_per_epoch
    scheduler = _scheduler(net, optimizer, len(partition), total, recipe, policy, recipe_options or {})
    step_times: list[float] = []
    losses: list[float] = []
    history: list[dict[str, float]] = []
    lr_trace: list[list[float]] = []

    def sample_lrs(batch: Batch) -> None:  # bookkeeping, not timed
        lr_trace.append([g["lr"] for g in optimizer.param_groups])

    def step(batch: Batch) -> torch.Tensor:
        return train_step(net, optimizer, task.loss, batch.x, batch.y, scheduler=scheduler)

    def after(batch: Batch, loss: torch.Tensor, seconds: float) -> None:
        step_times.append(seconds)
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if batch.step % 25 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=batch.epoch + 1, refresh=False)
        if (batch.step + 1) % steps_per_epoch == 0 or batch.step + 1 == total:
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
        seeded_loop((x_train, y_train), task.batch_size, step, seed=seed, steps=total, before=sample_lrs, after=after)
    wall = time.perf_counter() - start
    depth_of_group = [g["depth"] for g in optimizer.param_groups]
    tail = losses[-max(1, steps_per_epoch // 10) :]  # mean over the last tenth of an epoch
    return {
        "task": task.name,
        "recipe": recipe,
        "policy": policy,
        "seed": seed,
        "epochs": epochs,
        "steps": total,
        "model": model or type(net).__name__,
        "groups": list(partition.names),
        "frozen_at": scheduler.frozen_at if recipe == "freezeout" else None,
        "wall_clock_s": round(wall, 3),
        "train_seconds": round(sum(step_times), 3),
        "step_time": summarize_ms(step_times[min(10, len(step_times) - 1) :]),
        "final_train_loss": sum(tail) / len(tail),
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "history": history,
        "lr_by_group": [[row[depth_of_group.index(d)] for row in lr_trace] for d in range(len(partition))],
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
        if policy not in ("constant", "cosine"):
            raise ValueError("policy: FreezeOut brings its own per-layer cosine; use 'constant'")
        return FreezeOut(net, optimizer, total, **options)
    schedule = recipes.build(recipe, groups, policy=recipes.make_policy(policy), **options)
    return LayerwiseLR(optimizer, total, schedule=schedule)


def optimizer_state_mb(optimizer: torch.optim.Optimizer) -> float:
    """Size of the optimizer's per-parameter state tensors (momentum buffers, moments)."""
    return (
        sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
        / 2**20
    )
