"""The uniform-LR references: ``baseline`` (the task's optimizer under the global policy) and ``adamw``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._checks import finite_nonneg, positive_number
from ...tasks import OPTIMIZER_PRESETS
from .kit import (
    Build,
    Method,
    Setup,
    checked,
    policy_check,
    policy_only,
    policy_snippet,
    register_method,
    scheduled,
    scheduled_snippet,
)

__all__ = ["register_baselines"]

_BASELINE = Method(
    "baseline",
    "uniform LR under the global policy (full training or full fine-tuning)",
    scheduled("constant"),
    {"policy": None},
    snippet=scheduled_snippet("constant"),
    check=checked("baseline", policy=policy_check),
)


def _adamw(context: Build, settings: dict[str, Any]) -> Setup:
    groups = context.partition.param_groups(
        lr=settings["lr"], weight_decay=settings["weight_decay"], no_decay=("bias", "norm")
    )
    optimizer = OPTIMIZER_PRESETS.get("adamw").build(groups, settings["lr"], settings["weight_decay"])
    return Setup(optimizer, policy_only(context, optimizer))


def _adamw_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"opt = torch.optim.AdamW(part.param_groups(lr={settings['lr']:g}, weight_decay={settings['weight_decay']:g}, "
        f'no_decay=("bias", "norm")), lr={settings["lr"]:g})\n'
        f"{policy_snippet(build)}"
    )


_ADAMW = Method(
    "adamw",
    "uniform AdamW at `lr` (instead of the task's optimizer) under the global policy",
    _adamw,
    {"lr": 1e-3, "weight_decay": 0.01},
    check=checked("adamw", lr=positive_number, weight_decay=finite_nonneg),
    uses_task_lr=False,
    not_default={regime: "another base optimizer, run on request" for regime in ("scratch", "fine-tuning")},
    snippet=_adamw_snippet,
    optimizer_use="own",
)


def register_baselines() -> None:
    """Register ``baseline`` and ``adamw``."""
    for method in (_BASELINE, _ADAMW):
        register_method(method)
