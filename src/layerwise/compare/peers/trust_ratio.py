"""Trust-ratio peers: LARS (pytorch-optimizer's) and LAMB (:class:`layerwise.peers_optim.Lamb`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._checks import positive_number, unit_interval
from ...peers_optim import Lamb
from ..methods.kit import Build, Method, Setup, checked, policy_only, register_method
from .shared import NOT_DEFAULT, all_of, groups_at, groups_expr, needs_package, policy_loop

__all__ = ["register_trust_ratio"]


def _lars(context: Build, settings: dict[str, Any]) -> Setup:
    from pytorch_optimizer import LARS

    optimizer = LARS(
        groups_at(context, settings["lr"]),
        lr=settings["lr"],
        momentum=settings["momentum"],
        trust_coefficient=settings["trust_coefficient"],
    )
    return Setup(optimizer, policy_only(context, optimizer))


def _lars_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    line = (
        f"opt = pytorch_optimizer.LARS({groups_expr(repr(settings['lr']))}, lr={settings['lr']!r}, "
        f"momentum={settings['momentum']!r}, trust_coefficient={settings['trust_coefficient']!r})"
    )
    return "import pytorch_optimizer\n" + policy_loop(build, line)


_LARS = Method(
    "lars",
    "LARS (You, Gitman & Ginsburg 2017; pytorch-optimizer's LARS): per-tensor trust ratio "
    "eta*||w||/(||g||+wd*||w||) on SGD momentum 0.9, eta=0.001 (the paper's); lr=1 (timm's Lars default), "
    "the task's decay, biases and norms unadapted; under the comparison's cosine",
    _lars,
    {"lr": 1.0, "momentum": 0.9, "trust_coefficient": 0.001},
    not_default=NOT_DEFAULT,
    snippet=_lars_snippet,
    check=all_of(
        needs_package("lars", "pytorch_optimizer", "pytorch-optimizer"),
        checked("lars", lr=positive_number, momentum=unit_interval, trust_coefficient=positive_number),
    ),
    uses_task_lr=False,
    not_parallel={"fsdp": "pytorch-optimizer's LARS calls torch._foreach_copy_, which DTensors lack"},
    optimizer_use="own",
)


def _lamb(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = Lamb(groups_at(context, settings["lr"]), lr=settings["lr"], eps=settings["eps"])
    return Setup(optimizer, policy_only(context, optimizer))


def _lamb_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    lr = repr(settings["lr"])
    line = f"opt = layerwise.peers_optim.Lamb({groups_expr(lr)}, lr={lr}, eps={settings['eps']!r})"
    return "import layerwise.peers_optim\n" + policy_loop(build, line)


_LAMB = Method(
    "lamb",
    "LAMB (You et al. 2019, Algorithm 2; layerwise.peers_optim.Lamb): Adam moments with a per-tensor trust "
    "ratio ||w||/||r||, lr=1e-3 (timm's and pytorch-optimizer's Lamb default), eps=1e-6 (the paper's), the "
    "task's decay inside r; under the comparison's cosine",
    _lamb,
    {"lr": 1e-3, "eps": 1e-6},
    not_default=NOT_DEFAULT,
    snippet=_lamb_snippet,
    check=checked("lamb", lr=positive_number, eps=positive_number),
    uses_task_lr=False,
    optimizer_use="own",
)


def register_trust_ratio() -> None:
    """Register ``lars`` and ``lamb``."""
    for method in (_LARS, _LAMB):
        register_method(method)
