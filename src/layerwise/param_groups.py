"""Helpers over an optimizer's param-group dicts: their names, writing an LR, what trainers log.

A group's name is its ``name`` key (what :meth:`Partition.param_groups` writes), else ``group<i>``
by position: one rule everywhere (the scheduler, the techniques, telemetry, compare's records).
:func:`partition_from_timm_groups` reads timm's layer-decay groups back into a :class:`Partition`.

Examples:
    >>> group_names([{"name": "head", "params": []}, {"params": []}])
    ['head', 'group1']
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ._checks import finite_nonneg
from .groups import Partition, explicit

__all__ = [
    "ForeignLRWarning",
    "check_partition",
    "foreign_lr",
    "group_names",
    "lr_log",
    "partition_from_timm_groups",
    "set_lr",
]


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


def _timm_scales(model: nn.Module, param_groups: Any) -> dict[str, float]:
    """Every trainable parameter's name -> its dict's ``lr_scale`` (errors name ``param_groups[i]``)."""
    if isinstance(param_groups, (str, bytes, Mapping)) or not isinstance(param_groups, Sequence) or not param_groups:
        raise TypeError(
            "param_groups: expected a non-empty list of param-group dicts (timm.optim.param_groups_layer_decay's, "
            f"or an optimizer's param_groups built from them), got {type(param_groups).__name__}"
        )
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    scales: dict[str, float] = {}
    for index, group in enumerate(param_groups):
        where = f"param_groups[{index}]"
        if not isinstance(group, Mapping) or "params" not in group:
            raise TypeError(f"{where}: expected a param-group dict with 'params', got {type(group).__name__}")
        if "lr_scale" not in group:
            raise ValueError(f"{where}: has no 'lr_scale' (expected timm.optim.param_groups_layer_decay's groups)")
        scale = finite_nonneg(f"{where}: lr_scale", group["lr_scale"])
        for param in group["params"]:
            name = names.get(id(param))
            if name is None:
                raise ValueError(f"{where}: holds a parameter that is not a trainable parameter of model")
            if scales.setdefault(name, scale) != scale:
                raise ValueError(f"{where}: parameter {name!r} is also in a group with lr_scale {scales[name]:g}")
    missing = [n for n in names.values() if n not in scales]
    if missing:
        raise ValueError(f"param_groups: trainable parameters of model in no group: {', '.join(missing[:5])}")
    return {n: scales[n] for n in names.values()}  # in the model's order


def partition_from_timm_groups(model: nn.Module, param_groups: Sequence[Mapping[str, Any]]) -> Partition:
    """The partition of timm's layer-decay param groups: one group per ``lr_scale``, the smallest first.

    ``timm.optim.param_groups_layer_decay(model, layer_decay=d)`` gives layer ``i`` of ``L`` the scale
    ``d ** (L - 1 - i)`` and splits each layer into a weight-decay and a no-decay dict, which keep the
    scale but not the layer. The dicts are gathered back by scale, nearest the input (smallest) first,
    as groups ``layer_0``, ``layer_1``, ... (depths 0, 1, ...); layers whose scales are equal (a
    ``min_scale`` clamp, ``layer_decay=1``) share a group, whose LR they share anyway.

    Any technique then runs on timm's layers; timm's decay itself is ``discriminative`` with
    ``ratio=1 / d`` (``layerwise.compare.setup(model, "discriminative", partition=part, ratio=1 / d, ...)``)
    or ``LayerwiseLR(..., layers=Discriminative(1 / d))``, where the head trains at the full LR.

    Args:
        model: the model the groups were built from.
        param_groups: timm's param-group dicts (or ``optimizer.param_groups`` of an optimizer built from
            them, ``create_optimizer_v2(..., layer_decay=d)``): each holds ``params`` and ``lr_scale``,
            and together they hold every trainable parameter of ``model`` once.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> timm_groups = [  # what param_groups_layer_decay(net, layer_decay=0.75) gives, less weight decay
        ...     {"params": [net[0].weight], "lr_scale": 0.75}, {"params": [net[0].bias], "lr_scale": 0.75},
        ...     {"params": [net[2].weight, net[2].bias], "lr_scale": 1.0}]
        >>> part = partition_from_timm_groups(net, timm_groups)
        >>> part.names, [g.param_names for g in part]
        (('layer_0', 'layer_1'), [('0.weight', '0.bias'), ('2.weight', '2.bias')])

    Raises:
        TypeError, ValueError: naming the dict and what it lacks, before anything is built: a dict
            without ``lr_scale``, a parameter that is not a trainable one of ``model``, one in two dicts
            of different scales, a trainable parameter in none.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    scales = _timm_scales(model, param_groups)
    ordered = sorted(set(scales.values()))
    layers = {f"layer_{depth}": [n for n in scales if scales[n] == scale] for depth, scale in enumerate(ordered)}
    return explicit(model, layers)
