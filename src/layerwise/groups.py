"""Ordered, named partitions of a model's trainable parameters.

A :class:`Partition` is a list of :class:`Group` objects in the order data flows
through the model. Its :meth:`Partition.param_groups` output is a plain list of
torch param-group dicts (each carrying ``name`` and ``depth``), usable by any
torch optimizer unchanged.

Examples:
    >>> import torch
    >>> from layerwise import groups
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> part = groups.by_layer(model, sample_input=torch.zeros(1, 4))
    >>> part.names
    ('0', '2')
    >>> opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

from ._checks import finite_nonneg, int_between, one_of, positive_int
from ._shards import refuse_flat_parameters, unsharded_names
from ._warn import warn

__all__ = [
    "NORM_TYPES",
    "Group",
    "Partition",
    "by_block",
    "by_depth_buckets",
    "by_head",
    "by_kind",
    "by_layer",
    "by_lora",
    "by_patterns",
    "execution_order",
    "explicit",
    "tied_parameters",
    "watched_forward",
]

Order = Literal["execution", "registration", "rules"]
"""How a partition's order was found."""
Syntax = Literal["regex", "glob"]
"""How :func:`by_patterns` reads its patterns."""
SYNTAXES = get_args(Syntax)

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
"""Module types whose parameters count as normalization parameters."""


@dataclass(frozen=True)
class Group:
    """One named group of parameters.

    Attributes:
        name: the group's name (also written into its param-group dict).
        param_names: qualified names of its parameters, in model order.
        params: the parameters themselves, aligned with ``param_names``.
        depth: the group's index in data-flow order (0 = closest to the input).
    """

    name: str
    param_names: tuple[str, ...]
    stored: tuple[nn.Parameter, ...] = field(repr=False, compare=False)
    depth: int
    slots: tuple[tuple[nn.Module, str], ...] = field(default=(), repr=False, compare=False, kw_only=True)
    """Where each parameter is registered, ``(module, attribute)``; empty: ``stored`` is used."""
    modules: tuple[str, ...] = field(default=(), repr=False, compare=False, kw_only=True)
    """Names of the group's modules (``"root"`` for the model): those owning its parameters, and those given
    to :func:`explicit` (a module whose only parameter is tied to another module's is in the group it was
    given to); written into the param-group dicts as ``modules``."""

    @property
    def params(self) -> tuple[nn.Parameter, ...]:
        """The parameters, read from the modules that register them now.

        So a model sharded after its partition was built (FSDP2's ``fully_shard`` replaces every
        parameter with a sharded one) gives the parameters the optimizer must hold.
        """
        if not self.slots:
            return self.stored
        return tuple(module._parameters[attribute] for module, attribute in self.slots)  # type: ignore[misc]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


