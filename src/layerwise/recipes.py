"""Named schedule recipes, built for a number of groups (what ``layerwise schedule`` draws).

A recipe turns a name and a few options into a :class:`LayerSchedule`. Recipes and global
policies live in two :class:`~layerwise._registry.Registry` objects, filled by
:func:`register_defaults` (FreezeOut's recipe is imported from its module when first used);
add yours with :func:`register`.

Examples:
    >>> from layerwise.recipes import build
    >>> sched = build("llr", 3, start=[2, 1, 0.5], end=[0.5, 1, 2],
    ...               windows=[(0, 0.1), (0, 1), (0, 1)])
    >>> sched.factors(0.1, 3).tolist()
    [0.5, 1.0, 0.65]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from ._checks import positive_int
from ._registry import Registry
from .schedules import (
    Constant,
    Cosine,
    Discriminative,
    GeometricRange,
    LayerSchedule,
    Linear,
    LinearInTime,
    OneCycle,
    Policy,
    StaggeredOneCycle,
    StepDrops,
    Triangular,
    Warmup,
    depth_ramp,
)

__all__ = ["POLICIES", "RECIPES", "build", "make_policy", "register"]

POLICIES: Registry[Callable[[], Policy]] = Registry("policy")
"""Global policies by name, with their default settings."""

RecipeBuilder = Callable[..., LayerSchedule]
RECIPES: Registry[RecipeBuilder] = Registry("recipe")
"""Recipes by name: ``fn(num_groups, policy, **options) -> LayerSchedule``."""


def register(name: str, description: str = "") -> Callable[[RecipeBuilder], RecipeBuilder]:
    """Decorator adding a recipe ``fn(num_groups, policy, **options) -> LayerSchedule``."""

    def add(fn: RecipeBuilder) -> RecipeBuilder:
        return RECIPES.register(name, fn, description=description)

    return add


def make_policy(name: str = "constant", warmup: float = 0.0) -> Policy:
    """A global policy by name, optionally behind a linear warm-up over ``warmup`` of training."""
    policy = POLICIES.get(name)()
    return Warmup(policy, warmup) if warmup else policy


def build(name: str, num_groups: int, *, policy: Policy | None = None, **options: Any) -> LayerSchedule:
    """Build recipe ``name`` for ``num_groups`` groups; ``options`` are the recipe's own."""
    recipe = RECIPES.get(name)
    positive_int("num_groups", num_groups)
    unknown = sorted(set(options) - set(inspect.signature(recipe).parameters) - {"num_groups", "policy"})
    if unknown:
        known = [p for p in inspect.signature(recipe).parameters if p not in ("num_groups", "policy")]
        raise ValueError(f"{name}: unknown option {unknown[0]!r}; {name} has {known or 'none'}")
    schedule = recipe(num_groups, policy or Constant(), **options)
    schedule.check_groups(num_groups)
    return schedule


@register("constant", "the global policy alone, the same for every group")
def _constant(num_groups: int, policy: Policy) -> LayerSchedule:
    return LayerSchedule(policy)


@register("discriminative", "ULMFiT discriminative LRs: each group 1/ratio of the next (or fastai's slice lo..hi)")
def _discriminative(
    num_groups: int,
    policy: Policy,
    ratio: float = 2.6,
    lo: float | None = None,
    hi: float | None = None,
) -> LayerSchedule:
    if (lo is None) != (hi is None):
        raise ValueError("lo, hi: give both (fastai's slice(lo, hi)) or neither")
    rule = Discriminative(ratio) if lo is None else GeometricRange(lo, hi)
    return LayerSchedule(policy, rule)


@register(
    "llr",
    "Smith's layer LRs: per-group multipliers changing linearly in time (default: 1.5 -> 0.5 across depth, reversing)",
)
def _llr(
    num_groups: int,
    policy: Policy,
    start: Sequence[float] | None = None,
    end: Sequence[float] | None = None,
    windows: Sequence[Sequence[float]] | None = None,
    first: float = 1.5,
    last: float = 0.5,
) -> LayerSchedule:
    """Per-group ``start``/``end`` lists, or a depth ramp ``first`` -> ``last`` that reverses by the end."""
    if start is None and end is None:
        rule = depth_ramp(num_groups, first, last, reverse=True, window=(0, 1))
        if windows is not None:
            rule = LinearInTime(rule.start, rule.end, windows)
    else:
        if start is None or end is None:
            raise ValueError("start, end: give both per-group lists or neither")
        rule = LinearInTime(start, end, windows)
    return LayerSchedule(policy, rule)


@register("staggered", "a 1cycle per group, peaks staggered from the first group to the last")
def _staggered(
    num_groups: int,
    policy: Policy,
    first_peak: float = 0.2,
    last_peak: float = 0.6,
    first_high: float | None = None,
    last_high: float | None = None,
    first_low: float | None = None,
    last_low: float | None = None,
) -> LayerSchedule:
    """The groups' maxima spread from ``first_high`` to ``last_high`` and minima from ``first_low`` to
    ``last_low`` (None: every maximum 1, every minimum 0.04 x it)."""
    if policy != Constant():
        raise ValueError("policy: the staggered recipe gives each group its own 1cycle; it takes no global policy")
    spread = {
        k: v
        for k, v in dict(first_high=first_high, last_high=last_high, first_low=first_low, last_low=last_low).items()
        if v is not None
    }
    return LayerSchedule(Constant(), StaggeredOneCycle.spaced(num_groups, first_peak, last_peak, **spread))


def register_defaults() -> None:
    """Register the built-in global policies and the FreezeOut recipe (the other recipes are decorated above)."""
    for name, policy, description in (
        ("constant", Constant, "1 throughout"),
        ("step", StepDrops, "x0.1 at 50, 75 and 90 % of training"),
        ("linear", Linear, "linear from 1 to 0"),
        ("cosine", Cosine, "cosine from 1 to 0"),
        ("triangular", Triangular, "Smith's triangular cycles"),
        ("onecycle", OneCycle, "Smith's 1cycle"),
    ):
        POLICIES.register(name, policy, description=description)
    RECIPES.register_lazy(
        "freezeout",
        "layerwise.freezeout:freezeout_recipe",
        description="FreezeOut: each group's cosine to zero at t_i, earliest groups first",
    )


register_defaults()
