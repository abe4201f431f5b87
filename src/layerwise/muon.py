"""The Muon split: hidden weight matrices to Muon, everything else to AdamW, in one optimizer.

Muon (Jordan et al. 2024) orthogonalises each weight matrix's momentum update by Newton-Schulz
iterations; its authors train only the hidden matrices with it, and embeddings, the output head,
biases and norm gains with AdamW. :func:`muon_split` makes that split of a partition, finding the
embeddings and the head by what they are (module types, Hugging Face's ``get_output_embeddings``, or the
last weight matrix a traced forward uses; never registration order), and returns a
:class:`~layerwise.per_group.PerGroupOptimizer` with parts ``muon`` and ``adamw``, whose param groups
keep their partition ``name`` and ``depth`` (a group holding both kinds has a dict in each part), so
:class:`~layerwise.LayerwiseLR` and FreezeOut schedule and freeze a layer in both parts together.

torch's :class:`torch.optim.Muon` takes 2-D parameters only. Convolution weights (and any weight of
more dimensions) are, with ``conv="reshape"`` (the default, as in the authors' implementation),
orthogonalised as the ``(out_channels, in_channels * kh * kw)`` matrix by :class:`ReshapedMuon`;
with ``conv="adamw"`` they go to AdamW.

Examples:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 2))
    >>> opt = muon_split(model, sample_input=torch.zeros(1, 4))   # or a partition of it, with model=model
    >>> [(g["name"], type(o).__name__, g["weight_decay"]) for o in opt.optimizers for g in o.param_groups]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('0', 'ReshapedMuon', 0.1), ('2', 'ReshapedMuon', 0.1), ('0', 'AdamW', 0.0), ('2', 'AdamW', 0.0),
     ('4', 'AdamW', 0.01), ('4', 'AdamW', 0.0)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim._muon import muon as muon_functional
from torch.overrides import TorchFunctionMode

from ._checks import one_of
from ._warn import warn
from .groups import NORM_TYPES, Partition, by_layer, watched_forward
from .per_group import Params, Part, PerGroupOptimizer, part_groups

__all__ = [
    "ADAMW_DEFAULTS",
    "CONV_OPTIONS",
    "MUON_DEFAULTS",
    "Head",
    "ReshapedMuon",
    "Roles",
    "find_roles",
    "muon_split",
    "split_groups",
]

Conv = Literal["reshape", "adamw"]
CONV_OPTIONS = get_args(Conv)
"""``muon_split(conv=...)``: convolution weights orthogonalised reshaped to 2-D, or trained by AdamW."""

MUON_DEFAULTS: Mapping[str, Any] = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "ns_steps": 5}
"""Muon's options unless given: the authors' README and torch's example (lr 0.02, momentum 0.95, Nesterov, 5 steps)."""

