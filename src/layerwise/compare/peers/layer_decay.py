"""Layer-wise LR decay (BEiT; timm's ``param_groups_layer_decay``): ``layer-decay``.

Examples:
    >>> layer_decay_multipliers(3, 0.5)
    [0.25, 0.5, 1.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._checks import fraction, positive_int
from ...tasks import make_optimizer, optimizer_preset
from ..methods.kit import Build, Method, Setup, needs_groups, policy_only, policy_snippet, register_method
from .shared import NOT_DEFAULT

__all__ = ["layer_decay_multipliers", "register_layer_decay"]


def layer_decay_multipliers(groups: int, decay: float) -> list[float]:
    """``decay ** (L - depth)`` for depths 0..L (input to head, L = groups - 1): the head gets the full LR."""
    positive_int("groups", groups)
    return [decay ** (groups - 1 - depth) for depth in range(groups)]


def _layer_decay(context: Build, settings: dict[str, Any]) -> Setup:
    task, mults = context.task, layer_decay_multipliers(len(context.partition), settings["decay"])
    groups = context.partition.param_groups(
        lr=task.lr, lr_mult=mults, weight_decay=task.weight_decay, no_decay=("bias", "norm")
    )
    optimizer = make_optimizer(task, groups)
    return Setup(optimizer, policy_only(context, optimizer))


def _layer_decay_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    task = build.task
    preset = optimizer_preset(task)
    options = "".join(f", {k}={v!r}" for k, v in preset.options.items())
    return (
        "import layerwise.compare.peers\n"
        f"mults = layerwise.compare.peers.layer_decay_multipliers(len(part), {settings['decay']!r})\n"
        f"opt = {preset.class_path}(part.param_groups(lr={task.lr:g}, lr_mult=mults, "
        f'weight_decay={task.weight_decay:g}, no_decay=("bias", "norm")), lr={task.lr:g}{options})\n'
        f"{policy_snippet(build)}"
    )


def _decay_check(settings: Mapping[str, Any]) -> None:
    fraction("--set layer-decay.decay", settings["decay"], open_low=True, what="a per-layer decay")


_LAYER_DECAY = Method(
    "layer-decay",
    "layer-wise LR decay (BEiT, Bao et al. 2022; timm.optim.param_groups_layer_decay): group at depth d "
    "of L gets lr*decay^(L-d), the head the full LR; decay=0.75 (timm's default); times the policy",
    _layer_decay,
    {"decay": 0.75},
    needs_groups(2),
    not_default=NOT_DEFAULT,
    snippet=_layer_decay_snippet,
    check=_decay_check,
)


def register_layer_decay() -> None:
    """Register ``layer-decay``."""
    register_method(_LAYER_DECAY)
