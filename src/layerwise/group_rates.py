"""Shared base of optimizers that find one learning rate per named group (``HiDLR``, ``SecantLR``).

Groups are the wrapped optimizer's param groups; dicts sharing a ``name`` (a layer split into
decay / no-decay halves by :meth:`Partition.param_groups`) form one group. Each group ``k`` has
a found rate ``eta_k``; the applied LR of a dict is ``eta_k * factor_k * ratio``, where
``factor_k`` comes from an optional schedule of progress and ``ratio`` keeps the dict's initial
LR relative to its group's.

Examples:
    >>> class Fixed(GroupRates):
    ...     def __init__(self, optimizer):
    ...         self._setup_rates(optimizer)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import Tensor
from torch.optim import Optimizer

from ._checks import finite_nonneg, positive_int
from ._shards import check_current, refuse_flat_parameters
from ._warn import warn
from .groups import Partition
from .param_groups import ForeignLRWarning, check_partition, foreign_lr, group_names, set_lr
from .schedules import LayerSchedule, Policy
from .state_check import stamp
from .wrapping import Wrapper, init_hooks, is_step_wrapper

__all__ = ["ForeignLRWarning", "GroupRates", "refuse_lr_scale"]


def refuse_lr_scale(technique: str, param_groups: list[dict[str, Any]]) -> None:
    """Refuse groups carrying an ``lr_scale`` other than 1 (timm's layer decay): a technique that finds each
    group's LR itself would silently drop it.

    Examples:
        >>> refuse_lr_scale("HiDLR", [{"lr_scale": 1.0}])
        >>> refuse_lr_scale("HiDLR", [{"lr_scale": 0.5, "name": "block0"}])
        Traceback (most recent call last):
        ...
        ValueError: param group 'block0': lr_scale 0.5 (timm's layer decay) ...
    """
    for name, group in zip(group_names(param_groups), param_groups):
        scale = group.get("lr_scale", 1)
        if scale != 1:
            raise ValueError(
                f"param group {name!r}: lr_scale {scale} (timm's layer decay) would be ignored: {technique} finds "
                f"every group's LR itself and writes it. Fold the scale into the group's starting LR "
                f"(group['lr'] = lr * group.pop('lr_scale') for every group) to start from timm's decayed LRs, "
                f"or keep the layer decay with layerwise.LayerwiseLR, which applies lr_scale"
            )


class GroupRates(Wrapper):
    """A wrapping optimizer with one found learning rate ``eta_k`` per named group."""

    technique = "GroupRates"
    """The name its checkpoints are stamped with (subclasses keep their base's, so they load its states)."""

    progress: Callable[[], float] | None
    """Where the schedule stands, read from this callable (a share of a wall-clock budget, say) instead of
    ``step_count / total_steps``; None (the default) counts steps."""

    owns_lr: bool = True
    """It writes every group's ``lr`` before each base step: trainers give it a schedule that leaves ``lr`` alone."""

    @classmethod
    def _check_base(cls, optimizer: Any) -> None:
        """Refuse what cannot be the base optimizer: not an optimizer, one of these, or a wrapper of another."""
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, GroupRates):
            raise TypeError(f"optimizer: already a {type(optimizer).__name__}; wrap the base optimizer")
        if is_step_wrapper(optimizer):
            raise TypeError(
                f"optimizer: a {type(optimizer).__name__} wrapping a {type(optimizer.optimizer).__name__}: it decides "
                f"when and how the inner optimizer steps (accelerate skips the steps of accumulated micro-batches and "
                f"unscales gradients), which {cls.__name__} must see; wrap the inner optimizer first and prepare "
                f"the result: opt = accelerator.prepare({cls.__name__}(base, ...)) (keep the {cls.__name__} object, or "
                f"opt.optimizer, for .stats and .lrs)"
            )

    def _setup_rates(
        self,
        optimizer: Optimizer,
        schedule: Policy | LayerSchedule | None = None,
        total_steps: int | None = None,
        groups: Partition | None = None,
    ) -> None:
        """Validate the shared arguments, then take ``optimizer`` over (call last in ``__init__``)."""
        if schedule is not None:
            if not (isinstance(schedule, LayerSchedule) or callable(schedule)):
                raise TypeError(f"schedule: expected a Policy or LayerSchedule, got {type(schedule).__name__}")
            if total_steps is None:
                raise ValueError("total_steps: an int >= 1 is required with schedule, got None")
            positive_int("total_steps", total_steps)
        refuse_flat_parameters((p for g in optimizer.param_groups for p in g["params"]), "optimizer")
        refuse_lr_scale(type(self).__name__, optimizer.param_groups)
        names = group_names(optimizer.param_groups)
        unique = list(dict.fromkeys(names))
        if isinstance(schedule, LayerSchedule):
            schedule.check_groups(len(unique))
        if groups is not None:
            check_partition(groups, optimizer.param_groups)
        init_hooks(self, optimizer.defaults)
        self.optimizer = optimizer
        self.schedule = schedule
        self.total_steps = total_steps
        self._names = unique
        self._member = [unique.index(n) for n in names]
        lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.eta = [max(lr for lr, m in zip(lrs, self._member) if m == k) for k in range(len(unique))]
        self._ratio = [lr / self.eta[m] if self.eta[m] > 0 else 0.0 for lr, m in zip(lrs, self._member)]
        self._written = lrs  # each param group's lr as this object last wrote (or found) it
        self._warned_foreign = False
        self.step_count = 0
        self.progress = None

    def _accept(self, k: int, eta_star: float, gamma: float | None = None) -> None:
        """Move group ``k``'s rate toward an accepted estimate: ``eta <- gamma eta + (1 - gamma) eta*``
        (``gamma``: this round's smoothing, default :attr:`gamma`)."""
        gamma = self.gamma if gamma is None else gamma
        self.eta[k] = gamma * self.eta[k] + (1.0 - gamma) * float(eta_star)

    def _reject(self, reason: str) -> None:
        """Count a rejected estimate under ``reason``."""
        self.stats["rejected"] += 1
        self.stats["rejections"][reason] += 1

    @staticmethod
    def _copy_stats(stats: dict[str, Any]) -> dict[str, Any]:
        """The counters as a fresh dict (its ``rejections`` too), for a state dict or a loaded one."""
        return dict(stats, rejections=dict(stats["rejections"]))

    def _identity(self) -> dict[str, Any]:
        """What a saved state must match: this technique, its groups, its base optimizer's class and
        the settings resuming depends on (:meth:`_settings`)."""
        return stamp(self.technique, self._names, {"base": type(self.optimizer).__name__, **self._settings()})

    def _settings(self) -> dict[str, Any]:
        """Settings a checkpoint records and must match (none here; subclasses add theirs)."""
        return {}

    def _decode_eta(self, saved: Any) -> list[float]:
        """A saved list of found LRs, one finite number >= 0 per group (ValueError otherwise)."""
        count = len(self._names)
        if not isinstance(saved, (list, tuple)) or len(saved) != count:
            raise ValueError(f"state_dict: expected {count} found learning rates, got {saved!r}")
        return [finite_nonneg("state_dict: a found learning rate", v) for v in saved]

    @staticmethod
    def _decode_step_count(saved: Any) -> int:
        if isinstance(saved, bool) or not isinstance(saved, int) or saved < 0:
            raise ValueError(f"state_dict: step_count must be an int >= 0, got {saved!r}")
        return saved

    def _lrs_text(self) -> str:
        """The found LRs for ``__repr__``: ``name=value, ...``."""
        return ", ".join(f"{n}={v:.3g}" for n, v in self.lrs.items())

    @property
    def names(self) -> list[str]:
        """Names of the K groups, in order (one name across techniques: ``Partition.names``, ``Freezer.names``)."""
        return list(self._names)

    @property
    def group_names(self) -> list[str]:
        """Deprecated alias of :attr:`names`."""
        warnings.warn(f"{type(self).__name__}.group_names is now .names", DeprecationWarning, stacklevel=2)
        return self.names

    @property
    def lrs(self) -> dict[str, float]:
        """Current found (unscheduled) learning rate of every group."""
        return dict(zip(self._names, self.eta))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the base optimizer; a new name starts a new group at its ``lr``."""
        refuse_lr_scale(type(self).__name__, [param_group])
        self.optimizer.add_param_group(param_group)
        group = self.optimizer.param_groups[-1]
        name = group_names(self.optimizer.param_groups)[-1]
        if name not in self._names:
            if isinstance(self.schedule, LayerSchedule) and self.schedule.num_groups is not None:
                self.optimizer.param_groups.pop()
                raise ValueError(f"param_group: the schedule is written for {self.schedule.num_groups} groups")
            self._names.append(name)
            self.eta.append(float(group["lr"]))
        self._written.append(float(group["lr"]))
        k = self._names.index(name)
        self._member.append(k)
        self._ratio.append(float(group["lr"]) / self.eta[k] if self.eta[k] > 0 else 0.0)

    def _factors(self) -> np.ndarray:
        """Every group's schedule factor at the current step (ones without a schedule)."""
        num_groups = len(self._names)
        if self.schedule is None:
            return np.ones(num_groups)
        p = min(self.step_count / self.total_steps if self.progress is None else self.progress(), 1.0)
        if isinstance(self.schedule, LayerSchedule):
            return np.asarray(self.schedule.factors(p, num_groups), dtype=float)
        return np.full(num_groups, float(self.schedule(p)))

    def _apply_lrs(self, factors: np.ndarray) -> None:
        for group, k, ratio in zip(self.optimizer.param_groups, self._member, self._ratio):
            set_lr(group, self.eta[k] * float(factors[k]) * ratio)
        self._written = [float(g["lr"]) for g in self.optimizer.param_groups]

    def _check_foreign_lrs(self) -> None:
        """Warn once when a group's ``lr`` is not what this object wrote last (it is overwritten next)."""
        check_current((p for g in self.optimizer.param_groups for p in g["params"]), "optimizer")
        if self._warned_foreign:
            return
        found = foreign_lr(self.optimizer.param_groups, self._written)
        if found is None:
            return
        self._warned_foreign = True
        (i, lr), kind = found, type(self).__name__
        warn(
            f"{kind}: param group {self._names[self._member[i]]!r} has lr {lr:.6g}, but "
            f"{kind} last wrote {self._written[i]:.6g}: something else writes lr (a torch LRScheduler such as "
            f"StepLR, a Trainer's default schedule, an assignment). {kind} sets every group's lr before each step, "
            f"so that write has no effect. To keep a schedule, stop stepping the other one and pass it as "
            f"{kind}(..., schedule=<a layerwise Policy or LayerSchedule>, total_steps=N), which multiplies the found "
            f"LRs; with transformers' Trainer, use layerwise's LayerwiseTrainer (warned once)",
            ForeignLRWarning,
        )

    def _members(self) -> list[list[Tensor]]:
        """Each group's parameters that have a gradient now."""
        members: list[list[Tensor]] = [[] for _ in self._names]
        for group, k in zip(self.optimizer.param_groups, self._member):
            members[k] += [p for p in group["params"] if p.grad is not None]
        return members
