"""Peer methods for ``layerwise compare``: what a user would run instead of layerwise.

Each peer is a :class:`~layerwise.compare.methods.Method` built from its package's (or paper's)
recommended settings, cited in its description and in ``docs/peers.md``. None is in a regime's
default set: name them with ``--methods``. The optimizers come from the ``peers`` extra
(``pip install -c constraints.txt 'layerwise[peers]'``); a peer whose package is missing is refused
by its ``check`` before anything is loaded. The LR-only peers (layer-wise LR decay) cost what the
baseline costs; the others are timed by the equal-cost plan.

Examples:
    >>> from layerwise.compare.methods import METHODS, resolve_settings
    >>> resolve_settings("layer-decay")
    {'decay': 0.75}
    >>> layer_decay_multipliers(3, 0.5)
    [0.25, 0.5, 1.0]
    >>> composer_frozen_count(step=75, total=100, groups=4, start=0.5, level=1.0)
    2
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer

from .. import recipes
from .._checks import boolean, fraction, optional, positive_int, positive_number, unit_interval
from ..freezing import Freezer
from ..groups import Partition
from ..scheduler import LayerwiseLR
from ..schedules import Constant, LayerSchedule
from ..tasks import OPTIMIZER_PRESETS, Task, make_optimizer
from ..tasks.lora import PEFT_HINT, has_lora
from .methods import (
    _LOOPS,
    Build,
    Method,
    Setup,
    _Chain,
    _loop,
    _optimizer_line,
    _policy_expr,
    _policy_only,
    _policy_snippet,
    checked,
    register_method,
)

__all__ = [
    "PEERS_EXTRA",
    "Restarted",
    "composer_frozen_count",
    "even_mults",
    "fastai_fine_tune_lrs",
    "layer_decay_multipliers",
    "register_peers",
]

PEERS_EXTRA = "pip install -c constraints.txt 'layerwise[peers]'"
"""How to install the peers' optimizers."""

_PEER = "a peer, run on request"
_NOT_DEFAULT = {"scratch": _PEER, "fine-tuning": _PEER}


# ---- shared checks ---------------------------------------------------------------------------


def _needs_package(method: str, module: str, dist: str) -> Callable[[Mapping[str, Any]], None]:
    """A check refusing ``method`` when ``module`` (package ``dist``) cannot be imported."""

    def check(settings: Mapping[str, Any]) -> None:
        del settings
        if find_spec(module) is None:
            hint = PEFT_HINT if dist == "peft" else PEERS_EXTRA
            raise ValueError(f"{method}: needs the package {dist!r}, which is not installed; {hint}")

    return check


def _all(*checks: Callable[[Mapping[str, Any]], None]) -> Callable[[Mapping[str, Any]], None]:
    def check(settings: Mapping[str, Any]) -> None:
        for one in checks:
            one(settings)

    return check


def _inside(method: str, key: str) -> Callable[[Mapping[str, Any]], None]:
    """A fraction strictly between 0 and 1 (a phase that must leave steps on both sides)."""

    def check(settings: Mapping[str, Any]) -> None:
        value = fraction(f"--set {method}.{key}", settings[key])
        if not 0 < value < 1:
            raise ValueError(f"--set {method}.{key}: must be a fraction of training in (0, 1), got {value}")

    return check


# ---- shared applicability --------------------------------------------------------------------


def _family(task: Task) -> str | None:
    """``"sgd"`` or ``"adam"``: which variant of an optimizer peer matches the task's preset."""
    cls = OPTIMIZER_PRESETS.get(task.optimizer).cls
    if issubclass(cls, torch.optim.SGD):
        return "sgd"
    if issubclass(cls, (torch.optim.Adam, torch.optim.AdamW)):
        return "adam"
    return None


def _sgd_or_adam(task: Task, partition: Partition) -> str | None:
    del partition
    if _family(task) is None:
        return f"the task's optimizer preset {task.optimizer!r} is neither SGD-like nor Adam-like"
    return None


