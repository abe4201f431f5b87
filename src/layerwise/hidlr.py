"""``HiDLR``: per-group learning rates found from the loss curvature, on top of any optimizer.

Hessian-informed differential learning rates (Xu, Bu, Zhang, Barnett; Algorithm 1). Every
``update_every`` steps, on the current batch:

1. the base optimizer's own update ``d_k`` for every group is taken at learning rate 1 (so
   momentum and Adam's preconditioning are in it), then parameters *and* optimizer state are
   restored: the base optimizer's state advances exactly once per step;
2. the loss is probed at ``w + v * eta_k * d_k`` for ``v`` in ``(-2, -1, 1, 2)``, one group at a
   time (``4K`` forward passes of the closure under ``torch.no_grad``);
3. a quadratic is fitted to the probe losses by least squares (:mod:`layerwise.quadfit`) and
   ``eta*_k = b_k / A_kk``;
4. if every ``A_kk > 0``, ``b_k > 0`` and ``R^2 > min_r2``: ``eta <- gamma * eta + (1 - gamma) * eta*``,
   else the previous learning rates stay and the rejection is counted;
5. parameters are restored bitwise and the real step is taken with the accepted learning rates.

Groups are the optimizer's param groups; dicts that share a ``name`` (a layer split into
decay / no-decay parts by :meth:`Partition.param_groups`) form one group.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> x, y = torch.randn(32, 4), torch.randn(32, 1)
    >>> part = layerwise.by_layer(model, sample_input=x)
    >>> opt = layerwise.HiDLR(torch.optim.SGD(part.param_groups(lr=0.01), momentum=0.9), update_every=4)
    >>> loss_fn = lambda: torch.nn.functional.mse_loss(model(x), y)
    >>> for _ in range(8):
    ...     opt.zero_grad()
    ...     loss_fn().backward()
    ...     _ = opt.step(loss_fn)
    >>> opt.stats["forward_passes"]
    16
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim import Optimizer

from ._checks import fraction, int_between, one_of, positive_int, positive_number, unit_interval
from ._directions import rule_for
from ._probe_prefix import MODES, PrefixReuse
from ._shards import local_all
from ._warn import warn
from .group_rates import GroupRates
from .groups import Partition
from .param_groups import set_lr
from .quadfit import PROBES, REJECTION_ADVICE, REJECTION_REASONS, FitOptions, QuadraticFit, fit_quadratic, probe_plan
from .schedules import LayerSchedule, Policy
from .state_check import check_optimizer_state, check_state, require_keys

__all__ = ["HiDLR"]

log = logging.getLogger(__name__)

_MOVED_TO_FIT = ("min_r2", "full_matrix", "clip", "joint_scale", "per_group")

DIRECTIONS = ("auto", "step")
"""How :class:`HiDLR` finds the base optimizer's update (see its ``direction`` argument)."""

_JOINT = (-1.0, -0.5, 0.5, 1.0)
"""Step multipliers probed along the combined step with ``joint_scale``."""

NEVER_ACCEPTED_ROUNDS = 5
"""After this many probe rounds with no fit accepted, :class:`HiDLR` warns once (:attr:`HiDLR.diagnosis`)."""


def _saving_buffers(saved: dict[int, tuple[nn.Module, list[Tensor]]]) -> Callable[..., None]:
    """A forward pre-hook saving a module's own buffers (BatchNorm statistics) the first time it runs."""

    def hook(module: nn.Module, _args: Any) -> None:
        if id(module) not in saved:
            own = list(module.buffers(recurse=False))
            if own:
                saved[id(module)] = (module, [b.detach().clone() for b in own])

    return hook