ADAMW_DEFAULTS: Mapping[str, Any] = {"lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.01}
"""AdamW's options unless given: the AdamW line of the Muon authors' README."""

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_MATRIX_MODULES = (nn.Linear, nn.Bilinear, nn.MultiheadAttention)
_MATRIX_MODULE_NAMES = frozenset({"Conv1D"})
"""Modules whose 2-D weights multiply the activations (with the convolutions; ``Conv1D``: GPT-2's Linear)."""
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

Head = str | nn.Module | Tensor | Sequence[str | nn.Module | Tensor]
"""``muon_split(head=...)``: the output projection as a module, a parameter, a module, parameter or group
name, or a sequence of them."""


class ReshapedMuon(torch.optim.Muon):
    """torch's Muon for weights of two or more dimensions: each is orthogonalised as the matrix
    ``(size(0), numel / size(0))`` (a conv filter bank as out-channels x in-channels * kernel), the
    momentum kept in the weight's own shape; on 2-D weights it is torch's Muon, step for step.

    A weight in another memory layout (a ``channels_last`` conv filter) is stepped as the same matrix, in
    its logical ``(out, in, kh, kw)`` order, and the result written back in the weight's own layout: its
    update equals the update of the same weight stored contiguously.

    Takes torch's :class:`~torch.optim.Muon` options; its LR adjustment reads the 2-D matrix's shape.
    """

    def __init__(self, params: Params, **options: Any) -> None:
        groups = part_groups("params", params)
        flat = [tuple(p.shape) for g in groups for p in g["params"] if p.ndim < 2]
        if flat:
            raise ValueError(f"params: ReshapedMuon takes weights of 2 or more dimensions, got shapes {flat}")
        super().__init__([{"params": []}], **options)  # torch's checks of the options; no parameter to refuse
        self.param_groups.clear()
        for group in groups:
            self.add_param_group(group)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            weights = [_matrix(p) for p in params]
            buffers = [_matrix(self._buffer(p)) for p in params]
            muon_functional(
                weights,
                [_matrix(p.grad) for p in params],
                buffers,
                **{key: group[key] for key in ("lr", "weight_decay", "momentum", "nesterov", "ns_steps", "eps")},
                ns_coefficients=group["ns_coefficients"],
                adjust_lr_fn=group["adjust_lr_fn"],
                has_complex=False,
            )
            for param, weight, buffer in zip(params, weights, buffers):  # the copies of other layouts, written back
                _write_back(param, weight)
                _write_back(self.state[param]["momentum_buffer"], buffer)
        return loss

    def _buffer(self, param: Tensor) -> Tensor:
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
        return state["momentum_buffer"]


def _matrix(tensor: Tensor) -> Tensor:
    """``tensor`` as the matrix ``(size(0), rest)`` in its logical order: a view sharing its storage (so
    in-place updates reach it) where its layout allows one, else a contiguous copy (see :func:`_write_back`)."""
    if tensor.ndim == 2:
        return tensor
    if tensor.is_contiguous():
        return tensor.view(tensor.shape[0], -1)
    return tensor.reshape(tensor.shape[0], -1)  # channels_last and other layouts: a copy, in logical order


def _write_back(tensor: Tensor, matrix: Tensor) -> None:
    """Copy ``matrix`` (stepped in place) into ``tensor`` when it is a copy rather than a view of it; the copy
    keeps ``tensor``'s own memory layout."""
    if matrix is not tensor and matrix.data_ptr() != tensor.data_ptr():
        tensor.copy_(matrix.view(tensor.shape))


def muon_split(
    partition_or_model: Partition | nn.Module,
    *,
    conv: Conv = "reshape",
    muon_options: Mapping[str, Any] | None = None,
    adamw_options: Mapping[str, Any] | None = None,
    sample_input: Any = None,
    model: nn.Module | None = None,
    head: Head | None = None,
) -> PerGroupOptimizer:
    """Muon for the hidden weights of a partition, AdamW for the rest, as one :class:`PerGroupOptimizer`.

    Args:
        partition_or_model: a :class:`~layerwise.Partition` (groups in data-flow order), or a model
            (partitioned with :func:`~layerwise.by_layer` and ``sample_input``).
        conv: ``"reshape"``: weights of more than two dimensions (convolutions) orthogonalised as
            matrices by :class:`ReshapedMuon`; ``"adamw"``: they go to AdamW (torch's Muon then).
        muon_options: options of the Muon part over :data:`MUON_DEFAULTS` (torch's weight decay 0.1 unless given).
        adamw_options: options of the AdamW part over :data:`ADAMW_DEFAULTS`; biases and norms get no decay.
        sample_input: an input of the model (a tensor, a tuple of positional arguments or a dict of keyword
            arguments): it orders a model's layers, and its traced forward finds the head.
        model: with a partition, the model it partitions, so the embeddings and the head are found in it
            (as they are when ``partition_or_model`` is the model).
        head: the output projection, when the rule below does not find it: a module, a parameter, a module,
            parameter or group name, or a sequence of them (``()``: no head; every hidden matrix to Muon).

    The rule: Muon trains every weight of two dimensions and every convolution's filters (with
    ``conv="reshape"``) but the embeddings' and the head's; a tensor of more than two dimensions that no
    convolution owns (a position embedding, a class token) is an embedding, and so is a raw 2-D
    ``nn.Parameter`` of a module that is not a Linear (a position table ``[T, D]``) which the traced
    forward never multiplies the activations by (without ``sample_input`` such parameters go to Muon,
    with a warning naming them); AdamW trains those, biases
    and norm parameters (each parameter once: a weight tied between an embedding and the head is one
    parameter, on AdamW). The roles are found by what the modules are, never by registration order:

    - embeddings: the parameters of every ``nn.Embedding`` / ``nn.EmbeddingBag`` and of a Hugging Face
      model's ``get_input_embeddings()``;
    - the head: ``head`` when given; else the model's ``get_output_embeddings()`` (Hugging Face) when it
      has one; else, with ``sample_input``, the parameters of two or more dimensions of the last torch op
      the traced forward (eval mode, no grad) passes any to: the output projection's weight (for a head
      tied to the embedding, the embedding matrix). With a partition alone (no ``model``) the head is the
      partition's last group; a partition with a tied matrix is then refused (a tied head sits where its
      embedding is first used, or in no group), as is a model with no ``sample_input``,
      ``get_output_embeddings`` or ``head``.

    A split with no hidden matrix is refused (train such a model with AdamW alone); so are two parameters
    over the same memory (tie a weight by assigning the one Parameter, ``head.weight = emb.weight``).
    """
    one_of("conv", conv, CONV_OPTIONS)
    muon = {**MUON_DEFAULTS, **_options("muon_options", muon_options)}
    adamw = {**ADAMW_DEFAULTS, **_options("adamw_options", adamw_options)}
    partition, model = _partition_and_model(partition_or_model, model, sample_input, head)
    _refuse_sharded(partition, model, conv)
    roles = find_roles(partition, model=model, sample_input=sample_input, head=head)
    muon_groups, adamw_groups = _split(partition, conv, roles)
    if not muon_groups:
        raise ValueError(
            f"partition_or_model: no hidden weight matrix for Muon (every weight matrix is an embedding's or the "
            f"head's, {roles.found}; biases and norms go to AdamW); train it with AdamW alone"
        )
    muon_class: type[Optimizer] = ReshapedMuon if conv == "reshape" else torch.optim.Muon
    parts = {"muon": Part(muon_class, muon_groups, muon)}
    if adamw_groups:
        parts["adamw"] = Part(torch.optim.AdamW, adamw_groups, adamw)
    return PerGroupOptimizer(parts)


def _options(argument: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{argument}: expected a mapping of optimizer options, got {type(options).__name__}")
    return dict(options)


def _partition_and_model(
    partition_or_model: Partition | nn.Module, model: nn.Module | None, sample_input: Any, head: Head | None
) -> tuple[Partition, nn.Module | None]:
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(partition_or_model, Partition):
        if model is None and sample_input is not None:
            raise ValueError("sample_input: with a partition it needs model= (the model whose forward it traces)")
        return partition_or_model, model
    if isinstance(partition_or_model, nn.Module):
        if model is not None and model is not partition_or_model:
            raise ValueError("model: given with a model as partition_or_model, it must be that model")
        if sample_input is None and head is None and _hf_part(partition_or_model, "get_output_embeddings") is None:
            raise ValueError(_NO_HEAD)
        return by_layer(partition_or_model, sample_input=sample_input), partition_or_model
    got = type(partition_or_model).__name__
    raise TypeError(f"partition_or_model: expected a Partition or an nn.Module, got {got}")


_NO_HEAD = (
    "sample_input: needed to find the model's head (the last weight matrix its forward uses), which has no "
    "get_output_embeddings(); pass sample_input=... or head=... (the output projection's module or name)"
)


def _refuse_sharded(partition: Partition, model: nn.Module | None, conv: Conv) -> None:
    """Refused before any traced forward: sharded (FSDP2) weights that could go to Muon."""
    embeddings = _typed_ids(partition, model)
    sharded = [
        g.name
        for g in partition
        if any(hasattr(p, "device_mesh") and _for_muon(p, conv) and id(p) not in embeddings for p in g.params)
    ]
    if sharded:
        raise ValueError(
            f"partition_or_model: groups {sorted(set(sharded))} hold sharded (FSDP2) weights; Muon orthogonalises "
            "a whole matrix, which a rank's shard is not, so the Muon split is refused under FSDP2"
        )


@dataclass(frozen=True)
class Roles:
    """Which parameters are kept off Muon (by ``id``): ``embeddings`` (with the gains of norm layers, found by
    their modules' types) and ``head``; ``found`` says how the head was found."""

    embeddings: frozenset[int]
    head: frozenset[int]
    found: str

    @property
    def adamw(self) -> frozenset[int]:
        return self.embeddings | self.head


def find_roles(
    partition: Partition, *, model: nn.Module | None = None, sample_input: Any = None, head: Head | None = None
) -> Roles:
    """The embeddings and the head of ``partition`` (of ``model`` when given), by the rule of :func:`muon_split`."""
    if model is not None:
        _refuse_strangers(partition, model)
    embeddings = _typed_ids(partition, model)
    trace = None if model is None or sample_input is None else _trace(model, sample_input)
    embeddings |= _tables(partition, embeddings, trace)
    if head is not None:
        return Roles(embeddings, _head_ids(head, partition, model), "given as head=")
    if model is not None:
        output = _hf_part(model, "get_output_embeddings")
        if output is not None:
            return Roles(embeddings, _ids_of(output), "the model's get_output_embeddings()")
        if trace is None:
            raise ValueError(_NO_HEAD)
        last = _last_matrices(trace)
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        found = f"the traced forward's last weight matrix {', '.join(repr(names[id(p)]) for p in last)}"
        return Roles(embeddings, frozenset(id(p) for p in last), found)
    tied = [name for name in partition.tied if _tied_matrix(partition, name)]
    if tied:
        raise ValueError(
            f"partition_or_model: the partition has tied weight matrices {tied} (registered by modules "
            f"{[list(partition.tied[n]) for n in tied]}); from a partition alone the head cannot be told (a tied "
            "head sits where its embedding is first used, or in no group): pass model= and sample_input=, or head="
        )
    last = partition[-1]
    return Roles(embeddings, frozenset(id(p) for p in last.params), f"the partition's last group {last.name!r}")


def split_groups(
    partition: Partition,
    conv: Conv,
    *,
    model: nn.Module | None = None,
    sample_input: Any = None,
    head: Head | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The split of ``partition``: param-group dicts (``name``, ``depth``) for Muon and for AdamW (biases and
    norms marked ``weight_decay=0``), by the rule of :func:`muon_split`."""
    one_of("conv", conv, CONV_OPTIONS)
    if model is None and sample_input is not None:
        raise ValueError("sample_input: with a partition it needs model= (the model whose forward it traces)")
    return _split(partition, conv, find_roles(partition, model=model, sample_input=sample_input, head=head))


def _split(partition: Partition, conv: Conv, roles: Roles) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    _refuse_shared_memory(partition)
    off_muon = roles.adamw
    muon_groups, adamw_groups = [], []
    for group in partition.param_groups(weight_decay=1.0, no_decay=("bias", "norm")):  # 0.0 marks the exempt
        if group.pop("weight_decay") == 0.0:
            adamw_groups.append({**group, "weight_decay": 0.0})
            continue
        hidden = {id(p) for p in group["params"] if _for_muon(p, conv) and id(p) not in off_muon}
        rest = [p for p in group["params"] if id(p) not in hidden]
        if hidden:
            muon_groups.append({**group, "params": [p for p in group["params"] if id(p) in hidden]})
        if rest:
            adamw_groups.append({**group, "params": rest})
    return muon_groups, adamw_groups


def _for_muon(param: Tensor, conv: Conv) -> bool:
    return param.ndim == 2 or (param.ndim > 2 and conv == "reshape")


# ---- the roles ---------------------------------------------------------------------------------------


def _ids_of(item: nn.Module | Tensor) -> frozenset[int]:
    if isinstance(item, nn.Module):
        return frozenset(id(p) for p in item.parameters())
    return frozenset({id(item)})


def _hf_part(model: nn.Module, getter: str) -> nn.Module | Tensor | None:
    """``model.get_input_embeddings()`` or ``get_output_embeddings()`` (Hugging Face) where it has one, else None."""
    method = getattr(model, getter, None)
    if not callable(method):
        return None
    try:
        found = method()
    except (NotImplementedError, AttributeError):  # a PreTrainedModel without a base model's embeddings
        return None
    return found if isinstance(found, (nn.Module, Tensor)) else None


def _typed_ids(partition: Partition, model: nn.Module | None) -> frozenset[int]:
    """The parameters of embedding tables and of normalization layers: of the model's modules when it is given,
    else of the partition's modules (known from the groups' slots). A norm layer's weight of two dimensions
    (``LayerNorm((a, b))``) is a gain, never a matrix for Muon. So is a tensor of more than two dimensions
    that no convolution owns (a ViT's position embedding ``[1, N, D]`` and class token ``[1, 1, D]``)."""
    raw = frozenset(
        id(module._parameters[attribute])
        for group in partition
        for module, attribute in group.slots
        if module._parameters[attribute].ndim > 2 and not isinstance(module, _CONVOLUTIONS)
    )
    if model is None:
        return raw | frozenset(
            id(module._parameters[attribute])
            for group in partition
            for module, attribute in group.slots
            if isinstance(module, (*_EMBEDDINGS, *NORM_TYPES))
        )
    ids = set(raw) | {
        id(p)
        for module in model.modules()
        if isinstance(module, (*_EMBEDDINGS, *NORM_TYPES))
        for p in module.parameters()
    }
    inputs = _hf_part(model, "get_input_embeddings")
    if inputs is not None:
        ids |= _ids_of(inputs)
    return frozenset(ids)


def _tables(partition: Partition, typed: frozenset[int], trace: _Trace | None) -> frozenset[int]:
    """The raw 2-D parameters (registered with ``nn.Parameter`` on a module that is not a Linear, a
    convolution or attention) that the traced forward never multiplies the activations by: tables read by
    index or added (a position table ``[T, D]``), embeddings for Muon's rule. Without a trace, such
    parameters go to Muon, with a warning naming them."""
    raw = {
        id(param): name
        for group in partition
        for name, (module, attribute) in zip(group.param_names, group.slots)
        if (param := module._parameters[attribute]).ndim == 2
        and id(param) not in typed
        and not isinstance(module, _MATRIX_MODULES)
        and type(module).__name__ not in _MATRIX_MODULE_NAMES
    }
    if trace is not None:
        return frozenset(pid for pid in raw if pid not in trace.multiplied)
    if raw:
        warn(
            f"muon_split: the raw 2-D parameters {sorted(raw.values())[:5]} go to Muon as hidden matrices; if one "
            "is a table read by index or added (a position table), pass model= and sample_input= so the forward "
            "tells, or name it in head="
        )
    return frozenset()


def _head_ids(head: Head, partition: Partition, model: nn.Module | None) -> frozenset[int]:
    items = [head] if isinstance(head, (str, nn.Module, Tensor)) else list(head)
    ids: set[int] = set()
    for item in items:
        if isinstance(item, (nn.Module, Tensor)):
            ids |= _ids_of(item)
        elif isinstance(item, str):
            ids |= _named(item, partition, model)
        else:
            raise TypeError(
                f"head: expected a module, a parameter, a name or a sequence of them, got {type(item).__name__}"
            )
    return frozenset(ids)


def _named(name: str, partition: Partition, model: nn.Module | None) -> set[int]:
    """The parameters ``name`` names: a module or parameter of ``model``, or a group, parameter or module
    (a prefix of parameter names) of ``partition``."""
    if model is not None:
        modules = dict(model.named_modules(remove_duplicate=False))
        if name in modules:
            return set(_ids_of(modules[name]))
        params = dict(model.named_parameters(remove_duplicate=False))
        if name in params:
            return {id(params[name])}
    if name in partition.names:
        return {id(p) for p in partition[name].params}
    found = {
        id(p)
        for group in partition
        for pname, p in zip(group.param_names, group.params)
        if pname == name or pname.startswith(name + ".")
    }
    if not found:
        where = "module or parameter of the model, nor group" if model is not None else "group, module or parameter"
        raise ValueError(f"head: {name!r} names no {where} of the partition")
    return found


def _tied_matrix(partition: Partition, name: str) -> bool:
    for group in partition:
        for pname, param in zip(group.param_names, group.params):
            if pname == name:
                return param.ndim >= 2
    return False


def _refuse_strangers(partition: Partition, model: nn.Module) -> None:
    owned = {id(p) for p in model.parameters()}
    strangers = [n for g in partition for n, p in zip(g.param_names, g.params) if id(p) not in owned]
    if strangers:
        raise ValueError(f"model: the partition's parameters {strangers[:5]} are not the model's")


def _refuse_shared_memory(partition: Partition) -> None:
    """Two parameter objects over the same memory would be stepped twice (and each sees only its own
    gradient); a tie is one Parameter registered twice, which the partition holds once."""
    seen: dict[tuple[Any, ...], str] = {}
    for group in partition:
        for pname, param in zip(group.param_names, group.params):
            if hasattr(param, "device_mesh") or param.device.type == "meta" or param.numel() == 0:
                continue
            try:
                key = (param.device, param.data_ptr(), tuple(param.shape), param.stride())
            except RuntimeError:  # a tensor subclass without storage
                continue
            if key in seen:
                raise ValueError(
                    f"partition_or_model: parameters {seen[key]!r} and {pname!r} are two Parameter objects over the "
                    "same memory; an optimizer would step it twice. Tie them as one Parameter "
                    "(head.weight = emb.weight)"
                )
            seen[key] = pname


_MULTIPLYING_OPS = frozenset(
    {
        "linear", "bilinear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "addmm", "addmv", "mv",
        "einsum", "baddbmm", "addbmm", "tensordot", "chain_matmul", "multi_dot", "multi_head_attention_forward",
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    }
)  # fmt: skip
"""Torch ops that use a weight as a matrix (a product with the activations)."""
_SHAPE_OPS = frozenset(
    {
        "t", "transpose", "permute", "view", "reshape", "contiguous", "to", "float", "half", "bfloat16", "double",
        "type_as", "__get__", "unsqueeze", "squeeze", "flatten", "clone", "detach",
    }
)  # fmt: skip
"""Torch ops whose result is still the weight, reshaped or cast (``W.T``, ``W.view(...)``)."""


class _Trace(TorchFunctionMode):
    """Records, over one forward, the watched tensors (parameters of two or more dimensions) of the last torch
    op given any (``last``) and those an op multiplied the activations by, directly or reshaped (``multiplied``)."""

    def __init__(self, watched: Mapping[int, Tensor]) -> None:
        super().__init__()
        self.watched = watched
        self.views: dict[int, tuple[Tensor, int]] = {}  # a watched tensor's reshaped copies: id -> (copy, its id)
        self.last: list[Tensor] = []
        self.multiplied: set[int] = set()

    def _visit(self, value: Any, found: list[Tensor]) -> None:
        if isinstance(value, Tensor):
            if id(value) in self.watched and not any(value is f for f in found):
                found.append(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self._visit(item, found)
        elif isinstance(value, Mapping):
            for item in value.values():
                self._visit(item, found)

    def _origins(self, args: Any, kwargs: Any) -> set[int]:
        tensors = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, Tensor)]
        direct = {id(t) for t in tensors if id(t) in self.watched}
        through = {self.views[id(t)][1] for t in tensors if id(t) in self.views and self.views[id(t)][0] is t}
        return direct | through

    def __torch_function__(self, func, types, args=(), kwargs=None):
        found: list[Tensor] = []
        self._visit(args, found)
        if kwargs:
            self._visit(kwargs, found)
        if found:
            self.last = found
        name = getattr(func, "__name__", "")
        origins = self._origins(args, kwargs) if name in _MULTIPLYING_OPS or name in _SHAPE_OPS else set()
        if name in _MULTIPLYING_OPS:
            self.multiplied |= origins
        result = func(*args, **(kwargs or {}))
        if name in _SHAPE_OPS and len(origins) == 1 and isinstance(result, Tensor):
            self.views[id(result)] = (result, next(iter(origins)))
        return result


def _trace(model: nn.Module, sample_input: Any) -> _Trace:
    """One forward of ``sample_input`` under ``torch.no_grad`` in eval mode (the modes restored afterwards),
    traced over the parameters of two or more dimensions (trainable or frozen)."""
    recorder = _Trace({id(p): p for p in model.parameters() if p.ndim >= 2})
    watched_forward(model, sample_input, recorder)
    return recorder


def _last_matrices(trace: _Trace) -> list[Tensor]:
    """The parameters of the last torch op the traced forward passed any to (a Linear's weight; both tensors
    of a weight-normed one)."""
    if not trace.last:
        raise ValueError(
            "sample_input: the traced forward passed no weight matrix to a torch op, so the head was not found; "
            "pass head=... (the output projection's module or name)"
        )
    return trace.last