def _groups_at_least(count: int, task: Task, partition: Partition) -> str | None:
    del task
    if len(partition) < count:
        return f"it needs at least {count} groups; the task's partition has {len(partition)}"
    return None


def _layered(task: Task, partition: Partition) -> str | None:
    return _groups_at_least(2, task, partition)


def _fine_tuning_head(task: Task, partition: Partition) -> str | None:
    if task.regime != "fine-tuning":
        return "a fine-tuning method: from scratch there are no pretrained features to probe or keep"
    if not task.head:
        return "the task's model has no output head to train first (Task.head is False)"
    return _groups_at_least(2, task, partition)


# ---- building blocks -------------------------------------------------------------------------


def _groups(context: Build, lr: float) -> list[dict[str, Any]]:
    """The partition's param groups at ``lr`` with the task's decay (none on biases and norms)."""
    return context.partition.param_groups(lr=lr, weight_decay=context.task.weight_decay, no_decay=("bias", "norm"))


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _preset_momentum(task: Task) -> float:
    return float(OPTIMIZER_PRESETS.get(task.optimizer).options.get("momentum", 0.0))


def _warmup_steps(context: Build, warmup: float) -> int:
    return round(warmup * context.total_steps)


# ---- Prodigy, D-Adaptation ------------------------------------------------------------------


def _prodigy(context: Build, settings: dict[str, Any]) -> Setup:
    from prodigyopt import Prodigy

    optimizer = Prodigy(_groups(context, 1.0), lr=1.0, d_coef=settings["d_coef"], decouple=True)
    return Setup(optimizer, _policy_only(context, optimizer))


def _dadapt(context: Build, settings: dict[str, Any]) -> Setup:
    import dadaptation

    del settings
    groups = _groups(context, 1.0)
    if _family(context.task) == "sgd":
        optimizer = dadaptation.DAdaptSGD(groups, lr=1.0, momentum=_preset_momentum(context.task))
    else:
        optimizer = dadaptation.DAdaptAdam(groups, lr=1.0, decouple=True)
    return Setup(optimizer, _policy_only(context, optimizer))


# ---- DoG with its iterate averaging ---------------------------------------------------------


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
    swap = _SwapIn(context.model, lambda: averager.averaged_model.state_dict())
    return Setup(optimizer, averager, eval_mode=swap.swap_in, train_mode=swap.restore)


# ---- Schedule-Free ---------------------------------------------------------------------------


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


def _schedulefree_optimizer(context: Build, settings: Mapping[str, Any]) -> Optimizer:
    import schedulefree

    task = context.task
    lr = _schedulefree_lr(task, settings["lr_mult"])
    warmup = _warmup_steps(context, settings["warmup"])
    if _family(task) == "sgd":
        return schedulefree.SGDScheduleFree(_groups(context, lr), lr=lr, momentum=0.9, warmup_steps=warmup)
    return schedulefree.AdamWScheduleFree(_groups(context, lr), lr=lr, warmup_steps=warmup)