@dataclass(frozen=True)
class Partition:
    """An ordered partition of a model's trainable parameters.

    Attributes:
        groups: the groups, in data-flow order.
        excluded: names of parameters left out because ``requires_grad`` is False.
        order: how the order was found: ``"execution"`` (traced forward pass),
            ``"registration"`` (module registration order) or ``"rules"`` (the order
            of the user's rules).
        unused: names of trainable parameters whose modules the traced forward pass never
            used; they are in no group (so no technique takes one of them for the head).
        tied: parameters that several modules register (tied weights): name -> the modules,
            the owner (whose group holds it) first. A :class:`~layerwise.Freezer` refuses to freeze
            such a parameter's group while another of its modules still trains.
    """

    groups: tuple[Group, ...]
    excluded: tuple[str, ...] = ()
    order: Order = "execution"
    unused: tuple[str, ...] = ()
    _kinds: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False, kw_only=True)
    """Parameter name -> ``"weight"``, ``"bias"`` or ``"norm"``, filled by the builders (keyword-only, not
    part of equality); a name it lacks gets its kind from the name alone."""
    tied: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a Partition needs at least one non-empty group")
        names = [g.name for g in self.groups]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"group names must be unique; repeated: {duplicates}")
        seen: dict[int, str] = {}
        for group in self.groups:
            for pname, param in zip(group.param_names, group.params):
                if id(param) in seen:
                    raise ValueError(
                        f"parameter {pname!r} is in more than one group ({seen[id(param)]!r} and {group.name!r})"
                    )
                seen[id(param)] = group.name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __getitem__(self, key: int | str) -> Group:
        if isinstance(key, str):
            for group in self.groups:
                if group.name == key:
                    return group
            raise KeyError(f"no group named {key!r}; groups: {list(self.names)}")
        return self.groups[key]

    def group_of(self, param_name: str) -> str:
        """Name of the group holding the parameter called ``param_name``."""
        for group in self.groups:
            if param_name in group.param_names:
                return group.name
        raise KeyError(f"parameter {param_name!r} is in no group")

    def param_groups(
        self,
        lr: float | None = None,
        *,
        lr_mult: Mapping[str, float] | Sequence[float] | None = None,
        weight_decay: float | None = None,
        no_decay: Iterable[str] = (),
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Param-group dicts for any torch optimizer.

        Each dict holds ``params``, ``name``, ``depth`` and ``modules`` (the group's module names, so a
        :class:`~layerwise.Freezer` sees which modules freeze with it). A multiplier in
        ``lr_mult`` is folded into the dict's ``lr`` (and kept as ``lr_mult`` for
        reference), so every scheduler, ours or torch's, applies it.

        Args:
            lr: base learning rate; omitted, the optimizer's default applies
                (and ``lr_mult`` must be omitted too).
            lr_mult: per-group multiplier, by group name or as one value per group.
            weight_decay: weight decay for every dict.
            no_decay: parameter kinds that get ``weight_decay=0``: any of
                ``"bias"`` and ``"norm"``. A group holding both kinds is split into
                two dicts with the same ``name`` and ``depth``.
            **options: further options copied into every dict (e.g. ``momentum``).

        Examples:
            >>> part = by_head(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)), head="1")
            >>> groups = part.param_groups(lr=0.1, lr_mult={"head": 10.0}, weight_decay=5e-4, no_decay=("bias",))
            >>> [(g["name"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
            [('body', 0.1, 0.0005, 1), ('body', 0.1, 0.0, 1), ('head', 1.0, 0.0005, 1), ('head', 1.0, 0.0, 1)]
        """
        no_decay = tuple(no_decay)
        bad_kinds = [k for k in no_decay if k not in ("bias", "norm")]
        if bad_kinds:
            raise ValueError(f"no_decay: unknown kinds {bad_kinds}; allowed: 'bias', 'norm'")
        if lr is not None:
            finite_nonneg("lr", lr)
        if weight_decay is not None:
            finite_nonneg("weight_decay", weight_decay)
        mults = self._multipliers(lr_mult)
        if mults is not None and lr is None:
            raise ValueError("lr_mult needs lr: the multiplier is folded into each group's lr")
        if no_decay and weight_decay is None:
            raise ValueError("no_decay needs weight_decay (the decay the other parameters get)")

        result: list[dict[str, Any]] = []
        for index, group in enumerate(self.groups):
            base: dict[str, Any] = {"name": group.name, "depth": group.depth, **options}
            if group.modules:
                base["modules"] = list(group.modules)
            if lr is not None:
                mult = 1.0 if mults is None else mults[index]
                base["lr"] = lr * mult
                base["lr_mult"] = mult
            if weight_decay is not None:
                base["weight_decay"] = weight_decay
            if not no_decay:
                result.append({**base, "params": list(group.params)})
                continue
            kinds = [self._kinds.get(pname) or _kind_from_name(pname) for pname in group.param_names]
            decayed = [p for p, k in zip(group.params, kinds) if k not in no_decay]
            exempt = [p for p, k in zip(group.params, kinds) if k in no_decay]
            if decayed:
                result.append({**base, "params": decayed})
            if exempt:
                result.append({**base, "params": exempt, "weight_decay": 0.0})
        return result

    def _multipliers(self, lr_mult: Mapping[str, float] | Sequence[float] | None) -> list[float] | None:
        if lr_mult is None:
            return None
        if isinstance(lr_mult, Mapping):
            unknown = sorted(set(lr_mult) - set(self.names))
            if unknown:
                raise ValueError(f"lr_mult: unknown groups {unknown}; groups: {list(self.names)}")
            values = [float(lr_mult.get(name, 1.0)) for name in self.names]
        else:
            values = [float(v) for v in lr_mult]
            if len(values) != len(self.groups):
                raise ValueError(f"lr_mult: expected {len(self.groups)} values (one per group), got {len(values)}")
        for value in values:
            finite_nonneg("lr_mult", value)
        return values


def _kind_from_name(param_name: str) -> str:
    return "bias" if param_name.rsplit(".", 1)[-1].startswith("bias") else "weight"


def _param_kinds(model: nn.Module, owners: Mapping[str, nn.Module]) -> dict[str, str]:
    """Parameter name -> kind: ``"norm"`` (of a normalization layer), ``"bias"`` or ``"weight"``, from each
    parameter's owning module. The leaves of a parametrized tensor (``fc.parametrizations.bias.original0``,
    e.g. :func:`~layerwise.by_rows`'s row groups) take the kind of the tensor they make up."""
    kinds: dict[str, str] = {}
    for pname, owner in owners.items():
        layer, tensor = owner, pname
        if isinstance(owner, parametrize.ParametrizationList):  # "<layer>.parametrizations.<tensor>.original<j>"
            layer_name, _, leaf = f".{pname}".rpartition(".parametrizations.")
            layer, tensor = model.get_submodule(layer_name[1:]), leaf.partition(".")[0]
        kinds[pname] = "norm" if isinstance(layer, NORM_TYPES) else _kind_from_name(tensor)
    return kinds


# ----------------------------------------------------------------------------- tracing


def _owned_params(
    model: nn.Module,
) -> tuple[list[tuple[str, nn.Module, list[tuple[str, nn.Parameter]]]], list[str]]:
    """Modules that directly own trainable parameters, each parameter once.

    Returns ``(entries, excluded)``: entries are ``(module_name, module, [(param_name,
    param)])`` in registration order; a tied parameter belongs to the first module
    that registers it. ``excluded`` lists frozen parameters.
    """
    refuse_flat_parameters(model.parameters(), "model")
    seen: set[int] = set()
    entries = []
    excluded = []
    for mname, module in model.named_modules(remove_duplicate=False):
        owned = []
        for pname, param in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if id(param) in seen:
                continue
            seen.add(id(param))
            if param.requires_grad:
                owned.append((full, param))
            else:
                excluded.append(full)
        if owned:
            entries.append((mname, module, owned))
    if not entries:
        raise ValueError(
            "model: has no trainable parameters (every parameter has requires_grad=False or the model has none)"
        )
    return entries, excluded


class _FirstUse(TorchFunctionMode):
    """Records the order in which the watched tensors are first passed to a torch op."""

    def __init__(self, watched: set[int]) -> None:
        super().__init__()
        self.watched = watched
        self.order: list[int] = []

    def _visit(self, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            key = id(value)
            if key in self.watched:
                self.watched.discard(key)
                self.order.append(key)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self._visit(item)
        elif isinstance(value, Mapping):
            for item in value.values():
                self._visit(item)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self._visit(args)
        if kwargs:
            self._visit(kwargs)
        return func(*args, **(kwargs or {}))


def watched_forward(model: nn.Module, sample_input: Any, mode: TorchFunctionMode) -> None:
    """One forward of ``sample_input`` (a tensor, a tuple of positional arguments or a dict of keyword
    arguments) under ``mode``, ``torch.no_grad`` and eval mode; every module's mode restored afterwards.

    Examples:
        >>> class Calls(TorchFunctionMode):
        ...     seen = []
        ...     def __torch_function__(self, func, types, args=(), kwargs=None):
        ...         Calls.seen.append(func.__name__)
        ...         return func(*args, **(kwargs or {}))
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
        >>> watched_forward(net, torch.zeros(1, 2), Calls())
        >>> Calls.seen, net[1].training
        (['linear', 'dropout'], True)
    """
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), mode:
            if isinstance(sample_input, Mapping):
                model(**sample_input)
            elif isinstance(sample_input, tuple):
                model(*sample_input)
            else:
                model(sample_input)
    finally:
        for module, training in modes.items():
            module.training = training


def execution_order(model: nn.Module, sample_input: Any) -> list[str]:
    """Names of the modules that own trainable parameters, in the order a forward pass first
    uses one of their parameters (modules whose parameters were never used are left out).

    Parameter use is observed at the level of torch operations, so parameters used
    outside their module's ``forward`` (a position embedding on the root module, the
    output projection of ``nn.MultiheadAttention``) are placed where they are used.
    The forward pass runs under ``torch.no_grad`` in eval mode (restored afterwards),
    so BatchNorm statistics and the autograd graph are untouched. ``sample_input`` is a
    tensor, a tuple of positional arguments, or a dict of keyword arguments.
    """
    entries, _ = _owned_params(model)
    owner = {id(p): mname for mname, _, params in entries for _, p in params}
    module_of = {pname: mname for mname, _, params in entries for pname, _ in params}
    for key, pname in unsharded_names(model).items():  # FSDP2: the ops see unsharded parameters
        if pname in module_of:
            owner[key] = module_of[pname]
    recorder = _FirstUse(set(owner))
    watched_forward(model, sample_input, recorder)
    ordered: list[str] = []
    for key in recorder.order:
        if owner[key] not in ordered:
            ordered.append(owner[key])
    return ordered


def _layers(model: nn.Module, sample_input: Any) -> tuple[list[tuple[str, nn.Module, list]], list[str], str, list[str]]:
    """``(entries in data-flow order, excluded, order, unused)``: ``unused`` names the parameters of the
    modules the traced forward pass never used; they are left out of the entries."""
    entries, excluded = _owned_params(model)
    if sample_input is None:
        warn(
            "layerwise: no sample_input given, so groups follow module registration order, "
            "which can differ from the order data flows through the model; pass "
            "sample_input=... to trace the real order"
        )
        return entries, excluded, "registration", []
    called = execution_order(model, sample_input)
    rank = {name: i for i, name in enumerate(called)}
    idle = [mname for mname, _, _ in entries if mname not in rank]
    if idle:
        warn(
            f"layerwise: the sample forward pass used no parameter of modules {idle}; they are left out of "
            "the groups (Partition.unused) and the optimizer it builds. If training uses them (a branch the "
            "sample or eval mode skips), pass a sample_input that reaches them, or use by_patterns / explicit"
        )
    used = sorted((e for e in entries if e[0] in rank), key=lambda e: rank[e[0]])
    unused = [pname for mname, _, params in entries if mname not in rank for pname, _ in params]
    return used, excluded, "execution", unused


def _build(
    model: nn.Module,
    named: list[tuple[str, list[tuple[str, nn.Parameter]]]],
    excluded: list[str],
    order: Order,
    owners: Mapping[str, nn.Module],
    unused: Sequence[str] = (),
    given: Mapping[str, Sequence[str]] | None = None,
) -> Partition:
    """The partition of the ``named`` groups (empty ones dropped); ``given``: the modules each group was given."""
    groups = tuple(
        _group(name, params, depth, owners, (given or {}).get(name, ()))
        for depth, (name, params) in enumerate((n, ps) for n, ps in named if ps)
    )
    if not groups and unused:
        raise ValueError(f"sample_input: the forward pass used none of the model's parameters ({list(unused)[:5]} ...)")
    kinds = _param_kinds(model, owners)
    return Partition(groups, tuple(excluded), order, tuple(unused), _kinds=kinds, tied=tied_parameters(model))


def _group(
    name: str,
    params: list[tuple[str, nn.Parameter]],
    depth: int,
    owners: Mapping[str, nn.Module],
    given: Sequence[str],
) -> Group:
    """One group: its parameters read from their modules when every owner is known, else stored."""
    names = tuple(n for n, _ in params)
    modules = tuple(dict.fromkeys([*(n.rpartition(".")[0] or "root" for n in names), *given]))
    if all(n in owners for n in names):
        return Group(name, names, (), depth, slots=tuple(_slot(n, owners) for n in names), modules=modules)
    return Group(name, names, tuple(p for _, p in params), depth, modules=modules)


def _slot(param_name: str, owners: Mapping[str, nn.Module]) -> tuple[nn.Module, str]:
    return owners[param_name], param_name.rpartition(".")[2]


def tied_parameters(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Parameters registered by more than one module (tied weights): name -> the modules, first owner first.

    Examples:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10, bias=False))
        >>> model[1].weight = model[0].weight
        >>> tied_parameters(model)
        {'0.weight': ('0', '1')}
    """
    users: dict[int, tuple[str, list[str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, param in module.named_parameters(recurse=False, remove_duplicate=False):
            full = f"{mname}.{pname}" if mname else pname
            _, modules = users.setdefault(id(param), (full, []))
            if (mname or "root") not in modules:
                modules.append(mname or "root")
    return {name: tuple(modules) for name, modules in users.values() if len(modules) > 1}


def _owner_map(entries: list[tuple[str, nn.Module, list]]) -> dict[str, nn.Module]:
    return {pname: module for _, module, params in entries for pname, _ in params}


# ----------------------------------------------------------------------------- builders


def by_layer(model: nn.Module, *, sample_input: Any = None) -> Partition:
    """One group per module that directly owns trainable parameters, in execution order.

    Group names are module names (``"root"`` for parameters registered on the model
    itself). Without ``sample_input`` the order is the registration order (a warning
    says so).

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
        >>> by_layer(model, sample_input=torch.randn(2, 1, 28, 28)).names
        ('0', '2')
    """
    entries, excluded, order, unused = _layers(model, sample_input)
    named = [(mname or "root", params) for mname, _, params in entries]
    return _build(model, named, excluded, order, _owner_map(entries), unused)


def _merge_in_order(
    entries: list[tuple[str, nn.Module, list]], key_of: Any
) -> list[tuple[str, list[tuple[str, nn.Parameter]]]]:
    merged: dict[str, list[tuple[str, nn.Parameter]]] = {}
    for mname, _, params in entries:
        for pname, param in params:
            merged.setdefault(key_of(mname, pname), []).append((pname, param))
    return list(merged.items())


def by_block(model: nn.Module, depth: int = 1, *, sample_input: Any = None) -> Partition:
    """One group per module at ``depth`` in the module tree (1 = top-level children).

    Parameters registered above that depth form a group named after their module
    (``"root"`` for the model itself). Blocks are ordered by their first call in the
    traced forward pass.

    Examples:
        >>> block = lambda: torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), block(), block(), torch.nn.Linear(8, 2))
        >>> by_block(model, depth=1, sample_input=torch.zeros(1, 4)).names
        ('0', '1', '2', '3')
        >>> len(by_layer(model, sample_input=torch.zeros(1, 4)))
        6
    """
    positive_int("depth", depth)
    entries, excluded, order, unused = _layers(model, sample_input)

    def block_of(mname: str, _pname: str) -> str:
        parts = mname.split(".") if mname else []
        return ".".join(parts[:depth]) or "root"

    return _build(model, _merge_in_order(entries, block_of), excluded, order, _owner_map(entries), unused)


def by_depth_buckets(model: nn.Module, n: int, *, sample_input: Any = None) -> Partition:
    """``n`` contiguous groups of layers in data-flow order (fastai-style layer groups).

    Layers are split as evenly as possible by count; groups are named ``bucket0`` ...

    Examples:
        >>> model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(5)))
        >>> part = by_depth_buckets(model, 3, sample_input=torch.zeros(1, 4))
        >>> part.names, [len(g.params) for g in part]
        (('bucket0', 'bucket1', 'bucket2'), [4, 4, 2])
    """
    positive_int("n", n)
    entries, excluded, order, unused = _layers(model, sample_input)
    int_between("n", n, 1, len(entries), f"the number of layers ({len(entries)})")
    size, extra = divmod(len(entries), n)
    named = []
    start = 0
    for b in range(n):
        stop = start + size + (1 if b < extra else 0)
        named.append((f"bucket{b}", [p for _, _, params in entries[start:stop] for p in params]))
        start = stop
    return _build(model, named, excluded, order, _owner_map(entries), unused)


def by_patterns(
    model: nn.Module,
    rules: Mapping[str, str] | Sequence[tuple[str, str]],
    *,
    syntax: Syntax = "regex",
    rest: str | None = None,
) -> Partition:
    """Groups from name patterns: ``{pattern: group_name}``, first match wins.

    Groups are ordered as their first rule appears (then ``rest``). A parameter that no
    rule matches is an error listing its name, unless ``rest`` names a group for them.

    Args:
        rules: pattern -> group name, in priority order (several patterns may map to one group).
        syntax: ``"regex"`` (``re.search``) or ``"glob"`` (``fnmatch`` on the full name).
        rest: group name for unmatched parameters; ``None`` makes them an error.

    Examples:
        >>> from collections import OrderedDict
        >>> net = torch.nn.Sequential(OrderedDict(embed=torch.nn.Linear(4, 8), norm=torch.nn.LayerNorm(8),
        ...                                       fc=torch.nn.Linear(8, 2)))
        >>> by_patterns(net, {r"^embed": "embed", r"^fc\\.": "head"}, rest="other").names
        ('embed', 'head', 'other')
    """
    one_of("syntax", syntax, SYNTAXES)
    pairs = list(rules.items()) if isinstance(rules, Mapping) else [tuple(r) for r in rules]
    if not pairs:
        raise ValueError("rules: give at least one (pattern, group name) pair")
    compiled = []
    for pattern, gname in pairs:
        if not isinstance(pattern, str) or not isinstance(gname, str):
            raise TypeError("rules: patterns and group names must be strings")
        regex = pattern if syntax == "regex" else fnmatch.translate(pattern)
        try:
            compiled.append((re.compile(regex), gname))
        except re.error as exc:
            raise ValueError(f"rules: invalid regex {pattern!r}: {exc}") from exc
    entries, excluded = _owned_params(model)
    merged: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for _, g in compiled}
    unmatched: list[tuple[str, nn.Parameter]] = []
    for _, _, params in entries:
        for pname, param in params:
            target = next((g for rx, g in compiled if rx.search(pname)), None)
            (merged[target] if target is not None else unmatched).append((pname, param))
    if unmatched:
        if rest is None:
            raise ValueError(
                "rules: no rule matched these parameters (add rules or pass rest='name'): "
                + ", ".join(n for n, _ in unmatched)
            )
        if rest in merged:
            raise ValueError(f"rest: {rest!r} is already a rule's group name")
        merged[rest] = unmatched
    empty = [g for g, ps in merged.items() if not ps]
    if empty:
        warn(f"layerwise: rules matched no parameters for groups {empty}")
    return _build(model, list(merged.items()), excluded, "rules", _owner_map(entries))


def by_kind(model: nn.Module) -> Partition:
    """Groups ``weight``, ``bias`` and ``norm`` (parameters of normalization layers).

    Examples:
        >>> from collections import OrderedDict
        >>> net = torch.nn.Sequential(OrderedDict(embed=torch.nn.Linear(4, 8), norm=torch.nn.LayerNorm(8),
        ...                                       fc=torch.nn.Linear(8, 2)))
        >>> [(g.name, len(g.params)) for g in by_kind(net)]
        [('weight', 2), ('bias', 2), ('norm', 2)]
        >>> opt = torch.optim.AdamW(by_kind(net).param_groups(lr=1e-3, lr_mult={"norm": 0.1}))
    """
    entries, excluded = _owned_params(model)
    owners = _owner_map(entries)
    everything = Group("all", tuple(owners), tuple(p for _, _, ps in entries for _, p in ps), 0)
    by_name = _param_kinds(model, owners)
    kinds = [by_name[pname] for pname in everything.param_names]
    merged: dict[str, list[tuple[str, nn.Parameter]]] = {"weight": [], "bias": [], "norm": []}
    for pname, param, kind in zip(everything.param_names, everything.params, kinds):
        merged[kind].append((pname, param))
    return _build(model, list(merged.items()), excluded, "rules", owners)


def by_head(model: nn.Module, head: str | Sequence[str] | None = None, *, sample_input: Any = None) -> Partition:
    """Two groups, ``body`` then ``head``.

    Args:
        head: module name(s) forming the head; by default the last layer in data-flow
            order (traced when ``sample_input`` is given).

    Examples:
        >>> from collections import OrderedDict
        >>> net = torch.nn.Sequential(OrderedDict(embed=torch.nn.Linear(4, 8), norm=torch.nn.LayerNorm(8),
        ...                                       fc=torch.nn.Linear(8, 2)))
        >>> part = by_head(net, head="fc")
        >>> part.names, [len(g.params) for g in part]
        (('body', 'head'), [4, 2])
    """
    if head is None or sample_input is not None:
        entries, excluded, order, unused = _layers(model, sample_input)
    else:  # the head is named: the order inside each part needs no trace
        (entries, excluded), order, unused = _owned_params(model), "registration", []
    if head is None:
        heads = {entries[-1][0]}
    else:
        heads = {head} if isinstance(head, str) else set(head)
        known = dict(model.named_modules())
        missing = sorted(h for h in heads if h not in known)
        if missing:
            raise ValueError(f"head: no module named {missing} in the model")

    def part_of(mname: str, _pname: str) -> str:
        inside = any(mname == h or mname.startswith(h + ".") or h == "" for h in heads)
        return "head" if inside else "body"

    merged = dict(_merge_in_order(entries, part_of))
    if "head" not in merged:
        raise ValueError(f"head: modules {sorted(heads)} own no trainable parameters")
    named = [(g, merged[g]) for g in ("body", "head") if g in merged]
    return _build(model, named, excluded, order, _owner_map(entries), unused)


def by_lora(model: nn.Module, *, rest: str = "other") -> Partition:
    """Groups ``lora_A`` and ``lora_B`` (PEFT naming), plus ``rest`` for other trainable parameters.

    Examples:
        >>> from collections import OrderedDict
        >>> adapter = torch.nn.Sequential(OrderedDict(lora_A=torch.nn.Linear(8, 2, bias=False),
        ...                                           lora_B=torch.nn.Linear(2, 8, bias=False)))
        >>> model = torch.nn.Sequential(OrderedDict(q=adapter, out=torch.nn.Linear(8, 2)))
        >>> by_lora(model).names
        ('lora_A', 'lora_B', 'other')
        >>> opt = torch.optim.AdamW(by_lora(model).param_groups(lr=2e-4, lr_mult={"lora_B": 16}))
    """
    rules = [(r"(^|\.)lora_A(\.|$)", "lora_A"), (r"(^|\.)lora_B(\.|$)", "lora_B")]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    absent = [group for pattern, group in rules if not any(re.search(pattern, n) for n in names)]
    if names and absent:  # (no trainable parameter at all: by_patterns says so)
        raise ValueError(
            f"model: no trainable parameter named like {absent} (a 'lora_A' / 'lora_B' name component, PEFT's "
            "naming: add adapters with peft.get_peft_model or layerwise.tasks.lora.peft_lora first)"
        )
    return by_patterns(model, rules, rest=rest)


def explicit(
    model: nn.Module,
    assignment: Mapping[str, Sequence[str | nn.Parameter | nn.Module]],
    *,
    rest: str | None = None,
) -> Partition:
    """Groups given explicitly: ``{group_name: [parameter names, parameters or modules]}``.

    Examples:
        >>> from collections import OrderedDict
        >>> net = torch.nn.Sequential(OrderedDict(embed=torch.nn.Linear(4, 8), norm=torch.nn.LayerNorm(8),
        ...                                       fc=torch.nn.Linear(8, 2)))
        >>> part = explicit(net, {"features": [net.embed, net.norm], "classifier": ["fc.weight", "fc.bias"]})
        >>> part.names, [len(g.params) for g in part]
        (('features', 'classifier'), [4, 2])
    """
    entries, excluded = _owned_params(model)
    name_of = {id(p): n for _, _, ps in entries for n, p in ps}
    by_name = {n: p for _, _, ps in entries for n, p in ps}
    module_names: dict[int, str] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        module_names.setdefault(id(module), mname or "root")
    taken: dict[int, str] = {}
    named = []
    given: dict[str, list[str]] = {}  # group -> the modules it was given (as a tied module's group)
    for gname, items in assignment.items():
        params: list[tuple[str, nn.Parameter]] = []
        for item in items:
            if isinstance(item, str):
                if item not in by_name:
                    raise ValueError(f"assignment[{gname!r}]: no trainable parameter named {item!r}")
                found = [(item, by_name[item])]
            elif isinstance(item, nn.Parameter):
                if id(item) not in name_of:
                    raise ValueError(f"assignment[{gname!r}]: a parameter is not a trainable one of model")
                found = [(name_of[id(item)], item)]
            elif isinstance(item, nn.Module):
                found = [(name_of[id(p)], p) for p in item.parameters() if id(p) in name_of]
                if id(item) in module_names:
                    given.setdefault(gname, []).append(module_names[id(item)])
            else:
                raise TypeError(
                    f"assignment[{gname!r}]: items must be names, parameters or modules, got {type(item).__name__}"
                )
            for pname, param in found:
                if id(param) in taken and taken[id(param)] != gname:
                    raise ValueError(f"assignment: parameter {pname!r} is in both {taken[id(param)]!r} and {gname!r}")
                if id(param) not in taken:
                    taken[id(param)] = gname
                    params.append((pname, param))
        named.append((gname, params))
    unmatched = [(n, p) for n, p in by_name.items() if id(p) not in taken]
    if unmatched:
        if rest is None:
            raise ValueError(
                "assignment: these parameters are in no group (assign them or pass rest='name'): "
                + ", ".join(n for n, _ in unmatched)
            )
        named.append((rest, unmatched))
    return _build(model, named, excluded, "rules", _owner_map(entries), given=given)
