"""Adaptive peers that set their own LR: Prodigy, D-Adaptation, DoG (with its averaging), Schedule-Free."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ..._checks import boolean, fraction, optional, positive_int, positive_number
from ...groups import Partition
from ...tasks import Task, optimizer_preset
from ..methods.kit import Build, Method, Setup, checked, loop, policy_only, register_method
from .shared import NOT_DEFAULT, all_of, groups_at, groups_expr, needs_package, policy_loop

__all__ = ["register_adaptive"]

_FLATTENS = (
    "its optimizer flattens each parameter, which fails on FSDP2's unevenly sharded DTensors "
    "(and its fsdp_in_use sums are not wired up here)"
)


def _family(task: Task) -> str | None:
    """``"sgd"`` or ``"adam"``: which variant of an optimizer peer matches the task's preset."""
    cls = optimizer_preset(task).cls
    if issubclass(cls, torch.optim.SGD):
        return "sgd"
    if issubclass(cls, (torch.optim.Adam, torch.optim.AdamW)):
        return "adam"
    return None


def _sgd_or_adam(task: Task, partition: Partition) -> str | None:
    del partition
    if _family(task) is None:
        return f"the task's optimizer preset {task.optimizer_name!r} is neither SGD-like nor Adam-like"
    return None


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# ---- prodigy ---------------------------------------------------------------------------------


def _prodigy(context: Build, settings: dict[str, Any]) -> Setup:
    from prodigyopt import Prodigy

    optimizer = Prodigy(groups_at(context, 1.0), lr=1.0, d_coef=settings["d_coef"], decouple=True)
    return Setup(optimizer, policy_only(context, optimizer))


def _prodigy_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    line = f"opt = prodigyopt.Prodigy({groups_expr('1.0')}, lr=1.0, d_coef={settings['d_coef']!r}, decouple=True)"
    return "import prodigyopt\n" + policy_loop(build, line)


_PRODIGY = Method(
    "prodigy",
    "Prodigy (Mishchenko & Defazio 2024; prodigyopt.Prodigy): Adam with an estimated LR, lr=1 and "
    "d_coef=1 as its README recommends, AdamW-style decay, under the comparison's cosine (the README's "
    "scheduler)",
    _prodigy,
    {"d_coef": 1.0},
    not_default=NOT_DEFAULT,
    snippet=_prodigy_snippet,
    check=all_of(needs_package("prodigy", "prodigyopt", "prodigyopt"), checked("prodigy", d_coef=positive_number)),
    uses_task_lr=False,
    not_parallel={"fsdp": _FLATTENS},
    optimizer_use="own",
)

# ---- dadapt ----------------------------------------------------------------------------------


def _preset_momentum(task: Task) -> float:
    return float(optimizer_preset(task).options.get("momentum", 0.0))


def _dadapt(context: Build, settings: dict[str, Any]) -> Setup:
    import dadaptation

    del settings
    groups = groups_at(context, 1.0)
    if _family(context.task) == "sgd":
        optimizer = dadaptation.DAdaptSGD(groups, lr=1.0, momentum=_preset_momentum(context.task))
    else:
        optimizer = dadaptation.DAdaptAdam(groups, lr=1.0, decouple=True)
    return Setup(optimizer, policy_only(context, optimizer))


def _dadapt_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    del settings
    if _family(build.task) == "sgd":
        extra = f"DAdaptSGD({groups_expr('1.0')}, lr=1.0, momentum={_preset_momentum(build.task)!r})"
    else:
        extra = f"DAdaptAdam({groups_expr('1.0')}, lr=1.0, decouple=True)"
    return "import dadaptation\n" + policy_loop(build, f"opt = dadaptation.{extra}")


_DADAPT = Method(
    "dadapt",
    "D-Adaptation (Defazio & Mishchenko 2023; dadaptation.DAdaptSGD on SGD tasks, DAdaptAdam with "
    "decouple=True on AdamW tasks): lr=1 and the usual scheduler (the comparison's cosine), as its README says",
    _dadapt,
    applies=_sgd_or_adam,
    not_default=NOT_DEFAULT,
    snippet=_dadapt_snippet,
    check=needs_package("dadapt", "dadaptation", "dadaptation"),
    uses_task_lr=False,
    not_parallel={"fsdp": _FLATTENS},
    optimizer_use="own",
)