def _schedulefree(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = _schedulefree_optimizer(context, settings)
    optimizer.train()  # its steps need train mode; evaluation switches to the averaged weights and back
    modes = _ScheduleFreeModes(context.model, optimizer, settings["bn_batches"])
    return Setup(optimizer, eval_mode=modes.eval_mode, train_mode=modes.train_mode)


# ---- LARS, LAMB ------------------------------------------------------------------------------


def _lars(context: Build, settings: dict[str, Any]) -> Setup:
    from pytorch_optimizer import LARS

    optimizer = LARS(
        _groups(context, settings["lr"]),
        lr=settings["lr"],
        momentum=settings["momentum"],
        trust_coefficient=settings["trust_coefficient"],
    )
    return Setup(optimizer, _policy_only(context, optimizer))


def _lamb(context: Build, settings: dict[str, Any]) -> Setup:
    from ..peers_optim import Lamb

    optimizer = Lamb(_groups(context, settings["lr"]), lr=settings["lr"], eps=settings["eps"])
    return Setup(optimizer, _policy_only(context, optimizer))


# ---- layer-wise LR decay (BEiT, timm) --------------------------------------------------------


def layer_decay_multipliers(groups: int, decay: float) -> list[float]:
    """``decay ** (L - depth)`` for depths 0..L (input to head, L = groups - 1): the head gets the full LR."""
    positive_int("groups", groups)
    return [decay ** (groups - 1 - depth) for depth in range(groups)]


def _layer_decay(context: Build, settings: dict[str, Any]) -> Setup:
    task, mults = context.task, layer_decay_multipliers(len(context.partition), settings["decay"])
    groups = context.partition.param_groups(
        lr=task.lr, lr_mult=mults, weight_decay=task.weight_decay, no_decay=("bias", "norm")
    )
    optimizer = make_optimizer(task, groups)
    return Setup(optimizer, _policy_only(context, optimizer))


# ---- Composer's progressive layer freezing ---------------------------------------------------


def composer_frozen_count(step: int, total: int, groups: int, start: float, level: float) -> int:
    """Groups frozen after ``step`` of ``total`` steps (Composer's Layer Freezing rule, applied per step).

    None before ``start`` of training; then the frozen fraction grows linearly to ``level`` at the end.
    The earliest groups freeze first; the last group always trains (a step needs something to train).
    """
    progress = step / total
    if progress <= start:
        return 0
    frozen = math.floor(level * (progress - start) / (1.0 - start) * groups + 1e-9)  # 1.9999999 is 2
    return min(frozen, groups - 1)


class _ProgressiveFreezing:
    """Freezes the first :func:`composer_frozen_count` groups after every step."""

    def __init__(self, freezer: Freezer, total: int, start: float, level: float) -> None:
        self.freezer, self.total, self.start, self.level, self.count = freezer, total, start, level, 0

    def step(self) -> None:
        self.count += 1
        names = self.freezer.names
        frozen = composer_frozen_count(self.count, self.total, len(names), self.start, self.level)
        due = [n for n in names[:frozen] if not self.freezer.is_frozen(n)]
        if due:
            self.freezer.freeze(*due)


def _layer_freezing(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = context.optimizer()
    freezer = Freezer(context.model, optimizer)
    freezing = _ProgressiveFreezing(freezer, context.total_steps, settings["freeze_start"], settings["freeze_level"])
    return Setup(optimizer, _Chain(freezing, _policy_only(context, optimizer)), freezer=freezer)


# ---- fastai's fine_tune and LP-FT ------------------------------------------------------------


def even_mults(start: float, stop: float, count: int) -> list[float]:
    """``count`` values from ``start`` to ``stop``, evenly spaced on a log scale (fastai's ``even_mults``)."""
    if count == 1:
        return [stop]
    step = (stop / start) ** (1 / (count - 1))
    return [start * step**i for i in range(count)]


def _cos(start: float, end: float, pos: float) -> float:
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def _one_cycle(peak: float, pos: float, pct_start: float, div: float, div_final: float = 1e5) -> float:
    """fastai's ``fit_one_cycle`` LR: a cosine from ``peak / div`` up to ``peak`` over ``pct_start``, then down
    to ``peak / div_final``."""
    if pos < pct_start:
        return _cos(peak / div, peak, pos / pct_start)
    return _cos(peak, peak / div_final, (pos - pct_start) / (1 - pct_start))


def fastai_fine_tune_lrs(step: int, total: int, frozen: int, groups: int, options: Mapping[str, Any]) -> list[float]:
    """Every group's LR at ``step`` of fastai's ``fine_tune`` compressed into ``total`` steps.

    The first ``frozen`` steps: ``fit_one_cycle(slice(base_lr), pct_start=0.99)`` (the body at
    base_lr / 10, frozen; the head at base_lr); then ``fit_one_cycle(slice(base_lr / 2 / lr_mult,
    base_lr / 2), pct_start, div)`` with peaks spread by :func:`even_mults`.
    """
    base = options["base_lr"]
    if step < frozen:
        peaks = [base / 10] * (groups - 1) + [base]
        return [_one_cycle(peak, step / frozen, 0.99, 25.0) for peak in peaks]
    peaks = even_mults(base / 2 / options["lr_mult"], base / 2, groups)
    pos = min(1.0, (step - frozen) / (total - frozen))
    return [_one_cycle(peak, pos, options["pct_start"], options["div"]) for peak in peaks]


@dataclass(frozen=True)
class _FineTuneRule:
    """:func:`fastai_fine_tune_lrs` as a layer rule: factors relative to ``base_lr``, by step."""

    total: int
    frozen: int
    options: Mapping[str, Any]

    @property
    def num_groups(self) -> int | None:
        return None

    def multipliers(self, p: float, num_groups: int) -> np.ndarray:
        lrs = fastai_fine_tune_lrs(round(p * self.total), self.total, self.frozen, num_groups, self.options)
        return np.asarray(lrs) / self.options["base_lr"]


class _UnfreezeAt:
    """Unfreezes every frozen group after step ``at``."""

    def __init__(self, freezer: Freezer, at: int) -> None:
        self.freezer, self.at, self.count = freezer, at, 0

    def step(self) -> None:
        self.count += 1
        if self.count == self.at and self.freezer.frozen:
            self.freezer.unfreeze(*self.freezer.frozen)


def _phase_steps(context: Build, share: float) -> int:
    """Steps of a first phase taking ``share`` of the run (at least one, leaving at least one)."""
    total = context.total_steps
    return min(max(1, round(share * total)), max(1, total - 1))


def _head_first(context: Build, optimizer: Optimizer, steps: int) -> tuple[Freezer, _UnfreezeAt]:
    freezer = Freezer(context.model, optimizer)
    freezer.freeze(*context.partition.names[:-1])
    return freezer, _UnfreezeAt(freezer, steps)


def _fine_tune_options(task: Task, settings: Mapping[str, Any]) -> dict[str, Any]:
    base = task.lr if settings["base_lr"] is None else settings["base_lr"]
    return {"base_lr": base, "lr_mult": settings["lr_mult"], "pct_start": settings["pct_start"], "div": settings["div"]}


def _fine_tune(context: Build, settings: dict[str, Any]) -> Setup:
    options = _fine_tune_options(context.task, settings)
    optimizer = make_optimizer(context.task, _groups(context, options["base_lr"]))
    frozen = _phase_steps(context, settings["freeze_fraction"])
    freezer, unfreeze = _head_first(context, optimizer, frozen)
    rule = _FineTuneRule(context.total_steps, frozen, options)
    scheduler = LayerwiseLR(optimizer, context.total_steps, schedule=LayerSchedule(Constant(), rule))
    return Setup(optimizer, _Chain(unfreeze, scheduler), freezer=freezer)


@dataclass(frozen=True)
class Restarted:
    """A global policy run twice: over ``[0, at)`` and again over ``[at, 1]``."""

    policy: Any
    at: float

    def __call__(self, p: float) -> float:
        if p < self.at:
            return self.policy(p / self.at)
        return self.policy(min(1.0, (p - self.at) / (1 - self.at)))


def _lp_ft(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = context.optimizer()
    probe = _phase_steps(context, settings["probe"])
    freezer, unfreeze = _head_first(context, optimizer, probe)
    policy = Restarted(recipes.make_policy(context.policy), probe / context.total_steps)
    scheduler = LayerwiseLR(optimizer, context.total_steps, policy=policy)
    return Setup(optimizer, _Chain(unfreeze, scheduler), freezer=freezer)


# ---- snippets --------------------------------------------------------------------------------


def _groups_expr(lr: str) -> str:
    return f'part.param_groups(lr={lr}, weight_decay=wd, no_decay=("bias", "norm"))'


def _policy_loop(build: Build, optimizer_line: str) -> str:
    return f"wd = {build.task.weight_decay:g}\n{optimizer_line}\n{_policy_snippet(build)}"


def _prodigy_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    line = f"opt = prodigyopt.Prodigy({_groups_expr('1.0')}, lr=1.0, d_coef={settings['d_coef']!r}, decouple=True)"
    return "import prodigyopt\n" + _policy_loop(build, line)


def _dadapt_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    del settings
    if _family(build.task) == "sgd":
        extra = f"DAdaptSGD({_groups_expr('1.0')}, lr=1.0, momentum={_preset_momentum(build.task)!r})"
    else:
        extra = f"DAdaptAdam({_groups_expr('1.0')}, lr=1.0, decouple=True)"
    return "import dadaptation\n" + _policy_loop(build, f"opt = dadaptation.{extra}")


def _dog_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    reps = _dog_reps_rel(build.model, settings["reps_rel"])
    lines = [
        "import dog",
        "params = [p for p in model.parameters() if p.requires_grad]   # one group: DoG's sums are global",
        f"opt = dog.DoG(params, lr=1.0, reps_rel={reps!r}, weight_decay={build.task.weight_decay:g})",
    ]
    if settings["average"]:
        lines.append(f"averager = dog.PolynomialDecayAverager(model, gamma={settings['gamma']!r})")
        lines.append(_loop("plain", build.total_steps) + "; averager.step()")
        lines.append("# evaluate averager.averaged_model")
    else:
        lines.append(_loop("plain", build.total_steps))
    return "\n".join(lines)


def _schedulefree_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    lr = _schedulefree_lr(build.task, settings["lr_mult"])
    warmup = _warmup_steps(build, settings["warmup"])
    if _family(build.task) == "sgd":
        cls, extra = "SGDScheduleFree", ", momentum=0.9"
    else:
        cls, extra = "AdamWScheduleFree", ""
    return (
        f"import schedulefree\nwd = {build.task.weight_decay:g}\n"
        f"opt = schedulefree.{cls}({_groups_expr(f'{lr:g}')}, lr={lr:g}{extra}, warmup_steps={warmup})\n"
        f"opt.train()\n{_loop('plain', build.total_steps)}\n"
        "opt.eval()   # evaluate at the averaged weights (BatchNorm: refresh its statistics first); opt.train() after"
    )


def _lars_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    line = (
        f"opt = pytorch_optimizer.LARS({_groups_expr(repr(settings['lr']))}, lr={settings['lr']!r}, "
        f"momentum={settings['momentum']!r}, trust_coefficient={settings['trust_coefficient']!r})"
    )
    return "import pytorch_optimizer\n" + _policy_loop(build, line)


def _lamb_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    lr = repr(settings["lr"])
    line = f"opt = layerwise.peers_optim.Lamb({_groups_expr(lr)}, lr={lr}, eps={settings['eps']!r})"
    return "import layerwise.peers_optim\n" + _policy_loop(build, line)


def _layer_decay_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    task = build.task
    preset = OPTIMIZER_PRESETS.get(task.optimizer)
    options = "".join(f", {k}={v!r}" for k, v in preset.options.items())
    return (
        "import layerwise.compare.peers\n"
        f"mults = layerwise.compare.peers.layer_decay_multipliers(len(part), {settings['decay']!r})\n"
        f"opt = torch.optim.{preset.cls.__name__}(part.param_groups(lr={task.lr:g}, lr_mult=mults, "
        f'weight_decay={task.weight_decay:g}, no_decay=("bias", "norm")), lr={task.lr:g}{options})\n'
        f"{_policy_snippet(build)}"
    )


def _step_loop(build: Build, *lines: str) -> str:
    body = "".join(f"\n    {line}" for line in lines)
    return f"for step, (x, y) in enumerate(loader):   # {build.total_steps} steps{body}\n    {_LOOPS['sched']}"


def _layer_freezing_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    start, level = settings["freeze_start"], settings["freeze_level"]
    return (
        f"import layerwise.compare.peers\n{_optimizer_line(build)}\nfreezer = layerwise.Freezer(model, opt)\n"
        f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, policy={_policy_expr(build.policy)})\n"
        + _step_loop(
            build,
            f"n = layerwise.compare.peers.composer_frozen_count(step, {build.total_steps}, len(part), {start!r}, "
            f"{level!r})",
            "freezer.freeze(*part.names[:n])",
        )
    )


def _fine_tune_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    options = _fine_tune_options(build.task, settings)
    frozen = _phase_steps(build, settings["freeze_fraction"])
    return (
        f"import layerwise.compare.peers\n{_optimizer_line(build)}\n"
        "freezer = layerwise.Freezer(model, opt); freezer.freeze(*part.names[:-1])\n"
        f"for step, (x, y) in enumerate(loader):   # {build.total_steps} steps\n"
        f"    lrs = layerwise.compare.peers.fastai_fine_tune_lrs(step, {build.total_steps}, {frozen}, len(part), "
        f"{options!r})\n"
        "    for g in opt.param_groups: g['lr'] = lrs[g['depth']]\n"
        f"    if step == {frozen}: freezer.unfreeze(*freezer.frozen)\n"
        f"    {_LOOPS['plain']}"
    )


def _lp_ft_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    probe = _phase_steps(build, settings["probe"])
    policy = f"layerwise.compare.peers.Restarted({_policy_expr(build.policy)}, at={probe / build.total_steps!r})"
    return (
        f"import layerwise.compare.peers\n{_optimizer_line(build)}\n"
        "freezer = layerwise.Freezer(model, opt); freezer.freeze(*part.names[:-1])\n"
        f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, policy={policy})\n"
        + _step_loop(build, f"if step == {probe}: freezer.unfreeze(*freezer.frozen)")
    )


# ---- the registered peers --------------------------------------------------------------------


_FLATTENS = (
    "its optimizer flattens each parameter, which fails on FSDP2's unevenly sharded DTensors "
    "(and its fsdp_in_use sums are not wired up here)"
)


def _optimizer_peers() -> list[Method]:
    return [
        Method(
            "prodigy",
            "Prodigy (Mishchenko & Defazio 2024; prodigyopt.Prodigy): Adam with an estimated LR, lr=1 and "
            "d_coef=1 as its README recommends, AdamW-style decay, under the comparison's cosine (the README's "
            "scheduler)",
            _prodigy,
            {"d_coef": 1.0},
            not_default=_NOT_DEFAULT,
            snippet=_prodigy_snippet,
            check=_all(
                _needs_package("prodigy", "prodigyopt", "prodigyopt"), checked("prodigy", d_coef=positive_number)
            ),
            uses_task_lr=False,
            not_parallel={"fsdp": _FLATTENS},
        ),
        Method(
            "dadapt",
            "D-Adaptation (Defazio & Mishchenko 2023; dadaptation.DAdaptSGD on SGD tasks, DAdaptAdam with "
            "decouple=True on AdamW tasks): lr=1 and the usual scheduler (the comparison's cosine), as its README says",
            _dadapt,
            applies=_sgd_or_adam,
            not_default=_NOT_DEFAULT,
            snippet=_dadapt_snippet,
            check=_needs_package("dadapt", "dadaptation", "dadaptation"),
            uses_task_lr=False,
            not_parallel={"fsdp": _FLATTENS},
        ),
        Method(
            "dog",
            "DoG (Ivgi, Hinder & Carmon 2023; dog-optimizer's DoG): parameter-free, lr=1, no schedule, with the "
            "polynomial-decay iterate averaging its README requires (evaluated at the average); reps_rel None: "
            "the README's 1e-6, 1e-4 with batch norm",
            _dog,
            {"reps_rel": None, "average": True, "gamma": 8.0},
            not_default=_NOT_DEFAULT,
            snippet=_dog_snippet,
            check=_all(
                _needs_package("dog", "dog", "dog-optimizer"),
                checked("dog", reps_rel=optional(positive_number), average=boolean, gamma=positive_number),
            ),
            uses_task_lr=False,
            not_parallel={"fsdp": "its iterate averager deep-copies the model, which FSDP2 refuses"},
        ),
        Method(
            "schedulefree",
            "Schedule-Free (Defazio et al. 2024; schedulefree.SGDScheduleFree / AdamWScheduleFree by the task's "
            "optimizer): no schedule, evaluated at the averaged x; lr = `lr_mult` x the task LR (None: 10 for SGD, "
            "1 for AdamW, the low ends of its README's ranges), `warmup` fraction of linear warm-up (the README "
            "recommends one), BatchNorm statistics refreshed on the last `bn_batches` training batches",
            _schedulefree,
            {"lr_mult": None, "warmup": 0.05, "bn_batches": 50},
            applies=_sgd_or_adam,
            not_default=_NOT_DEFAULT,
            snippet=_schedulefree_snippet,
            check=_all(
                _needs_package("schedulefree", "schedulefree", "schedulefree"),
                checked("schedulefree", lr_mult=optional(positive_number), warmup=fraction, bn_batches=_count),
            ),
        ),
        Method(
            "lars",
            "LARS (You, Gitman & Ginsburg 2017; pytorch-optimizer's LARS): per-tensor trust ratio "
            "eta*||w||/(||g||+wd*||w||) on SGD momentum 0.9, eta=0.001 (the paper's); lr=1 (timm's Lars default), "
            "the task's decay, biases and norms unadapted; under the comparison's cosine",
            _lars,
            {"lr": 1.0, "momentum": 0.9, "trust_coefficient": 0.001},
            not_default=_NOT_DEFAULT,
            snippet=_lars_snippet,
            check=_all(
                _needs_package("lars", "pytorch_optimizer", "pytorch-optimizer"),
                checked("lars", lr=positive_number, momentum=unit_interval, trust_coefficient=positive_number),
            ),
            uses_task_lr=False,
            not_parallel={"fsdp": "pytorch-optimizer's LARS calls torch._foreach_copy_, which DTensors lack"},
        ),
        Method(
            "lamb",
            "LAMB (You et al. 2019, Algorithm 2; layerwise.peers_optim.Lamb): Adam moments with a per-tensor trust "
            "ratio ||w||/||r||, lr=1e-3 (timm's and pytorch-optimizer's Lamb default), eps=1e-6 (the paper's), the "
            "task's decay inside r; under the comparison's cosine",
            _lamb,
            {"lr": 1e-3, "eps": 1e-6},
            not_default=_NOT_DEFAULT,
            snippet=_lamb_snippet,
            check=checked("lamb", lr=positive_number, eps=positive_number),
            uses_task_lr=False,
        ),
    ]


def _count(flag: str, value: Any) -> int:
    return positive_int(flag, value, minimum=0)


def _decay_check(settings: Mapping[str, Any]) -> None:
    fraction("--set layer-decay.decay", settings["decay"], open_low=True, what="a per-layer decay")


def _schedule_peers() -> list[Method]:
    return [
        Method(
            "layer-decay",
            "layer-wise LR decay (BEiT, Bao et al. 2022; timm.optim.param_groups_layer_decay): group at depth d "
            "of L gets lr*decay^(L-d), the head the full LR; decay=0.75 (timm's default); times the policy",
            _layer_decay,
            {"decay": 0.75},
            _layered,
            not_default=_NOT_DEFAULT,
            same_cost=True,
            snippet=_layer_decay_snippet,
            check=_decay_check,
        ),
        Method(
            "layer-freezing",
            "Composer's Layer Freezing (MosaicML docs): from `freeze_start` of training the frozen fraction of "
            "groups, earliest first, grows linearly to `freeze_level` at the end (defaults 0.5 and 1.0, the docs'); "
            "applied every step; times the policy",
            _layer_freezing,
            {"freeze_start": 0.5, "freeze_level": 1.0},
            _layered,
            not_default=_NOT_DEFAULT,
            snippet=_layer_freezing_snippet,
            check=_all(_inside("layer-freezing", "freeze_start"), checked("layer-freezing", freeze_level=fraction)),
        ),
        Method(
            "fine-tune",
            "fastai's Learner.fine_tune in steps: the head alone for `freeze_fraction` of the run (1 frozen epoch "
            "ahead of 2) under fit_one_cycle(pct_start=0.99), then every group under fit_one_cycle with LRs "
            "even_mults(base_lr/2/lr_mult, base_lr/2), pct_start=0.3, div=5 (its defaults); base_lr None: the task's",
            _fine_tune,
            {"base_lr": None, "lr_mult": 100.0, "pct_start": 0.3, "div": 5.0, "freeze_fraction": 1 / 3},
            _fine_tuning_head,
            not_default=_NOT_DEFAULT,
            snippet=_fine_tune_snippet,
            check=_all(
                checked("fine-tune", base_lr=optional(positive_number), lr_mult=positive_number, div=positive_number),
                _inside("fine-tune", "pct_start"),
                _inside("fine-tune", "freeze_fraction"),
            ),
        ),
        Method(
            "lp-ft",
            "LP-FT (Kumar et al. 2022): a linear probe (the head alone) for `probe` of the steps, then full "
            "fine-tuning of every group at the task LR; the policy runs over each phase",
            _lp_ft,
            {"probe": 0.5},
            _fine_tuning_head,
            not_default=_NOT_DEFAULT,
            snippet=_lp_ft_snippet,
            check=_inside("lp-ft", "probe"),
        ),
    ]


# ---- LoRA+ (PEFT's create_loraplus_optimizer) --------------------------------------------------

LORAPLUS_GROUPS = ("groupA", "embedding", "groupB", "groupB_no_decay")
"""The param groups of PEFT's ``create_loraplus_optimizer``, in its order (named here for the records)."""


def _lora_applies(task: Task, partition: Partition) -> str | None:
    del task
    if has_lora([n for group in partition for n in group.param_names]):
        return None
    return (
        "a LoRA method: the task's model has no LoRA adapters (no lora_A / lora_B parameters); "
        "minilm-sentiment-lora has them"
    )


def _loraplus(context: Build, settings: dict[str, Any]) -> Setup:
    from peft.optimizers import create_loraplus_optimizer

    task = context.task

    def task_optimizer(groups: list[dict[str, Any]], **kwargs: Any) -> Optimizer:
        del kwargs  # every group carries its own lr and weight_decay
        return make_optimizer(task, groups)

    optimizer = create_loraplus_optimizer(
        context.model,
        task_optimizer,
        lr=task.lr,
        loraplus_lr_ratio=settings["ratio"],
        loraplus_weight_decay=task.weight_decay,
    )
    for group, name in zip(optimizer.param_groups, LORAPLUS_GROUPS):
        group["name"] = name
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    return Setup(optimizer, _policy_only(context, optimizer))


def _loraplus_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    line = (
        "opt = create_loraplus_optimizer(model, torch.optim.AdamW, lr={lr:g}, loraplus_lr_ratio={ratio!r}, "
        "loraplus_weight_decay={wd:g})"
    ).format(lr=build.task.lr, ratio=settings["ratio"], wd=build.task.weight_decay)
    return "from peft.optimizers import create_loraplus_optimizer\n" + _policy_loop(build, line)


def _lora_peers() -> list[Method]:
    return [
        Method(
            "loraplus",
            "LoRA+ (Hayou, Ghosh & Yu 2024; peft.optimizers.create_loraplus_optimizer): lora_B (and every bias) at "
            "`ratio` x the LR of lora_A and the rest, ratio=16 (PEFT's documented default); the task's optimizer, "
            "LR and decay; times the policy",
            _loraplus,
            {"ratio": 16.0},
            _lora_applies,
            not_default=_NOT_DEFAULT,
            same_cost=True,
            snippet=_loraplus_snippet,
            check=_all(_needs_package("loraplus", "peft", "peft"), checked("loraplus", ratio=positive_number)),
        ),
    ]


def register_peers() -> None:
    """Register the peer methods (after the built-in methods, so a comparison runs them last)."""
    for method in (*_optimizer_peers(), *_schedule_peers(), *_lora_peers()):
        register_method(method)
