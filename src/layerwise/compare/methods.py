"""The techniques ``layerwise compare`` trains side by side, each built on a fresh model of a task.

A method turns ``(task, model, total_steps, policy, settings)`` into a :class:`Setup`: the
optimizer, the object stepped after it, and whether ``optimizer.step`` wants a loss closure.
Every method starts from the task's optimizer and learning rate, so they differ only in how
the per-group learning rates move (and, for FreezeOut and Multirate, in which parts get a
gradient). Register your own with :func:`register_method`.

Example:
    >>> from layerwise.compare.methods import METHODS, resolve_settings
    >>> resolve_settings("freezeout", {"t0": 0.5})
    {'t0': 0.5, 'strategy': 'cubic', 'scale_lr': True}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .. import recipes
from ..bench.tasks import Task, make_optimizer
from ..freezeout import FreezeOut
from ..freezing import Freezer, freeze_due
from ..groups import Partition, by_depth_buckets
from ..hidlr import HiDLR
from ..multirate import Multirate
from ..scheduler import LayerwiseLR
from ..secant import SecantLR

__all__ = ["METHODS", "Method", "Setup", "build_setup", "check_methods", "register_method", "resolve_settings"]


@dataclass
class Setup:
    """What a training loop needs for one method.

    Attributes:
        optimizer: stepped every batch.
        scheduler: ``scheduler.step()`` after every ``optimizer.step()`` (None: nothing to step).
        closure: ``optimizer.step(closure)`` with a closure returning the batch loss without backward.
        freezer: the method's :class:`Freezer`, to read which groups are frozen.
    """

    optimizer: Optimizer
    scheduler: Any = None
    closure: bool = False
    freezer: Freezer | None = None


@dataclass(frozen=True)
class Method:
    """A named technique: default settings, a builder and the tasks it applies to.

    ``build(task, model, partition, total_steps, policy, settings) -> Setup``; ``applies(task,
    partition)`` returns why the method does not apply to the task, or None; ``default``: part of
    a comparison that names no methods.
    """

    name: str
    description: str
    build: Callable[..., Setup]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    applies: Callable[[Task, Partition], str | None] = lambda task, partition: None
    default: bool = True


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (replacing one of the same name)."""
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a Method, got {type(method).__name__}")
    METHODS[method.name] = method
    return method


