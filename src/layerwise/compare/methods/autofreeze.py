"""AutoFreeze: ``autofreeze`` (front groups freeze once their gradient norms settle) and ``autofreeze+cache``.

The run's LR is the comparison's global policy (cosine by default) over the run, as the baseline's,
in :attr:`Setup.scheduler`; AutoFreeze itself counts the optimizer's steps from its hooks, so its
checks fall on the same training steps however often the scheduler is stepped. Both its interval and
its warm-up are counted in the baseline's steps (``total_steps``).

Examples:
    >>> settings = {"intervals": 10, "percentile": 50.0, "freeze_warmup": 0.3}
    >>> interval_steps(settings, total_steps=250), warmup_steps(settings, total_steps=250)
    (25, 75)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._checks import fraction, positive_int
from ...autofreeze import AutoFreeze, check_percentile
from .kit import (
    Build,
    Method,
    Setup,
    checked,
    needs_groups,
    optimizer_line,
    policy_only,
    policy_snippet,
    register_method,
)

__all__ = ["AUTOFREEZE_CHECKS", "interval_steps", "register_autofreeze", "warmup_steps"]


AUTOFREEZE_CHECKS = {"intervals": positive_int, "percentile": check_percentile, "freeze_warmup": fraction}
"""The checks of AutoFreeze's settings in ``compare`` (``intervals``, ``percentile``, ``freeze_warmup``)."""

_DEFAULTS = {"intervals": 10, "percentile": 50.0, "freeze_warmup": 0.3}
# freeze_warmup 0.3: the first decision at the third of the ten checks instead of the second (the authors' schedule),
# where MiniLM's two front groups froze together (docs/autofreeze.md, "Settings and defaults")


def interval_steps(settings: Mapping[str, Any], total_steps: int) -> int:
    """AutoFreeze's interval in steps: the run's steps split into ``intervals`` (at least one step)."""
    return max(1, total_steps // settings["intervals"])


def warmup_steps(settings: Mapping[str, Any], total_steps: int) -> int:
    """AutoFreeze's warm-up in steps: the ``freeze_warmup`` fraction of the run's steps, rounded."""
    return round(settings["freeze_warmup"] * total_steps)


def _autofreeze(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = context.optimizer()
    interval = interval_steps(settings, context.total_steps)
    warmup = warmup_steps(settings, context.total_steps)
    autofreeze = AutoFreeze(context.model, optimizer, interval, percentile=settings["percentile"], warmup_steps=warmup)
    decisions = autofreeze.decisions
    return Setup(
        optimizer,
        policy_only(context, optimizer),
        freezer=autofreeze.freezer,
        records=lambda: {"freeze_decisions": [decision._asdict() for decision in decisions]},
    )


def _autofreeze_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    interval, warmup = interval_steps(settings, build.total_steps), warmup_steps(settings, build.total_steps)
    return (
        f"import layerwise.autofreeze\n{optimizer_line(build)}\n"
        f"autofreeze = layerwise.autofreeze.AutoFreeze(model, opt, {interval}, "
        f"percentile={settings['percentile']!r}, warmup_steps={warmup})   # acts from opt's step hooks\n"
        "freezer = autofreeze.freezer\n"
        f"{policy_snippet(build)}"
    )


_AUTOFREEZE = Method(
    "autofreeze",
    "AutoFreeze (Liu et al. 2021): every run/`intervals` steps after a `freeze_warmup` fraction of the run, the front "
    "groups whose gradient-norm change since the last interval is below the `percentile` of the changes of the "
    "groups that may freeze (training, the head left out) freeze (prefix only, never the last block or the "
    "head, never unfrozen); times the policy",
    _autofreeze,
    _DEFAULTS,
    needs_groups(3),
    # in the fine-tuning set: on EfficientNet-Lite0 at equal time the best mean of the freezing methods,
    # the target in 3/3 seeds (BENCHMARKS.md, "Muon and AutoFreeze at equal wall-clock")
    not_default={"scratch": "a fine-tuning method (the paper's setting): run on request"},
    snippet=_autofreeze_snippet,
    check=checked("autofreeze", **AUTOFREEZE_CHECKS),
)


def register_autofreeze() -> None:
    """Register ``autofreeze`` (its ``+cache`` variant comes with the others, :mod:`layerwise.compare.cached`)."""
    register_method(_AUTOFREEZE)
