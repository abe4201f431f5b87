"""Hi-DLR on LoRA fine-tuning: pretrained MiniLM-L6 on tweet sentiment, groups lora_A, lora_B, head.

The paper's Table 1 grouping: the ``minilm-sentiment-lora`` task (PEFT LoRA, dropout off so that
the probe losses of a step are evaluated on one fixed function) on the whole tweet corpus. Every
method trains from the same initial model on the same seeded batches, through the shared loop
(:func:`~layerwise.tasks.loop.seeded_loop` and the runner's step).

Examples:
    >>> report = lora_comparison(steps=150)  # doctest: +SKIP
    >>> report["best_uniform"], report["runs"]["hi-dlr"]["final_train_loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..compare.methods import Setup
from ..compare.runner import train_step
from ..hidlr import HiDLR
from ..tasks import Task, TaskData, get_task, make_optimizer
from ..tasks.base import split_examples, split_size
from ..tasks.hidlr_problems import hidlr_variants
from ..tasks.loop import Batch, evaluate, loader_options, seeded_loop

__all__ = ["LORA_GRID", "lora_comparison"]

LORA_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
"""Uniform AdamW learning rates searched for the LoRA baseline."""


def _run(task: Task, data: TaskData, steps: int, lr: float, mode: str, seed: int, **options: Any) -> dict[str, Any]:
    """One run: ``mode`` is uniform, hi-ulr or hi-dlr; ``options`` go to :class:`HiDLR`.

    ``data.train`` is what it trains on; ``final_train_loss`` is measured afterwards on ``data.train``'s
    first ``len(data.test)`` examples, test metrics on ``data.test`` (eval mode both).
    """
    torch.manual_seed(seed)
    model = task.make_model()
    if mode == "hi-dlr":
        groups = task.partition_of(model).param_groups(lr=lr)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    opt: torch.optim.Optimizer = make_optimizer(task, groups)  # AdamW at the task's weight decay
    if mode != "uniform":
        opt = HiDLR(opt, **options)
    setup = Setup(opt, wants_closure=mode != "uniform")
    curve: list[float] = []
    lrs: list[list[float]] = []

    def after(batch: Batch, loss: torch.Tensor, seconds: float) -> None:
        curve.append(float(loss.detach()))
        lrs.append([g["lr"] for g in opt.param_groups])

    model.train()
    seconds = seeded_loop(
        data.train,
        task.batch_size,
        lambda batch: train_step(model, setup, task, batch.data),
        seed=seed,
        steps=steps,
        after=after,
        **loader_options(task),
    )
    train = evaluate(model, split_examples(data.train, split_size(data.test)), task)
    test = evaluate(model, data.test, task)
    smooth, ema = [], curve[0]
    for value in curve:
        ema = 0.95 * ema + 0.05 * value
        smooth.append(ema)
    return {
        "final_train_loss": train["loss"],
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "seconds": seconds,
        "stats": opt.stats if isinstance(opt, HiDLR) else None,
        "final_lrs": lrs[-1],
        "_curve": smooth,
        "_lrs": lrs,
    }


def lora_comparison(
    steps: int = 150,
    batch_size: int = 16,
    phi: int = 10,
    gamma: float = 0.9,
    start_lr: float = 1e-3,
    eval_size: int = 2000,
    seed: int = 0,
    data: TaskData | None = None,
) -> dict[str, Any]:
    """Uniform AdamW LRs of :data:`LORA_GRID` vs Hi-ULR and Hi-DLR as published, with ``eta*`` clipped
    to the grid's top LR, and Hi-DLR with ``joint_scale`` and ``per_group`` on top; ``steps`` steps each.

    ``final_train_loss`` is measured after training on a fixed ``eval_size`` slice of the
    training set (eval mode); test metrics on ``eval_size`` held-out tweets. ``data``: the
    task's tweets (default: the whole corpus).
    """
    task = dataclasses.replace(get_task("minilm-sentiment-lora"), batch_size=batch_size)
    data = data or task.load_data(None, False)
    data = TaskData(data.train, split_examples(data.test, eval_size))
    runs = {f"uniform {lr:g}": _run(task, data, steps, lr, "uniform", seed) for lr in LORA_GRID}
    best = min(runs, key=lambda k: runs[k]["final_train_loss"])
    variants = hidlr_variants(phi, gamma, max(LORA_GRID))
    for name, (mode, options) in variants.items():
        runs[name] = _run(task, data, steps, start_lr, mode, seed, **options)
    best_loss = runs[best]["final_train_loss"]
    return {
        "model": "all-MiniLM-L6-v2 + PEFT LoRA(query, value; r=8, alpha=16), AdamW(weight_decay=0.01)",
        "groups": ["lora_A", "lora_B", "head"],
        "steps": steps,
        "batch_size": batch_size,
        "phi": phi,
        "gamma": gamma,
        "start_lr": start_lr,
        "best_uniform": best,
        "best_uniform_final_train_loss": best_loss,
        "runs": runs,
        "clip": [0.0, max(LORA_GRID)],
        "target_met": {k: runs[k]["final_train_loss"] <= best_loss for k in runs if k.startswith("hi-")},
    }
