"""Peer recipes that freeze groups: Composer's ``layer-freezing``, fastai's ``fine-tune`` and ``lp-ft``.

Examples:
    >>> composer_frozen_count(step=75, total=100, groups=4, start=0.5, level=1.0)
    2
    >>> [round(m, 3) for m in even_mults(0.01, 1.0, 3)]
    [0.01, 0.1, 1.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.optim import Optimizer

from ... import recipes
from ..._checks import fraction, optional, positive_number
from ...freezing import Freezer
from ...groups import Partition
from ...scheduler import LayerwiseLR
from ...schedules import Constant, LayerSchedule
from ...tasks import Task, make_optimizer
from ..methods.kit import (
    LOOPS,
    Build,
    Chain,
    Method,
    Setup,
    checked,
    needs_groups,
    optimizer_line,
    policy_expr,
    policy_only,
    register_method,
)
from .shared import NOT_DEFAULT, all_of, groups_at

__all__ = ["Restarted", "composer_frozen_count", "even_mults", "fastai_fine_tune_lrs", "register_freezing"]


def _inside(method: str, key: str) -> Callable[[Mapping[str, Any]], None]:
    """A fraction strictly between 0 and 1 (a phase that must leave steps on both sides)."""

    def check(settings: Mapping[str, Any]) -> None:
        value = fraction(f"--set {method}.{key}", settings[key])
        if not 0 < value < 1:
            raise ValueError(f"--set {method}.{key}: must be a fraction of training in (0, 1), got {value}")

    return check


def _step_loop(build: Build, before: Sequence[str] = (), after: Sequence[str] = ()) -> str:
    """A snippet loop counting ``step``, with ``before`` and ``after`` its body's lines."""
    body = "".join(f"\n    {line}" for line in (*before, LOOPS["sched"], *after))
    return f"for step, (x, y) in enumerate(loader):   # {build.total_steps} steps{body}"


# ---- layer-freezing (Composer) ---------------------------------------------------------------


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
    return Setup(optimizer, Chain(freezing, policy_only(context, optimizer)), freezer=freezer)


def _layer_freezing_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    start, level = settings["freeze_start"], settings["freeze_level"]
    return (
        f"import layerwise.compare.peers\n{optimizer_line(build)}\nfreezer = layerwise.Freezer(model, opt)\n"
        f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, policy={policy_expr(build.policy)})\n"
        + _step_loop(
            build,
            after=(
                f"n = layerwise.compare.peers.composer_frozen_count(step + 1, {build.total_steps}, len(part), "
                f"{start!r}, {level!r})",
                "freezer.freeze(*part.names[:n])   # after the step, as Composer does",
            ),
        )
    )


_LAYER_FREEZING = Method(
    "layer-freezing",
    "Composer's Layer Freezing (MosaicML docs): from `freeze_start` of training the frozen fraction of "
    "groups, earliest first, grows linearly to `freeze_level` at the end (defaults 0.5 and 1.0, the docs'); "
    "applied every step; times the policy",
    _layer_freezing,
    {"freeze_start": 0.5, "freeze_level": 1.0},
    needs_groups(2),
    not_default=NOT_DEFAULT,
    snippet=_layer_freezing_snippet,
    check=all_of(_inside("layer-freezing", "freeze_start"), checked("layer-freezing", freeze_level=fraction)),
)

# ---- the head first: fine-tune (fastai) and lp-ft --------------------------------------------


def _fine_tuning_head(task: Task, partition: Partition) -> str | None:
    if task.regime != "fine-tuning":
        return "a fine-tuning method: from scratch there are no pretrained features to probe or keep"
    if not task.head:
        return "the task's model has no output head to train first (Task.head is False)"
    return needs_groups(2)(task, partition)


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


def _fine_tune_options(task: Task, settings: Mapping[str, Any]) -> dict[str, Any]:
    base = task.lr if settings["base_lr"] is None else settings["base_lr"]
    return {"base_lr": base, "lr_mult": settings["lr_mult"], "pct_start": settings["pct_start"], "div": settings["div"]}


