"""``PerGroupOptimizer``: each part of a model trained by its own torch optimizer, seen as one optimizer.

A part is a class, its options and the param groups it trains (say Muon for the hidden matrices,
AdamW for the rest). The parts' optimizers keep their own param-group dicts; :attr:`param_groups`
lists those same dict objects, so an LR scheduler, :class:`~layerwise.LayerwiseLR`, FreezeOut and
:class:`~layerwise.LayerMonitor` see every group and their writes reach the optimizer that steps it.

It is a plain optimizer over local parameters, so DDP needs nothing more. Under FSDP2 each part's
optimizer steps the sharded parameters as it would alone (torch's SGD and AdamW do; Muon does not,
see :func:`~layerwise.muon.muon_split`), and one built before ``fully_shard`` is refused at its step.

Examples:
    >>> import torch
    >>> body, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
    >>> opt = PerGroupOptimizer({
    ...     "body": Part(torch.optim.SGD, body.parameters(), {"lr": 0.1, "momentum": 0.9}),
    ...     "head": Part(torch.optim.AdamW, head.parameters(), {"lr": 1e-3}),
    ... })
    >>> [type(o).__name__ for o in opt.optimizers], [g["lr"] for g in opt.param_groups]
    (['SGD', 'AdamW'], [0.1, 0.001])
    >>> head(body(torch.randn(3, 4))).sum().backward(); opt.step(); opt.zero_grad()
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ._shards import check_current, refuse_flat_parameters
from .groups import Partition
from .param_groups import group_names
from .state_check import check_optimizer_state, check_state, stamp
from .wrapping import init_hooks

__all__ = ["Composite", "Params", "Part", "PerGroupOptimizer", "optimizer_class", "part_groups"]

Params = Iterable[Tensor] | Iterable[dict[str, Any]]
"""Parameters or param-group dicts, as any torch optimizer takes them."""


def optimizer_class(flag: str, cls: Any) -> type[Optimizer]:
    """``cls`` if it is a torch ``Optimizer`` class; else TypeError naming ``flag``."""
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise TypeError(f"{flag}: expected a torch.optim.Optimizer class, got {cls!r}")
    return cls


def part_groups(argument: str, params: Params) -> list[dict[str, Any]]:
    """``params`` as a list of fresh param-group dicts (each with a list of params); an empty part raises."""
    if isinstance(params, Tensor):
        raise TypeError(f"{argument}: expected an iterable of parameters or param-group dicts, got a Tensor")
    items = list(params)
    if not items:
        raise ValueError(f"{argument}: is empty; every part needs at least one parameter")
    if all(isinstance(item, dict) for item in items):
        groups = [dict(item) for item in items]
        for group in groups:
            group["params"] = list(group["params"])
    elif all(isinstance(item, Tensor) for item in items):
        groups = [{"params": items}]
    else:
        raise TypeError(f"{argument}: mix of tensors and dicts; give parameters or param-group dicts")
    if not any(group["params"] for group in groups):
        raise ValueError(f"{argument}: is empty; every part needs at least one parameter")
    return groups


class Composite(Optimizer):
    """Base of optimizers whose parameters live in several inner optimizers, ``self.optimizers``.

    ``param_groups`` lists the inner optimizers' own dicts (in order), ``state`` merges their
    states (a copy: :meth:`optimizer_of` gives the inner optimizer whose state to change, as a
    :class:`~layerwise.Freezer` does) and ``zero_grad`` clears them all; subclasses call
    :func:`~layerwise.wrapping.init_hooks`.
    """

    optimizers: list[Optimizer]
    part_names: list[str]

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [group for opt in self.optimizers for group in opt.param_groups]

    @property
    def state(self) -> dict:  # type: ignore[override]
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def optimizer_of(self, param: Tensor) -> Optimizer:
        """The inner optimizer that holds ``param`` (whose ``state`` holds its state); ValueError if none does."""
        for opt in self.optimizers:
            if any(p is param for group in opt.param_groups for p in group["params"]):
                return opt
        raise ValueError(f"param: {_label(param)} is in no part of this {type(self).__name__}")

    def mark_frozen(self, params: Sequence[Tensor], frozen: bool) -> None:
        """A :class:`~layerwise.Freezer` froze (``frozen``) or unfroze ``params``; nothing to do here. A composite
        that sets ``requires_grad`` itself (``Multirate``) leaves frozen parameters alone."""

    def refuse_held(self, param_group: dict[str, Any], argument: str = "param_group") -> None:
        """ValueError naming the first parameter of ``param_group`` that a part already holds, and that part.

        A parameter in two parts would be stepped by both optimizers (twice per step).
        """
        held = {
            id(p): (part, group)
            for part, opt in zip(self.part_names, self.optimizers)
            for group in opt.param_groups
            for p in group["params"]
        }
        for name, param in _named_params(param_group):
            if id(param) in held:
                part, group = held[id(param)]
                where = f"part {part!r}" + (f", group {group['name']!r}" if "name" in group else "")
                raise ValueError(
                    f"{argument}: {_label(param, name)} is already in a part ({where}); each parameter is trained "
                    "by one part, so it would be stepped twice"
                )


@dataclass(frozen=True)
class Part:
    """One part of a :class:`PerGroupOptimizer`: its optimizer class, its parameters and the class's options."""

    optimizer: type[Optimizer]
    params: Params
    options: Mapping[str, Any] = field(default_factory=dict)


