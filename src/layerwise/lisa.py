"""LISA: layerwise importance sampling (Pan et al., NeurIPS 2024) on any partition.

The always-on groups (by default the first and the last in forward order: the embeddings and the
head) train every step. Of the other groups, ``gamma`` are drawn uniformly without replacement
from a seeded ``torch.Generator`` every ``period`` optimizer steps and train for that period; the
rest are frozen through :class:`~layerwise.freezing.Freezer`: ``requires_grad=False`` (no weight
gradient is computed for them), no gradient, and no optimizer state.

A group that comes back starts with **fresh optimizer state** (Adam's moments and step count reset,
its bias correction warming up again), as each period of the paper's Algorithm 1 runs AdamW afresh
on the layers it unfroze. Keeping a CPU copy of a sampled-out group's state was the alternative:
it would keep the whole optimizer state in host memory, copy it back and forth every period, and
bring back moments of gradients up to many periods old. A group drawn again for the next period
keeps its state (it never froze). So the optimizer state holds the always-on and the ``gamma``
active groups only.

LISA counts the optimizer's own steps from its step hooks (a step skipped by ``GradScaler`` is
not counted), so the training loop does not change; :meth:`LISA.step` changes nothing. It starts
at step 0: it freezes when built, so build it before loading an optimizer's state, then call
:meth:`LISA.load_state_dict` (``fresh=True`` starts it on a trained optimizer on purpose). Under
data parallelism (:func:`layerwise.distributed.wrap`, FSDP2) every rank gives the same ``seed``,
so every rank draws the same groups.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(6)))
    >>> part = layerwise.by_layer(model, sample_input=torch.zeros(1, 4))
    >>> opt = torch.optim.AdamW(part.param_groups(lr=1e-3))
    >>> lisa = LISA(model, opt, gamma=2, period=3, seed=0)
    >>> lisa.always_on, len(lisa.active), sorted(lisa.frozen) == sorted(set(lisa.sampled) - set(lisa.active))
    (('0', '5'), 2, True)
    >>> for step in range(3):
    ...     loss = model(torch.randn(8, 4)).square().mean()
    ...     opt.zero_grad(); loss.backward(); opt.step()   # the third step ends the period: a new draw
    >>> lisa.step_count, lisa.periods
    (3, 1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ._checks import int_between, positive_int
from .freezing import Freezer
from .scheduler import group_depths
from .state_check import check_state, stamp

__all__ = ["LISA"]


class LISA:
    """Layerwise importance sampling over the optimizer's named param groups (see the module docs).

    Args:
        model: the model being trained.
        optimizer: its optimizer, one named param group (or several with one ``name``) per group, holding
            every parameter of ``model`` that requires grad, and only such parameters; a wrapper exposing
            it as ``.optimizer`` (accelerate's) is unwrapped: keep stepping the wrapper.
        gamma: groups trained at a time besides the always-on ones, 1 to the number of groups sampled from.
        period: optimizer steps between two draws (``K``), an int >= 1.
        always_on: the groups that always train (None: the first and the last in forward order, by their
            ``depth`` key, else their position); the others are sampled.
        seed: the seed of LISA's own ``torch.Generator`` (its state is in :meth:`state_dict`).
        fresh: start on an optimizer that has already taken steps, on purpose.

    Attributes:
        freezer: the :class:`~layerwise.freezing.Freezer` (``freezer.frozen``: the groups sampled out).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        gamma: int,
        period: int,
        *,
        always_on: Sequence[str] | None = None,
        seed: int = 0,
        fresh: bool = False,
    ) -> None:
        positive_int("period", period)
        positive_int("seed", seed, minimum=0)
        freezer = Freezer(model, optimizer)  # checks the model, the optimizer and the group names; changes nothing
        _check_coverage(model, freezer.optimizer)
        names = _forward_names(freezer.optimizer)
        kept = _always_on(names, always_on)
        sampled = [n for n in names if n not in kept]
        count = len(sampled)
        int_between("gamma", gamma, 1, count, f"the number of groups sampled from ({count}: {sampled})")
        for name in sampled:  # a tied weight whose other user trains would stop training with it
            freezer.check_freezable([name], f"LISA sampling out {name!r}")
        freezer.watch_start("LISA", fresh=fresh, now=True)  # it freezes now: state dropped could not come back
        self.freezer, self.optimizer = freezer, freezer.optimizer
        self.gamma, self.period = int(gamma), int(period)
        self.always_on, self.sampled = tuple(kept), tuple(sampled)
        self.generator = torch.Generator().manual_seed(seed)
        self.step_count = 0
        self.active: tuple[str, ...] = ()
        self._switch(self._draw())
        self.optimizer.register_step_post_hook(self._after_step)

    @property
    def frozen(self) -> tuple[str, ...]:
        """The groups sampled out now."""
        return self.freezer.frozen

    @property
    def periods(self) -> int:
        """Periods completed: draws made after the first."""
        return self.step_count // self.period

    def trainable_sets(self) -> int:
        """Distinct sets of trainable parameters over a run, at most: one per draw of ``gamma`` groups."""
        return math.comb(len(self.sampled), self.gamma)

    def step(self) -> None:
        """Nothing to do: LISA counts the optimizer's own steps, so a loop that steps it like a scheduler
        (zero, one or several times per optimizer step) changes nothing."""

    def _draw(self) -> tuple[str, ...]:
        """``gamma`` of the sampled groups, uniformly without replacement, in forward order."""
        picked = torch.randperm(len(self.sampled), generator=self.generator)[: self.gamma]
        return tuple(self.sampled[i] for i in sorted(picked.tolist()))

    def _switch(self, active: tuple[str, ...]) -> None:
        """Train ``active`` (those coming back with fresh optimizer state) and freeze the other sampled groups."""
        back = [n for n in active if self.freezer.is_frozen(n)]
        if back:
            self.freezer.unfreeze(*back)
        self.freezer.freeze(*(n for n in self.sampled if n not in active))
        self.active = active

    def _after_step(self, _optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        self.step_count += 1
        if self.step_count % self.period == 0:
            self._switch(self._draw())

    # -- checkpoints ---------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        settings = {"gamma": self.gamma, "period": self.period, "always_on": list(self.always_on)}
        return stamp("LISA", self.freezer.names, settings)

    def state_dict(self) -> dict[str, Any]:
        """Steps, the generator's state, the active groups and the frozen ones; save it beside the optimizer's
        (which holds the state of the groups training now: the frozen ones have none)."""
        return {
            **self._identity(),
            "step_count": self.step_count,
            "generator": self.generator.get_state(),
            "active": list(self.active),
            "freezer": self.freezer.state_dict(),
        }

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """ValueError unless ``state`` is a state of this LISA (technique, groups, settings, a consistent draw)."""
        check_state(state, self._identity(), keys=("step_count", "generator", "active", "freezer"))
        positive_int("state_dict['step_count']", state["step_count"], minimum=0)
        self.freezer.check_state_dict(state["freezer"])
        active = list(state["active"])
        if len(active) != self.gamma or any(n not in self.sampled for n in active):
            raise ValueError(
                f"state_dict['active']: expected {self.gamma} of the sampled groups {list(self.sampled)}, got {active}"
            )
        frozen = sorted(state["freezer"]["frozen"])
        if frozen != sorted(n for n in self.sampled if n not in active):
            raise ValueError(f"state_dict: frozen groups {frozen} are not the sampled groups outside {active}")
        generator = state["generator"]
        ours = self.generator.get_state()
        if not isinstance(generator, torch.Tensor) or generator.dtype != ours.dtype or generator.shape != ours.shape:
            raise ValueError("state_dict['generator']: expected a torch.Generator state (a uint8 tensor)")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly; a state of another technique, partition or setting raises ValueError, loading nothing.
        The optimizer's state dict may be loaded before or after (groups that were training keep their state)."""
        self.check_state_dict(state)
        self.freezer.load_state_dict(state["freezer"])
        self.step_count = int(state["step_count"])
        self.generator.set_state(state["generator"])
        self.active = tuple(state["active"])
        self.freezer.started()


def _forward_names(optimizer: Optimizer) -> list[str]:
    """The group names ordered by their ``depth`` key (else their position): the forward order."""
    depth: dict[str, int] = {}
    for group, at in zip(optimizer.param_groups, group_depths(optimizer.param_groups)):
        depth[group["name"]] = min(at, depth.get(group["name"], at))
    return sorted(depth, key=lambda name: depth[name])


def _always_on(names: list[str], always_on: Sequence[str] | None) -> list[str]:
    """The always-on groups, checked: known names, leaving at least one group to sample."""
    if always_on is None:
        kept = [names[0], names[-1]] if len(names) > 1 else list(names)
    elif isinstance(always_on, str) or not all(isinstance(n, str) for n in always_on):
        raise ValueError(f"always_on: expected a list of group names, got {always_on!r}")
    else:
        kept = list(dict.fromkeys(always_on))
    unknown = [n for n in kept if n not in names]
    if unknown:
        raise ValueError(f"always_on: no group named {unknown}; groups: {names}")
    if len(kept) == len(names):
        raise ValueError(
            f"always_on: {kept} leaves no group to sample; it takes group names of {names} that leave at least one out"
        )
    return kept


def _check_coverage(model: nn.Module, optimizer: Optimizer) -> None:
    """ValueError unless the optimizer holds exactly the model's parameters that require grad."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        raise ValueError(
            f"optimizer: holds no param group with {missing[:4]}{' ...' if len(missing) > 4 else ''}, which require "
            "grad: LISA can neither train nor sample them out; it takes an optimizer over every trainable group "
            "(Partition.param_groups()), or freeze those parameters beforehand"
        )
    names = {id(p): n for n, p in model.named_parameters()}
    stiff = [names.get(id(p), "a tensor") for g in optimizer.param_groups for p in g["params"] if not p.requires_grad]
    if stiff:
        raise ValueError(
            f"optimizer: holds {stiff[:4]}{' ...' if len(stiff) > 4 else ''}, frozen before LISA (requires_grad "
            "False): they would never update, and LISA would unfreeze them; it takes an optimizer over trainable "
            "parameters only (leave frozen ones out of its groups)"
        )
