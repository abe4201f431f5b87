"""AutoFreeze: freeze the front groups once their gradients say they have converged (Liu et al. 2021).

The rule, checked every ``interval`` optimizer steps (the authors' evaluation interval):

1. For each group that may still freeze (a training group other than the head), the L1 norm of the
   group's gradient summed over the interval's steps, ``N_g(k) = || sum_t grad_g(t) ||_1`` (the norm
   the authors' code takes), and its rate of change since the previous interval,
   ``eta_g = |N_g(k) - N_g(k-1)| / N_g(k-1)``.
2. The threshold: the ``percentile``-th percentile of those rates (numpy's linear interpolation), the
   head's left out, as in the authors' code, whose percentile runs over the encoder's blocks from the
   first one still training.
3. The front groups whose rate is below it freeze, in forward order up to the first one at or above
   it: a group freezes only when every group before it is frozen. No group unfreezes, the head never
   freezes, and neither does the last group before it (the threshold never falls below the largest rate).
4. No group freezes at a check before ``warmup_steps`` optimizer steps: the norms of the warm-up's
   intervals are recorded, so the first check from ``warmup_steps`` on can decide.

Freezing goes through :class:`~layerwise.freezing.Freezer`, so frozen groups leave the backward pass,
and a :class:`~layerwise.FrozenPrefixCache` can serve their output.

AutoFreeze works from the optimizer's step hooks (the gradients just before each step, the
decision just after the step that ends an interval), so it follows the optimizer's real steps: a
step skipped by gradient accumulation or by ``GradScaler`` is not counted, and :meth:`AutoFreeze.step`
(there for loops and trainers that step every technique) changes nothing, however often it is called.

Examples:
    >>> import torch, layerwise
    >>> torch.manual_seed(0) is not None
    True
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    >>> opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=x).param_groups(lr=0.1))
    >>> autofreeze = AutoFreeze(model, opt, interval=5, warmup_steps=20)
    >>> for step in range(60):
    ...     loss = torch.nn.functional.cross_entropy(model(x), y)
    ...     opt.zero_grad(); loss.backward(); opt.step()
    >>> [(d.group, d.step) for d in autofreeze.decisions]   # none before step 20; always a front prefix
    [('0', 30), ('2', 40)]
    >>> autofreeze.frozen, autofreeze.training()   # the last block ("4") and the head ("6") never freeze
    (('0', '2'), ['4', '6'])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._checks import finite_nonneg, positive_int
from ._shards import global_sums, local
from .freezing import Freezer
from .scheduler import group_depths
from .state_check import check_state, require_keys, stamp

__all__ = ["AutoFreeze", "FreezeDecision", "check_percentile", "frozen_prefix", "relative_changes"]


class FreezeDecision(NamedTuple):
    """One group frozen by AutoFreeze: after which optimizer step, its signal and the threshold it fell below."""

    group: str
    step: int
    change: float
    """``eta``: the relative change of the group's gradient norm between the last two intervals."""
    threshold: float
    """The percentile of the changes of the groups that could still freeze (training, the head left out)."""


def relative_changes(previous: Sequence[float], current: Sequence[float]) -> list[float]:
    """``|previous - current| / previous`` for each group (every ``previous`` must be > 0).

    Examples:
        >>> relative_changes([2.0, 4.0], [1.0, 5.0])
        [0.5, 0.25]
    """
    return [abs(before - now) / before for before, now in zip(previous, current)]


def frozen_prefix(changes: Sequence[float], percentile: float) -> tuple[int, float]:
    """How many front groups AutoFreeze freezes given the ``changes`` of the groups that may still freeze
    (forward order, the head left out), and the threshold: the ``percentile`` of those changes.

    Examples:
        >>> frozen_prefix([0.1, 0.2, 0.9, 0.05, 0.6, 0.5], 50)   # the 4th is below too, but 0.9 ends the prefix
        (2, 0.35)
        >>> frozen_prefix([0.1, 0.9], 50)   # the largest change is never below the threshold
        (1, 0.5)
    """
    threshold = float(np.percentile(np.asarray(changes, dtype=np.float64), percentile))
    count = 0
    for change in changes:
        if not change < threshold:
            break
        count += 1
    return count, threshold


def check_percentile(name: str, value: Any) -> float:
    """A percentile in (0, 100), exclusive (TypeError for a non-number, ValueError naming ``name`` otherwise)."""
    value = finite_nonneg(name, value)
    if not 0.0 < value < 100.0:
        raise ValueError(f"{name}: must be a number in (0, 100), got {value}")
    return value