class PerGroupOptimizer(Composite):
    """One torch optimizer per named part, stepped together.

    Args:
        parts: part name -> :class:`Part` (class, parameters or param-group dicts, options).
        model: if given, every trainable parameter of it must be in a part.

    ``PerGroupOptimizer.from_partition(partition, assign, optimizers)`` gives each group of a
    :class:`~layerwise.Partition` the optimizer its part name maps to.
    """

    def __init__(self, parts: Mapping[str, Part], *, model: nn.Module | None = None) -> None:
        if not isinstance(parts, Mapping) or not parts:
            raise ValueError(f"parts: expected a non-empty mapping of part names to Part, got {parts!r}")
        built = []
        for name, part in parts.items():
            if not isinstance(part, Part):
                raise TypeError(f"parts[{name!r}]: expected a Part, got {type(part).__name__}")
            cls = optimizer_class(f"parts[{name!r}].optimizer", part.optimizer)
            built.append((name, cls, part_groups(f"parts[{name!r}]", part.params), dict(part.options)))
        _check_disjoint(built, model)
        optimizers = [cls(groups, **options) for _, cls, groups, options in built]
        init_hooks(self, {})
        self.optimizers = optimizers
        self.part_names = [name for name, *_ in built]
        """The parts, in the order they step."""

    @classmethod
    def from_partition(
        cls,
        partition: Partition,
        assign: Mapping[str, str],
        optimizers: Mapping[str, tuple[type[Optimizer], Mapping[str, Any]]],
        *,
        model: nn.Module | None = None,
        **param_group_options: Any,
    ) -> PerGroupOptimizer:
        """Group ``g`` of ``partition`` trained by ``optimizers[assign[g]]`` (a ``(class, options)`` pair).

        ``param_group_options`` go to :meth:`Partition.param_groups` (``lr``, ``weight_decay``, ``no_decay``...).
        """
        if not isinstance(partition, Partition):
            raise TypeError(f"partition: expected a layerwise Partition, got {type(partition).__name__}")
        missing = [name for name in partition.names if name not in assign]
        unknown = sorted(set(assign) - set(partition.names))
        if missing or unknown:
            what = f"no optimizer for the groups {missing}" if missing else f"no groups {unknown} in the partition"
            raise ValueError(f"assign: {what}; it maps every group of {list(partition.names)} to a part")
        no_part = sorted({part for part in assign.values() if part not in optimizers})
        if no_part:
            raise ValueError(f"assign: parts {no_part} are not in optimizers ({sorted(optimizers)})")
        groups = partition.param_groups(**param_group_options)
        parts = {}
        for part, (opt_cls, options) in optimizers.items():
            chosen = [g for g in groups if assign[g["name"]] == part]
            if not chosen:
                raise ValueError(f"optimizers: part {part!r} trains no group (assign names it for none)")
            parts[part] = Part(opt_cls, chosen, options)
        return cls(parts, model=model)

    def step(self, closure=None):  # type: ignore[override]
        """Call ``closure`` (if any) once, then step every part's optimizer; returns the closure's loss."""
        check_current((p for g in self.param_groups for p in g["params"]), "optimizer")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the part its ``"part"`` key names (one of :attr:`part_names`).

        A parameter that a part already holds is refused (ValueError naming it and the part): it would be
        stepped twice.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group: expected a dict, got {type(param_group).__name__}")
        part = param_group.get("part")
        if part not in self.part_names:
            raise ValueError(f"param_group: needs a 'part' key, one of {self.part_names}; got {part!r}")
        (group,) = part_groups("param_group", [{k: v for k, v in param_group.items() if k != "part"}])
        self.refuse_held(group)
        self.optimizers[self.part_names.index(part)].add_param_group(group)

    # -- checkpoints ---------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        settings = {"parts": list(self.part_names), "optimizers": [type(o).__name__ for o in self.optimizers]}
        settings["groups_per_part"] = [group_names(o.param_groups) for o in self.optimizers]
        return stamp("PerGroupOptimizer", group_names(self.param_groups), settings)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """Every part's optimizer state, stamped with the split (parts, classes, groups per part)."""
        return {**self._identity(), "parts": [opt.state_dict() for opt in self.optimizers]}

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Raise ValueError unless ``state_dict`` was saved by this split; changes nothing."""
        check_state(state_dict, self._identity(), keys=("parts",))
        for name, opt, saved in zip(self.part_names, self.optimizers, state_dict["parts"]):
            check_optimizer_state(opt, saved, f"state_dict['parts'] ({name})")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Resume every part; a checkpoint of another split raises ValueError before anything loads."""
        self.check_state_dict(state_dict)
        for opt, saved in zip(self.optimizers, state_dict["parts"]):
            opt.load_state_dict(saved)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {type(o).__name__}" for n, o in zip(self.part_names, self.optimizers))
        return f"PerGroupOptimizer({parts})"


