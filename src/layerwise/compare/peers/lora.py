"""LoRA+ (PEFT's ``create_loraplus_optimizer``): ``loraplus``, lora_B at ``ratio`` x lora_A's LR."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer

from ..._checks import positive_number
from ...groups import Partition
from ...tasks import Task, make_optimizer
from ...tasks.lora import has_lora
from ..methods.kit import Build, Method, Setup, checked, policy_only, register_method
from .shared import NOT_DEFAULT, all_of, needs_package, policy_loop

__all__ = ["LORAPLUS_GROUPS", "register_lora"]

LORAPLUS_GROUPS = ("groupA", "embedding", "groupB", "groupB_no_decay")
"""The param groups of PEFT's ``create_loraplus_optimizer``, in its order (named here for the records)."""


def _lora_applies(task: Task, partition: Partition) -> str | None:
    del task
    if has_lora([n for group in partition for n in group.param_names]):
        return None
    return (
        "a LoRA method: the task's model has no LoRA adapters (no lora_A / lora_B parameters); "
        "minilm-sentiment-lora has them"
    )


def _loraplus(context: Build, settings: dict[str, Any]) -> Setup:
    from peft.optimizers import create_loraplus_optimizer

    task = context.task

    def task_optimizer(groups: list[dict[str, Any]], **kwargs: Any) -> Optimizer:
        del kwargs  # every group carries its own lr and weight_decay
        return make_optimizer(task, groups)

    optimizer = create_loraplus_optimizer(
        context.model,
        task_optimizer,
        lr=task.lr,
        loraplus_lr_ratio=settings["ratio"],
        loraplus_weight_decay=task.weight_decay,
    )
    for group, name in zip(optimizer.param_groups, LORAPLUS_GROUPS):
        group["name"] = name
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return Setup(optimizer, policy_only(context, optimizer))


def _loraplus_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    line = (
        "opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr={lr:g}, loraplus_lr_ratio={ratio!r}, "
        "loraplus_weight_decay={wd:g})"
    ).format(lr=build.task.lr, ratio=settings["ratio"], wd=build.task.weight_decay)
    return "from peft.optimizers import create_loraplus_optimizer\n" + policy_loop(build, line)


_LORAPLUS = Method(
    "loraplus",
    "LoRA+ (Hayou, Ghosh & Yu 2024; peft.optimizers.create_loraplus_optimizer): lora_B (and every bias) at "
    "`ratio` x the LR of lora_A and the rest, ratio=16 (PEFT's documented default); the task's optimizer, "
    "LR and decay; times the policy",
    _loraplus,
    {"ratio": 16.0},
    _lora_applies,
    not_default=NOT_DEFAULT,
    snippet=_loraplus_snippet,
    check=all_of(needs_package("loraplus", "peft", "peft"), checked("loraplus", ratio=positive_number)),
)


def register_lora() -> None:
    """Register ``loraplus``."""
    register_method(_LORAPLUS)
