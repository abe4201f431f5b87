"""Named schedule recipes, built for a number of groups (what ``layerwise schedule`` draws).

A recipe turns a name and a few options into a :class:`LayerSchedule`. Later
techniques register theirs with :func:`register`.

Example:
    >>> from layerwise.recipes import build
    >>> sched = build("llr", 3, start=[2, 1, 0.5], end=[0.5, 1, 2],
    ...               windows=[(0, 0.1), (0, 1), (0, 1)])
    >>> sched.factors(0.1, 3).tolist()
    [0.5, 1.0, 0.65]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._checks import positive_int
from .schedules import (
    Constant,
    Cosine,
    DepthRamp,
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
)

__all__ = ["POLICIES", "RECIPES", "build", "make_policy", "register"]

POLICIES: dict[str, Callable[[], Policy]] = {
    "constant": Constant,
    "step": StepDrops,
    "linear": Linear,
    "cosine": Cosine,
    "triangular": Triangular,
    "onecycle": OneCycle,
}
"""Global policies by name, with their default settings."""

RecipeBuilder = Callable[..., LayerSchedule]
RECIPES: dict[str, RecipeBuilder] = {}


def register(name: str) -> Callable[[RecipeBuilder], RecipeBuilder]:
    """Decorator adding a recipe ``fn(num_groups, policy, **options) -> LayerSchedule``."""

    def add(fn: RecipeBuilder) -> RecipeBuilder:
        RECIPES[name] = fn
        return fn

    return add


def make_policy(name: str = "constant", warmup: float = 0.0) -> Policy:
    """A global policy by name, optionally behind a linear warm-up over ``warmup`` of training."""
    if name not in POLICIES:
        raise ValueError(f"policy: unknown {name!r}; choose from {sorted(POLICIES)}")
    policy = POLICIES[name]()
    return Warmup(policy, warmup) if warmup else policy


def build(name: str, num_groups: int, *, policy: Policy | None = None, **options: Any) -> LayerSchedule:
    """Build recipe ``name`` for ``num_groups`` groups; ``options`` are the recipe's own."""
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown {name!r}; choose from {sorted(RECIPES)}")
    positive_int("num_groups", num_groups)
    schedule = RECIPES[name](num_groups, policy or Constant(), **options)
    schedule.check_groups(num_groups)
    return schedule


@register("constant")
def _constant(num_groups: int, policy: Policy) -> LayerSchedule:
    return LayerSchedule(policy)


@register("discriminative")
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


@register("llr")
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
        rule = DepthRamp(num_groups, first, last, reverse=True, window=(0, 1))
        if windows is not None:
            rule = LinearInTime(rule.start, rule.end, windows)
    else:
        if start is None or end is None:
            raise ValueError("start, end: give both per-group lists or neither")
        rule = LinearInTime(start, end, windows)
    return LayerSchedule(policy, rule)


@register("staggered")
def _staggered(num_groups: int, policy: Policy, first_peak: float = 0.2, last_peak: float = 0.6) -> LayerSchedule:
    if policy != Constant():
        raise ValueError("policy: the staggered recipe gives each group its own 1cycle; it takes no global policy")
    return LayerSchedule(Constant(), StaggeredOneCycle.spaced(num_groups, first_peak, last_peak))
