"""Closed-form per-group learning-rate factors: a global policy times a layer rule.

Everything here is pure (no torch state). Time is the *progress* ``p = step / total``
in ``[0, 1]``; the scheduler in :mod:`layerwise.scheduler` turns steps into progress.
The factor of group ``g`` is ``policy_g(p) * multiplier_g(p)``: one shared global
policy (or one independent policy per group) times a layer multiplier rule.

Examples:
    >>> from layerwise.schedules import LayerSchedule, OneCycle, LinearInTime
    >>> smith = LayerSchedule(layers=LinearInTime(start=(2, 1, 0.5), end=(0.5, 1, 2),
    ...                                           windows=((0, 0.1), (0, 1), (0, 1))))
    >>> smith.factors(0.05, 3).tolist()
    [1.25, 1.0, 0.575]
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np

from ._checks import finite_nonneg, fraction, one_of, positive_int

__all__ = [
    "Constant",
    "Cosine",
    "DepthRamp",
    "Discriminative",
    "GeometricRange",
    "LayerRule",
    "LayerSchedule",
    "Linear",
    "LinearInTime",
    "OneCycle",
    "Policy",
    "StaggeredOneCycle",
    "StepDrops",
    "Triangular",
    "Uniform",
    "Warmup",
    "depth_ramp",
]


Anneal = Literal["linear", "cos"]
"""How a 1cycle anneals: Smith's linear ramps or torch's cosine."""
ANNEALS = get_args(Anneal)

# ----------------------------------------------------------------------------- checks


def _window(argument: str, window: Sequence[float]) -> tuple[float, float]:
    if len(window) != 2:
        raise ValueError(f"{argument}: a window is (start, end), got {tuple(window)}")
    a, b = (fraction(argument, w) for w in window)
    if b < a:
        raise ValueError(f"{argument}: window end {b} is before its start {a}; windows lie in [0, 1]")
    return a, b


# ----------------------------------------------------------------------------- policies


@runtime_checkable
class Policy(Protocol):
    """A global LR policy: a factor as a function of progress ``p`` in [0, 1]."""

    def __call__(self, p: float) -> float: ...


@dataclass(frozen=True)
class Constant:
    """``value`` for the whole run."""

    value: float = 1.0

    def __post_init__(self) -> None:
        finite_nonneg("value", self.value)

    def __call__(self, p: float) -> float:
        return self.value


@dataclass(frozen=True)
class StepDrops:
    """Multiply by ``factor`` at each milestone (fractions of training).

    The default is Smith's proposal: x0.1 at 50 %, 75 % and 90 % of training.
    """

    milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    factor: float = 0.1

    def __post_init__(self) -> None:
        values = tuple(fraction("milestones", m) for m in self.milestones)
        if list(values) != sorted(values):
            raise ValueError(f"milestones: must be increasing, got {values}")
        object.__setattr__(self, "milestones", values)
        finite_nonneg("factor", self.factor)

    def __call__(self, p: float) -> float:
        return self.factor ** sum(1 for m in self.milestones if p >= m)


@dataclass(frozen=True)
class Linear:
    """Linear from ``start`` to ``end`` over training."""

    start: float = 1.0
    end: float = 0.0

    def __post_init__(self) -> None:
        finite_nonneg("start", self.start)
        finite_nonneg("end", self.end)

    def __call__(self, p: float) -> float:
        return self.start + (self.end - self.start) * p


@dataclass(frozen=True)
class Cosine:
    """Cosine annealing from ``start`` to ``end`` over training."""

    start: float = 1.0
    end: float = 0.0

    def __post_init__(self) -> None:
        finite_nonneg("start", self.start)
        finite_nonneg("end", self.end)

    def __call__(self, p: float) -> float:
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * p))


@dataclass(frozen=True)
class Triangular:
    """Triangular cyclical LR (CLR): ``cycles`` full cycles between ``low`` and ``high``."""

    low: float = 0.1
    high: float = 1.0
    cycles: int = 1

    def __post_init__(self) -> None:
        finite_nonneg("low", self.low)
        finite_nonneg("high", self.high)
        positive_int("cycles", self.cycles)

    def __call__(self, p: float) -> float:
        position = (p * self.cycles) % 1.0
        height = 1.0 - abs(2.0 * position - 1.0)
        return self.low + (self.high - self.low) * height


@dataclass(frozen=True)
class OneCycle:
    """Smith's 1cycle: ``start`` up to 1.0 at ``peak_at``, then down to ``end``.

    ``anneal`` is ``"linear"`` (Smith's original) or ``"cos"`` (torch's OneCycleLR default).
    """

    peak_at: float = 0.3
    start: float = 0.04
    end: float = 4e-6
    anneal: Anneal = "linear"

    def __post_init__(self) -> None:
        fraction("peak_at", self.peak_at)
        finite_nonneg("start", self.start)
        finite_nonneg("end", self.end)
        one_of("anneal", self.anneal, ANNEALS)

    def _interp(self, a: float, b: float, x: float) -> float:
        if self.anneal == "cos":
            return b + (a - b) * 0.5 * (1.0 + math.cos(math.pi * x))
        return a + (b - a) * x

    def __call__(self, p: float) -> float:
        if p < self.peak_at:
            return self._interp(self.start, 1.0, p / self.peak_at)
        if self.peak_at >= 1.0:
            return 1.0
        return self._interp(1.0, self.end, (p - self.peak_at) / (1.0 - self.peak_at))


@dataclass(frozen=True)
class Warmup:
    """Linear warm-up over the first ``fraction`` of training, then ``policy`` on the rest.

    During warm-up the factor rises linearly from ``start * policy(0)`` to ``policy(0)``.
    """

    policy: Policy
    fraction: float = 0.05
    start: float = 0.0

    def __post_init__(self) -> None:
        if not callable(self.policy):
            raise TypeError(f"policy: expected a Policy, got {type(self.policy).__name__}")
        fraction("fraction", self.fraction)
        if self.fraction >= 1:
            raise ValueError(f"fraction: warm-up must leave part of training, got {self.fraction}")
        finite_nonneg("start", self.start)

    def __call__(self, p: float) -> float:
        if p < self.fraction:
            return self.policy(0.0) * (self.start + (1.0 - self.start) * p / self.fraction)
        return self.policy((p - self.fraction) / (1.0 - self.fraction))


# ----------------------------------------------------------------------------- layer rules


@functools.lru_cache(maxsize=256)
def _constant_multipliers(rule: _ConstantRule, num_groups: int) -> np.ndarray:
    """Multipliers of a time-constant rule, computed once per (rule, number of groups)."""
    array = np.array(rule.values(num_groups), dtype=float)
    array.flags.writeable = False
    return array


class _ConstantRule:
    """Base of rules whose multipliers do not change over time (subclasses are frozen)."""

    num_groups = None

    def values(self, num_groups: int) -> list[float]:
        raise NotImplementedError

    def multipliers(self, p: float, num_groups: int) -> np.ndarray:
        return _constant_multipliers(self, num_groups)


@runtime_checkable
class LayerRule(Protocol):
    """Per-group multipliers as a function of progress.

    ``num_groups`` is the number of groups the rule is written for, or None if it
    adapts to any number.
    """

    @property
    def num_groups(self) -> int | None: ...

    def multipliers(self, p: float, num_groups: int) -> np.ndarray: ...


@dataclass(frozen=True)
class Uniform(_ConstantRule):
    """Every group gets multiplier 1."""

    def values(self, num_groups: int) -> list[float]:
        return [1.0] * num_groups


@dataclass(frozen=True)
class Discriminative(_ConstantRule):
    """ULMFiT's discriminative LRs: each group ``ratio`` times slower than the next.

    The last group (the head) gets 1, group ``g`` gets ``ratio ** -(K - 1 - g)``.
    """

    ratio: float = 2.6

    def __post_init__(self) -> None:
        if finite_nonneg("ratio", self.ratio) == 0:
            raise ValueError("ratio: must be > 0")

    def values(self, num_groups: int) -> list[float]:
        return [self.ratio ** -(num_groups - 1 - g) for g in range(num_groups)]


@dataclass(frozen=True)
class GeometricRange(_ConstantRule):
    """fastai's ``slice(lo, hi)``: multipliers spaced geometrically from ``lo`` to ``hi``."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if finite_nonneg("lo", self.lo) == 0 or finite_nonneg("hi", self.hi) == 0:
            raise ValueError(f"lo, hi: must be > 0, got {self.lo}, {self.hi}")

    def values(self, num_groups: int) -> list[float]:
        if num_groups == 1:
            return [float(self.hi)]
        return np.geomspace(self.lo, self.hi, num_groups).tolist()


