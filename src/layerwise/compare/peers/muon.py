"""Muon (Jordan et al. 2024; ``torch.optim.Muon``): ``muon`` and ``freezeout+muon``.

Both train the hidden weights with Muon and the rest with AdamW through
:func:`layerwise.muon_split`; ``muon`` runs under the comparison's global policy, ``freezeout+muon``
under FreezeOut's per-group cosines (which freeze a layer in both parts together).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._checks import boolean, finite_nonneg, positive_int, positive_number, unit_interval
from ...freezeout import FreezeOut
from ...groups import Partition
from ...muon import ADAMW_DEFAULTS, CONV_OPTIONS, muon_split, split_groups
from ...per_group import PerGroupOptimizer
from ...tasks import Task
from ..methods.freezeout import FREEZEOUT_CHECKS
from ..methods.kit import (
    Build,
    Method,
    Setup,
    checked,
    choice,
    kwargs_expr,
    loop,
    policy_only,
    policy_snippet,
    register_method,
)
from .shared import NOT_DEFAULT, all_of

__all__ = ["register_muon"]

_MUON_DEFAULTS = {
    "lr": 0.02,
    "momentum": 0.95,
    "nesterov": True,
    "ns_steps": 5,
    "weight_decay": 0.01,
    "adjust_lr_fn": None,
    "conv": "reshape",
    "adamw_lr": ADAMW_DEFAULTS["lr"],
}
_MUON_KEYS = ("lr", "momentum", "nesterov", "ns_steps", "weight_decay", "adjust_lr_fn")
_MUON_CHECKS = {
    "lr": positive_number,
    "momentum": unit_interval,
    "nesterov": boolean,
    "ns_steps": positive_int,
    "weight_decay": finite_nonneg,
    "adjust_lr_fn": choice(None, "original", "match_rms_adamw"),
    "conv": choice(*CONV_OPTIONS),
    "adamw_lr": positive_number,
}
_SHARDED = "Muon orthogonalises whole weight matrices, which FSDP2's shards are not (muon_split refuses them)"


def _has_hidden(task: Task, partition: Partition) -> str | None:
    del task
    try:
        hidden = split_groups(partition, "reshape")[0]
    except ValueError:  # a tied head the partition alone cannot place: the build, which has the model, decides
        return None
    if not hidden:
        return "the task's partition has no hidden weight matrix for Muon (all head, embeddings, biases, norms)"
    return None


def _options(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``muon_split``'s keyword arguments from the settings."""
    return {
        "conv": settings["conv"],
        "muon_options": {key: settings[key] for key in _MUON_KEYS},
        "adamw_options": {"lr": settings["adamw_lr"]},
    }


def _split(context: Build, settings: Mapping[str, Any]) -> PerGroupOptimizer:
    """The split of the task's partition, its embeddings and head found in the model (by a traced forward)."""
    sample = context.task.sample_input()
    return muon_split(context.partition, model=context.model, sample_input=sample, **_options(settings))


def _split_line(settings: Mapping[str, Any]) -> str:
    options = _options(settings)
    return (
        f"opt = layerwise.muon_split(part, model=model, sample_input=x, conv={options['conv']!r}, "
        f"muon_options={options['muon_options']!r}, adamw_options={options['adamw_options']!r})"
        "   # hidden weights: Muon; embeddings, head, biases, norms: AdamW"
    )


def _muon(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = _split(context, settings)
    return Setup(optimizer, policy_only(context, optimizer))


def _muon_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return f"{_split_line(settings)}\n{policy_snippet(build)}"


_MUON = Method(
    "muon",
    "Muon (Jordan et al. 2024; torch.optim.Muon) on the hidden weights, conv filters reshaped to 2-D as in the "
    "authors' code, AdamW (lr 3e-4, betas (0.9, 0.95), decay 0.01: the authors' README) on embeddings, head, "
    "biases and norms; lr 0.02, momentum 0.95, Nesterov, 5 Newton-Schulz steps (torch's docs and the README); "
    "times the policy",
    _muon,
    _MUON_DEFAULTS,
    _has_hidden,
    not_default=NOT_DEFAULT,
    snippet=_muon_snippet,
    check=checked("muon", **_MUON_CHECKS),
    uses_task_lr=False,
    not_parallel={"fsdp": _SHARDED},
    optimizer_use="own",
)

_FREEZEOUT_KEYS = ("t0", "strategy", "scale_lr")


def _freezeout_muon(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = _split(context, settings)
    freezeout = FreezeOut(context.model, optimizer, context.total_steps, **{k: settings[k] for k in _FREEZEOUT_KEYS})
    return Setup(optimizer, freezeout, freezer=freezeout.freezer)


def _freezeout_muon_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"{_split_line(settings)}\n"
        f"sched = layerwise.FreezeOut(model, opt, total_steps={build.total_steps}, "
        f"{kwargs_expr(settings, _FREEZEOUT_KEYS)})\n"
        f"{loop('sched', build.total_steps)}"
    )


def _two_groups_with_hidden(task: Task, partition: Partition) -> str | None:
    if len(partition) < 2:
        return f"it needs at least 2 groups; the task's partition has {len(partition)}"
    return _has_hidden(task, partition)


_FREEZEOUT_MUON = Method(
    "freezeout+muon",
    "FreezeOut's per-group cosines and freezing over the `muon` split (Muon on the hidden weights, AdamW on "
    "the rest, each layer frozen in both parts together); FreezeOut's and muon's settings",
    _freezeout_muon,
    {"t0": 0.8, "strategy": "cubic", "scale_lr": True, **_MUON_DEFAULTS},
    _two_groups_with_hidden,
    not_default=NOT_DEFAULT,
    snippet=_freezeout_muon_snippet,
    check=all_of(checked("freezeout+muon", **FREEZEOUT_CHECKS), checked("freezeout+muon", **_MUON_CHECKS)),
    uses_task_lr=False,
    not_parallel={"fsdp": _SHARDED},
    optimizer_use="own",
)


def register_muon() -> None:
    """Register ``muon`` and ``freezeout+muon``."""
    for method in (_MUON, _FREEZEOUT_MUON):
        register_method(method)
