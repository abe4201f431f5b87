"""FreezeOut: ``freezeout`` (per-group cosine to zero, then frozen) and ``freezeout-soft`` (the LRs only)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._checks import boolean
from ...freezeout import STRATEGIES, FreezeOut, FreezeOutRule
from ...scheduler import LayerwiseLR, group_depths
from .kit import (
    Build,
    Check,
    Method,
    Setup,
    checked,
    choice,
    kwargs_expr,
    loop,
    needs_groups,
    optimizer_line,
    positive_fraction,
    register_method,
)

__all__ = ["FREEZEOUT_CHECKS", "register_freezeout"]

FREEZEOUT_CHECKS: dict[str, Check] = {"t0": positive_fraction, "strategy": choice(*STRATEGIES), "scale_lr": boolean}
"""The checks of FreezeOut's settings (``t0``, ``strategy``, ``scale_lr``)."""

_FREEZEOUT_DEFAULTS = {"t0": 0.8, "strategy": "cubic", "scale_lr": True}


def _freezeout(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = context.optimizer()  # FreezeOut's per-layer cosine is the whole schedule: no global policy
    freezeout = FreezeOut(context.model, optimizer, context.total_steps, **settings)
    return Setup(optimizer, freezeout, freezer=freezeout.freezer)


def _freezeout_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"{optimizer_line(build)}\n"
        f"sched = layerwise.FreezeOut(model, opt, total_steps={build.total_steps}, "
        f"{kwargs_expr(settings, ['t0', 'strategy', 'scale_lr'])})\n"
        f"{loop('sched', build.total_steps)}"
    )


_FREEZEOUT = Method(
    "freezeout",
    "FreezeOut: per-group cosine to zero, earliest groups first, then frozen (out of the backward pass)",
    _freezeout,
    _FREEZEOUT_DEFAULTS,
    needs_groups(2),
    snippet=_freezeout_snippet,
    check=checked("freezeout", **FREEZEOUT_CHECKS),
)


def _freezeout_soft(context: Build, settings: dict[str, Any]) -> Setup:
    """FreezeOut's LRs, but every group stays in the backward pass (soft freezing: no speed-up)."""
    optimizer = context.optimizer()
    depth = max(group_depths(optimizer.param_groups)) + 1
    rule = FreezeOutRule.build(depth, settings["t0"], settings["strategy"], scale_lr=settings["scale_lr"])
    return Setup(optimizer, LayerwiseLR(optimizer, context.total_steps, layers=rule))


def _freezeout_soft_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"{optimizer_line(build)}\n"
        f"rule = layerwise.FreezeOutRule.build(len(part), {settings['t0']!r}, {settings['strategy']!r}, "
        f"scale_lr={settings['scale_lr']!r})   # the LRs only: nothing leaves the backward pass\n"
        f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, layers=rule)\n"
        f"{loop('sched', build.total_steps)}"
    )


_FREEZEOUT_SOFT = Method(
    "freezeout-soft",
    "soft freezing (Smith's thread): FreezeOut's per-group cosine to zero, but no group leaves the backward "
    "pass, so it costs what the baseline costs; beside `freezeout` it isolates what hard freezing buys",
    _freezeout_soft,
    _FREEZEOUT_DEFAULTS,
    needs_groups(2),
    not_default={"scratch": "an ablation, run on request", "fine-tuning": "an ablation, run on request"},
    snippet=_freezeout_soft_snippet,
    check=checked("freezeout-soft", **FREEZEOUT_CHECKS),
)


def register_freezeout() -> None:
    """Register ``freezeout`` and ``freezeout-soft``."""
    for method in (_FREEZEOUT, _FREEZEOUT_SOFT):
        register_method(method)
