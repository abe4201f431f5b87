"""FreezeOut: each layer's LR anneals to zero on its own cosine schedule, then the layer freezes.

Group ``i`` (in data-flow order) follows
``alpha_i(t) = alpha_i(0) / 2 * (1 + cos(pi * t / t_i))`` for ``t < t_i`` and is frozen from
``t_i`` on. The ``t_i`` are spaced linearly from ``t0`` (first group) to 1 (last group,
the head, which trains to the end of the run); the ``cubic`` strategy cubes them (``t0``
given uncubed: 0.8 -> 0.512). With ``scale_lr``, ``alpha_i(0) = alpha / t_i``. Defaults are
the paper's recommendation: cubic, scaled, ``t0 = 0.8``.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 2))
    >>> x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    >>> part = layerwise.by_layer(model, sample_input=x)
    >>> opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9, nesterov=True)
    >>> freezeout = layerwise.FreezeOut(model, opt, total_steps=20)
    >>> for step in range(20):
    ...     loss = torch.nn.functional.cross_entropy(model(x), y)
    ...     opt.zero_grad(); loss.backward(); opt.step(); freezeout.step()
    >>> freezeout.frozen_at   # the step each group froze at; the head trains to the end
    [11, 15, None]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
from torch import nn
from torch.optim import Optimizer

from ._checks import fraction, one_of, positive_int
from .freezing import Freezer, FreezeWhenZero
from .scheduler import LayerwiseLR, group_depths
from .schedules import Constant, LayerSchedule, Policy
from .state_check import check_state, stamp

__all__ = ["STRATEGIES", "FreezeOut", "FreezeOutRule", "freeze_times"]

Strategy = Literal["linear", "cubic"]
"""How FreezeOut spaces the freeze points: linearly or cubically in the group index."""
STRATEGIES = get_args(Strategy)


def freeze_times(num_groups: int, t0: float = 0.8, strategy: Strategy = "cubic") -> list[float]:
    """Fraction of training at which each group's LR reaches zero (``t_i``).

    Examples:
        >>> [round(t, 3) for t in freeze_times(3, 0.8, "cubic")]
        [0.512, 0.729, 1.0]
    """
    positive_int("num_groups", num_groups)
    fraction("t0", t0, open_low=True, what="a fraction of training")
    one_of("strategy", strategy, STRATEGIES)
    linear = np.linspace(t0, 1.0, num_groups) if num_groups > 1 else np.array([1.0])
    times = linear**3 if strategy == "cubic" else linear
    return times.tolist()


@dataclass(frozen=True)
class FreezeOutRule:
    """FreezeOut's per-group multipliers: a cosine from ``scale_i`` to 0 at ``times[i]``, then 0.

    ``scale_i = 1 / times[i]`` with ``scale_lr``, else 1.
    """

    times: Sequence[float]
    scale_lr: bool = True
    _arrays: tuple[np.ndarray, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        times = tuple(float(t) for t in self.times)
        if not times or any(not (0 < t <= 1) or math.isnan(t) for t in times):
            raise ValueError(f"times: each t_i must be in (0, 1], got {times}")
        object.__setattr__(self, "times", times)
        array = np.array(times)
        scale = 1.0 / array if self.scale_lr else np.ones_like(array)
        object.__setattr__(self, "_arrays", (array, 1.0 / array, scale))

    @classmethod
    def build(
        cls, num_groups: int, t0: float = 0.8, strategy: Strategy = "cubic", scale_lr: bool = True
    ) -> FreezeOutRule:
        if not isinstance(scale_lr, bool):
            raise TypeError(f"scale_lr: expected True or False, got {type(scale_lr).__name__}")
        return cls(freeze_times(num_groups, t0, strategy), scale_lr)

    @property
    def num_groups(self) -> int:
        return len(self.times)

    def multipliers(self, p: float, num_groups: int) -> np.ndarray:
        times, inv_times, scale = self._arrays
        x = np.minimum(p * inv_times, 1.0)
        return np.where(p < times, scale * 0.5 * (1.0 + np.cos(np.pi * x)), 0.0)


def freezeout_recipe(
    num_groups: int, policy: Policy, t0: float = 0.8, strategy: Strategy = "cubic", scale_lr: bool = True
) -> LayerSchedule:
    if policy != Constant():
        raise ValueError("policy: FreezeOut's per-layer cosine is the whole schedule; it takes no global policy")
    """FreezeOut's schedule as a recipe (``layerwise schedule freezeout``): per-group cosines to zero."""
    return LayerSchedule(Constant(), FreezeOutRule.build(num_groups, t0, strategy, scale_lr=scale_lr))