def _fine_tune(context: Build, settings: dict[str, Any]) -> Setup:
    options = _fine_tune_options(context.task, settings)
    optimizer = make_optimizer(context.task, groups_at(context, options["base_lr"]))
    frozen = _phase_steps(context, settings["freeze_fraction"])
    freezer, unfreeze = _head_first(context, optimizer, frozen)
    rule = _FineTuneRule(context.total_steps, frozen, options)
    scheduler = LayerwiseLR(optimizer, context.total_steps, schedule=LayerSchedule(Constant(), rule))
    return Setup(optimizer, Chain(unfreeze, scheduler), freezer=freezer)


def _fine_tune_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    options = _fine_tune_options(build.task, settings)
    frozen = _phase_steps(build, settings["freeze_fraction"])
    return (
        f"import layerwise.compare.peers\n{optimizer_line(build)}\n"
        "freezer = layerwise.Freezer(model, opt); freezer.freeze(*part.names[:-1])\n"
        f"for step, (x, y) in enumerate(loader):   # {build.total_steps} steps\n"
        f"    lrs = layerwise.compare.peers.fastai_fine_tune_lrs(step, {build.total_steps}, {frozen}, len(part), "
        f"{options!r})\n"
        "    for g in opt.param_groups: g['lr'] = lrs[g['depth']]\n"
        f"    if step == {frozen}: freezer.unfreeze(*freezer.frozen)\n"
        f"    {LOOPS['plain']}"
    )


_FINE_TUNE = Method(
    "fine-tune",
    "fastai's Learner.fine_tune in steps: the head alone for `freeze_fraction` of the run (1 frozen epoch "
    "ahead of 2) under fit_one_cycle(pct_start=0.99), then every group under fit_one_cycle with LRs "
    "even_mults(base_lr/2/lr_mult, base_lr/2), pct_start=0.3, div=5 (its defaults); base_lr None: the task's",
    _fine_tune,
    {"base_lr": None, "lr_mult": 100.0, "pct_start": 0.3, "div": 5.0, "freeze_fraction": 1 / 3},
    _fine_tuning_head,
    not_default=NOT_DEFAULT,
    snippet=_fine_tune_snippet,
    check=all_of(
        checked("fine-tune", base_lr=optional(positive_number), lr_mult=positive_number, div=positive_number),
        _inside("fine-tune", "pct_start"),
        _inside("fine-tune", "freeze_fraction"),
    ),
)


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
    return Setup(optimizer, Chain(unfreeze, scheduler), freezer=freezer)


def _lp_ft_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    probe = _phase_steps(build, settings["probe"])
    policy = f"layerwise.compare.peers.Restarted({policy_expr(build.policy)}, at={probe / build.total_steps!r})"
    return (
        f"import layerwise.compare.peers\n{optimizer_line(build)}\n"
        "freezer = layerwise.Freezer(model, opt); freezer.freeze(*part.names[:-1])\n"
        f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, policy={policy})\n"
        + _step_loop(build, before=(f"if step == {probe}: freezer.unfreeze(*freezer.frozen)",))
    )


_LP_FT = Method(
    "lp-ft",
    "LP-FT (Kumar et al. 2022): a linear probe (the head alone) for `probe` of the steps, then full "
    "fine-tuning of every group at the task LR; the policy runs over each phase",
    _lp_ft,
    {"probe": 0.5},
    _fine_tuning_head,
    not_default=NOT_DEFAULT,
    snippet=_lp_ft_snippet,
    check=_inside("lp-ft", "probe"),
)


def register_freezing() -> None:
    """Register ``layer-freezing``, ``fine-tune`` and ``lp-ft``."""
    for method in (_LAYER_FREEZING, _FINE_TUNE, _LP_FT):
        register_method(method)
