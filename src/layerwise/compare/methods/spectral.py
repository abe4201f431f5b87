"""Spectral layer LRs: ``tempbalance`` (TempBalance, Zhou et al. 2023) under the comparison's policy.

Examples:
    >>> from layerwise.compare.methods import resolve_settings
    >>> resolve_settings("tempbalance", {"updates": 10})
    {'updates': 10, 's_min': 0.5, 's_max': 1.5, 'skip_ends': True}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._checks import boolean, positive_int, positive_number
from ...spectral import TempBalance, matrix_groups
from .kit import (
    Build,
    Method,
    Setup,
    checked,
    kwargs_expr,
    loop,
    optimizer_line,
    policy_expr,
    policy_only,
    register_method,
)

__all__ = ["register_spectral"]


def _every(build: Build, settings: Mapping[str, Any]) -> int:
    return max(1, build.total_steps // settings["updates"])


def _ends(held: list[str], skip_ends: bool) -> list[str]:
    """The first and the last group holding a matrix, with ``skip_ends`` and more than two of them."""
    return [held[0], held[-1]] if skip_ends and len(held) > 2 else []


def _tempbalance(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = context.optimizer()
    balance = TempBalance(
        optimizer,
        every=_every(context, settings),
        s_min=settings["s_min"],
        s_max=settings["s_max"],
        skip=_ends(matrix_groups(optimizer.param_groups), settings["skip_ends"]),
        follow=True,
    )
    return Setup(
        optimizer,
        policy_only(context, optimizer),
        records=lambda: {"tempbalance": {"alpha": balance.alpha, "multipliers": balance.multipliers}},
    )


def _tempbalance_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"{optimizer_line(build)}\n"
        "held = layerwise.spectral.matrix_groups(opt.param_groups)   # the groups with a weight matrix\n"
        f"skip = {'[held[0], held[-1]] if len(held) > 2 else []' if settings['skip_ends'] else '[]'}\n"
        f"tb = layerwise.TempBalance(opt, every={_every(build, settings)}, "
        f"{kwargs_expr(settings, ['s_min', 's_max'])}, skip=skip, follow=True)   # acts inside opt.step()\n"
        f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, policy={policy_expr(build.policy)})\n"
        f"{loop('sched', build.total_steps)}"
    )


_CHECK_EACH = checked(
    "tempbalance", updates=positive_int, s_min=positive_number, s_max=positive_number, skip_ends=boolean
)


def _check(settings: Mapping[str, Any]) -> None:
    _CHECK_EACH(settings)
    if settings["s_min"] > settings["s_max"]:
        raise ValueError(
            f"--set tempbalance.s_max: must be a number >= s_min ({settings['s_min']}), got {settings['s_max']}"
        )


_TEMPBALANCE = Method(
    "tempbalance",
    "TempBalance (Zhou et al. 2023): each group's LR x a multiplier from the power-law exponent alpha of its "
    "weight spectra (Hill estimator, x_min the median eigenvalue), alpha mapped linearly onto [`s_min`, `s_max`] "
    "(lowest alpha, the best-trained, least), recomputed `updates` times per run; `skip_ends` leaves the first "
    "and last matrix groups at 1 and a norm group follows the matrix group before it, as the authors; times the policy",
    _tempbalance,
    {"updates": 20, "s_min": 0.5, "s_max": 1.5, "skip_ends": True},
    snippet=_tempbalance_snippet,
    check=_check,
    not_default={regime: "new: run on request until a comparison decides it" for regime in ("scratch", "fine-tuning")},
    not_parallel={"fsdp": "its spectra need each whole weight matrix; FSDP2 shards them"},
)


def register_spectral() -> None:
    """Register ``tempbalance``."""
    register_method(_TEMPBALANCE)