def resolve_settings(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The method's defaults updated with ``overrides``; unknown keys raise ValueError."""
    if name not in METHODS:
        raise ValueError(f"methods: unknown {name!r}; choose from {sorted(METHODS)}")
    defaults = dict(METHODS[name].defaults)
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ValueError(f"--set {name}.{unknown[0]}: unknown setting; {name} has {sorted(defaults) or 'none'}")
    return {**defaults, **(overrides or {})}


def check_methods(task: Task, names: list[str], partition: Partition) -> None:
    """Raise ValueError naming every method that is unknown or does not apply to ``task``."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; choose from {sorted(METHODS)}")
    for name in names:
        reason = METHODS[name].applies(task, partition)
        if reason:
            raise ValueError(f"methods: {name} does not apply to task {task.name!r}: {reason}")


def build_setup(
    task: Task, model: nn.Module, name: str, total_steps: int, policy: str, settings: Mapping[str, Any]
) -> Setup:
    """Build method ``name`` for a fresh ``model`` of ``task`` (settings already resolved)."""
    partition = task.groups(model)
    check_methods(task, [name], partition)
    return METHODS[name].build(task, model, partition, total_steps, policy, dict(settings))


def _groups(task: Task, partition: Partition) -> list[dict[str, Any]]:
    return partition.param_groups(lr=task.lr, weight_decay=task.weight_decay, no_decay=("bias", "norm"))


def _scheduled(recipe: str, *, uses_policy: bool = True) -> Callable[..., Setup]:
    """A recipe's schedule; its ``policy`` setting (None: the comparison's) picks the global policy."""

    def build(task, model, partition, total_steps, policy, settings) -> Setup:
        del model
        optimizer = make_optimizer(task, _groups(task, partition))
        policy = settings.pop("policy", None) or policy
        global_policy = recipes.make_policy(policy) if uses_policy else None
        schedule = recipes.build(recipe, len(partition), policy=global_policy, **settings)
        return Setup(optimizer, LayerwiseLR(optimizer, total_steps, schedule=schedule))

    return build


def _needs_groups(count: int) -> Callable[[Task, Partition], str | None]:
    def applies(task: Task, partition: Partition) -> str | None:
        if len(partition) < count:
            return f"it needs at least {count} groups; the task's partition has {len(partition)}"
        return None

    return applies


def _freezeout(task, model, partition, total_steps, policy, settings) -> Setup:
    del policy  # FreezeOut's per-layer cosine is the whole schedule
    optimizer = make_optimizer(task, _groups(task, partition))
    freezeout = FreezeOut(model, optimizer, total_steps, **settings)
    return Setup(optimizer, freezeout, freezer=freezeout.freezer)


def _adamw(task, model, partition, total_steps, policy, settings) -> Setup:
    del model
    groups = partition.param_groups(lr=settings["lr"], weight_decay=settings["weight_decay"], no_decay=("bias", "norm"))
    optimizer = torch.optim.AdamW(groups, lr=settings["lr"])
    return Setup(optimizer, LayerwiseLR(optimizer, total_steps, policy=recipes.make_policy(policy)))


def _multirate(task, model, partition, total_steps, policy, settings) -> Setup:
    k, fast = settings["k"], settings["fast"]
    if isinstance(fast, bool) or not isinstance(fast, int) or not 1 <= fast < len(partition):
        raise ValueError(f"multirate.fast: the number of last groups that are fast, 1..{len(partition) - 1}")
    if task.optimizer == "adamw":
        base, options = torch.optim.AdamW, {"weight_decay": task.weight_decay}
    else:
        momentum = 0.9 if task.optimizer == "sgd" else 0.0
        base, options = torch.optim.SGD, {"momentum": momentum, "nesterov": momentum > 0}
        options["weight_decay"] = task.weight_decay
    # h = k x the task's LR: the fast part steps the task's LR every step, the slow part k x it every k steps
    optimizer = Multirate.from_partition(
        partition, fast=partition.names[-fast:], lr=task.lr * k, k=k, base=base, model=model, **options
    )
    return Setup(optimizer, LayerwiseLR(optimizer, total_steps, policy=recipes.make_policy(policy)))


def _multirate_applies(task: Task, partition: Partition) -> str | None:
    if not task.head:
        return "the task's model has no output head to train fast (Task.head is False)"
    return _needs_groups(2)(task, partition)


def _hidlr_partition(model: nn.Module, task: Task, partition: Partition, buckets: int | None) -> Partition:
    if buckets is None or task.partition is not None:
        return partition  # a task's own partition (NAM's feature networks, a toy's x and y) is kept
    if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
        raise ValueError(f"hidlr.groups: the number of contiguous layer buckets, an int >= 1, got {buckets!r}")
    return by_depth_buckets(model, min(buckets, len(partition)), sample_input=task.sample_input())


def _hidlr_options(task: Task, settings: Mapping[str, Any]) -> dict[str, Any]:
    clip = settings["clip"]
    return {
        "update_every": settings["update_every"],
        "gamma": settings["gamma"],
        "clip": None if clip is None else (0.0, clip * task.lr),
        "joint_scale": settings["joint_scale"],
        "per_group": settings["per_group"],
    }


def _hidlr(task, model, partition, total_steps, policy, settings) -> Setup:
    groups = _hidlr_partition(model, task, partition, settings["groups"])
    base = make_optimizer(task, _groups(task, groups))
    schedule = recipes.make_policy(policy)
    optimizer = HiDLR(base, schedule=schedule, total_steps=total_steps, model=model, **_hidlr_options(task, settings))
    return Setup(optimizer, closure=True)


def _secant(task, model, partition, total_steps, policy, settings) -> Setup:
    mode = settings["mode"] or ("bb" if task.optimizer == "gd" else "line")
    clip = settings["clip"]
    optimizer = SecantLR(
        make_optimizer(task, _groups(task, partition)),
        mode=mode,
        beta=settings["beta"],
        gamma=settings["gamma"],
        scale=settings["scale"],
        clip=None if clip is None else (0.0, clip * task.lr),
        schedule=recipes.make_policy(policy),
        total_steps=total_steps,
    )
    return Setup(optimizer)


class FreezeWhenZero:
    """Freezes each group from the step at which its schedule factor stays 0 (a ``step()`` per batch)."""

    def __init__(self, freezer: Freezer, names: list[str], frozen_at: list[int | None]) -> None:
        self.freezer, self.names, self.frozen_at, self.steps = freezer, names, frozen_at, 0

    def step(self) -> None:
        self.steps += 1
        freeze_due(self.freezer, self.names, self.frozen_at, self.steps)


def _freezeout_hidlr(task, model, partition, total_steps, policy, settings) -> Setup:
    del policy
    groups = _hidlr_partition(model, task, partition, settings["groups"])
    base = make_optimizer(task, _groups(task, groups))
    # no 1/t_i scaling: Hi-DLR finds each group's LR itself
    schedule = recipes.build("freezeout", len(groups), t0=settings["t0"], strategy=settings["strategy"], scale_lr=False)
    optimizer = HiDLR(base, schedule=schedule, total_steps=total_steps, model=model, **_hidlr_options(task, settings))
    freezer = Freezer(model, base)
    freeze = FreezeWhenZero(freezer, list(groups.names), schedule.zero_from(total_steps, len(groups)))
    return Setup(optimizer, freeze, closure=True, freezer=freezer)


_HIDLR_DEFAULTS = {
    "groups": 3,
    "update_every": 16,
    "gamma": 0.9,
    "clip": 10.0,
    "joint_scale": False,
    "per_group": True,
}

for _method in (
    Method("baseline", "uniform LR under the global policy", _scheduled("constant"), {"policy": None}),
    Method(
        "adamw",
        "uniform AdamW at `lr` (instead of the task's optimizer) under the global policy",
        _adamw,
        {"lr": 1e-3, "weight_decay": 0.01},
        default=False,
    ),
    Method(
        "discriminative",
        "ULMFiT discriminative LRs: each group 1/ratio of the next (the head at the full LR), times the policy",
        _scheduled("discriminative"),
        {"ratio": 2.6, "policy": None},
        _needs_groups(2),
    ),
    Method(
        "llr",
        "Smith's layer LRs: multipliers `first` -> `last` across depth that reverse linearly by the end, "
        "times the policy",
        _scheduled("llr"),
        {"first": 1.5, "last": 0.5, "policy": None},
        _needs_groups(2),
    ),
    Method(
        "staggered",
        "a 1cycle per group, peaks staggered from the first group (20 %) to the last (60 %)",
        _scheduled("staggered", uses_policy=False),
        {"first_peak": 0.2, "last_peak": 0.6},
        _needs_groups(2),
    ),
    Method(
        "freezeout",
        "FreezeOut: per-group cosine to zero, earliest groups first, then frozen (out of the backward pass)",
        _freezeout,
        {"t0": 0.8, "strategy": "cubic", "scale_lr": True},
        _needs_groups(2),
    ),
    Method(
        "multirate",
        "Multirate (Algorithm 1): the last `fast` groups step every step, the rest get a gradient every k steps",
        _multirate,
        {"k": 4, "fast": 1},
        _multirate_applies,
    ),
    Method(
        "hidlr",
        "Hi-DLR: per-group LRs from a quadratic fit of 4K probe losses every `update_every` steps, "
        "on `groups` layer buckets; eta* clipped to `clip` x the task LR; times the policy",
        _hidlr,
        _HIDLR_DEFAULTS,
    ),
    Method(
        "secant",
        "Smith's secant layer LRs: each group's LR from running averages of its weight and gradient changes "
        "(mode bb = 1/curvature for gradient descent, line = secant line minimum for other optimizers; "
        "None picks by the task's optimizer), clipped to `clip` x the task LR, times the policy",
        _secant,
        {"mode": None, "beta": 0.9, "gamma": 0.9, "scale": 1.0, "clip": 10.0},
    ),
    Method(
        "freezeout+hidlr",
        "Hi-DLR's LRs times FreezeOut's per-group cosine, groups frozen when their factor reaches 0",
        _freezeout_hidlr,
        {**_HIDLR_DEFAULTS, "t0": 0.8, "strategy": "cubic"},
        _needs_groups(2),
    ),
):
    register_method(_method)
