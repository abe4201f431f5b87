"""Hi-DLR on LoRA fine-tuning: pretrained MiniLM-L6 on tweet sentiment, groups lora_A, lora_B, head.

The paper's Table 1 grouping. Every method sees the same batches from the same initial model;
dropout is off so that the probe losses of a step are evaluated on one fixed function.

Examples:
    >>> report = lora_comparison(steps=150)  # doctest: +SKIP
    >>> report["best_uniform"], report["runs"]["hi-dlr"]["final_train_loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..groups import by_lora
from ..hidlr import HiDLR
from ..tasks.hidlr_problems import hidlr_variants
from ..tasks.lora import minilm_lora
from ..tasks.tweets import load_tweet_data

__all__ = ["LORA_GRID", "lora_comparison"]

LORA_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
"""Uniform AdamW learning rates searched for the LoRA baseline."""


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return minilm_lora(3, r=8, alpha=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # PEFT's LoRA


@torch.no_grad()
def _evaluate(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(ids), 256):
        logits = model(ids[i : i + 256])
        loss += float(nn.functional.cross_entropy(logits, labels[i : i + 256], reduction="sum"))
        correct += int((logits.argmax(1) == labels[i : i + 256]).sum())
    model.train()
    return loss / len(ids), correct / len(ids)


def _run(data, batches, lr: float, mode: str, seed: int, **options: Any) -> dict[str, Any]:
    """One run: ``mode`` is uniform, hi-ulr or hi-dlr; ``options`` go to :class:`HiDLR`."""
    (train_ids, train_labels), (test_ids, test_labels) = data
    model = _model(seed)
    part = by_lora(model, rest="head")
    if mode == "hi-dlr":
        groups = part.param_groups(lr=lr, weight_decay=0.01)
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr, "weight_decay": 0.01}]
    opt: torch.optim.Optimizer = torch.optim.AdamW(groups)
    if mode != "uniform":
        opt = HiDLR(opt, **options)
    curve, lrs, start = [], [], time.perf_counter()
    for index in batches:
        x, y = train_ids[index], train_labels[index]

        def loss(x=x, y=y) -> torch.Tensor:
            return nn.functional.cross_entropy(model(x), y)

        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step(loss) if mode != "uniform" else opt.step()
        curve.append(float(value.detach()))
        lrs.append([g["lr"] for g in opt.param_groups])
    seconds = time.perf_counter() - start
    train_loss, _ = _evaluate(model, train_ids[: len(test_ids)], train_labels[: len(test_ids)])
    test_loss, test_accuracy = _evaluate(model, test_ids, test_labels)
    smooth, ema = [], curve[0]
    for value in curve:
        ema = 0.95 * ema + 0.05 * value
        smooth.append(ema)
    return {
        "final_train_loss": train_loss,
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
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
) -> dict[str, Any]:
    """Uniform AdamW LRs of :data:`LORA_GRID` vs Hi-ULR and Hi-DLR as published, with ``eta*`` clipped
    to the grid's top LR, and Hi-DLR with ``joint_scale`` and ``per_group`` on top; ``steps`` steps each.

    ``final_train_loss`` is measured after training on a fixed ``eval_size`` slice of the
    training set (eval mode); test metrics on ``eval_size`` held-out tweets.
    """
    train, test = load_tweet_data()
    data = (train, (test[0][:eval_size], test[1][:eval_size]))
    order = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train[0]), generator=order)
    batches = [perm[(i * batch_size) % len(perm) :][:batch_size] for i in range(steps)]
    runs = {f"uniform {lr:g}": _run(data, batches, lr, "uniform", seed) for lr in LORA_GRID}
    best = min(runs, key=lambda k: runs[k]["final_train_loss"])
    variants = hidlr_variants(phi, gamma, max(LORA_GRID))
    for name, (mode, options) in variants.items():
        runs[name] = _run(data, batches, start_lr, mode, seed, **options)
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