def _check_disjoint(built: list[tuple[str, Any, list[dict[str, Any]], Any]], model: nn.Module | None) -> None:
    """No parameter in two parts; with ``model``, every trainable parameter of it in one."""
    names = ", ".join(f"parts[{name!r}]" for name, *_ in built)
    refuse_flat_parameters((p for _, _, groups, _ in built for g in groups for p in g["params"]), names)
    model_names = {} if model is None else {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    seen: dict[int, str] = {}
    for name, _, groups, _ in built:
        for pname, p in (pair for g in groups for pair in _named_params(g)):
            if id(p) in seen:
                label = _label(p, pname or model_names.get(id(p)))
                raise ValueError(f"parts[{seen[id(p)]!r}], parts[{name!r}]: a parameter is in both parts ({label})")
            seen[id(p)] = name
    if model is not None:
        missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
        if missing:
            raise ValueError(f"parts: parameters of model in no part: {missing}")


def _named_params(param_group: dict[str, Any]) -> list[tuple[str | None, Tensor]]:
    """A param-group dict's parameters with their names where it gives them (``(name, tensor)`` pairs or a
    ``param_names`` list, as torch takes them), else None."""
    params = list(param_group["params"])
    names = param_group.get("param_names")
    if not isinstance(names, (list, tuple)) or len(names) != len(params):
        names = [None] * len(params)
    return [(p[0], p[1]) if isinstance(p, tuple) else (name, p) for p, name in zip(params, names)]


def _label(param: Tensor, name: str | None = None) -> str:
    """How an error names a parameter: its name when known, else its shape."""
    return f"parameter {name!r}" if name else f"a parameter of shape {tuple(param.shape)}"
