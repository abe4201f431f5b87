"""Helpers over an optimizer's param-group dicts: their names, writing an LR, what trainers log.

A group's name is its ``name`` key (what :meth:`Partition.param_groups` writes), else ``group<i>``
by position: one rule everywhere (the scheduler, the techniques, telemetry, compare's records).

Examples:
    >>> group_names([{"name": "head", "params": []}, {"params": []}])
    ['head', 'group1']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .groups import Partition

__all__ = ["ForeignLRWarning", "check_partition", "foreign_lr", "group_names", "lr_log", "set_lr"]


class ForeignLRWarning(UserWarning):
    """A technique that writes every group's LR found one it had not written (another scheduler, a
    trainer's schedule, an assignment). ``warnings.filterwarnings("error", category=ForeignLRWarning)``
    makes it an error."""


def foreign_lr(param_groups: Sequence[dict[str, Any]], written: Sequence[float]) -> tuple[int, float] | None:
    """The first param group whose ``lr`` is not the value ``written`` for it last (index, its lr), else None.

    Groups beyond ``written`` (added since) are not compared; a relative difference under 1e-6 (a
    float32 tensor LR's rounding) is not a change.
    """
    for index, (group, value) in enumerate(zip(param_groups, written)):
        found = float(group["lr"])
        if not math.isclose(found, float(value), rel_tol=1e-6, abs_tol=1e-12):
            return index, found
    return None


def set_lr(group: dict[str, Any], value: float) -> None:
    """Write ``value`` into a param group's ``lr`` (in place when it is a tensor)."""
    if isinstance(group["lr"], Tensor):
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def group_names(param_groups: Sequence[dict[str, Any]]) -> list[str]:
    """Name of every param group dict: its ``name`` key, else ``group<i>``."""
    return [str(g.get("name", f"group{i}")) for i, g in enumerate(param_groups)]


def lr_log(param_groups: Sequence[dict[str, Any]]) -> dict[str, float]:
    """What trainer integrations log each step: ``lr/<group>`` per named group and ``frozen_groups``.

    Param-group dicts sharing a name report the first one's LR; a group is frozen when none of its
    parameters requires grad.
    """
    lrs: dict[str, float] = {}
    frozen: dict[str, bool] = {}
    for name, group in zip(group_names(param_groups), param_groups):
        lrs.setdefault(f"lr/{name}", float(group["lr"]))
        frozen[name] = frozen.get(name, True) and not any(p.requires_grad for p in group["params"])
    return {**lrs, "frozen_groups": float(sum(frozen.values()))}


def check_partition(partition: Partition, param_groups: Sequence[dict[str, Any]]) -> None:
    """Raise ValueError unless the param groups hold exactly the partition's groups."""
    if not isinstance(partition, Partition):
        raise TypeError(f"groups: expected a Partition, got {type(partition).__name__}")
    want = {g.name: {id(p) for p in g.params} for g in partition}
    have: dict[str, set[int]] = {}
    for name, group in zip(group_names(param_groups), param_groups):
        have.setdefault(name, set()).update(id(p) for p in group["params"])
    if want != have:
        raise ValueError(
            f"groups: the optimizer's param groups {list(have)} do not hold the partition's groups "
            f"{list(want)} (build the optimizer from groups.param_groups(...))"
        )