def _forward_names(optimizer: Optimizer) -> list[str]:
    """The group names ordered by their ``depth`` key (else their position): the forward order."""
    depth: dict[str, int] = {}
    for group, at in zip(optimizer.param_groups, group_depths(optimizer.param_groups)):
        depth[group["name"]] = min(at, depth.get(group["name"], at))
    return sorted(depth, key=lambda name: depth[name])


class AutoFreeze:
    """AutoFreeze's adaptive freezing on any model and optimizer whose named param groups are the layers.

    Build it once after the optimizer; it hooks the optimizer's steps (keep stepping the optimizer,
    or the wrapper around it). Groups are in forward order by their ``depth`` key (as written by
    :meth:`layerwise.groups.Partition.param_groups`), else by position; the last is the head.

    Args:
        model: the model being trained.
        optimizer: its optimizer, one named param group (or several with one ``name``) per layer; a
            wrapper exposing it as ``.optimizer`` (accelerate's ``AcceleratedOptimizer``) is unwrapped.
        interval: optimizer steps per evaluation interval (the authors split the run into 10).
        percentile: a group freezes when its change is below this percentile of the changes of the
            groups that may still freeze (the authors' default: 50, the median); in (0, 100).
        warmup_steps: no group freezes at a check before this many optimizer steps (0: the first check
            that has a previous interval to compare with decides, at step ``2 * interval``, as in the
            authors' code). A run's warm-up depends on its length, so the default is that schedule.
        fresh: start on an optimizer that has already taken steps, on purpose; without it such an optimizer
            is refused at its next step (a resumed run whose AutoFreeze state was not loaded).

    Attributes:
        decisions: every group frozen, as a :class:`FreezeDecision`, in order.
        freezer: the :class:`~layerwise.freezing.Freezer` (``freezer.frozen``: the frozen groups).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        interval: int,
        *,
        percentile: float = 50.0,
        warmup_steps: int = 0,
        fresh: bool = False,
    ) -> None:
        positive_int("interval", interval)
        percentile = check_percentile("percentile", percentile)
        warmup_steps = positive_int("warmup_steps", warmup_steps, minimum=0)
        freezer = Freezer(model, optimizer)  # checks the model, the optimizer and the group names; changes nothing
        names = _forward_names(freezer.optimizer)
        if len(names) < 3:
            raise ValueError(
                f"optimizer: AutoFreeze needs at least 3 named groups (front groups to freeze, the last of which "
                f"always trains, and the head), got {names}"
            )
        freezer.watch_start("AutoFreeze", fresh=fresh)  # before its own hooks: a resumed run loads its state too
        self.freezer, self.optimizer, self.names = freezer, freezer.optimizer, names
        self.interval, self.percentile, self.warmup_steps = interval, percentile, warmup_steps
        self.step_count = 0
        self.decisions: list[FreezeDecision] = []
        groups = self.optimizer.param_groups
        self._params = {n: [p for g in groups if g["name"] == n for p in g["params"]] for n in names}
        self._sums = {n: [_zeros(p) for p in self._params[n]] for n in names[:-1]}  # the interval's summed gradients
        self._sums[names[-1]] = []  # the head's rate enters no threshold
        self._previous: dict[str, float] = {}  # the last interval's norms of the groups that may freeze
        self._norms: dict[str, float] | None = None  # this interval's, between the step's two hooks
        self._handles = [
            self.optimizer.register_step_pre_hook(self._before_step),
            self.optimizer.register_step_post_hook(self._after_step),
        ]

    @property
    def frozen(self) -> tuple[str, ...]:
        """The frozen groups, front first."""
        return self.freezer.frozen

    def training(self) -> list[str]:
        """The groups still training, in forward order (the head last)."""
        return [n for n in self.names if not self.freezer.is_frozen(n)]

    def candidates(self) -> list[str]:
        """The groups whose rates set the threshold: those still training but the head, in forward order."""
        return self.training()[:-1]

    def trainable_sets(self) -> int:
        """Distinct sets of trainable parameters over a run, at most: every group but the head may freeze."""
        return len(self.names)

    def step(self) -> None:
        """Nothing to do: AutoFreeze counts the optimizer's own steps, so a loop that steps it like a
        scheduler (zero, one or several times per optimizer step) changes nothing."""

    def remove(self) -> None:
        """Detach from the optimizer (frozen groups stay frozen)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # -- hooks ---------------------------------------------------------------------------

    @torch.no_grad()
    def _before_step(self, _optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        candidates = self.candidates()
        if len(candidates) < 2:  # the last of them never falls below their percentile: nothing left to decide
            return
        pairs = [(t, p.grad) for n in candidates for t, p in zip(self._sums[n], self._params[n]) if p.grad is not None]
        if pairs:
            totals, grads = zip(*pairs)
            torch._foreach_add_(list(totals), [local(g) for g in grads])
        if (self.step_count + 1) % self.interval == 0:
            self._norms = self._interval_norms(candidates)

    def _interval_norms(self, candidates: list[str]) -> dict[str, float]:
        """The L1 norm of each candidate group's summed gradient; raises, before the step, for a group that got none."""
        sums = torch.stack([_abs_sum(self._sums[n]) for n in candidates])
        params = [p for n in candidates for p in self._params[n]]
        norms = dict(zip(candidates, global_sums(sums, params, "AutoFreeze (the optimizer's parameters)").tolist()))
        silent = [n for n in candidates if not norms[n] > 0]
        if silent:
            raise ValueError(
                f"AutoFreeze: groups {silent} got no gradient over the {self.interval} steps to step "
                f"{self.step_count + 1}, so their gradient norm has no relative change; give every group of the "
                "optimizer a gradient (a parameter the loss does not reach belongs in no group) or freeze them "
                "beforehand; nothing was stepped"
            )
        return norms

    def _after_step(self, _optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        self.step_count += 1
        if self._norms is None:
            return
        norms, self._norms = self._norms, None
        candidates = list(norms)
        if self.step_count >= self.warmup_steps and all(n in self._previous for n in candidates):
            changes = relative_changes([self._previous[n] for n in candidates], [norms[n] for n in candidates])
            count, threshold = frozen_prefix(changes, self.percentile)
            if count:
                self.decisions.extend(
                    FreezeDecision(n, self.step_count, c, threshold) for n, c in zip(candidates[:count], changes)
                )
                self.freezer.freeze(*candidates[:count])
        remaining = self.candidates()
        self._previous = {n: norms[n] for n in remaining} if len(remaining) >= 2 else {}
        for name in self.names:
            if name in self._previous:
                torch._foreach_zero_(self._sums[name])
            else:
                self._sums[name] = []

    # -- checkpoints ---------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        settings = {"interval": self.interval, "percentile": self.percentile, "warmup_steps": self.warmup_steps}
        return stamp("AutoFreeze", self.names, settings)

    def state_dict(self) -> dict[str, Any]:
        """Steps, the interval's summed gradients, the last norms, the decisions and the frozen groups, stamped
        with the group names and the settings (``interval``, ``percentile``, ``warmup_steps``)."""
        return {
            **self._identity(),
            "step_count": self.step_count,
            "previous": dict(self._previous),
            "sums": {n: [t.clone() for t in self._sums[n]] for n in self.names if self._sums[n]},
            "decisions": [d._asdict() for d in self.decisions],
            "freezer": self.freezer.state_dict(),
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """ValueError if ``state`` is not a state of this AutoFreeze (technique, groups, settings, shapes)."""
        check_state(state, self._identity(), keys=("step_count", "previous", "sums", "decisions", "freezer"))
        self.freezer.check_state_dict(state["freezer"])
        frozen = list(state["freezer"]["frozen"])
        if frozen != self.names[: len(frozen)]:
            raise ValueError(f"state_dict: frozen groups {frozen} are not a front prefix of {self.names}")
        for name, saved in state["sums"].items():
            if name not in self.names[len(frozen) : -1]:
                raise ValueError(f"state_dict['sums']: {name!r} is not a group of this AutoFreeze that may freeze")
            shapes = [tuple(t.shape) for t in saved]
            ours = [tuple(local(p).shape) for p in self._params[name]]
            if shapes != ours:
                raise ValueError(f"state_dict['sums'][{name!r}]: shapes {shapes}, this model's group has {ours}")
        for decision in state["decisions"]:
            require_keys(decision, FreezeDecision._fields, "state_dict['decisions']")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly; a state of another technique, partition or setting raises ValueError, loading nothing."""
        self.check_state_dict(state)
        self.freezer.load_state_dict(state["freezer"])
        self.step_count = int(state["step_count"])
        self._previous = {str(n): float(v) for n, v in state["previous"].items()}
        self._sums = {
            n: [_zeros(p).copy_(t) for p, t in zip(self._params[n], state["sums"][n])] if n in state["sums"] else []
            for n in self.names
        }
        self.decisions = [FreezeDecision(**{k: d[k] for k in FreezeDecision._fields}) for d in state["decisions"]]
        self._norms = None
        self.freezer.started()


def _zeros(param: Tensor) -> Tensor:
    """A gradient sum for ``param``'s local piece, in at least float32."""
    piece = local(param)
    return torch.zeros_like(piece, dtype=torch.promote_types(piece.dtype, torch.float32))


def _abs_sum(tensors: list[Tensor]) -> Tensor:
    return sum((t.abs().sum(dtype=torch.float64) for t in tensors), torch.zeros((), dtype=torch.float64))