class FreezeOut:
    """FreezeOut on any model and optimizer whose param groups are the layers.

    Groups are ordered by their ``depth`` key (as written by
    :meth:`layerwise.groups.Partition.param_groups`), else by position. Call
    :meth:`step` after every ``optimizer.step()``: it advances the per-layer LRs and
    freezes (for real, see :class:`~layerwise.freezing.Freezer`) every group whose LR
    has just reached zero, so the next forward/backward skips it.

    Args:
        model: the model being trained.
        optimizer: its optimizer, one named param group (or several with the same
            ``name`` and ``depth``) per layer; a wrapper exposing it as ``.optimizer``
            (accelerate's ``AcceleratedOptimizer``) is unwrapped, keep stepping the wrapper.
        total_steps: ``step()`` calls in the run (epochs x batches per epoch).
        t0: when the first group freezes, as a fraction of training, before cubing.
        strategy: ``"cubic"`` or ``"linear"`` spacing of the freeze times.
        scale_lr: start group ``i`` at ``lr / t_i`` so every group travels alike.
        fresh: start on an optimizer that has already taken steps (FreezeOut added to a trained run on
            purpose). Without it, such an optimizer is refused at its next step: it is a resumed run whose
            FreezeOut state was not loaded (:meth:`load_state_dict` resumes).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        total_steps: int,
        *,
        t0: float = 0.8,
        strategy: Strategy = "cubic",
        scale_lr: bool = True,
        fresh: bool = False,
    ) -> None:
        self.freezer = Freezer(model, optimizer)  # checks the types and group names; changes nothing
        self.freezer.watch_start("FreezeOut", fresh=fresh)  # a resumed run must load FreezeOut's state too
        optimizer = self.freezer.optimizer  # unwrapped
        rule = FreezeOutRule.build(max(group_depths(optimizer.param_groups)) + 1, t0, strategy, scale_lr=scale_lr)
        self.scheduler = LayerwiseLR(optimizer, total_steps, layers=rule)
        self.scheduler.owner = "FreezeOut"
        self.scheduler.fix = (
            "drop the other scheduler (FreezeOut's per-layer cosines are the whole schedule; scale a group's "
            "start through Partition.param_groups(lr_mult=)), or freeze on your own schedule with "
            "LayerwiseLR(policy=..., layers=FreezeOutRule.build(...)) and FreezeWhenZero"
        )
        self.optimizer = optimizer
        self.t0, self.strategy, self.scale_lr = t0, strategy, scale_lr
        self.frozen_at: list[int | None] = self.scheduler.zero_from()
        """Per param group: the step from which it is frozen (None: trains to the end)."""
        names = [group["name"] for group in optimizer.param_groups]
        self.freezing = FreezeWhenZero(self.freezer, names, self.frozen_at, fresh=fresh)

    @property
    def times(self) -> tuple[float, ...]:
        """Per layer (depth): the fraction of training at which its LR reaches zero."""
        return self.scheduler.schedule.layers.times

    @property
    def frozen(self) -> tuple[str, ...]:
        return self.freezer.frozen

    def trainable_sets(self) -> int:
        """Distinct sets of trainable parameters over the run: one per freeze event, plus the start."""
        return len({at for at in self.frozen_at if at is not None}) + 1

    def step(self) -> None:
        """Advance one step: set every group's LR and freeze the groups that reached zero."""
        self.freezer.check_start()
        self.scheduler.step()  # LayerwiseLR refuses an optimizer built before sharding
        self.freezing.apply(self.scheduler.last_epoch)

    def get_last_lr(self) -> list[float]:
        """Every param group's current LR (as torch schedulers report it; trainers log it)."""
        return self.scheduler.get_last_lr()

    def lr_at(self, step: int) -> list[float]:
        """Every param group's LR at ``step`` (closed form)."""
        return self.scheduler.lr_at(step)

    def _identity(self) -> dict[str, Any]:
        settings = {"t0": self.t0, "strategy": self.strategy, "scale_lr": self.scale_lr}
        return stamp("FreezeOut", self.freezer.names, {**settings, "total_steps": self.scheduler.total_steps})

    def state_dict(self) -> dict[str, Any]:
        return {**self._identity(), "scheduler": self.scheduler.state_dict(), "freezer": self.freezer.state_dict()}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """ValueError if ``state`` is not a state of this FreezeOut (technique, partition, settings, schedule)."""
        check_state(state, self._identity(), keys=("scheduler", "freezer"))
        self.scheduler.check_state_dict(state["scheduler"])
        self.freezer.check_state_dict(state["freezer"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; a state of another technique, partition or setting raises ValueError, loading nothing."""
        self.check_state_dict(state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.freezer.load_state_dict(state["freezer"])
        self.freezer.started()
