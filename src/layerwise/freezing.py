"""Freeze and unfreeze named parameter groups for real, during training.

A frozen group's parameters get ``requires_grad=False`` and ``grad=None`` (so every
torch optimizer skips them), their optimizer state (momentum, Adam moments) is
released, and the modules made only of frozen parameters run in inference mode
(BatchNorm uses its running statistics and stops updating them; Dropout is off) even
after ``model.train()`` (their ``train`` is replaced while they are frozen: save the model's
``state_dict``, not the pickled module). When the frozen groups form a prefix of the network, nothing
before the first trainable layer requires grad, so autograd neither records nor
traverses it: the backward pass really gets shorter.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 2))
    >>> x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    >>> part = layerwise.by_layer(model, sample_input=x)
    >>> opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
    >>> freezer = Freezer(model, opt)
    >>> freezer.freeze("0", "2")
    >>> [p.requires_grad for p in model.parameters()]
    [False, False, False, False, True, True]
    >>> freezer.state_dict()["frozen"]
    ['0', '2']
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from ._checks import int_between, one_of, positive_int
from ._shards import check_current, refuse_flat_parameters
from .groups import tied_parameters
from .per_group import Composite
from .state_check import check_state, stamp
from .wrapping import Wrapper, unwrap_optimizer

__all__ = ["UNFREEZING_ORDERS", "FreezeWhenZero", "Freezer", "GradualUnfreezing", "freeze_due"]

UNFREEZING_ORDERS = ("head-first", "input-first")
"""``GradualUnfreezing(order=...)``: ULMFiT's head-first, or from the input towards the head."""


