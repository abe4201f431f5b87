"""``Multirate``: fast parameters step every step, slow ones get a gradient every ``k`` steps.

Vlaar & Leimkuhler, *Multirate training of neural networks* (Algorithms 1, 2, A3; §3.1). Each
part (a *level*) has a period: the fast part 1, the slow part ``k``. On a step where a level's
period divides the step count, it needs a gradient; on the others its parameters do not require
grad, so backward stops before them and, where they come first in the network, their forward
builds no graph. The user's loop stays ``loss.backward(); opt.step()``: after each step the
optimizer sets ``requires_grad`` for the next one.

Every level runs its own base optimizer (SGD by default, any torch optimizer works). When a
level refreshes, its base optimizer's update ``delta`` is computed once, with the level's step
``h * period / k`` (``h`` for the slow part; ``slow_lr`` uncouples it), then:

- ``drift=True`` (Algorithm 1, default): ``delta / period`` is applied on each of the ``period``
  steps of the cycle, the refresh step included (linear drift). With SGD this is exactly
  ``p_S := mu p_S + grad_S (+ omega theta_S)`` every k steps and ``theta_S -= h/k p_S`` every step.
- ``drift=False`` (Algorithm 2): ``delta`` is applied at once on the refresh step. The fast part's
  gradient of that step is the one taken before the jump (one backward per step); with
  ``literal=True`` the paper's order is followed instead: the slow part jumps first and the fast
  gradient is taken again at the moved slow parameters (``step(closure)`` calls the closure twice
  on refresh steps).

Each part may have its own base optimizer and options (hybrid schemes, App. A): ``base`` maps part
names to a class or a ``(class, options)`` pair, e.g. AdamW for the fast head and SGD with momentum
for the slow body. ``temperature`` adds Langevin noise to a part (eq. 2, App. A), in the SGLD form:
after every step each of its parameters moves by ``sqrt(2 * eta * tau) * N(0, 1)``, ``eta`` its
group's LR per step (``lr / period``), drawn from the optimizer's own seeded generator, which its
``state_dict`` carries.

The fast part steps with ``h / k`` every step. With Adam or AdamW as the base, the slow part's
Adam update (moments advanced once per refresh, with the refresh's gradient) is computed every
k steps and applied as linear drift over the cycle.

Examples:
    >>> import torch
    >>> from layerwise import Multirate
    >>> body, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
    >>> opt = Multirate(head.parameters(), body.parameters(), lr=0.1, k=5, momentum=0.9)
    >>> [p.requires_grad for p in body.parameters()]  # step 0 refreshes the slow part
    [True, True]
    >>> head(body(torch.randn(3, 4))).sum().backward(); opt.step()
    >>> [p.requires_grad for p in body.parameters()]  # steps 1..4 are fast steps
    [False, False]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._checks import finite_nonneg, positive_int
from ._shards import check_current, local_all, local_like, refuse_flat_parameters, shaped_like
from .groups import Partition
from .param_groups import group_names
from .per_group import Composite, Params, optimizer_class, part_groups
from .state_check import check_optimizer_state, check_state, stamp
from .wrapping import init_hooks

__all__ = ["Multirate"]

Base = type[Optimizer] | Mapping[str, type[Optimizer] | tuple[type[Optimizer], Mapping[str, Any]]]
"""One base optimizer class for every part, or each part's own class (and options) by part name."""


@dataclass(frozen=True)
class _Extras:
    temperature: Mapping[str, float] | None = None
    noise_seed: int = 0
    literal: bool = False


def _bases(base: Base, names: list[str], shared: dict[str, Any]) -> list[tuple[type[Optimizer], dict[str, Any]]]:
    """Each part's (base class, options): ``base`` for all, or per part name (a hybrid scheme)."""
    if isinstance(base, Mapping):
        unknown = sorted(set(base) - set(names))
        missing = [n for n in names if n not in base]
        if unknown or missing:
            what = f"no part named {unknown}" if unknown else f"no base class for the parts {missing}"
            raise ValueError(f"base: {what}; a hybrid scheme names every part, one of {names}")
        bases = []
        for name in names:
            entry = base[name]
            cls, options = entry if isinstance(entry, tuple) and len(entry) == 2 else (entry, {})
            if not isinstance(options, Mapping):
                raise TypeError(f"base[{name!r}]: options must be a mapping, got {type(options).__name__}")
            bases.append((optimizer_class(f"base[{name!r}]", cls), {**shared, **options}))
    else:
        bases = [(optimizer_class("base", base), dict(shared)) for _ in names]
    for (_, options), name in zip(bases, names):
        for key in ("momentum", "weight_decay"):
            if key in options:
                finite_nonneg(f"base[{name!r}] {key}" if isinstance(base, Mapping) else key, options[key])
    return bases


