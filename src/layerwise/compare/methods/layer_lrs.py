"""Smith's layer LR schedules: ``llr`` (multipliers across depth that reverse) and ``staggered`` 1cycles."""

from __future__ import annotations

from ..._checks import finite_nonneg, fraction, optional
from .kit import Method, checked, needs_groups, policy_check, register_method, scheduled, scheduled_snippet

__all__ = ["register_layer_lrs"]

_SCRATCH_ONLY = {"fine-tuning": "a from-scratch experiment (Smith's layer LRs); not in the fine-tuning set"}

_LLR = Method(
    "llr",
    "Smith's layer LRs: multipliers `first` -> `last` across depth that reverse linearly by the end, times the policy",
    scheduled("llr"),
    {"first": 1.5, "last": 0.5, "policy": None},
    needs_groups(2),
    not_default=_SCRATCH_ONLY,
    snippet=scheduled_snippet("llr"),
    check=checked("llr", first=finite_nonneg, last=finite_nonneg, policy=policy_check),
)

_STAGGERED = Method(
    "staggered",
    "a 1cycle per group, peaks staggered from the first group (20 %) to the last (60 %); `first_high` -> "
    "`last_high` and `first_low` -> `last_low` spread the groups' maxima and minima (None: 1 and 0.04 x it)",
    scheduled("staggered", uses_policy=False),
    {
        "first_peak": 0.2,
        "last_peak": 0.6,
        "first_high": None,
        "last_high": None,
        "first_low": None,
        "last_low": None,
    },
    needs_groups(2),
    not_default=_SCRATCH_ONLY,
    snippet=scheduled_snippet("staggered", uses_policy=False),
    check=checked(
        "staggered",
        first_peak=fraction,
        last_peak=fraction,
        **dict.fromkeys(("first_high", "last_high", "first_low", "last_low"), optional(finite_nonneg)),
    ),
)


def register_layer_lrs() -> None:
    """Register ``llr`` and ``staggered``."""
    for method in (_LLR, _STAGGERED):
        register_method(method)