class Freezer:
    """Freezes the optimizer's named param groups (their ``name`` key) on ``model``.

    Several param-group dicts may share a name (a layer split into decay / no-decay
    halves): they freeze together. A wrapper exposing the optimizer as ``.optimizer`` (accelerate's
    ``AcceleratedOptimizer``) is unwrapped: keep stepping the wrapper.
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        optimizer = unwrap_optimizer(optimizer)
        refuse_flat_parameters((p for g in optimizer.param_groups for p in g["params"]), "optimizer")
        unnamed = [i for i, g in enumerate(optimizer.param_groups) if "name" not in g]
        if unnamed:
            raise ValueError(
                f"optimizer: param groups {unnamed} have no 'name'; build them with "
                "Partition.param_groups() or add a 'name' key"
            )
        owned = {id(p) for p in model.parameters()}
        if not any(id(p) in owned for g in optimizer.param_groups for p in g["params"]):
            # the usual cause under FSDP2: the optimizer holds the tensors fully_shard replaced (it tags them)
            check_current((p for g in optimizer.param_groups for p in g["params"]), "optimizer")
            raise ValueError(
                f"optimizer: none of its parameters is model's ({type(model).__name__}); build the optimizer "
                "from this model's parameters (a DDP model's are its .module's, not a copy's)"
            )
        self.model = model
        self.optimizer = optimizer
        self._frozen: list[str] = []
        self._frozen_params: list[nn.Parameter] = []
        self._hooks: dict[int, tuple[Any, nn.Module, bool]] = {}  # module id -> (hook, module, mode)
        self._guard: Any = None  # the optimizer step pre-hook, registered at the first freeze
        self._starting: str | None = None  # the technique whose start is checked (watch_start), until a step
        self._start_hook: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_guard": None, "_start_hook": None}  # a copied optimizer has no hooks

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._frozen:
            self._guard = self.optimizer.register_step_pre_hook(self._refuse_stale_gradients)
        if self._starting is not None:
            self._start_hook = self.optimizer.register_step_pre_hook(self._first_step)

    # -- the start check: a technique at step 0 on an optimizer that has already trained ----------

    def watch_start(self, technique: str, *, fresh: bool = False, now: bool = False) -> None:
        """Check the start of ``technique`` (built on this freezer): the optimizer's next step, and
        :meth:`check_start`, raise ValueError, before anything changes, if the optimizer has already taken steps.

        A freezing technique at step 0 on an optimizer whose state shows steps taken is a resumed run whose
        technique state was not loaded: it would freeze or unfreeze the wrong groups, silently. The technique's
        ``load_state_dict`` ends the check (:meth:`started`); ``fresh=True`` (a technique added to a trained
        optimizer on purpose) skips it; ``now=True`` checks at once too (a technique that freezes when built).
        A technique built on another's freezer (FreezeOut's FreezeWhenZero) leaves the first one's name.
        """
        if not isinstance(fresh, bool):
            raise TypeError(f"fresh: expected True or False, got {fresh!r}")
        if fresh:
            self.started()
            return
        refusal = _start_refusal(technique, self.optimizer) if now else None
        if refusal:
            raise ValueError(refusal)
        self._starting = self._starting or technique
        if self._start_hook is None:
            self._start_hook = self.optimizer.register_step_pre_hook(self._first_step)

    def check_start(self) -> None:
        """ValueError if a technique's start is checked (:meth:`watch_start`) and the optimizer has taken steps."""
        refusal = None if self._starting is None else _start_refusal(self._starting, self.optimizer)
        if refusal:
            raise ValueError(refusal)

    def started(self) -> None:
        """End the start check: the technique resumed from its state_dict, or the optimizer stepped from fresh."""
        self._starting = None
        if self._start_hook is not None:
            self._start_hook.remove()
            self._start_hook = None

    def _first_step(self, _optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        self.check_start()
        self._starting = None  # checked; the hook stays, idle (a hook cannot be removed while the step runs it)

    def _refuse_stale_gradients(self, _optimizer: Optimizer, _args: Any, _kwargs: Any) -> None:
        """Before every optimizer step: a frozen parameter must not hold a gradient (momentum and weight
        decay would move it); autograd never writes one, code outside it might."""
        if any(p.grad is not None for p in self._frozen_params):
            stale = sorted(
                {
                    g["name"]
                    for g in self.optimizer.param_groups
                    if g["name"] in self._frozen and any(p.grad is not None for p in g["params"])
                }
            )
            raise RuntimeError(
                f"Freezer: frozen groups {stale} got gradients after they froze (written outside autograd, "
                "e.g. by a communication hook or by hand), so the optimizer would move them; nothing was "
                "stepped. Set their .grad to None, or unfreeze them."
            )

    @property
    def names(self) -> list[str]:
        """Group names in optimizer order (each once)."""
        return list(dict.fromkeys(g["name"] for g in self.optimizer.param_groups))

    @property
    def frozen(self) -> tuple[str, ...]:
        """Names of the frozen groups, in the order they were frozen."""
        return tuple(self._frozen)

    def is_frozen(self, name: str) -> bool:
        return name in self._frozen

    def _params(self, names: Iterable[str]) -> list[nn.Parameter]:
        wanted = set(names)
        return [p for g in self.optimizer.param_groups if g["name"] in wanted for p in g["params"]]

    def _check(self, names: tuple[str, ...], argument: str) -> None:
        known = self.names
        for name in names:
            if isinstance(name, torch.Tensor):
                raise TypeError(f"{argument}: takes group names, not tensors; {self._whereabouts(name)}")
            if not isinstance(name, str):
                raise TypeError(f"{argument}: group names are strings, got {type(name).__name__}")
        unknown = [n for n in names if n not in known]
        if unknown:
            params = dict(self.model.named_parameters())
            hints = "".join(f"; {self._whereabouts(params[n])}" for n in unknown if n in params)
            raise ValueError(f"{argument}: no group named {unknown}; groups: {known}{hints}")

    def _whereabouts(self, param: torch.Tensor) -> str:
        """Which group a parameter belongs to, for error messages."""
        name = next((n for n, p in self.model.named_parameters() if p is param), "the tensor")
        group = next((g["name"] for g in self.optimizer.param_groups if any(p is param for p in g["params"])), None)
        if group is None:
            return f"parameter {name!r} is in no param group of the optimizer, so it is never trained or frozen"
        return f"parameter {name!r} is in group {group!r}: freeze or unfreeze the group"

    def check_freezable(self, names: Iterable[str], argument: str = "freeze") -> None:
        """Raise ValueError if freezing ``names`` (with the frozen groups) would stop a module training a tied weight.

        A parameter that several modules register (an output layer tied to the input embedding) is
        in its first owner's group; freezing that group while another of its modules still trains
        would silently stop that module training it, so it is refused. Tied modules freeze together
        when they are in one group (``layerwise.explicit``), or when the other module's own group is
        frozen first or with it.
        """
        freezing = set(self._frozen) | set(names)
        if not freezing - set(self._frozen):
            return
        group_of = {id(p): g["name"] for g in self.optimizer.param_groups for p in g["params"]}
        listed: dict[str, set[str]] = {}  # module name -> the groups whose dicts list it in 'modules'
        for g in self.optimizer.param_groups:
            for mname in g.get("modules", ()):
                listed.setdefault(mname, set()).add(g["name"])
        params = dict(self.model.named_parameters())
        modules = dict(self.model.named_modules())
        for pname, users in tied_parameters(self.model).items():
            tied = params[pname]
            group = group_of.get(id(tied))
            if group not in freezing or group in self._frozen:
                continue
            for user in users[1:]:
                module = self.model if user == "root" else modules[user]
                # the groups the user is in: those of its other parameters and those listing it (the tied group
                # itself when both modules are in it, as layerwise.explicit records them)
                own = {group_of.get(id(p)) for p in module.parameters(recurse=False) if p is not tied} - {None}
                own |= listed.get(user, set())
                training = sorted(own - freezing) if own else sorted(set(self.names) - freezing)
                if training:
                    raise ValueError(_tied_refusal(argument, group, pname, user, training, bool(own)))

    def freeze(self, *names: str) -> None:
        """Freeze the named groups (already frozen ones are left as they are); see :meth:`check_freezable`."""
        self._check(names, "freeze")
        new = [n for n in dict.fromkeys(names) if n not in self._frozen]
        if not new:
            return
        self.check_freezable(new)
        params = self._params(new)
        for param in params:
            param.requires_grad_(False)
            param.grad = None
        self._drop_state(params)
        _mark_frozen(self.optimizer, params, True)
        self._frozen.extend(new)
        self._frozen_params = self._params(self._frozen)
        if self._guard is None:
            self._guard = self.optimizer.register_step_pre_hook(self._refuse_stale_gradients)
        self._update_modules()

    def unfreeze(self, *names: str) -> None:
        """Bring frozen groups back with fresh optimizer state (their LR is the group's ``lr``)."""
        self._check(names, "unfreeze")
        never = [n for n in names if n not in self._frozen]
        if never:
            raise ValueError(f"unfreeze: groups {never} are not frozen; frozen: {list(self._frozen)}")
        self._thaw(names, fresh_state=True)

    def _thaw(self, names: Iterable[str], fresh_state: bool) -> None:
        names = set(names)
        params = self._params(names)
        for param in params:
            param.requires_grad_(True)
        if fresh_state:
            self._drop_state(params)
        _mark_frozen(self.optimizer, params, False)
        self._frozen = [n for n in self._frozen if n not in names]
        self._frozen_params = self._params(self._frozen)
        self._update_modules()

    def _drop_state(self, params: Iterable[nn.Parameter]) -> None:
        """Free the optimizer state of ``params`` where it lives: in the torch optimizer that holds each one
        (a composite's part, a wrapper's wrapped optimizer)."""
        for param in params:
            _state_holder(self.optimizer, param).state.pop(param, None)

    def _update_modules(self) -> None:
        """Keep exactly the maximal fully-frozen modules in inference mode.

        A module leaving that set goes back to its parent's mode (the model's own mode,
        as it was when it froze, if the whole model was frozen).
        """
        frozen_ids = {id(p) for p in self._params(self._frozen)}
        parent_of = {id(child): module for module in self.model.modules() for child in module.children()}
        targets: dict[int, nn.Module] = {}
        covered: set[int] = set()
        for module in self.model.modules():  # parents come before their children
            if id(module) in covered:
                continue
            params = list(module.parameters())
            if params and all(id(p) in frozen_ids for p in params):
                targets[id(module)] = module
                covered.update(id(m) for m in module.modules())
        for key in list(self._hooks):
            if key not in targets:
                handle, module, mode = self._hooks.pop(key)
                handle.remove()
                if isinstance(module.__dict__.get("train"), _StayInInference):
                    del module.__dict__["train"]
                parent = parent_of.get(key)
                module.train(mode if parent is None else parent.training)
        for key, module in targets.items():
            if key not in self._hooks:
                self._hooks[key] = (module.register_forward_pre_hook(_inference_mode), module, module.training)
                module.__dict__["train"] = _StayInInference(module)
            module.train(False)

    def state_dict(self) -> dict[str, Any]:
        """The frozen set; save it beside the model and optimizer state."""
        return {**stamp("Freezer", self.names), "frozen": list(self._frozen)}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise ValueError unless ``state`` is a Freezer's, for these groups."""
        check_state(state, stamp("Freezer", self.names), keys=("frozen",))
        self._check(tuple(state["frozen"]), "state_dict['frozen']")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Freeze exactly the saved groups; others are unfrozen keeping their optimizer state, so the
        optimizer's state dict may be loaded before or after this one."""
        self.check_state_dict(state)
        frozen = list(state["frozen"])
        thaw = [n for n in self._frozen if n not in frozen]
        if thaw:
            self._thaw(thaw, fresh_state=False)
        self.freeze(*frozen)
        self._frozen = frozen


def _tied_refusal(argument: str, group: str, pname: str, user: str, training: list[str], has_own: bool) -> str:
    """Why freezing ``group`` is refused while module ``user``, which also uses ``pname``, trains, and the fix."""
    stop = f"freezing {group!r} now would stop {user!r} training it"
    if has_own:
        return (
            f"{argument}: group {group!r} holds {pname!r}, which module {user!r} (in group {training[0]!r}) also uses "
            f"(tied weights); {stop}. Put both modules in one group (layerwise.explicit, in the order you want), "
            f"freeze {training[0]!r} first or with it, or untie them"
        )
    return (
        f"{argument}: group {group!r} holds {pname!r}, which module {user!r} also uses (tied weights); {user!r} has "
        f"no other parameter, so no group shows when it trains, and {stop} while {training} train. Freeze "
        f"{group!r} last (for FreezeOut: make it the last group, e.g. with layerwise.explicit), give {user!r} to "
        f"{group!r} too (layerwise.explicit with both modules in the group), or untie them"
    )


def _state_holder(optimizer: Optimizer, param: torch.Tensor) -> Optimizer:
    """The torch optimizer whose ``state`` holds ``param``'s: through wrappers (their ``optimizer``) and
    composites (the part that holds it), down to the one that steps it."""
    while True:
        if isinstance(optimizer, Composite):
            optimizer = optimizer.optimizer_of(param)
        elif isinstance(optimizer, Wrapper):
            optimizer = optimizer.optimizer
        else:
            return optimizer


def _mark_frozen(optimizer: Optimizer, params: list[nn.Parameter], frozen: bool) -> None:
    """Tell a composite optimizer (through any wrapper) that ``params`` froze or unfroze."""
    while isinstance(optimizer, Wrapper):
        optimizer = optimizer.optimizer
    if isinstance(optimizer, Composite):
        optimizer.mark_frozen(params, frozen)


def _start_refusal(technique: str, optimizer: Optimizer) -> str | None:
    """Why ``technique`` at step 0 cannot start on ``optimizer`` (it has taken steps), with the ways out; else None."""
    taken = _steps_taken(optimizer)
    if not taken:
        return None
    shown = "holds state from earlier steps" if taken is True else f"has taken {taken} steps (its state says so)"
    return (
        f"{technique}: starts at step 0, but the optimizer {shown}: a checkpoint's optimizer state loaded without "
        f"{technique}'s, or a trained optimizer; {technique} would start over and freeze the wrong groups. "
        f"Resuming? build {technique} before loading the optimizer's state_dict, then call "
        f"{technique}.load_state_dict(...) with the state_dict saved beside it. Starting {technique} on a trained "
        "optimizer on purpose? build it with fresh=True. Nothing was changed"
    )


def _steps_taken(optimizer: Optimizer) -> int | bool:
    """The steps the optimizer's state shows taken: the largest ``step`` count, True for state without one
    (SGD's momentum), 0 for none (no state, or counts of 0 as Adagrad's initial state)."""
    counts = []
    for state in optimizer.state.values():
        if state and "step" not in state:
            return True
        if state:
            counts.append(int(state["step"]))
    return max(counts, default=0)


def freeze_due(freezer: Freezer, names: Iterable[str], frozen_at: Iterable[int | None], step: int) -> None:
    """Freeze every named group whose freeze step (None: never) is at or before ``step``."""
    due = [n for n, at in zip(names, frozen_at) if at is not None and at <= step and not freezer.is_frozen(n)]
    if due:
        freezer.freeze(*dict.fromkeys(due))


class FreezeWhenZero:
    """Freezes each group from the step at which its schedule's factor stays 0 (``step()`` once per batch).

    The composable piece behind FreezeOut's freezing: any schedule with ``zero_from`` (a FreezeOut
    rule, a cosine to zero) drives it, whatever sets the learning rates (a scheduler, Hi-DLR). It
    starts at step 0: an optimizer that has already taken steps is refused at its next step unless
    :meth:`load_state_dict` resumes it or ``fresh=True`` (see :meth:`Freezer.watch_start`).

    Examples:
        >>> import torch, layerwise
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=torch.zeros(1, 2)).param_groups(lr=0.1))
        >>> rule = FreezeWhenZero(Freezer(model, opt), ["0", "1"], [2, None])
        >>> rule.step(); rule.step(); rule.freezer.frozen
        ('0',)
    """

    def __init__(
        self, freezer: Freezer, names: Sequence[str], frozen_at: Sequence[int | None], *, fresh: bool = False
    ) -> None:
        if not isinstance(freezer, Freezer):
            raise TypeError(f"freezer: expected a Freezer, got {type(freezer).__name__}")
        if len(names) != len(frozen_at):
            raise ValueError(f"names, frozen_at: one freeze step per group, got {len(names)} and {len(frozen_at)}")
        freezer._check(tuple(names), "names")
        for step in sorted({at for at in frozen_at if at is not None}):  # refuse a tied-weight plan up front
            due = [n for n, at in zip(names, frozen_at) if at is not None and at <= step]
            freezer.check_freezable(due, f"freezing at step {step}")
        freezer.watch_start("FreezeWhenZero", fresh=fresh)
        self.freezer, self.names, self.frozen_at, self.step_count = freezer, list(names), list(frozen_at), 0

    @classmethod
    def from_schedule(cls, freezer: Freezer, schedule: Any, total_steps: int, *, fresh: bool = False) -> FreezeWhenZero:
        """Freeze steps from ``schedule.zero_from(total_steps, groups)``, one per group of ``freezer``."""
        names = list(freezer.names)
        return cls(freezer, names, schedule.zero_from(total_steps, len(names)), fresh=fresh)

    def apply(self, step: int) -> None:
        """Freeze every group due at or before ``step`` (what a scheduler that counts steps itself calls)."""
        self.freezer.check_start()
        freeze_due(self.freezer, self.names, self.frozen_at, step)

    def step(self) -> None:
        """Count one step and freeze what is due."""
        check_current((p for g in self.freezer.optimizer.param_groups for p in g["params"]), "optimizer")
        self.freezer.check_start()
        self.step_count += 1
        self.apply(self.step_count)

    def _identity(self) -> dict[str, Any]:
        return stamp("FreezeWhenZero", self.names, {"frozen_at": list(self.frozen_at)})

    def state_dict(self) -> dict[str, Any]:
        """The steps counted and the frozen set; save it beside the model and optimizer state."""
        return {**self._identity(), "step_count": self.step_count, "freezer": self.freezer.state_dict()}

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """ValueError unless ``state`` is a state of this FreezeWhenZero (groups, freeze steps); changes nothing."""
        check_state(state, self._identity(), keys=("step_count", "freezer"))
        positive_int("state_dict['step_count']", state["step_count"], minimum=0)
        self.freezer.check_state_dict(state["freezer"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; a state of another technique, partition or setting raises ValueError, loading nothing."""
        self.check_state_dict(state)
        self.freezer.load_state_dict(state["freezer"])
        self.step_count = int(state["step_count"])
        self.freezer.started()


class _StayInInference:
    """A frozen module's ``train``: ``model.train()`` leaves it in inference mode (picklable, unlike a lambda)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def _inference_mode(module: nn.Module, _args: Any) -> None:
    """Backstop for code that sets ``module.training`` directly (Lightning restoring modes)."""
    if module.training:
        module.train(False)


class GradualUnfreezing:
    """ULMFiT/fastai gradual unfreezing: train the head first, then one more group every ``every`` steps.

    At construction every group except the last ``start`` groups is frozen; each
    ``step()`` counts one step (a batch or an epoch: your choice) and every ``every``
    steps the next group towards the input is unfrozen. ``order="input-first"`` runs the other
    way (Smith's thread): the first ``start`` groups train, and the next group towards the head
    is unfrozen every ``every`` steps.

    It starts at step 0: on an optimizer that has already taken steps (a resumed run) it is refused,
    when built or at the optimizer's next step, unless its :meth:`load_state_dict` resumes it, or
    ``fresh=True`` says it starts on a trained optimizer on purpose (see :meth:`Freezer.watch_start`).

    Examples:
        >>> import torch, layerwise
        >>> model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(3)))
        >>> part = layerwise.by_layer(model, sample_input=torch.zeros(1, 4))
        >>> freezer = Freezer(model, torch.optim.SGD(part.param_groups(lr=0.1)))
        >>> unfreezing = GradualUnfreezing(freezer, every=2)
        >>> for epoch in range(4):
        ...     print(epoch, sorted(freezer.frozen))  # train one epoch here
        ...     unfreezing.step()
        0 ['0', '1']
        1 ['0', '1']
        2 ['0']
        3 ['0']
    """

    def __init__(
        self, freezer: Freezer, every: int, *, start: int = 1, order: str = "head-first", fresh: bool = False
    ) -> None:
        if not isinstance(freezer, Freezer):
            raise TypeError(f"freezer: expected a Freezer, got {type(freezer).__name__}")
        positive_int("every", every)
        count = len(freezer.names)
        int_between("start", start, 1, count, f"the number of groups ({count})")
        one_of("order", order, UNFREEZING_ORDERS)
        # it freezes now, dropping state that a later load_state_dict could not bring back: check at once
        freezer.watch_start("GradualUnfreezing", fresh=fresh, now=True)
        self.freezer = freezer
        self.every = every
        self.start = start
        self.order = order
        self.step_count = 0
        self._apply()

    def _trainable_count(self) -> int:
        return min(len(self.freezer.names), self.start + self.step_count // self.every)

    def _apply(self) -> None:
        names = self.freezer.names
        keep = self._trainable_count()
        should_freeze = names[: len(names) - keep] if self.order == "head-first" else names[keep:]
        thaw = [n for n in self.freezer.frozen if n not in should_freeze]
        if thaw:
            self.freezer.unfreeze(*thaw)
        self.freezer.freeze(*should_freeze)

    def trainable_sets(self) -> int:
        """Distinct sets of trainable parameters over the run: one per unfreezing, plus the start."""
        return len(self.freezer.names) - self.start + 1

    def step(self) -> None:
        check_current((p for g in self.freezer.optimizer.param_groups for p in g["params"]), "optimizer")
        self.freezer.check_start()
        self.step_count += 1
        self._apply()

    def _identity(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"every": self.every, "start": self.start}
        if self.order != "head-first":
            settings["order"] = self.order
        return stamp("GradualUnfreezing", self.freezer.names, settings)

    def state_dict(self) -> dict[str, Any]:
        # the key stays "steps", so checkpoints written before the rename load
        return {**self._identity(), "steps": self.step_count, "freezer": self.freezer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume; a state of another technique, partition or setting raises ValueError, loading nothing."""
        check_state(state, self._identity(), keys=("steps", "freezer"))
        self.freezer.load_state_dict(state["freezer"])
        self.step_count = int(state["steps"])
        self.freezer.started()
