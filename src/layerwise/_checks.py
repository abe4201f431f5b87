"""Argument checks every module shares: each raises one uniform error that names the argument.

Checks run before anything is changed (validate, then mutate). ``bool`` is never accepted as a
number. Unknown options fail one way everywhere: a ``ValueError`` naming the option and the
valid ones (:func:`one_of`).

Examples:
    >>> positive_int("k", 4), fraction("t0", 0.8), clip_range("clip", (0, 2))
    (4, 0.8, (0.0, 2.0))
    >>> one_of("mode", "fast", ("bb", "line"))
    Traceback (most recent call last):
    ...
    ValueError: mode: must be one of ('bb', 'line'), got 'fast'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "boolean",
    "clip_range",
    "finite_nonneg",
    "fraction",
    "int_between",
    "one_of",
    "optional",
    "positive_int",
    "positive_number",
    "unit_interval",
]

T = TypeVar("T")

_NUMBERS = (int, float, np.integer, np.floating)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _require_int(name: str, value: Any, bounds: str) -> None:
    if not _is_int(value):
        raise ValueError(f"{name}: must be an int {bounds}, got {type(value).__name__} {value!r}")


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """An int >= ``minimum`` (ValueError otherwise, wrong types included, as torch.optim does)."""
    _require_int(name, value, f">= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}: must be an int >= {minimum}, got {value!r}")
    return int(value)


def int_between(name: str, value: Any, low: int, high: int, high_text: str | None = None) -> int:
    """An int in ``[low, high]``; ``high_text`` says what ``high`` is (``"the number of groups (5)"``)."""
    _require_int(name, value, f"between {low} and {high_text or high}")
    if not low <= value <= high:
        raise ValueError(f"{name}: must be an int between {low} and {high_text or high}, got {value!r}")
    return int(value)


def finite_nonneg(name: str, value: Any) -> float:
    """A finite number >= 0 (TypeError for a non-number, ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, _NUMBERS):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be finite and >= 0, got {value}")
    return value


def fraction(name: str, value: Any, *, open_low: bool = False, what: str = "a fraction of training") -> float:
    """A number in ``[0, 1]`` (``(0, 1]`` with ``open_low``)."""
    value = finite_nonneg(name, value)
    if value > 1 or (open_low and value == 0):
        bound = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{name}: must be {what} in {bound}, got {value}")
    return value


def positive_number(name: str, value: Any) -> float:
    """A finite number > 0."""
    if finite_nonneg(name, value) == 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value!r}")
    return float(value)


def boolean(name: str, value: Any) -> bool:
    """``True`` or ``False`` (no truthy stand-ins: ``--set k=1`` is refused)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be true or false, got {value!r}")
    return value


def optional(check: Any) -> Any:
    """``check`` that also accepts None (a setting whose None means "the default rule").

    Examples:
        >>> optional(positive_int)("k", None), optional(positive_int)("k", 3)
        (None, 3)
    """

    def check_or_none(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return check_or_none


def unit_interval(name: str, value: Any) -> float:
    """A number in ``[0, 1)`` (a smoothing or momentum coefficient)."""
    if isinstance(value, bool) or not isinstance(value, _NUMBERS) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: must be in [0, 1), got {value!r}")
    return float(value)


def clip_range(name: str, clip: Any) -> tuple[float, float] | None:
    """None, or ``(low, high)`` with ``0 <= low < high``."""
    if clip is None:
        return None
    try:
        low, high = (float(v) for v in clip)
    except (TypeError, ValueError):
        low = high = math.nan
    if not 0.0 <= low < high:
        raise ValueError(f"{name}: expected (low, high) with 0 <= low < high, got {clip!r}")
    return low, high


def one_of(name: str, value: T, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices`` (ValueError naming them otherwise)."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}: must be one of {choices}, got {value!r}")
    return value
