"""ULMFiT's fine-tuning methods: ``head-only``, ``discriminative`` LRs and ``gradual-unfreezing``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._checks import fraction, positive_number
from ...freezing import UNFREEZING_ORDERS, Freezer, GradualUnfreezing
from .kit import (
    Build,
    Chain,
    Method,
    Setup,
    checked,
    choice,
    needs_groups,
    needs_head,
    optimizer_line,
    policy_check,
    policy_only,
    policy_snippet,
    positive_fraction,
    register_method,
    scheduled,
    scheduled_snippet,
)

__all__ = ["RANDOM_BODY", "register_fine_tuning"]

RANDOM_BODY = "from scratch, the body's random features are not worth keeping"
"""Why a method that keeps the body's features is left out of the scratch regime's default set."""


def _head_only(context: Build, settings: dict[str, Any]) -> Setup:
    del settings
    optimizer = context.optimizer()
    freezer = Freezer(context.model, optimizer)
    freezer.freeze(*context.partition.names[:-1])
    return Setup(optimizer, policy_only(context, optimizer), freezer=freezer)


def _head_only_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    del settings
    return (
        f"{optimizer_line(build)}\n"
        "freezer = layerwise.Freezer(model, opt); freezer.freeze(*part.names[:-1])   # only the head trains\n"
        f"{policy_snippet(build)}"
    )


_HEAD_ONLY = Method(
    "head-only",
    "only the last group (the head) trains; the rest stays frozen at its pretrained weights",
    _head_only,
    applies=needs_head,
    not_default={"scratch": RANDOM_BODY},
    snippet=_head_only_snippet,
)

_DISCRIMINATIVE = Method(
    "discriminative",
    "ULMFiT discriminative LRs: each group 1/ratio of the next (the head at the full LR), times the policy",
    scheduled("discriminative"),
    {"ratio": 2.6, "policy": None},
    needs_groups(2),
    not_default={"scratch": "slows the early layers a random start needs most (-15 points on fashion-mnist)"},
    snippet=scheduled_snippet("discriminative"),
    check=checked("discriminative", ratio=positive_number, policy=policy_check),
)


def _unfreeze_every(context: Build, until: float) -> int:
    until = fraction("gradual-unfreezing.until", until, open_low=True)
    return max(1, round(until * context.total_steps / max(1, len(context.partition) - 1)))


def _gradual_unfreezing(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = context.optimizer()
    freezer = Freezer(context.model, optimizer)
    unfreezing = GradualUnfreezing(freezer, _unfreeze_every(context, settings["until"]), order=settings["order"])
    return Setup(optimizer, Chain(unfreezing, policy_only(context, optimizer)), freezer=freezer)


def _unfreezing_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"{optimizer_line(build)}\n"
        "freezer = layerwise.Freezer(model, opt)\n"
        f"unfreeze = layerwise.GradualUnfreezing(freezer, "
        f"every={_unfreeze_every(build, settings['until'])}, order={settings['order']!r})\n"
        f"{policy_snippet(build)}; unfreeze.step()"
    )


_GRADUAL_UNFREEZING = Method(
    "gradual-unfreezing",
    "ULMFiT gradual unfreezing: the head first, then one more group towards the input at even intervals "
    "until `until` of training, times the policy; `order=input-first` runs from the input to the head",
    _gradual_unfreezing,
    {"until": 0.5, "order": "head-first"},
    needs_groups(2),
    not_default={"scratch": RANDOM_BODY},
    snippet=_unfreezing_snippet,
    check=checked("gradual-unfreezing", until=positive_fraction, order=choice(*UNFREEZING_ORDERS)),
)


def register_fine_tuning() -> None:
    """Register ``head-only``, ``discriminative`` and ``gradual-unfreezing``."""
    for method in (_HEAD_ONLY, _DISCRIMINATIVE, _GRADUAL_UNFREEZING):
        register_method(method)