class HiDLR(GroupRates):
    """Wraps ``optimizer``; finds each group's learning rate from probe losses every few steps.

    Args:
        optimizer: any torch optimizer; its param groups (merged by ``name``) are the K groups,
            and their current LRs are the starting ``eta``.
        update_every: Phi, probe every this many steps (the first step probes); with
            ``max_interval``, the shortest interval.
        max_interval: adapt Phi: after an accepted fit that moved no group's LR by more than
            ``interval_tolerance`` (relative), or a rejected fit, the interval doubles, up to this
            cap; after a larger move it halves, down to ``update_every``. None: Phi is fixed.
        interval_tolerance: the relative LR move below which the interval grows.
        probe_fraction: probe on this fraction of the current batch, in (0, 1]: on probing steps
            ``step(closure)`` calls ``closure(probe_fraction)``, which must return the loss of the
            batch's first ``ceil(probe_fraction * batch size)`` examples (the same ones for every
            probe of a round). 1 (default): ``closure()``, the whole batch.
        direction: how the base update is found: ``"auto"`` computes it from the optimizer's state
            without stepping for SGD, Adam and AdamW (bitwise the stepped one; no copy of the
            optimizer state or of the update is kept), and steps and restores for any other
            optimizer; ``"step"`` always steps and restores.
        gamma: smoothing, ``eta <- gamma * eta + (1 - gamma) * eta*``; in [0, 1). It is the smoothing
            per ``update_every`` steps: with ``max_interval``, a round ``m * update_every`` steps after
            the previous one smooths with ``gamma ** m``, so the LRs follow the estimates with the same
            time constant in steps as at a fixed interval (fewer rounds, not slower LRs).
        min_r2: acceptance threshold on the fit's R^2.
        probes: the probing vector v (at least three distinct non-zero values).
        full_matrix: also probe pairs of groups and fit the full K x K curvature (O(K^2) forwards).
        clip: optional ``(low, high)`` range for ``eta*``.
        joint_scale: after an accepted fit, probe the loss along the combined step ``sum_k eta*_k d_k``
            at ``s`` in (-1, -1/2, 1/2, 1) and rescale ``eta*`` by the fitted 1-D minimiser ``s*``
            (4 more forward passes). Corrects the diagonal fit's overshoot when groups' updates
            interact (off-diagonal curvature); not in the paper, off by default.
        per_group: accept each group whose own curvature and slope are positive, instead of all or
            none (the paper); the others keep their LR. Diagonal fit only; off by default.
        anchored: fit ``L_j - L_0`` without an intercept, ``L_0`` the loss at the current weights
            (the paper's fit, eq. 3.2; one more forward pass per round). Default: a free intercept
            fitted with the rest (2K + 1 unknowns, no extra forward).
        schedule: a global :class:`Policy` or a :class:`LayerSchedule` of progress; the applied LR
            is ``eta_k * factor_k(step / total_steps)``. A group whose factor is 0 is not probed.
        total_steps: run length, required with ``schedule``.
        groups: the partition the optimizer was built from; checked against its param groups.
        model: restore this model's buffers (BatchNorm statistics) after probing. Without it, the
            buffers of every module the probes run are saved on its first call and restored.
        sync: average probe losses across ``torch.distributed`` ranks (default: when initialised).
        prefix_reuse: the probes of group k start from the activations entering group k, recorded
            in the round's first probe that reaches them, instead of recomputing the forward up to
            it (needs ``model``; groups in data-flow order save the most). Where no clean cut lies
            right before a group (a skip connection crosses it, a dropout in training mode precedes
            it), a shallower cut is used with a warning (``"allow"``: silently); ``"strict"`` raises. The losses are
            bitwise those without it. ``stats["prefix_reused"]`` counts the probes that reused.

    ``step(closure)``: ``closure()`` must return the scalar loss of the current batch *without*
    calling ``backward`` (it runs under ``torch.no_grad``); it is only called on probing steps.
    Trainers that own the loop set :attr:`closure` to that loss closure instead; then a closure
    given to ``step`` is the trainer's own torch-style one (forward and backward, as Lightning
    passes it): it runs first, with grad, and its loss is returned.
    ``param_groups`` are the base optimizer's, so ``lr`` shows the applied rate to loggers.
    HiDLR owns ``lr``: combine with schedules through ``schedule``, not a torch ``LRScheduler`` (a
    foreign write is overwritten and warned of once, :class:`~layerwise.group_rates.ForeignLRWarning`).
    After :data:`NEVER_ACCEPTED_ROUNDS` rounds without an accepted fit it warns once with
    :attr:`diagnosis`.
    """

    technique = "HiDLR"

    def __getattr__(self, name: str) -> Any:
        if name in _MOVED_TO_FIT:  # deprecated: the fit options moved to HiDLR.fit
            warnings.warn(f"HiDLR.{name} is now HiDLR.fit.{name}", DeprecationWarning, stacklevel=2)
            return getattr(self.__dict__["fit"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        update_every: int = 8,
        max_interval: int | None = None,
        interval_tolerance: float = 0.1,
        probe_fraction: float = 1.0,
        direction: str = "auto",
        gamma: float = 0.9,
        min_r2: float = 0.95,
        probes: Sequence[float] = PROBES,
        full_matrix: bool = False,
        clip: tuple[float, float] | None = None,
        joint_scale: bool = False,
        per_group: bool = False,
        anchored: bool = False,
        schedule: Policy | LayerSchedule | None = None,
        total_steps: int | None = None,
        groups: Partition | None = None,
        model: nn.Module | None = None,
        sync: bool | None = None,
        prefix_reuse: bool | str = False,
    ) -> None:
        self._check_base(optimizer)
        positive_int("update_every", update_every)
        if max_interval is not None:
            int_between(
                "max_interval", max_interval, update_every, 2**31, f"a large int (>= update_every={update_every})"
            )
        positive_number("interval_tolerance", interval_tolerance)
        fraction("probe_fraction", probe_fraction, open_low=True, what="a fraction of the batch")
        one_of("direction", direction, DIRECTIONS)
        unit_interval("gamma", gamma)
        fit = FitOptions(probes, min_r2, full_matrix, clip, per_group, joint_scale, anchored)
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not (isinstance(prefix_reuse, bool) or prefix_reuse in ("allow", "strict")):
            raise ValueError(f"prefix_reuse: must be one of {MODES}, got {prefix_reuse!r}")
        if prefix_reuse and model is None:
            raise ValueError("prefix_reuse: needs model=..., the model the closure runs (its forward is traced)")
        reuse = PrefixReuse(model, prefix_reuse) if prefix_reuse else None
        self._setup_rates(optimizer, schedule, total_steps, groups)
        self.update_every = update_every
        self.max_interval = max_interval
        self.interval_tolerance = float(interval_tolerance)
        self.probe_fraction = float(probe_fraction)
        self.direction = direction
        self.interval = update_every
        """Phi now: the steps from this probing round to the next (fixed unless ``max_interval``)."""
        self.next_probe = 0
        """The step on which the next probing round runs."""
        self.gamma = float(gamma)
        self.fit = fit
        """The probe placement and acceptance options (:class:`~layerwise.quadfit.FitOptions`)."""
        self.model = model
        self.sync = sync
        self.prefix_reuse = prefix_reuse
        self._reuse = reuse
        self._plan_cache: dict[int, np.ndarray] = {}
        self.stats: dict[str, Any] = {
            "probe_rounds": 0,
            "forward_passes": 0,
            "accepted": 0,
            "rejected": 0,
            "groups_kept": 0,
            "rejections": dict.fromkeys((*REJECTION_REASONS, "joint"), 0),
            "interval": update_every,
            "prefix_reused": 0,
        }
        self.history: list[dict[str, Any]] = []
        self.last_fit: QuadraticFit | None = None
        self._warned_never_accepted = False
        self.closure: Callable[[], Tensor] | None = None
        """The probes' loss closure of the current batch, set by trainers that own the loop."""

    # -- stepping ------------------------------------------------------------------------

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """One optimizer step; probes first when the step is :attr:`next_probe` (every ``update_every``
        steps unless ``max_interval`` adapts the interval)."""
        self._check_foreign_lrs()
        loss = None
        probe = closure if self.closure is None else self.closure
        if closure is not None and self.closure is not None:
            with torch.enable_grad():
                loss = closure()  # the trainer's closure: gradients for this step
        factors = self._factors()
        if self.step_count >= self.next_probe:
            if probe is None:
                raise TypeError(
                    "closure: HiDLR.step(closure) needs a closure on probing steps (every update_every "
                    "steps, the first included): a function returning the batch loss without backward; a trainer "
                    "that owns the loop gives it none: use layerwise.integrations.huggingface.LayerwiseTrainer "
                    "for transformers.Trainer, layerwise.integrations.lightning.LayerwiseCallback for Lightning"
                )
            self._probe(self._on_fraction(probe), factors)
            self.next_probe = self.step_count + self.interval
        self._apply_lrs(factors)
        self.optimizer.step()
        self.step_count += 1
        return loss

    def _on_fraction(self, closure: Callable[..., Tensor]) -> Callable[[], Tensor]:
        """The probes' closure: ``closure`` itself, or ``closure(probe_fraction)`` for a sub-batch."""
        if self.probe_fraction == 1.0:
            return closure
        try:
            inspect.signature(closure).bind(self.probe_fraction)
        except (TypeError, ValueError):
            raise TypeError(
                f"closure: with probe_fraction={self.probe_fraction}, HiDLR calls closure(fraction) on probing "
                "steps; give a closure taking the fraction and returning the loss of the batch's first "
                "ceil(fraction * batch size) examples"
            ) from None
        return lambda: closure(self.probe_fraction)

    def _adapt_interval(self, before: list[float], fit: QuadraticFit) -> None:
        """Halve Phi after an accepted large move; double it otherwise: after a small move or a rejection
        (no LR moved), so a run whose fits are rejected probes less, not more."""
        if self.max_interval is None:
            return
        moves = [abs(now - then) / then for now, then in zip(self.eta, before) if then > 0]
        if fit.accepted and max(moves, default=0.0) > self.interval_tolerance:
            self.interval = max(self.interval // 2, self.update_every)
        else:
            self.interval = min(2 * self.interval, self.max_interval)
        self.stats["interval"] = self.interval

    @torch.no_grad()
    def _probe(self, closure: Callable[[], Tensor], factors: np.ndarray) -> None:
        opt = self.optimizer
        members = self._members()
        active = [k for k, params in enumerate(members) if params and factors[k] > 0 and self.eta[k] > 0]
        if not active:
            return
        params = [p for k in active for p in members[k]]
        rule = rule_for(opt) if self.direction == "auto" else None
        # Stepping moves every group (the inactive ones at LR 0) and the state: all of it is restored.
        stepped = (
            params if rule is not None else params + [p for k, ps in enumerate(members) if k not in active for p in ps]
        )
        index = {id(p): i for i, p in enumerate(params)}
        moved = local_all(stepped)  # under FSDP2, this rank's shards: every move below is local
        # Stepping needs the whole start to restore from; without it, each probe copies only the groups it moves.
        start = [p.detach().clone() for p in moved] if rule is None or self.fit.joint_scale else None
        saved_state = {} if rule is not None else {p: self._copy_state(opt.state[p]) for p in stepped if p in opt.state}
        saved_lrs = [float(g["lr"]) for g in opt.param_groups]
        buffers = [b.detach().clone() for b in self.model.buffers()] if self.model is not None else []
        grads = [p.grad for group in opt.param_groups for p in group["params"]]  # a torch-style closure clears them
        touched: dict[int, tuple[nn.Module, list[Tensor]]] = {}
        watch = None if self.model is not None else register_module_forward_pre_hook(_saving_buffers(touched))
        try:
            if rule is None:
                for group, k, ratio in zip(opt.param_groups, self._member, self._ratio):
                    set_lr(group, ratio if k in active else 0.0)
                opt.step()
                stored = torch._foreach_sub(moved[: len(params)], start[: len(params)])
                torch._foreach_copy_(moved, start)
                direction: Callable[[int], Tensor] = stored.__getitem__
            else:  # the base update from the optimizer's state, recomputed per probe: no copy of it kept
                where = {id(p): (g, ratio) for g, ratio in zip(opt.param_groups, self._ratio) for p in g["params"]}
                direction = lambda i: rule(where[id(params[i])][0], params[i], where[id(params[i])][1])  # noqa: E731
            slots = [[index[id(p)] for p in members[k]] for k in active]
            if self._reuse is not None:
                self._reuse.begin([members[k] for k in active])
            moves = (moved[: len(params)], start, direction, slots)
            eta = np.array([self.eta[k] for k in active])
            plan = self._plan(len(active))
            options = self.fit
            anchor = float(self._losses(closure, np.zeros((1, len(active))), moves)[0]) if options.anchored else None
            fit = fit_quadratic(
                plan,
                self._losses(closure, plan * eta, moves),
                eta,
                full_matrix=options.full_matrix,
                min_r2=options.min_r2,
                clip=options.clip,
                per_group=options.per_group,
                anchor=anchor,
            )
            if fit.accepted and options.joint_scale and len(active) > 1:
                fit = self._rescale(closure, fit, moves, anchor)
        finally:
            if start is not None:
                torch._foreach_copy_(moved, start)
            for p in stepped if rule is None else ():
                if p in saved_state:
                    opt.state[p] = saved_state[p]
                else:
                    opt.state.pop(p, None)
            for group, lr in zip(opt.param_groups, saved_lrs):
                set_lr(group, lr)
            if buffers:
                torch._foreach_copy_(list(self.model.buffers()), buffers)
            if watch is not None:
                watch.remove()
                for module, saved in touched.values():
                    torch._foreach_copy_(list(module.buffers(recurse=False)), saved)
            for p, grad in zip((p for group in opt.param_groups for p in group["params"]), grads):
                p.grad = grad
        before = list(self.eta)
        self._update_eta(active, fit)
        self._adapt_interval(before, fit)

    @staticmethod
    def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
        return {key: value.clone() if isinstance(value, Tensor) else value for key, value in state.items()}

    def _losses(self, closure: Callable[[], Tensor], steps: np.ndarray, moves: tuple) -> np.ndarray:
        """Loss at ``w + sum_j steps[i, j] d_j`` for every row ``i`` (parameters restored after each)."""
        params, start, direction, slots = moves
        losses = []
        reused = 0 if self._reuse is None else self._reuse.reused
        for row in steps:
            moved = [j for j in range(len(slots)) if row[j] != 0.0]
            # the values to restore: the round's start, or a copy of only the groups this probe moves
            back = {j: [params[i].clone() if start is None else start[i] for i in slots[j]] for j in moved}
            try:
                for j in moved:
                    for i in slots[j]:
                        params[i].add_(direction(i), alpha=float(row[j]))
                if self._reuse is None or not moved:  # the unmoved point (the anchor) reuses nothing
                    losses.append(self._call(closure))
                else:
                    losses.append(self._call(lambda moved=moved: self._reuse.call(closure, moved)))
            finally:
                for j in moved:
                    torch._foreach_copy_([params[i] for i in slots[j]], back[j])
        values = torch.stack(losses).double()
        if self.sync is not False and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
            values /= torch.distributed.get_world_size()
        self.stats["forward_passes"] += len(steps)
        if self._reuse is not None:
            self.stats["prefix_reused"] = self.stats.get("prefix_reused", 0) + self._reuse.reused - reused
        return values.cpu().numpy()

    def _rescale(
        self, closure: Callable[[], Tensor], fit: QuadraticFit, moves: tuple, anchor: float | None = None
    ) -> QuadraticFit:
        """1-D quadratic fit along the combined step ``eta*``: scale ``eta*`` by its minimiser."""
        line = np.array(_JOINT)[:, None]
        step = np.where(fit.groups, fit.eta_star, 0.0)  # groups that did not pass stay put
        clip = self.fit.clip
        losses = self._losses(closure, line * step, moves)
        along = fit_quadratic(line, losses, np.ones(1), min_r2=self.fit.min_r2, anchor=anchor)
        if not along.accepted:
            return replace(fit, eta_star=None, reason="joint")
        star = fit.eta_star * float(along.eta_star[0])
        return replace(fit, eta_star=star if clip is None else np.clip(star, *clip))

    def _plan(self, num_active: int) -> np.ndarray:
        if num_active not in self._plan_cache:
            self._plan_cache[num_active] = probe_plan(num_active, self.fit.probes, full_matrix=self.fit.full_matrix)
        return self._plan_cache[num_active]

    @staticmethod
    def _call(closure: Callable[[], Tensor]) -> Tensor:
        try:
            loss = closure()
        except RuntimeError as err:
            if "does not require grad" in str(err) or "does not have a grad_fn" in str(err):
                raise ValueError(
                    "closure: must only compute the loss; HiDLR calls it under torch.no_grad() "
                    "on probing steps, so it must not call backward()"
                ) from err
            raise
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise TypeError(f"closure: must return a scalar loss tensor, got {shape}")
        return loss.detach().reshape(())

    def _update_eta(self, active: list[int], fit: QuadraticFit) -> None:
        self.last_fit = fit
        self.stats["probe_rounds"] += 1
        if fit.accepted:
            gamma = self._round_gamma()
            for k, star, passed in zip(active, fit.eta_star, fit.groups):
                if passed:
                    self._accept(k, star, gamma)
            self.stats["accepted"] += 1
            self.stats["groups_kept"] += int((~fit.groups).sum())
        else:
            self._reject(fit.reason)
            first_nonfinite = fit.reason == "nonfinite" and self.stats["rejections"]["nonfinite"] == 1
            level = logging.WARNING if first_nonfinite else logging.DEBUG  # then counted, logged at debug
            log.log(level, "Hi-DLR step %d: fit rejected (%s, R2=%.3f)", self.step_count, fit.reason, fit.r2)
            self._warn_never_accepted()
        record = {"step": self.step_count, "eta": list(self.eta), "accepted": fit.accepted, "reason": fit.reason}
        self.history.append({**record, "r2": fit.r2})

    def _warn_never_accepted(self) -> None:
        diagnosis = self.diagnosis
        if diagnosis is not None and not self._warned_never_accepted:
            self._warned_never_accepted = True
            warn(diagnosis)

    @property
    def diagnosis(self) -> str | None:
        """Why the LRs do not move, once :data:`NEVER_ACCEPTED_ROUNDS` rounds ran without an accepted fit
        (the rejections by reason and what to try; warned once); None otherwise."""
        stats = self.stats
        if stats["accepted"] or stats["probe_rounds"] < NEVER_ACCEPTED_ROUNDS:
            return None
        reasons = sorted(((n, r) for r, n in stats["rejections"].items() if n), reverse=True)
        counts = ", ".join(f"{r} {n}" for n, r in reasons)
        advice = " ".join(REJECTION_ADVICE.get(r, r) for _, r in reasons)
        backoff = (
            f"While nothing is accepted the interval grows (now {self.interval} steps, up to max_interval)."
            if self.max_interval is not None
            else f"Probing continues every {self.update_every} steps; max_interval=... lets it back off."
        )
        return (
            f"Hi-DLR: none of {stats['probe_rounds']} fits was accepted (rejections: {counts}), so every group "
            f"keeps its starting LR and the {stats['forward_passes']} probe forward passes bought nothing. "
            f"{advice} {backoff} If no fit is ever accepted, the base optimizer alone trains the same, cheaper."
        )

    @property
    def log_stats(self) -> dict[str, float]:
        """:attr:`stats` as numbers for a trainer's log line: ``hidlr/probe_rounds``, ``hidlr/accepted``,
        ``hidlr/rejected``, ``hidlr/rejected_<reason>`` for every reason seen, ``hidlr/interval`` and
        ``hidlr/never_accepted`` (1.0 while :attr:`diagnosis` holds)."""
        stats = self.stats
        line = {f"hidlr/{key}": float(stats[key]) for key in ("probe_rounds", "accepted", "rejected", "interval")}
        line |= {f"hidlr/rejected_{r}": float(n) for r, n in stats["rejections"].items() if n}
        return {**line, "hidlr/never_accepted": float(self.diagnosis is not None)}

    def _round_gamma(self) -> float:
        """This round's smoothing: ``gamma`` per ``update_every`` steps since the previous round (the
        interval, not yet adapted; ``gamma`` itself at a fixed interval)."""
        return self.gamma ** (self.interval / self.update_every)

    # -- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The base optimizer's state dict plus Hi-DLR's LRs, step count, counters and history."""
        stats = self._copy_stats(self.stats)
        return {
            **self._identity(),
            "base": self.optimizer.state_dict(),
            "hidlr": {
                "eta": list(self.eta),
                "step_count": self.step_count,
                "interval": self.interval,
                "next_probe": self.next_probe,
                "stats": stats,
                "history": [dict(h) for h in self.history],
            },
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore a :meth:`state_dict`; another technique's, other groups or another base optimizer raise."""
        eta, step_count, stats, history, interval, next_probe = self._decoded(state_dict)
        self.optimizer.load_state_dict(state_dict["base"])
        self.eta, self.step_count, self.stats, self.history = eta, step_count, stats, history
        self.interval, self.next_probe = interval, next_probe
        self.stats["interval"] = interval
        self._apply_lrs(self._factors())

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """ValueError if :meth:`load_state_dict` would refuse ``state_dict``; nothing changes."""
        self._decoded(state_dict)

    def _decoded(self, state_dict: dict[str, Any]) -> tuple[list[float], int, dict, list[dict], int, int]:
        """The checked state: eta, step count, stats, history, interval and next probing step."""
        check_state(state_dict, self._identity(), keys=("base", "hidlr"))
        check_optimizer_state(self.optimizer, state_dict["base"], "state_dict['base']")
        saved = state_dict["hidlr"]
        require_keys(saved, ("eta", "step_count", "stats", "history"), "state_dict['hidlr']")
        try:  # decode first: a malformed state changes nothing
            eta = self._decode_eta(saved["eta"])
            step_count = self._decode_step_count(saved["step_count"])
            stats = self._copy_stats(saved["stats"])
            history = [dict(h) for h in saved["history"]]
            interval, next_probe = self._decode_schedule(saved, step_count)
        except (TypeError, KeyError) as err:
            raise ValueError(f"state_dict['hidlr']: malformed ({type(err).__name__}: {err})") from None
        return eta, step_count, stats, history, interval, next_probe

    def _decode_schedule(self, saved: dict[str, Any], step_count: int) -> tuple[int, int]:
        """The saved interval and next probing step (a checkpoint from before adaptive Phi: every
        ``update_every`` steps)."""
        if "interval" not in saved:
            return self.update_every, -(-step_count // self.update_every) * self.update_every
        cap = self.max_interval or self.update_every
        interval = int_between("state_dict['hidlr']['interval']", saved["interval"], self.update_every, cap)
        next_probe = self._decode_step_count(saved["next_probe"])
        return interval, next_probe

    def _settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"update_every": self.update_every, "gamma": self.gamma}
        if self.fit.anchored:
            settings["anchored"] = True
        if self.max_interval is not None:  # recorded only when set: older checkpoints keep loading
            settings["max_interval"] = self.max_interval
        return settings

    def __repr__(self) -> str:
        lrs = self._lrs_text()
        base = type(self.optimizer).__name__
        return f"HiDLR({base}, update_every={self.update_every}, gamma={self.gamma}, lrs: {lrs})"