def _temperatures(temperature: Mapping[str, float] | None, names: list[str]) -> list[float]:
    if temperature is None:
        return [0.0] * len(names)
    if not isinstance(temperature, Mapping):
        raise TypeError(f"temperature: expected a mapping of part names to tau >= 0, got {type(temperature).__name__}")
    unknown = sorted(set(temperature) - set(names))
    if unknown:
        raise ValueError(f"temperature: no part named {unknown}; the parts are {names}")
    return [finite_nonneg(f"temperature[{n!r}]", temperature[n]) if n in temperature else 0.0 for n in names]


class Multirate(Composite):
    """Multirate optimizer over parts of different periods (fastest first).

    Args:
        fast: the fast part: parameters or param-group dicts.
        slow: the slow part; more parts with ``levels`` instead.
        lr: ``h``, the slow step; the fast part steps ``h / k`` (the per-step rate of every part).
        k: the slow part's period, an int >= 1.
        slow_lr: uncoupled slow step ``h_S`` (default ``h``).
        drift: linear drift of the slow part between refreshes (Algorithm 1) or one jump (Algorithm 2).
        base: the base optimizer class of every part (``torch.optim.SGD``), or a mapping from every
            part name to its own class or ``(class, options)`` (options override ``base_options``).
        model: if given, every trainable parameter of it must be in a part.
        temperature: Langevin temperature ``tau >= 0`` per part name (default: none, pure optimization).
        noise_seed: seed of the noise generator (with ``temperature``).
        literal: with ``drift=False``, Algorithm 2 in the paper's order (the slow jump first, then the
            fast gradient at the moved slow parameters); needs ``step(closure)``.
        **base_options: passed to ``base``: ``momentum``, ``weight_decay`` (Algorithm A3), ``betas``...
            Per-part momentum and weight decay: give them per part in ``base``, or per param group.

    ``Multirate.levels([fast, mid, slow], lr, ratios=[K1, K2])`` builds more than two scales:
    part ``i`` has period ``K1 * ... * Ki`` (§3.1). ``Multirate.from_partition(part, fast=["head"])``
    takes the named groups as fast and the rest as slow; slow biases (App. D.2) are
    ``from_partition(by_kind(model), fast=["weight", "norm"])``.
    """

    def __init__(
        self,
        fast: Params,
        slow: Params,
        lr: float,
        k: int,
        *,
        slow_lr: float | None = None,
        drift: bool = True,
        base: Base = torch.optim.SGD,
        model: nn.Module | None = None,
        temperature: Mapping[str, float] | None = None,
        noise_seed: int = 0,
        literal: bool = False,
        **base_options: Any,
    ) -> None:
        positive_int("k", k)
        self._setup(
            [fast, slow],
            ["fast", "slow"],
            [1, k],
            lr,
            slow_lr=slow_lr,
            drift=drift,
            base=base,
            base_options=base_options,
            model=model,
            extras=_Extras(temperature, noise_seed, literal),
        )

    @classmethod
    def levels(
        cls,
        parts: Sequence[Params],
        lr: float,
        ratios: Sequence[int],
        *,
        slow_lr: float | None = None,
        drift: bool = True,
        base: Base = torch.optim.SGD,
        model: nn.Module | None = None,
        temperature: Mapping[str, float] | None = None,
        noise_seed: int = 0,
        literal: bool = False,
        **base_options: Any,
    ) -> Multirate:
        """``len(parts)`` time scales, fastest first; ``ratios[i]`` = period of part i+1 / period of part i.

        ``slow_lr`` is the slowest part's uncoupled step; the other options are as in the constructor.
        """
        if len(ratios) != len(parts) - 1 or len(parts) < 2:
            raise ValueError(f"ratios: need one ratio per pair of adjacent parts ({len(parts) - 1}), got {len(ratios)}")
        for ratio in ratios:
            positive_int("ratios", ratio)
        periods = [math.prod(ratios[:i]) for i in range(len(parts))]
        self = cls.__new__(cls)
        names = ["fast", *(f"level{i}" for i in range(1, len(parts) - 1)), "slow"]
        self._setup(
            list(parts),
            names,
            periods,
            lr,
            slow_lr=slow_lr,
            drift=drift,
            base=base,
            base_options=base_options,
            model=model,
            extras=_Extras(temperature, noise_seed, literal),
        )
        return self

    @classmethod
    def from_partition(
        cls, partition: Partition, fast: Sequence[str] = ("head",), *, lr: float, k: int, **options: Any
    ) -> Multirate:
        """Groups named in ``fast`` (a name or several) step every step, the others every ``k`` steps."""
        fast = (fast,) if isinstance(fast, str) else tuple(fast)
        unknown = sorted(set(fast) - set(partition.names))
        if unknown:
            raise ValueError(f"fast: no groups {unknown} in the partition; it has {list(partition.names)}")
        groups = [{k: v for k, v in g.items() if k != "lr"} for g in partition.param_groups()]
        fast_groups = [g for g in groups if g["name"] in fast]
        slow_groups = [g for g in groups if g["name"] not in fast]
        if not slow_groups:
            raise ValueError("fast: names every group; the slow part would be empty")
        return cls(fast_groups, slow_groups, lr, k, **options)

    def _setup(
        self,
        parts: Sequence[Params],
        names: list[str],
        periods: list[int],
        lr: float,
        *,
        slow_lr: float | None,
        drift: bool,
        base: Base,
        base_options: dict[str, Any],
        model: nn.Module | None,
        extras: _Extras,
    ) -> None:
        """Validate everything, then build one base optimizer per part (the constructor and ``levels``)."""
        lr = finite_nonneg("lr", lr)
        if slow_lr is not None:
            slow_lr = finite_nonneg("slow_lr", slow_lr)
        bases = _bases(base, names, base_options)
        temperatures = _temperatures(extras.temperature, names)
        positive_int("noise_seed", extras.noise_seed, minimum=0)
        if not isinstance(extras.literal, bool):
            raise TypeError(f"literal: expected a bool, got {extras.literal!r}")
        if extras.literal and drift:
            raise ValueError(
                "literal: only with drift=False (Algorithm 2); Algorithm 1 (drift=True) takes every gradient of a "
                "refresh step at one point, so its one-backward step is already the paper's order"
            )
        level_groups = [part_groups(name, part) for name, part in zip(names, parts)]
        refuse_flat_parameters((p for groups in level_groups for g in groups for p in g["params"]), ", ".join(names))
        seen: dict[int, str] = {}
        for name, groups in zip(names, level_groups):
            for group in groups:
                for p in group["params"]:
                    if id(p) in seen:
                        raise ValueError(f"{seen[id(p)]}, {name}: a parameter is in both parts")
                    seen[id(p)] = name
        if model is not None:
            missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
            if missing:
                raise ValueError(f"{', '.join(names)}: parameters in neither part: {missing}")
        noisy = [
            p for level, groups in enumerate(level_groups) if temperatures[level] for g in groups for p in g["params"]
        ]
        if any(hasattr(p, "device_mesh") for p in noisy):
            raise ValueError("temperature: not with sharded (FSDP2) parameters: each rank would draw the same noise")
        top = periods[-1]
        optimizers = []
        for i, groups in enumerate(level_groups):
            for group in groups:  # a group's own lr is its h; every level steps h * period / top
                group["lr"] = group.get("lr", lr) * periods[i] / top
                if slow_lr is not None and i == len(level_groups) - 1:
                    group["lr"] = slow_lr
            cls, options = bases[i]
            optimizers.append(cls(groups, **options))

        init_hooks(self, {"lr": lr, "drift": drift})
        self.optimizers = optimizers
        self.slow_lr = slow_lr
        self.part_names = names
        """The parts, fastest first (``fast``, ``slow``; ``level<i>`` between with ``levels``)."""
        self.periods = periods
        self.drift = bool(drift)
        self.literal = extras.literal
        self.temperatures = temperatures
        """Langevin temperature of each part (0: none)."""
        self._noise = torch.Generator().manual_seed(extras.noise_seed) if any(temperatures) else None
        self.step_count = 0
        self._drift: list[list[Tensor] | None] = [None] * len(optimizers)
        self._frozen: list[Tensor] = []  # frozen by a Freezer: no drift, requires_grad left False
        self._prepare()

    @property
    def names(self) -> list[str]:
        """Deprecated: the parts are :attr:`part_names` (group names are the param groups' ``name``)."""
        warnings.warn("Multirate.names is now Multirate.part_names", DeprecationWarning, stacklevel=2)
        return self.part_names

    # -- the base optimizers' view (param_groups, state, zero_grad: Composite's) ---------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the part its ``"part"`` key names (one of :attr:`part_names`).

        Its ``lr`` is its step ``h`` (default: the constructor's ``lr``), scaled by the part's
        period as in the constructor; the slowest part takes ``slow_lr`` when one was given.

        Examples:
            >>> import torch
            >>> fast, slow, new = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
            >>> opt = Multirate([fast], [slow], lr=0.4, k=4)
            >>> opt.add_param_group({"params": [new], "part": "slow"})
            >>> [len(g["params"]) for g in opt.optimizers[1].param_groups], opt.optimizers[1].param_groups[1]["lr"]
            ([1, 1], 0.4)
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group: expected a dict, got {type(param_group).__name__}")
        part = param_group.get("part")
        if part not in self.part_names:
            raise ValueError(
                f"param_group: needs a 'part' key naming the part that trains it, one of {self.part_names}; "
                f"got {part!r}"
            )
        (group,) = part_groups("param_group", [{k: v for k, v in param_group.items() if k != "part"}])
        self.refuse_held(group)
        level = self.part_names.index(part)
        if self.slow_lr is not None and level == len(self.optimizers) - 1:
            group["lr"] = self.slow_lr
        else:
            group["lr"] = group.get("lr", self.defaults["lr"]) * self.periods[level] / self.periods[-1]
        self.optimizers[level].add_param_group(group)
        self._prepare()

    def _params(self, level: int) -> list[Tensor]:
        return [p for group in self.optimizers[level].param_groups for p in group["params"]]

    def refreshes(self, level: int, step: int | None = None) -> bool:
        """Whether part ``level`` gets a gradient on ``step`` (default: the next step)."""
        return (self.step_count if step is None else step) % self.periods[level] == 0

    def _prepare(self) -> None:
        """Parts that do not refresh on the next step stop requiring grad (frozen parameters stay as they are)."""
        frozen = {id(p) for p in self._frozen}
        for level in range(len(self.optimizers)):
            needed = self.refreshes(level)
            for p in self._params(level):
                if id(p) not in frozen:
                    p.requires_grad_(needed)

    def mark_frozen(self, params: Sequence[Tensor], frozen: bool) -> None:
        """A :class:`~layerwise.Freezer` froze ``params`` (they lose their drift and stay without grad) or
        unfroze them (they require grad again on their part's refresh steps)."""
        ids = {id(p) for p in params}
        self._frozen = [p for p in self._frozen if id(p) not in ids]
        if frozen:
            self._frozen.extend(params)
            self._drift = [
                None if pairs is None else [(p, d) for p, d in pairs if id(p) not in ids]  # type: ignore[misc]
                for pairs in self._drift
            ]
        self._prepare()

    # -- stepping ------------------------------------------------------------------------

    @torch.no_grad()
    def _refresh(self, level: int) -> None:
        """The level's base update from the fresh gradient, kept as drift (restored parameters).

        One copy of the part is made (the weights before the step); the step's change is computed in
        place in the parameters' own storage, which then becomes the drift while the parameters take
        the copy back: no other temporary of the part's size, two passes over it besides the step.
        """
        params = [p for p in self._params(level) if p.grad is not None]
        pieces = local_all(params)  # under FSDP2 the drift is this rank's shards
        before = self._copy_into_last_drift(level, params, pieces)
        self.optimizers[level].step()
        torch._foreach_sub_(pieces, before)  # the change, in the parameters' storage
        if self.drift:
            torch._foreach_div_(pieces, float(self.periods[level]))
        if all(piece is param for piece, param in zip(pieces, params)):  # plain tensors: swap storages
            delta = []
            for param, saved in zip(params, before):
                delta.append(param.data)
                param.data = saved
        else:  # shards of DTensors: their storage is FSDP's, so copy, one tensor at a time (each saved
            delta = []  # copy is freed once used: at most one copy of the part plus one tensor is held)
            for i, piece in enumerate(pieces):
                delta.append(piece.clone())
                piece.copy_(before[i])
                before[i] = None  # type: ignore[call-overload]
        self._drift[level] = list(zip(params, delta))  # type: ignore[assignment]

    def _copy_into_last_drift(self, level: int, params: list[Tensor], pieces: list[Tensor]) -> list[Tensor]:
        """Copies of ``pieces``, written into the last cycle's drift tensors when they fit (no new memory)."""
        last = self._drift[level]
        if (
            last is not None
            and len(last) == len(params)
            and all(p is q for (p, _), q in zip(last, params))
            and all(
                d.shape == x.shape and d.dtype == x.dtype and d.device == x.device for (_, d), x in zip(last, pieces)
            )
        ):
            self._drift[level] = None
            buffers = [d for _, d in last]
            torch._foreach_copy_(buffers, pieces)
            return buffers
        return [p.detach().clone() for p in pieces]

    def trainable_sets(self) -> int:
        """Distinct patterns of refreshing levels in a cycle (each is one set of parameters requiring grad)."""
        cycle = math.lcm(*self.periods)
        return len({tuple(step % period == 0 for period in self.periods) for step in range(cycle)})

    def step(self, closure=None):  # type: ignore[override]
        """One step: the fast part steps, the other parts refresh or drift.

        With ``literal=True``, on a step where a slow part refreshes, the slow parts jump first and
        ``closure`` is called again for the fast part's gradient at the moved slow parameters.
        Parameters that ``fully_shard`` replaced (the optimizer was built before sharding) raise ValueError.
        """
        check_current((p for g in self.param_groups for p in g["params"]), "optimizer")
        if self.literal and closure is None:
            raise ValueError(
                "closure: literal=True (Algorithm 2 in the paper's order) takes the fast gradient again after the "
                "slow jump, so step() needs a closure that computes the loss and calls backward()"
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        order = range(len(self.optimizers))
        jumped = self.literal and any(self.periods[lv] > 1 and self.refreshes(lv) for lv in order)
        if jumped:  # the slow parts first, then the fast gradient at their new values
            order = [lv for lv in order if self.periods[lv] > 1] + [lv for lv in order if self.periods[lv] == 1]
        for level in order:
            if self.periods[level] == 1:
                if jumped:
                    self._regradient(closure)
                    jumped = False
                self.optimizers[level].step()
                continue
            if self.refreshes(level):
                self._refresh(level)
            pairs = self._drift[level]
            if pairs and (self.drift or self.refreshes(level)):
                with torch.no_grad():
                    torch._foreach_add_(local_all(p for p, _ in pairs), [d for _, d in pairs])
        self._add_noise()
        self.step_count += 1
        self._prepare()
        return loss

    def _regradient(self, closure: Any) -> None:
        """The fast parts' gradient again, at the current (moved) slow parameters."""
        frozen = {id(p) for p in self._frozen}
        for level in range(len(self.optimizers)):
            for p in self._params(level):
                p.requires_grad_(self.periods[level] == 1 and id(p) not in frozen)
                p.grad = None
        with torch.enable_grad():
            closure()

    @torch.no_grad()
    def _add_noise(self) -> None:
        """Langevin noise (SGLD form): ``sqrt(2 * eta * tau) * N(0, 1)`` on each parameter of a warm part."""
        if self._noise is None:
            return
        for level, tau in enumerate(self.temperatures):
            if not tau:
                continue
            for group in self.optimizers[level].param_groups:
                std = math.sqrt(2.0 * group["lr"] / self.periods[level] * tau)
                if std == 0.0:
                    continue
                for p in group["params"]:
                    draw = torch.randn(p.shape, generator=self._noise, dtype=p.dtype)
                    p.add_(draw.to(p.device), alpha=std)

    # -- checkpoints ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Every part's base state, the step count and the drift of the current cycle."""
        index = {
            id(p): i for i, p in enumerate(p for level in range(len(self.optimizers)) for p in self._params(level))
        }
        drift = [
            None if pairs is None else [(index[id(p)], shaped_like(p, d.clone())) for p, d in pairs]
            for pairs in self._drift
        ]
        return {
            **self._identity(),
            "parts": [opt.state_dict() for opt in self.optimizers],
            "step_count": self.step_count,
            "drift": drift,
            **({} if self._noise is None else {"noise_rng": self._noise.get_state()}),
        }

    def _identity(self) -> dict[str, Any]:
        settings = {"parts": list(self.part_names), "periods": list(self.periods), "drift": self.drift}
        classes = [type(opt).__name__ for opt in self.optimizers]
        settings["base"] = classes[0] if len(set(classes)) == 1 else classes
        if any(self.temperatures):
            settings["temperature"] = list(self.temperatures)
        if self.literal:
            settings["literal"] = True
        return stamp("Multirate", group_names(self.param_groups), settings)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Resume (mid-cycle too); a state of another technique, partition or setting raises ValueError."""
        drift = self._checked(state_dict)
        for opt, saved in zip(self.optimizers, state_dict["parts"]):  # checked: from here on state changes
            opt.load_state_dict(saved)
        self._drift = drift
        self.step_count = state_dict["step_count"]
        if self._noise is not None:
            self._noise.set_state(state_dict["noise_rng"])
        self._prepare()

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Raise ValueError unless ``state_dict`` loads into this Multirate; changes nothing."""
        self._checked(state_dict)

    def _checked(self, state_dict: dict[str, Any]) -> list[list[tuple[Tensor, Tensor]] | None]:
        """Every check :meth:`load_state_dict` makes; the saved drift, decoded."""
        check_state(state_dict, self._identity(), keys=("parts", "step_count", "drift"))
        if len(state_dict["parts"]) != len(self.optimizers):
            saved_parts = len(state_dict["parts"])
            raise ValueError(f"state_dict: {saved_parts} parts saved, this Multirate has {len(self.optimizers)}")
        for name, opt, saved in zip(self.part_names, self.optimizers, state_dict["parts"]):
            check_optimizer_state(opt, saved, f"state_dict['parts'] ({name})")
        drift = self._decode_drift(state_dict["drift"])
        step_count = state_dict["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count < 0:
            raise ValueError(f"state_dict['step_count']: expected an int >= 0, got {step_count!r}")
        rng = state_dict.get("noise_rng")
        if self._noise is not None and not (isinstance(rng, Tensor) and rng.dtype == torch.uint8):
            raise ValueError("state_dict['noise_rng']: missing or not a generator state (a run with temperature)")
        return drift

    def _decode_drift(self, saved: Any) -> list[list[tuple[Tensor, Tensor]] | None]:
        """The saved drift as (parameter, tensor) pairs, checked against this model's parameters."""
        params = [p for level in range(len(self.optimizers)) for p in self._params(level)]
        if not isinstance(saved, list) or len(saved) != len(self.optimizers):
            raise ValueError(f"state_dict['drift']: expected one entry per part ({len(self.optimizers)})")
        drift = []
        for pairs in saved:
            if pairs is None:
                drift.append(None)
                continue
            decoded = []
            for entry in pairs:
                index, value = entry if isinstance(entry, (list, tuple)) and len(entry) == 2 else (None, None)
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(params):
                    raise ValueError(
                        f"state_dict['drift']: parameter index {index!r} out of range 0..{len(params) - 1}"
                    )
                if not isinstance(value, Tensor) or value.shape != params[index].shape:
                    shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise ValueError(
                        f"state_dict['drift']: entry of shape {shape} for a parameter of shape "
                        f"{tuple(params[index].shape)} (a checkpoint of another model)"
                    )
                decoded.append((params[index], local_like(value, params[index])))
            drift.append(decoded)
        return drift

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: period {p}" for n, p in zip(self.part_names, self.periods))
        classes = "/".join(dict.fromkeys(type(opt).__name__ for opt in self.optimizers))
        return f"Multirate({classes}; {parts}; drift={self.drift})"
