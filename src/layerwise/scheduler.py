"""``LayerwiseLR``: a torch ``LRScheduler`` that applies a :class:`LayerSchedule`.

Each param group's LR is its initial LR times the schedule's factor for the group's
layer at the current step, times the group's ``lr_scale`` where it has one (timm's layer decay,
``timm.optim.param_groups_layer_decay``, leaves that factor for the scheduler to apply). The layer
of a group is its ``depth`` key (as written by :meth:`layerwise.groups.Partition.param_groups`),
else its position; several dicts with the same depth (e.g. a layer split into decay / no-decay
parts) share a factor.

Examples:
    >>> import torch
    >>> from layerwise import LayerwiseLR
    >>> from layerwise.schedules import Cosine, Discriminative
    >>> params = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(3)]
    >>> opt = torch.optim.SGD(params, lr=0.1)
    >>> sched = LayerwiseLR(opt, total_steps=100, policy=Cosine(), layers=Discriminative(2.0))
    >>> [round(lr, 4) for lr in sched.get_last_lr()]
    [0.025, 0.05, 0.1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ._checks import finite_nonneg, positive_int
from ._shards import check_current, refuse_flat_parameters
from ._warn import warn
from .param_groups import ForeignLRWarning, foreign_lr, group_names, set_lr
from .schedules import Constant, LayerRule, LayerSchedule, Policy, Uniform
from .state_check import STAMP_KEYS, check_state, stamp
from .wrapping import unwrap_optimizer

__all__ = ["LayerwiseLR", "group_depths", "lr_scales"]


def group_depths(param_groups: Sequence[dict[str, Any]]) -> list[int]:
    """Layer index of every param group: its ``depth`` key, else its position.

    Raises ValueError if the depths are not exactly 0..K-1 (each used at least once).
    """
    depths = [int(g.get("depth", i)) for i, g in enumerate(param_groups)]
    used = sorted(set(depths))
    if used != list(range(len(used))):
        raise ValueError(f"param groups: 'depth' keys must cover 0..K-1 without gaps, got {used}")
    return depths


def lr_scales(param_groups: Sequence[dict[str, Any]]) -> np.ndarray:
    """Every param group's ``lr_scale`` (1 where it has none), each a finite number >= 0 (ValueError otherwise).

    Examples:
        >>> lr_scales([{"lr_scale": 0.5}, {}])
        array([0.5, 1. ])
    """
    names = group_names(param_groups)
    scales = [finite_nonneg(f"param group {n!r}: lr_scale", g.get("lr_scale", 1)) for n, g in zip(names, param_groups)]
    return np.asarray(scales, dtype=float)


def _describe(schedule: LayerSchedule) -> str:
    """The schedule as a checkpoint records it: its repr, or its type where the repr holds an address."""
    text = repr(schedule)
    return type(schedule).__name__ if " at 0x" in text else text


class LayerwiseLR(LRScheduler):
    """Per-group LR(t) = initial LR x policy(t) x layer multiplier(t) [x lr_scale], in closed form.

    Args:
        optimizer: any torch optimizer; its param groups are the layers. A wrapper exposing one as
            ``.optimizer`` (accelerate's ``AcceleratedOptimizer``) is unwrapped; keep stepping the wrapper.
        total_steps: number of ``step()`` calls in the run (batches x epochs when
            stepping per batch, epochs when stepping per epoch). Past it, the final
            values hold.
        policy: a global policy, or a sequence with one policy per layer.
        layers: a layer multiplier rule.
        schedule: a ready :class:`LayerSchedule` (instead of ``policy``/``layers``).
        last_epoch: as in torch: -1 to start a run.

    A group's ``lr_scale`` key, where present, multiplies its LR at every step, as timm's schedulers
    apply it: the groups of ``timm.optim.param_groups_layer_decay`` (or ``create_optimizer_v2(...,
    layer_decay=)``) get timm's layer decay under this scheduler too. It is read at every step.

    ``lr_at(step)`` gives every group's LR at any step without stepping; the
    scheduler's ``state_dict`` holds plain numbers only (the schedule is
    configuration: build the same one, then ``load_state_dict``, which also writes
    the resumed step's LRs into the optimizer, so the loading order does not matter).

    It writes every group's LR at every step, so a change made by anything else (another
    scheduler such as ``StepLR``, a trainer's schedule, an assignment) would be lost: the first
    such change found at a ``step()`` is reported once with a :class:`~layerwise.param_groups.ForeignLRWarning`.
    A scheduler handing over to it (``SequentialLR``) is not a foreign write.
    """

    fix = (
        "give that schedule to LayerwiseLR instead (policy=, e.g. layerwise.StepDrops for a StepLR, "
        "layerwise.Warmup for a warm-up; a per-group factor through Partition.param_groups(lr_mult=)), "
        "or chain a warm-up before it with torch.optim.lr_scheduler.SequentialLR"
    )
    """How to compose instead, in the foreign-write warning (FreezeOut gives its own)."""

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        policy: Policy | Sequence[Policy] | None = None,
        layers: LayerRule | None = None,
        *,
        schedule: LayerSchedule | None = None,
        last_epoch: int = -1,
    ) -> None:
        optimizer = unwrap_optimizer(optimizer)
        refuse_flat_parameters((p for g in optimizer.param_groups for p in g["params"]), "optimizer")
        positive_int("total_steps", total_steps)
        if schedule is None:
            schedule = LayerSchedule(policy if policy is not None else Constant(), layers or Uniform())
        elif policy is not None or layers is not None:
            raise ValueError("schedule: give either schedule or policy/layers, not both")
        elif not isinstance(schedule, LayerSchedule):
            raise TypeError(f"schedule: expected a LayerSchedule, got {type(schedule).__name__}")
        depths = group_depths(optimizer.param_groups)
        num_layers = max(depths) + 1
        schedule.check_groups(num_layers)
        lr_scales(optimizer.param_groups)
        # validated: from here on the optimizer may be touched
        self.schedule = schedule
        self.total_steps = total_steps
        self._depths = depths
        self._num_layers = num_layers
        self.owner = "LayerwiseLR"
        """The technique named in the foreign-write warning."""
        self._foreign_warned = False
        self._pace = [0, 0, False]
        """Since construction: optimizer steps, ``step()`` calls after the first of them, and whether the
        pace was reported (:meth:`_check_pace`); not saved."""
        self._pace_hook = optimizer.register_step_post_hook(self._count_optimizer_step)
        super().__init__(optimizer, last_epoch)

    def _count_optimizer_step(self, *_: Any) -> None:
        self._pace[0] += 1

    def _check_pace(self) -> None:
        """Warn once when ``step()`` runs two or more times per optimizer step (over at least 8 of them):
        the schedule then ends that many times early. accelerate's prepared scheduler does this under N
        processes (it steps N times per optimizer step); a skipped step of a GradScaler does it now and then."""
        optimizer_steps, calls, warned = self._pace
        if warned or optimizer_steps == 0:
            return
        self._pace[1] = calls = calls + 1
        if optimizer_steps >= 8 and calls >= 2 * optimizer_steps:
            self._pace[2] = True
            warn(
                f"{self.owner}: step() ran {calls} times over {optimizer_steps} optimizer steps "
                f"({calls / optimizer_steps:.1f} per optimizer step), so the schedule ends that many times early: "
                "total_steps counts step() calls. A scheduler prepared by accelerate on N processes steps N times "
                "per optimizer step: give total_steps = optimizer steps x N (accelerate's rule for every "
                "scheduler), or step it once per optimizer step yourself. Reported once."
            )

    def _sync_groups(self) -> None:
        """Adopt param groups added to the optimizer after construction."""
        groups = self.optimizer.param_groups
        if len(groups) == len(self.base_lrs):
            return
        depths = group_depths(groups)
        num_layers = max(depths) + 1
        self.schedule.check_groups(num_layers)
        lr_scales(groups)
        for group in groups[len(self.base_lrs) :]:
            group.setdefault("initial_lr", group["lr"])
            self.base_lrs.append(group["initial_lr"])
        self._depths, self._num_layers = depths, num_layers

    def lr_at(self, step: int) -> list[float]:
        """Every param group's LR at ``step`` (closed form, nothing is changed; ``lr_scale`` as held now)."""
        step = min(max(step, 0), self.total_steps)
        factors = self.schedule.factors(step / self.total_steps, self._num_layers)
        base, index = self._arrays()
        return (base * self._scales() * factors[index]).tolist()

    def _scales(self) -> np.ndarray | float:
        """The groups' ``lr_scale`` factors, or 1 when no group has one (the common case costs one pass)."""
        groups = self.optimizer.param_groups
        return lr_scales(groups) if any("lr_scale" in g for g in groups) else 1.0

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``base_lrs`` and the depths as arrays, rebuilt when either list changes."""
        key = (id(self.base_lrs), len(self.base_lrs), id(self._depths))
        if getattr(self, "_cache_key", None) != key:
            self._cache = (
                np.asarray(self.base_lrs, dtype=float),
                np.asarray(self._depths, dtype=np.intp),
            )
            self._cache_key = key
        return self._cache

    def get_lr(self) -> list[float]:
        self._sync_groups()
        return self.lr_at(self.last_epoch)

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def step(self, epoch: int | None = None) -> None:
        """Advance one step and write every group's LR.

        After the first call (which goes through torch's checks of the call order) this
        takes a lean path: the LRs are computed once and written straight into the groups.
        """
        self._sync_groups()  # validate added groups before anything advances
        check_current((p for g in self.optimizer.param_groups for p in g["params"]), "optimizer")
        if epoch is None and self._step_count >= 1 and not self._foreign_warned:
            self._warn_foreign()  # not at the initial step, nor at an explicit jump (a hand-over)
        if epoch is None:
            self._check_pace()
        if epoch is not None or self._step_count == 1:
            super().step(epoch)
            return
        self._step_count += 1
        self.last_epoch += 1
        self._write(self.get_lr())

    def _warn_foreign(self) -> None:
        """Warn once if a group's LR is not the one this scheduler wrote last (torch's hand-over writes
        ``_last_lr`` too, so a SequentialLR warm-up before it is silent)."""
        found = foreign_lr(self.optimizer.param_groups, self._last_lr)
        if found is None:
            return
        index, value = found
        self._foreign_warned = True
        name = group_names(self.optimizer.param_groups)[index]
        warn(
            f"{self.owner}: param group {name!r} has lr {value:.6g}, but {self.owner} wrote "
            f"{float(self._last_lr[index]):.6g} at its last step: something else changed it (another scheduler "
            f"such as StepLR, a trainer's schedule, an assignment), and {self.owner} overwrites it now and at "
            f"every step. To keep that schedule, {self.fix}. Reported once.",
            ForeignLRWarning,
        )

    def _write(self, values: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, values):
            set_lr(group, lr)
        self._last_lr = values

    def zero_from(self) -> list[int | None]:
        """Per param group, the step from which its LR stays exactly 0 (else None)."""
        firsts = self.schedule.zero_from(self.total_steps, self._num_layers)
        scales = np.broadcast_to(self._scales(), len(self.base_lrs))
        return [0 if base * scale == 0 else firsts[d] for base, scale, d in zip(self.base_lrs, scales, self._depths)]

    def state_dict(self) -> dict[str, Any]:
        skip = (
            "optimizer",
            "schedule",
            "_cache",
            "_cache_key",
            "owner",
            "fix",
            "_foreign_warned",
            "_pace",
            "_pace_hook",
        )
        own = {k: v for k, v in self.__dict__.items() if k not in skip}
        return {**self._identity(), **own}

    def _identity(self) -> dict[str, Any]:
        settings = {"total_steps": self.total_steps, "schedule": _describe(self.schedule)}
        return stamp("LayerwiseLR", group_names(self.optimizer.param_groups), settings)

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Raise ValueError unless ``state_dict`` is this scheduler's kind, for its groups, length and schedule,
        with well-formed step counts and one base LR per param group."""
        check_state(state_dict, self._identity(), keys=("last_epoch", "base_lrs"))
        for key in ("last_epoch", "_step_count"):
            value = state_dict.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise ValueError(f"state_dict['{key}']: expected an int >= -1, got {value!r}")
        base_lrs = state_dict["base_lrs"]
        count = len(self.optimizer.param_groups)
        if not isinstance(base_lrs, list) or len(base_lrs) != count:
            raise ValueError(f"state_dict['base_lrs']: expected {count} learning rates, got {base_lrs!r}")
        for lr in base_lrs:
            if isinstance(lr, bool) or not isinstance(lr, (int, float, torch.Tensor)):
                raise ValueError(f"state_dict['base_lrs']: expected numbers, got {lr!r}")
        if state_dict.get("_depths", self._depths) != self._depths:
            raise ValueError(f"state_dict['_depths']: saved {state_dict['_depths']!r}, the groups have {self._depths}")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved step; a state of another technique, partition or length raises ValueError."""
        self.check_state_dict(state_dict)
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in STAMP_KEYS})
        # closed form: the optimizer gets this step's LRs whatever the order things were loaded in
        self._write(self.get_lr())
