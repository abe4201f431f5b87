"""What several peer families share: the ``peers`` extra, the package check, param groups and their snippet."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.util import find_spec
from typing import Any

from ...tasks.lora import PEFT_HINT
from ..methods.kit import Build, policy_snippet

__all__ = ["NOT_DEFAULT", "PEERS_EXTRA", "all_of", "groups_at", "groups_expr", "needs_package", "policy_loop"]

PEERS_EXTRA = "pip install -c constraints.txt 'layerwise[peers]'"
"""How to install the peers' optimizers."""

_PEER = "a peer, run on request"
NOT_DEFAULT = {"scratch": _PEER, "fine-tuning": _PEER}
"""Every peer's :attr:`~layerwise.compare.methods.Method.not_default`: in no regime's default set."""


def needs_package(method: str, module: str, dist: str) -> Callable[[Mapping[str, Any]], None]:
    """A check refusing ``method`` when ``module`` (package ``dist``) cannot be imported."""

    def check(settings: Mapping[str, Any]) -> None:
        del settings
        if find_spec(module) is None:
            hint = PEFT_HINT if dist == "peft" else PEERS_EXTRA
            raise ValueError(f"{method}: needs the package {dist!r}, which is not installed; {hint}")

    return check


def all_of(*checks: Callable[[Mapping[str, Any]], None]) -> Callable[[Mapping[str, Any]], None]:
    """A check running every one of ``checks``."""

    def check(settings: Mapping[str, Any]) -> None:
        for one in checks:
            one(settings)

    return check


def groups_at(context: Build, lr: float) -> list[dict[str, Any]]:
    """The partition's param groups at ``lr`` with the task's decay (none on biases and norms)."""
    return context.partition.param_groups(lr=lr, weight_decay=context.task.weight_decay, no_decay=("bias", "norm"))


def groups_expr(lr: str) -> str:
    """The snippet expression of :func:`groups_at` (``wd`` set by :func:`policy_loop`)."""
    return f'part.param_groups(lr={lr}, weight_decay=wd, no_decay=("bias", "norm"))'


def policy_loop(build: Build, optimizer_line: str) -> str:
    """A peer's snippet: ``wd``, the line making ``opt``, then the policy's scheduler and the loop."""
    return f"wd = {build.task.weight_decay:g}\n{optimizer_line}\n{policy_snippet(build)}"
