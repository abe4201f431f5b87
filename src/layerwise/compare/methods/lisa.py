"""LISA: ``lisa`` (the first and last groups always train, ``gamma`` of the others sampled every ``period`` steps).

LISA counts the optimizer's own steps from its hooks, so its periods fall on the same training steps
however often the run's scheduler (the comparison's global policy) is stepped. Its generator is seeded
with the run's torch seed, so every seed of a comparison draws its own sequence of groups.

Examples:
    >>> from layerwise.compare.methods import resolve_settings
    >>> resolve_settings("lisa", {"gamma": 2})
    {'gamma': 2, 'period': 20}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..._checks import positive_int
from ...groups import Partition
from ...lisa import LISA
from ...tasks import Task
from .kit import (
    Build,
    Method,
    Setup,
    checked,
    needs_groups,
    optimizer_line,
    policy_only,
    policy_snippet,
    register_method,
)

__all__ = ["register_lisa"]

_DEFAULTS = {"gamma": 1, "period": 20}  # LMFlow's LISA example: 1 activated layer, 20 steps per period


def _lisa(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = context.optimizer()
    lisa = LISA(context.model, optimizer, settings["gamma"], settings["period"], seed=torch.initial_seed())
    return Setup(optimizer, policy_only(context, optimizer), freezer=lisa.freezer)


def _fits(task: Task, partition: Partition, settings: Mapping[str, Any]) -> None:
    """``gamma`` at most the groups sampled from: all but the first and the last."""
    sampled = len(partition) - 2
    if settings["gamma"] > sampled:
        raise ValueError(
            f"--set lisa.gamma: at most the groups sampled from (all but the first and the last: {sampled} on task "
            f"{task.name!r}), got {settings['gamma']}"
        )


def _lisa_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"{optimizer_line(build)}\n"
        f"lisa = layerwise.LISA(model, opt, gamma={settings['gamma']!r}, period={settings['period']!r}, "
        "seed=torch.initial_seed())   # acts from opt's step hooks\n"
        f"{policy_snippet(build)}"
    )


_LISA = Method(
    "lisa",
    "LISA (Pan et al. 2024): the first and last groups always train; `gamma` of the others, drawn uniformly "
    "every `period` optimizer steps, train with them and the rest are frozen (out of the backward pass, no "
    "optimizer state; a group drawn again starts with fresh state); times the policy",
    _lisa,
    _DEFAULTS,
    needs_groups(3),
    not_default={
        "scratch": "a fine-tuning method (the paper's setting): run on request",
        "fine-tuning": "run on request",
    },
    snippet=_lisa_snippet,
    check=checked("lisa", gamma=positive_int, period=positive_int),
    fits=_fits,
)


def register_lisa() -> None:
    """Register ``lisa``."""
    register_method(_LISA)