# ---- dog -------------------------------------------------------------------------------------


class _SwapIn:
    """Evaluation with another set of weights: ``swap_in()`` loads them, ``restore()`` puts training's back."""

    def __init__(self, model: nn.Module, weights: Callable[[], Mapping[str, torch.Tensor]]) -> None:
        self.model, self.weights, self._saved = model, weights, None

    def swap_in(self) -> None:
        self._saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.weights())

    def restore(self) -> None:
        if self._saved is not None:
            self.model.load_state_dict(self._saved)
            self._saved = None


def _dog_reps_rel(model: nn.Module, reps_rel: float | None) -> float:
    """DoG's README: 1e-6 by default, 1e-4 for networks with batch normalization."""
    if reps_rel is not None:
        return reps_rel
    return 1e-4 if _has_batchnorm(model) else 1e-6


def _dog(context: Build, settings: dict[str, Any]) -> Setup:
    from dog import DoG, PolynomialDecayAverager

    params = [p for group in context.partition for p in group.params]
    # one param group: DoG's distance and gradient sums are global (per-group sums would make it LDoG-like)
    optimizer = DoG(
        [{"params": params, "name": "all", "depth": 0}],
        lr=1.0,
        reps_rel=_dog_reps_rel(context.model, settings["reps_rel"]),
        weight_decay=context.task.weight_decay,
    )
    if not settings["average"]:
        return Setup(optimizer)
    averager = PolynomialDecayAverager(context.model, gamma=settings["gamma"])
    # after every opt.step(), as the README's loop: a step hook, so it is part of each timed step under
    # either budget (a Setup.scheduler is stepped to the budget's share instead, not once per step)
    optimizer.register_step_post_hook(lambda opt, args, kwargs: averager.step())
    swap = _SwapIn(context.model, lambda: averager.averaged_model.state_dict())
    return Setup(optimizer, eval_mode=swap.swap_in, train_mode=swap.restore)


def _dog_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    reps = _dog_reps_rel(build.model, settings["reps_rel"])
    lines = [
        "import dog",
        "params = [p for p in model.parameters() if p.requires_grad]   # one group: DoG's sums are global",
        f"opt = dog.DoG(params, lr=1.0, reps_rel={reps!r}, weight_decay={build.task.weight_decay:g})",
    ]
    if settings["average"]:
        lines.append(f"averager = dog.PolynomialDecayAverager(model, gamma={settings['gamma']!r})")
        lines.append(loop("plain", build.total_steps) + "; averager.step()")
        lines.append("# evaluate averager.averaged_model")
    else:
        lines.append(loop("plain", build.total_steps))
    return "\n".join(lines)


_DOG = Method(
    "dog",
    "DoG (Ivgi, Hinder & Carmon 2023; dog-optimizer's DoG): parameter-free, lr=1, no schedule, with the "
    "polynomial-decay iterate averaging its README requires, stepped after every optimizer step "
    "(evaluated at the average); reps_rel None: "
    "the README's 1e-6, 1e-4 with batch norm",
    _dog,
    {"reps_rel": None, "average": True, "gamma": 8.0},
    not_default=NOT_DEFAULT,
    snippet=_dog_snippet,
    check=all_of(
        needs_package("dog", "dog", "dog-optimizer"),
        checked("dog", reps_rel=optional(positive_number), average=boolean, gamma=positive_number),
    ),
    uses_task_lr=False,
    not_parallel={"fsdp": "its iterate averager deep-copies the model, which FSDP2 refuses"},
    optimizer_use="own",
)

# ---- schedulefree ----------------------------------------------------------------------------


