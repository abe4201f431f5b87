"""Found LRs: ``hidlr`` (Hi-DLR's probes and quadratic fits), ``secant`` and ``freezeout+hidlr``.

Examples:
    >>> from layerwise.compare.methods import METHODS
    >>> METHODS["hidlr"].optimizer_use  # Hi-DLR wraps the task's optimizer and sets each group's LR itself
    'wraps'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ... import recipes
from ..._checks import boolean, fraction, one_of, optional, positive_int, positive_number, unit_interval
from ..._probe_prefix import MODES as REUSE_MODES
from ...freezing import Freezer, FreezeWhenZero
from ...groups import Partition, by_depth_buckets, by_kind, explicit
from ...hidlr import HiDLR
from ...secant import MODES, SecantLR
from ...tasks import Task
from .freezeout import FREEZEOUT_CHECKS
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
    policy_expr,
    register_method,
)

__all__ = ["HIDLR_PROBING", "SPLITS", "hidlr_partition", "register_found_lrs", "two_groups"]

# ---- hidlr -----------------------------------------------------------------------------------

SPLITS = ("head", "bias", "norm")
"""Hi-DLR's two-group splits (the paper's Table 2): the head, the biases or the norm layers vs the rest."""

HIDLR_PROBING = {
    "max_interval": 128,  # adaptive: as accurate as fixed Phi, fewer rounds (BENCHMARKS.md, Hi-DLR probing)
    "interval_tolerance": 1.0,  # the interval grows unless a round moves an LR by more than 100 %
    "probe_fraction": 1.0,  # half-batch probes cost 1.5 points at equal steps
    "prefix_reuse": "allow",  # bitwise the same losses, fewer forward ops; off where not valid
}
"""The ``hidlr`` method's probing options (``bench hidlr --quick`` times them as ``relative_speed_adaptive``)."""

_HIDLR_DEFAULTS = {
    "groups": 3,
    "split": None,
    "update_every": 16,
    "gamma": 0.9,
    "clip": 10.0,
    "joint_scale": False,
    "per_group": True,
    **HIDLR_PROBING,
}

_HIDLR_CHECKS: dict[str, Check] = {
    "groups": optional(positive_int),
    "split": optional(choice(*SPLITS)),
    "update_every": positive_int,
    "gamma": unit_interval,
    "clip": optional(positive_number),
    "joint_scale": boolean,
    "per_group": boolean,
    "max_interval": optional(positive_int),
    "interval_tolerance": positive_number,
    "probe_fraction": lambda name, value: fraction(name, value, open_low=True, what="a fraction of the batch"),
    "prefix_reuse": choice(*REUSE_MODES),
}


def two_groups(model: nn.Module, partition: Partition, split: str) -> Partition:
    """``partition``'s parameters in two groups: ``rest`` first, then the head, the biases or the norms."""
    one_of("split", split, SPLITS)
    if split == "head":
        named = {"rest": list(partition.groups[:-1]), "head": [partition.groups[-1]]}
    else:
        kinds = by_kind(model)
        chosen = {id(p) for p in kinds[split].params} if split in kinds.names else set()
        named = {"rest": [], split: []}
        for group in partition:
            for name, param in zip(group.param_names, group.params):
                named[split if id(param) in chosen else "rest"].append(name)
        return explicit(model, {name: names for name, names in named.items() if names})
    return explicit(model, {name: [n for g in groups for n in g.param_names] for name, groups in named.items()})


def hidlr_partition(context: Build, buckets: int | None, split: str | None = None) -> Partition:
    """The groups Hi-DLR finds LRs for: a ``split`` in two, one group (``buckets=1``: Hi-ULR), or depth buckets."""
    task, partition = context.task, context.partition
    if split is not None:
        return two_groups(context.model, partition, split)
    if buckets == 1:  # Hi-ULR (GeN): one learning rate, whatever the task's own groups
        return explicit(context.model, {"all": [name for group in partition for name in group.param_names]})
    if buckets is None or task.partition is not None:
        return partition  # a task's own partition (NAM's feature networks, a toy's x and y) is kept
    positive_int("hidlr.groups", buckets)
    return by_depth_buckets(context.model, min(buckets, len(partition)), sample_input=task.sample_input())


