"""Multirate: ``multirate`` (the head fast, the rest every k steps), ``multirate-block`` (two groups fast) and
``random-subset`` (§5.1's random slow subsets of the middle groups' weights, on its own SGD).

Examples:
    >>> from layerwise.compare.methods import resolve_settings
    >>> resolve_settings("random-subset", {"p": 0.2})
    {'lr': 0.1, 'k': 5, 'p': 0.2, 'momentum': 0.0}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..._checks import (
    boolean,
    finite_nonneg,
    fraction,
    int_between,
    optional,
    positive_int,
    positive_number,
    unit_interval,
)
from ...groups import Partition
from ...multirate import Multirate
from ...random_subsets import RandomSubsetMultirate
from ...tasks import Task, optimizer_preset
from .kit import (
    Build,
    Check,
    Method,
    Setup,
    checked,
    needs_groups,
    needs_head,
    policy_only,
    policy_snippet,
    register_method,
)

__all__ = ["register_multirate"]

_FINE_TUNING_ONLY = "a fine-tuning method"

_DEFAULTS = {"heavy_ball": True, "drift": True, "same_lr": False, "weight_decay": None}
_CHECKS: dict[str, Check] = {
    "k": positive_int,
    "fast": positive_int,
    "heavy_ball": boolean,
    "drift": boolean,
    "same_lr": boolean,
    "weight_decay": optional(finite_nonneg),
}


def _fast(context: Build, fast: Any) -> list[str]:
    count = len(context.partition)
    int_between("multirate.fast", fast, 1, count - 1, f"{count - 1} (the number of last groups that are fast)")
    return list(context.partition.names[-fast:])


def _base_options(task: Task, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The task preset's options; heavy-ball momentum (no Nesterov), the paper's Algorithm 1, unless asked;
    the ablations' ``drift`` (False: Algorithm 2), ``same_lr`` (h_S = h_F) and ``weight_decay``."""
    options = dict(optimizer_preset(task).options)
    if settings["heavy_ball"] and options.get("nesterov"):
        options["nesterov"] = False
    decay = settings["weight_decay"]
    options["weight_decay"] = task.weight_decay if decay is None else decay
    if not settings["drift"]:
        options["drift"] = False
    if settings["same_lr"]:
        options["slow_lr"] = task.lr  # the fast part's step (Table 2's ablation)
    return options


def _multirate(context: Build, settings: dict[str, Any]) -> Setup:
    k, task = settings["k"], context.task
    preset = optimizer_preset(task)
    # h = k x the task's LR: the fast part steps the task's LR every step, the slow part k x it every k steps
    optimizer = Multirate.from_partition(
        context.partition,
        fast=_fast(context, settings["fast"]),
        lr=task.lr * k,
        k=k,
        base=preset.cls,
        model=context.model,
        **_base_options(task, settings),
    )
    return Setup(optimizer, policy_only(context, optimizer))


def _multirate_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    task, k = build.task, settings["k"]
    preset = optimizer_preset(task)
    options = "".join(f", {key}={value!r}" for key, value in _base_options(task, settings).items())
    return (
        f"opt = layerwise.Multirate.from_partition(part, fast={_fast(build, settings['fast'])!r}, "
        f"lr={task.lr * k:g}, k={k}, base={preset.class_path}, model=model{options})\n"
        f"{policy_snippet(build)}"
    )


_MULTIRATE = Method(
    "multirate",
    "Multirate (Algorithm 1): the last `fast` groups step every step, the rest get a gradient every k steps; "
    "on SGD tasks heavy-ball momentum as in the paper's Algorithm 1 (`heavy_ball=false`: the task's Nesterov); "
    "ablations: `drift=false` (Algorithm 2), `same_lr` (slow step = fast step), `weight_decay` (None: task's)",
    _multirate,
    {**_DEFAULTS, "k": 4, "fast": 1},
    needs_head,
    not_default={"scratch": f"{_FINE_TUNING_ONLY}: from scratch it is 13 points behind at 250 steps"},
    snippet=_multirate_snippet,
    check=checked("multirate", **_CHECKS),
)

_MULTIRATE_BLOCK = Method(
    "multirate-block",
    "Multirate with the head and the last block fast (`fast` = 2 last groups)",
    _multirate,
    {**_DEFAULTS, "k": 4, "fast": 2},
    needs_groups(3),
    not_default={"scratch": _FINE_TUNING_ONLY},
    snippet=_multirate_snippet,
    check=checked("multirate-block", **_CHECKS),
)


def _probability(flag: str, value: Any) -> float:
    return fraction(flag, value, what="a probability")


def _middle_weights(partition: Partition) -> list[torch.nn.Parameter]:
    """The weights of two or more dimensions in the groups between the first and the last (LISA's sampled ones)."""
    return [p for group in list(partition)[1:-1] for p in group.params if p.ndim >= 2]


def _random_subset(context: Build, settings: dict[str, Any]) -> Setup:
    lr, task = settings["lr"], context.task
    groups = context.partition.param_groups(lr=lr, weight_decay=task.weight_decay, no_decay=("bias", "norm"))
    optimizer = RandomSubsetMultirate(
        groups,
        lr=lr,
        k=settings["k"],
        probabilities={p: settings["p"] for p in _middle_weights(context.partition)},
        seed=torch.initial_seed(),
        momentum=settings["momentum"],
    )
    return Setup(optimizer, policy_only(context, optimizer), eval_mode=optimizer.eval, train_mode=optimizer.train)


def _random_subset_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    lr, wd = settings["lr"], build.task.weight_decay
    return (
        f"slow = {{p: {settings['p']!r} for g in list(part)[1:-1] for p in g.params if p.ndim >= 2}}   "
        "# the middle groups' weights\n"
        f'groups = part.param_groups(lr={lr!r}, weight_decay={wd:g}, no_decay=("bias", "norm"))\n'
        f"opt = layerwise.RandomSubsetMultirate(groups, lr={lr!r}, k={settings['k']!r}, probabilities=slow, "
        f"seed=torch.initial_seed(), momentum={settings['momentum']!r})\n"
        f"{policy_snippet(build)}\n"
        "opt.eval()   # every weight in place to evaluate; opt.train() before training on"
    )


_RANDOM_SUBSET = Method(
    "random-subset",
    "RandomSubsetMultirate (the Multirate paper's §5.1 regulariser, LISA's family): every cycle each entry of "
    "the middle groups' weights (all but the first and last group, those LISA samples) is slow with "
    "probability `p`: zero for `k` fast steps, then back for one joint step of `k` x the LR; its own SGD "
    "(`lr`, `momentum`; the paper's h=0.1, no momentum), the task's decay; evaluated with every weight in "
    "place; times the policy",
    _random_subset,
    {"lr": 0.1, "k": 5, "p": 0.5, "momentum": 0.0},
    needs_groups(3),
    not_default={
        "scratch": "a regulariser run on request (the Multirate bench measures it on its perceptron)",
        "fine-tuning": "LISA's closest technique, run on request",
    },
    snippet=_random_subset_snippet,
    check=checked("random-subset", lr=positive_number, k=positive_int, p=_probability, momentum=unit_interval),
    uses_task_lr=False,
    not_parallel={"fsdp": "its slow subsets are drawn over each whole tensor; FSDP2 shards them"},
    optimizer_use="own",
)


def register_multirate() -> None:
    """Register ``multirate``, ``multirate-block`` and ``random-subset``."""
    for method in (_MULTIRATE, _MULTIRATE_BLOCK, _RANDOM_SUBSET):
        register_method(method)