class _RecentInputs:
    """Keeps the model's last ``count`` training inputs (a forward pre-hook), for BatchNorm statistics."""

    def __init__(self, model: nn.Module, count: int) -> None:
        self.inputs: deque[Any] = deque(maxlen=count)
        self.recording = True
        model.register_forward_pre_hook(self._record)

    def _record(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self.recording and module.training and torch.is_grad_enabled() and args:
            self.inputs.append(args[0])


class _ScheduleFreeModes:
    """``optimizer.eval()`` before evaluation (the model takes the averaged x), ``train()`` after it.

    With BatchNorm, the README's caveat: running statistics are recomputed at x from the last
    training batches, in train mode without gradients, before evaluating.
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer, bn_batches: int) -> None:
        self.model, self.optimizer = model, optimizer
        self.recent = _RecentInputs(model, bn_batches) if bn_batches and _has_batchnorm(model) else None

    def eval_mode(self) -> None:
        self.optimizer.eval()
        if self.recent is not None and self.recent.inputs:
            self._refresh_batchnorm()

    def _refresh_batchnorm(self) -> None:
        was_training, self.recent.recording = self.model.training, False
        self.model.train()
        with torch.no_grad():
            for inputs in self.recent.inputs:
                self.model(inputs)
        self.model.train(was_training)
        self.recent.recording = True

    def train_mode(self) -> None:
        self.optimizer.train()


def _schedulefree_lr(task: Task, lr_mult: float | None) -> float:
    """The README: 10x-50x the classical SGD rate, 1x-10x the AdamW rate; None takes the low end."""
    if lr_mult is None:
        lr_mult = 10.0 if _family(task) == "sgd" else 1.0
    return task.lr * lr_mult


def _warmup_steps(context: Build, warmup: float) -> int:
    return round(warmup * context.total_steps)


def _schedulefree_optimizer(context: Build, settings: Mapping[str, Any]) -> Optimizer:
    import schedulefree

    task = context.task
    lr = _schedulefree_lr(task, settings["lr_mult"])
    warmup = _warmup_steps(context, settings["warmup"])
    if _family(task) == "sgd":
        return schedulefree.SGDScheduleFree(groups_at(context, lr), lr=lr, momentum=0.9, warmup_steps=warmup)
    return schedulefree.AdamWScheduleFree(groups_at(context, lr), lr=lr, warmup_steps=warmup)


def _schedulefree(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = _schedulefree_optimizer(context, settings)
    optimizer.train()  # its steps need train mode; evaluation switches to the averaged weights and back
    modes = _ScheduleFreeModes(context.model, optimizer, settings["bn_batches"])
    return Setup(optimizer, eval_mode=modes.eval_mode, train_mode=modes.train_mode)


def _schedulefree_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    lr = _schedulefree_lr(build.task, settings["lr_mult"])
    warmup = _warmup_steps(build, settings["warmup"])
    if _family(build.task) == "sgd":
        cls, extra = "SGDScheduleFree", ", momentum=0.9"
    else:
        cls, extra = "AdamWScheduleFree", ""
    return (
        f"import schedulefree\nwd = {build.task.weight_decay:g}\n"
        f"opt = schedulefree.{cls}({groups_expr(f'{lr:g}')}, lr={lr:g}{extra}, warmup_steps={warmup})\n"
        f"opt.train()\n{loop('plain', build.total_steps)}\n"
        "opt.eval()   # evaluate at the averaged weights (BatchNorm: refresh its statistics first); opt.train() after"
    )


def _count(flag: str, value: Any) -> int:
    return positive_int(flag, value, minimum=0)


_SCHEDULEFREE = Method(
    "schedulefree",
    "Schedule-Free (Defazio et al. 2024; schedulefree.SGDScheduleFree / AdamWScheduleFree by the task's "
    "optimizer): no schedule, evaluated at the averaged x; lr = `lr_mult` x the task LR (None: 10 for SGD, "
    "1 for AdamW, the low ends of its README's ranges), `warmup` fraction of linear warm-up (the README "
    "recommends one), BatchNorm statistics refreshed on the last `bn_batches` training batches",
    _schedulefree,
    {"lr_mult": None, "warmup": 0.05, "bn_batches": 50},
    applies=_sgd_or_adam,
    not_default=NOT_DEFAULT,
    snippet=_schedulefree_snippet,
    check=all_of(
        needs_package("schedulefree", "schedulefree", "schedulefree"),
        checked("schedulefree", lr_mult=optional(positive_number), warmup=fraction, bn_batches=_count),
    ),
    optimizer_use="own",
)


def register_adaptive() -> None:
    """Register ``prodigy``, ``dadapt``, ``dog`` and ``schedulefree``."""
    for method in (_PRODIGY, _DADAPT, _DOG, _SCHEDULEFREE):
        register_method(method)