@dataclass(frozen=True)
class LinearInTime:
    """Smith's layer multipliers: group ``g`` goes linearly from ``start[g]`` to ``end[g]``
    inside its own window ``windows[g] = (a, b)`` (fractions of training), holding
    ``start[g]`` before ``a`` and ``end[g]`` after ``b``.

    Example (Smith's 3 layers over 100 epochs):
        >>> rule = LinearInTime((2, 1, 0.5), (0.5, 1, 2), ((0, 0.1), (0, 1), (0, 1)))
        >>> rule.multipliers(0.5, 3).tolist()
        [0.5, 1.0, 1.25]
    """

    start: Sequence[float]
    end: Sequence[float]
    windows: Sequence[Sequence[float]] | None = None
    _arrays: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        start = tuple(finite_nonneg("start", s) for s in self.start)
        end = tuple(finite_nonneg("end", e) for e in self.end)
        if not start:
            raise ValueError("start: give one value per group")
        windows = ((0.0, 1.0),) * len(start) if self.windows is None else self.windows
        windows = tuple(_window("windows", w) for w in windows)
        if not len(start) == len(end) == len(windows):
            raise ValueError(
                f"start, end, windows: need one entry per group each; got lengths "
                f"{len(start)}, {len(end)}, {len(windows)}"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "windows", windows)
        a = np.array([w[0] for w in windows])
        b = np.array([w[1] for w in windows])
        # a zero-width window switches at once: scaling by a huge number and adding 1
        # at p == a makes the clipped fraction 0 before a and 1 from a on
        inv_width = np.where(b > a, 1.0 / np.where(b > a, b - a, 1.0), 1e300)
        instant = (b == a).astype(float)
        object.__setattr__(self, "_arrays", (np.array(start), np.array(end) - np.array(start), a, inv_width, instant))

    @property
    def num_groups(self) -> int:
        return len(self.start)

    def multipliers(self, p: float, num_groups: int) -> np.ndarray:
        start, span, a, inv_width, instant = self._arrays
        frac = np.minimum(np.maximum((p - a) * inv_width + instant, 0.0), 1.0)
        return start + span * frac


