"""A seeded training run of a task under a layer-wise schedule, with timing.

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
from ..tasks.models import build_model
from ..training import progress_bar, seeded_batches
from .timing import peak_memory_mb, summarize_ms

__all__ = ["evaluate", "optimizer_state_mb", "train"]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    split: tuple[torch.Tensor, torch.Tensor],
    task: Task,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Mean loss (and accuracy, for classification tasks) of ``model`` on ``split``.

    The model is in eval mode meanwhile and goes back to its previous mode afterwards.
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
            hits = (out.argmax(1) == target) if task.score is None else task.score(out, target)
            correct += float(hits.sum())
    model.train(was_training)
    result = {"loss": loss_sum / len(x)}
    if task.metric == "accuracy":
        result["accuracy"] = correct / len(x)
    return result


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
    if recipe == "freezeout":
        if policy not in ("constant", "cosine"):
            raise ValueError("policy: FreezeOut brings its own per-layer cosine; use 'constant'")
        scheduler: LayerwiseLR | FreezeOut = FreezeOut(net, optimizer, total, **(recipe_options or {}))
    else:
        schedule = recipes.build(recipe, len(partition), policy=recipes.make_policy(policy), **(recipe_options or {}))
        scheduler = LayerwiseLR(optimizer, total, schedule=schedule)
    step_times: list[float] = []
    losses: list[float] = []
    history: list[dict[str, float]] = []
    lr_trace: list[list[float]] = []
    start = time.perf_counter()
    net.train()
    with progress_bar(total, f"{task.name} {recipe}", progress) as bar:
        for step, epoch, xb, yb in seeded_batches(x_train, y_train, task.batch_size, seed=seed, steps=total):
            lr_trace.append([g["lr"] for g in optimizer.param_groups])  # bookkeeping, not timed
            t0 = time.perf_counter()
            loss = task.loss(net(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step_times.append(time.perf_counter() - t0)
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
                if step % 25 == 0:
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", epoch=epoch + 1, refresh=False)
            if (step + 1) % steps_per_epoch == 0 or step + 1 == total:
                metrics = evaluate(net, data.test, task)
                history.append(
                    {
                        "epoch": epoch + 1,
                        "seconds": time.perf_counter() - start,
                        "test_loss": metrics["loss"],
                        "test_accuracy": metrics.get("accuracy"),
                    }
                )
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
        "frozen_at": scheduler.frozen_at if isinstance(scheduler, FreezeOut) else None,
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


def optimizer_state_mb(optimizer: torch.optim.Optimizer) -> float:
    """Size of the optimizer's per-parameter state tensors (momentum buffers, moments)."""
    return (
        sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))
        / 2**20
    )
