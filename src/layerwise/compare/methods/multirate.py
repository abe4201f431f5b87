"""Multirate: ``multirate`` (the head fast, the rest every k steps) and ``multirate-block`` (two groups fast)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._checks import boolean, finite_nonneg, int_between, optional, positive_int
from ...multirate import Multirate
from ...tasks import Task, optimizer_preset
from .kit import (
    Build,
    Check,
    Method,
    Setup,
    checked,
    needs_groups,
    needs_head,
    policy_only,
    policy_snippet,
    register_method,
)

__all__ = ["register_multirate"]

_FINE_TUNING_ONLY = "a fine-tuning method"

_DEFAULTS = {"heavy_ball": True, "drift": True, "same_lr": False, "weight_decay": None}
_CHECKS: dict[str, Check] = {
    "k": positive_int,
    "fast": positive_int,
    "heavy_ball": boolean,
    "drift": boolean,
    "same_lr": boolean,
    "weight_decay": optional(finite_nonneg),
}


def _fast(context: Build, fast: Any) -> list[str]:
    count = len(context.partition)
    int_between("multirate.fast", fast, 1, count - 1, f"{count - 1} (the number of last groups that are fast)")
    return list(context.partition.names[-fast:])


def _base_options(task: Task, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The task preset's options; heavy-ball momentum (no Nesterov), the paper's Algorithm 1, unless asked;
    the ablations' ``drift`` (False: Algorithm 2), ``same_lr`` (h_S = h_F) and ``weight_decay``."""
    options = dict(optimizer_preset(task).options)
    if settings["heavy_ball"] and options.get("nesterov"):
        options["nesterov"] = False
    decay = settings["weight_decay"]
    options["weight_decay"] = task.weight_decay if decay is None else decay
    if not settings["drift"]:
        options["drift"] = False
    if settings["same_lr"]:
        options["slow_lr"] = task.lr  # the fast part's step (Table 2's ablation)
    return options


def _multirate(context: Build, settings: dict[str, Any]) -> Setup:
    k, task = settings["k"], context.task
    preset = optimizer_preset(task)
    # h = k x the task's LR: the fast part steps the task's LR every step, the slow part k x it every k steps
    optimizer = Multirate.from_partition(
        context.partition,
        fast=_fast(context, settings["fast"]),
        lr=task.lr * k,
        k=k,
        base=preset.cls,
        model=context.model,
        **_base_options(task, settings),
    )
    return Setup(optimizer, policy_only(context, optimizer))


def _multirate_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    task, k = build.task, settings["k"]
    preset = optimizer_preset(task)
    options = "".join(f", {key}={value!r}" for key, value in _base_options(task, settings).items())
    return (
        f"opt = layerwise.Multirate.from_partition(part, fast={_fast(build, settings['fast'])!r}, "
        f"lr={task.lr * k:g}, k={k}, base={preset.class_path}, model=model{options})\n"
        f"{policy_snippet(build)}"
    )


_MULTIRATE = Method(
    "multirate",
    "Multirate (Algorithm 1): the last `fast` groups step every step, the rest get a gradient every k steps; "
    "on SGD tasks heavy-ball momentum as in the paper's Algorithm 1 (`heavy_ball=false`: the task's Nesterov); "
    "ablations: `drift=false` (Algorithm 2), `same_lr` (slow step = fast step), `weight_decay` (None: task's)",
    _multirate,
    {**_DEFAULTS, "k": 4, "fast": 1},
    needs_head,
    not_default={"scratch": f"{_FINE_TUNING_ONLY}: from scratch it is 13 points behind at 250 steps"},
    snippet=_multirate_snippet,
    check=checked("multirate", **_CHECKS),
)

_MULTIRATE_BLOCK = Method(
    "multirate-block",
    "Multirate with the head and the last block fast (`fast` = 2 last groups)",
    _multirate,
    {**_DEFAULTS, "k": 4, "fast": 2},
    needs_groups(3),
    not_default={"scratch": _FINE_TUNING_ONLY},
    snippet=_multirate_snippet,
    check=checked("multirate-block", **_CHECKS),
)


def register_multirate() -> None:
    """Register ``multirate`` and ``multirate-block``."""
    for method in (_MULTIRATE, _MULTIRATE_BLOCK):
        register_method(method)