@dataclass(frozen=True)
class StaggeredOneCycle:
    """One 1cycle per group as its multiplier, each peaking at its own ``peaks[g]``.

    Group ``g`` follows ``OneCycle(peak_at=peaks[g], start, end, anneal)``, evaluated for
    all groups at once. Use it with a constant global policy for fully staggered
    per-group schedules. ``highs[g]`` scales group ``g``'s whole cycle (its maximum; default 1)
    and ``lows[g]`` sets where it starts (its minimum; default ``start * highs[g]``); every group
    ends at ``end * highs[g]``.

    Example (5 groups peaking at epochs 10, 15, 20, 25, 30 of 50):
        >>> rule = StaggeredOneCycle.spaced(5, first_peak=0.2, last_peak=0.6)
        >>> [round(x, 2) for x in rule.peaks]
        [0.2, 0.3, 0.4, 0.5, 0.6]
    """

    peaks: Sequence[float]
    start: float = 0.04
    end: float = 4e-6
    anneal: Anneal = "linear"
    highs: Sequence[float] | None = None
    lows: Sequence[float] | None = None
    _arrays: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        peaks = tuple(fraction("peaks", x) for x in self.peaks)
        if not peaks:
            raise ValueError("peaks: give one peak position per group")
        object.__setattr__(self, "peaks", peaks)
        OneCycle(peaks[0], self.start, self.end, self.anneal)  # validates the shared settings
        array = np.array(peaks)
        inv_up = 1.0 / np.where(array > 0, array, 1.0)
        inv_down = 1.0 / np.where(array < 1, 1.0 - array, 1.0)
        highs = self._per_group("highs", self.highs, [1.0] * len(peaks))
        lows = self._per_group("lows", self.lows, [self.start * h for h in highs])
        object.__setattr__(self, "_arrays", (array, inv_up, inv_down, np.array(highs), np.array(lows)))

    def _per_group(self, name: str, values: Sequence[float] | None, default: list[float]) -> tuple[float, ...]:
        if values is None:
            return tuple(default)
        values = tuple(finite_nonneg(name, v) for v in values)
        if len(values) != len(self.peaks):
            raise ValueError(f"{name}: one value per group ({len(self.peaks)}), got {len(values)}")
        object.__setattr__(self, name, values)
        return values

    @classmethod
    def spaced(
        cls,
        num_groups: int,
        first_peak: float = 0.2,
        last_peak: float = 0.6,
        **one_cycle: float | str,
    ) -> StaggeredOneCycle:
        """Peaks evenly spaced from ``first_peak`` (group 0) to ``last_peak`` (last group).

        ``first_high``/``last_high`` and ``first_low``/``last_low`` (in ``one_cycle``) space the
        groups' maxima and minima the same way.

        Examples:
            >>> rule = StaggeredOneCycle.spaced(3, first_high=1.5, last_high=0.5, first_low=0.1, last_low=0.1)
            >>> rule.highs, [round(float(m), 3) for m in rule.multipliers(0.0, 3)]
            ((1.5, 1.0, 0.5), [0.1, 0.1, 0.1])
        """
        positive_int("num_groups", num_groups)
        fraction("first_peak", first_peak)
        fraction("last_peak", last_peak)
        spread = {}
        for name in ("high", "low"):
            first, last = one_cycle.pop(f"first_{name}", None), one_cycle.pop(f"last_{name}", None)
            if (first is None) != (last is None):
                raise ValueError(f"first_{name}, last_{name}: give both or neither")
            if first is not None:
                ends = finite_nonneg(f"first_{name}", first), finite_nonneg(f"last_{name}", last)
                spread[f"{name}s"] = tuple(np.linspace(*ends, num_groups).tolist())
        return cls(tuple(np.linspace(first_peak, last_peak, num_groups).tolist()), **one_cycle, **spread)

    @property
    def num_groups(self) -> int:
        return len(self.peaks)

    def multipliers(self, p: float, num_groups: int) -> np.ndarray:
        peaks, inv_up, inv_down, highs, lows = self._arrays
        x_up = p * inv_up
        x_down = (p - peaks) * inv_down
        ends = self.end * highs
        if self.anneal == "cos":
            up = highs + (lows - highs) * 0.5 * (1.0 + np.cos(np.pi * x_up))
            down = ends + (highs - ends) * 0.5 * (1.0 + np.cos(np.pi * x_down))
        else:
            up = lows + (highs - lows) * x_up
            down = highs + (ends - highs) * x_down
        return np.where(p < peaks, up, down)