def _hidlr_options(task: Task, settings: Mapping[str, Any]) -> dict[str, Any]:
    clip, cap = settings["clip"], settings["max_interval"]
    return {
        "update_every": settings["update_every"],
        "gamma": settings["gamma"],
        "clip": None if clip is None else (0.0, clip * task.lr),
        "joint_scale": settings["joint_scale"],
        "per_group": settings["per_group"],
        "max_interval": None if cap is None else max(cap, settings["update_every"]),  # never below Phi
        "interval_tolerance": settings["interval_tolerance"],
        "probe_fraction": settings["probe_fraction"],
        "prefix_reuse": settings["prefix_reuse"],
    }


def _hidlr(context: Build, settings: dict[str, Any]) -> Setup:
    base = context.optimizer(hidlr_partition(context, settings["groups"], settings["split"]))
    options = _hidlr_options(context.task, settings)
    if options["prefix_reuse"] == "allow" and any(hasattr(p, "device_mesh") for p in context.model.parameters()):
        options["prefix_reuse"] = False  # FSDP2 shards: no reuse, as "allow" falls back where reuse is not valid
    optimizer = HiDLR(
        base,
        schedule=recipes.make_policy(context.policy),
        total_steps=context.total_steps,
        model=context.model,
        **options,
    )
    return Setup(optimizer, wants_closure=True)


def _hidlr_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    options = ", ".join(f"{k}={v!r}" for k, v in _hidlr_options(build.task, settings).items())
    return (
        f"{_regroup_snippet(build, settings)}{optimizer_line(build)}\n"
        f"opt = layerwise.HiDLR(opt, schedule={policy_expr(build.policy)}, total_steps={build.total_steps}, "
        f"model=model, {options})\n"
        f"{loop('closure', build.total_steps)}   # the closure: forward only, for the probes"
    )


def _regroup_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    """The snippet lines regrouping ``part`` as :func:`hidlr_partition` does (none: the task's own)."""
    buckets, split = settings["groups"], settings["split"]
    regroup = (
        f"part = layerwise.by_depth_buckets(model, {buckets}, sample_input=x)\n"
        if buckets is not None and build.task.partition is None
        else ""
    )
    if buckets == 1:
        regroup = 'part = layerwise.explicit(model, {"all": [n for g in part for n in g.param_names]})   # Hi-ULR\n'
    if split is not None:
        regroup = f'part = layerwise.compare.methods.two_groups(model, part, "{split}")   # {split} | rest\n'
    return regroup


_HIDLR = Method(
    "hidlr",
    "Hi-DLR: per-group LRs from a quadratic fit of 4K probe losses every `update_every` steps, "
    "on `groups` layer buckets (or two groups, `split` = head, bias or norm vs the rest: the paper's "
    "Table 2; groups=1 is Hi-ULR); eta* clipped to `clip` x the task LR; times the policy",
    _hidlr,
    _HIDLR_DEFAULTS,
    snippet=_hidlr_snippet,
    check=checked("hidlr", **_HIDLR_CHECKS),
    optimizer_use="wraps",
)

# ---- secant ----------------------------------------------------------------------------------


def _secant_mode(task: Task, settings: Mapping[str, Any]) -> str:
    return settings["mode"] or ("bb" if task.optimizer == "gd" else "line")


def _secant(context: Build, settings: dict[str, Any]) -> Setup:
    clip = settings["clip"]
    optimizer = SecantLR(
        context.optimizer(),
        mode=_secant_mode(context.task, settings),
        beta=settings["beta"],
        gamma=settings["gamma"],
        scale=settings["scale"],
        clip=None if clip is None else (0.0, clip * context.task.lr),
        schedule=recipes.make_policy(context.policy),
        total_steps=context.total_steps,
    )
    return Setup(optimizer)