def depth_ramp(
    num_groups: int,
    first: float = 1.5,
    last: float = 0.5,
    *,
    reverse: bool = True,
    window: Sequence[float] = (0.0, 1.0),
) -> LinearInTime:
    """Multipliers ramping linearly across depth from ``first`` (group 0) to ``last``;
    with ``reverse`` the ramp turns around linearly in time within ``window``, so the
    run ends with ``last`` at group 0 and ``first`` at the last group (Smith's proposal).

    Examples:
        >>> depth_ramp(3).multipliers(0.0, 3).tolist(), depth_ramp(3).multipliers(1.0, 3).tolist()
        ([1.5, 1.0, 0.5], [0.5, 1.0, 1.5])
    """
    positive_int("num_groups", num_groups)
    finite_nonneg("first", first)
    finite_nonneg("last", last)
    ramp = np.linspace(first, last, num_groups).tolist() if num_groups > 1 else [first]
    end = ramp[::-1] if reverse else ramp
    return LinearInTime(ramp, end, [tuple(window)] * num_groups)


def DepthRamp(*args: Any, **kwargs: Any) -> LinearInTime:
    """Deprecated name of :func:`depth_ramp` (a factory, not a class)."""
    warnings.warn("layerwise.DepthRamp is now layerwise.depth_ramp", DeprecationWarning, stacklevel=2)
    return depth_ramp(*args, **kwargs)


# ----------------------------------------------------------------------------- composition


@dataclass(frozen=True)
class LayerSchedule:
    """Per-group factor = ``policy_g(p) * layers.multipliers(p)[g]``.

    Args:
        policy: one global policy, or a sequence of independent per-group policies.
        layers: a layer multiplier rule (default: :class:`Uniform`).
    """

    policy: Policy | Sequence[Policy] = field(default_factory=Constant)
    layers: LayerRule = field(default_factory=Uniform)

    def __post_init__(self) -> None:
        if isinstance(self.policy, Sequence):
            if not self.policy:
                raise ValueError("policy: an empty list of per-group policies")
            bad = [type(p).__name__ for p in self.policy if not callable(p)]
            if bad:
                raise TypeError(f"policy: per-group policies must be callables, got {bad}")
            object.__setattr__(self, "policy", tuple(self.policy))
        elif not callable(self.policy):
            raise TypeError(f"policy: expected a Policy, got {type(self.policy).__name__}")
        if not isinstance(self.layers, LayerRule):
            raise TypeError(f"layers: expected a LayerRule, got {type(self.layers).__name__}")
        sizes = {
            self.layers.num_groups,
            len(self.policy) if isinstance(self.policy, tuple) else None,
        }
        sizes.discard(None)
        if len(sizes) > 1:
            raise ValueError(f"policy, layers: written for different numbers of groups {sorted(sizes)}")

    @property
    def num_groups(self) -> int | None:
        """Number of groups this schedule is written for, or None if any number works."""
        if isinstance(self.policy, tuple):
            return len(self.policy)
        return self.layers.num_groups

    def check_groups(self, num_groups: int) -> None:
        """Raise ValueError unless the schedule can drive ``num_groups`` groups."""
        wanted = self.num_groups
        if wanted is not None and wanted != num_groups:
            raise ValueError(
                f"the schedule has per-group values for {wanted} groups but the optimizer "
                f"has {num_groups} (groups are counted by their 'depth' key, else by position)"
            )

    def factors(self, p: float, num_groups: int) -> np.ndarray:
        """Factor of each group at progress ``p``, shape (num_groups,)."""
        mults = self.layers.multipliers(p, num_groups)
        if isinstance(self.policy, tuple):
            return np.fromiter((policy(p) for policy in self.policy), float, num_groups) * mults
        return self.policy(p) * mults

    def table(self, total_steps: int, num_groups: int) -> np.ndarray:
        """Factors at every step 0..total_steps-1, shape (num_groups, total_steps)."""
        self.check_groups(num_groups)
        return np.stack([self.factors(s / total_steps, num_groups) for s in range(total_steps)], 1)

    def zero_from(self, total_steps: int, num_groups: int) -> list[int | None]:
        """Per group, the first step from which its factor stays exactly 0, else None."""
        self.check_groups(num_groups)
        first: list[int | None] = [None] * num_groups
        open_groups = set(range(num_groups))
        for step in range(total_steps - 1, -1, -1):
            values = self.factors(step / total_steps, num_groups)
            for g in list(open_groups):
                if values[g] == 0.0:
                    first[g] = step
                else:
                    open_groups.discard(g)
            if not open_groups:
                break
        return first