def _secant_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    clip = settings["clip"]
    return (
        f"{optimizer_line(build)}\n"
        f'opt = layerwise.SecantLR(opt, mode="{_secant_mode(build.task, settings)}", '
        f"{kwargs_expr(settings, ['beta', 'gamma', 'scale'])}, "
        f"clip={None if clip is None else (0.0, clip * build.task.lr)!r}, "
        f"schedule={policy_expr(build.policy)}, total_steps={build.total_steps})\n"
        f"{loop('plain', build.total_steps)}"
    )


_SECANT = Method(
    "secant",
    "Smith's secant layer LRs: each group's LR from running averages of its weight and gradient changes "
    "(mode bb = 1/curvature for gradient descent, line = secant line minimum for other optimizers; "
    "None picks by the task's optimizer), clipped to `clip` x the task LR, times the policy",
    _secant,
    {"mode": None, "beta": 0.9, "gamma": 0.9, "scale": 1.0, "clip": 10.0},
    not_default={"fine-tuning": "a from-scratch experiment; not in the fine-tuning set"},
    snippet=_secant_snippet,
    check=checked(
        "secant",
        mode=optional(choice(*MODES)),
        beta=unit_interval,
        gamma=unit_interval,
        scale=positive_number,
        clip=optional(positive_number),
    ),
    optimizer_use="wraps",
)

# ---- freezeout+hidlr -------------------------------------------------------------------------


def _freezeout_hidlr(context: Build, settings: dict[str, Any]) -> Setup:
    groups = hidlr_partition(context, settings["groups"], settings["split"])
    base = context.optimizer(groups)
    # no 1/t_i scaling: Hi-DLR finds each group's LR itself
    schedule = recipes.build("freezeout", len(groups), t0=settings["t0"], strategy=settings["strategy"], scale_lr=False)
    optimizer = HiDLR(
        base,
        schedule=schedule,
        total_steps=context.total_steps,
        model=context.model,
        **_hidlr_options(context.task, settings),
    )
    freeze = FreezeWhenZero.from_schedule(Freezer(context.model, base), schedule, context.total_steps)
    return Setup(optimizer, freeze, wants_closure=True, freezer=freeze.freezer)


def _freezeout_hidlr_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    options = ", ".join(f"{k}={v!r}" for k, v in _hidlr_options(build.task, settings).items())
    steps = build.total_steps
    return (
        f"{_regroup_snippet(build, settings)}{optimizer_line(build)}\n"
        f'schedule = layerwise.recipes.build("freezeout", len(part), t0={settings["t0"]!r}, '
        f"strategy={settings['strategy']!r}, scale_lr=False)   # Hi-DLR finds each LR: no 1/t_i scaling\n"
        f"sched = layerwise.freezing.FreezeWhenZero.from_schedule(layerwise.Freezer(model, opt), schedule, {steps})\n"
        f"opt = layerwise.HiDLR(opt, schedule=schedule, total_steps={steps}, model=model, {options})\n"
        f"{loop('closure+sched', steps)}"
    )


_FREEZEOUT_HIDLR = Method(
    "freezeout+hidlr",
    "Hi-DLR's LRs times FreezeOut's per-group cosine, groups frozen when their factor reaches 0",
    _freezeout_hidlr,
    {**_HIDLR_DEFAULTS, "t0": 0.8, "strategy": "cubic"},
    needs_groups(2),
    not_default={"fine-tuning": "a combination; FreezeOut and Hi-DLR each run in the fine-tuning set"},
    snippet=_freezeout_hidlr_snippet,
    check=checked("freezeout+hidlr", **_HIDLR_CHECKS, **{k: FREEZEOUT_CHECKS[k] for k in ("t0", "strategy")}),
    optimizer_use="wraps",
)


def register_found_lrs() -> None:
    """Register ``hidlr``, ``secant`` and ``freezeout+hidlr``."""
    for method in (_HIDLR, _SECANT, _FREEZEOUT_HIDLR):
        register_method(method)
