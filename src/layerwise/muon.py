"""The Muon split: hidden weight matrices to Muon, everything else to AdamW, in one optimizer.

Muon (Jordan et al. 2024) orthogonalises each weight matrix's momentum update by Newton-Schulz
iterations; its authors train only the hidden matrices with it, and embeddings, the output head,
biases and norm gains with AdamW. :func:`muon_split` reads that split off a partition and returns a
:class:`~layerwise.per_group.PerGroupOptimizer` with parts ``muon`` and ``adamw``, whose param groups
keep their partition ``name`` and ``depth`` (a group holding both kinds has a dict in each part), so
:class:`~layerwise.LayerwiseLR` and FreezeOut schedule and freeze a layer in both parts together.

torch's :class:`torch.optim.Muon` takes 2-D parameters only. Convolution weights (and any weight of
more dimensions) are, with ``conv="reshape"`` (the default, as in the authors' implementation),
orthogonalised as the ``(out_channels, in_channels * kh * kw)`` matrix by :class:`ReshapedMuon`;
with ``conv="adamw"`` they go to AdamW.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 2))
    >>> opt = muon_split(layerwise.by_layer(model, sample_input=torch.zeros(1, 4)))
    >>> [(g["name"], type(o).__name__, g["weight_decay"]) for o in opt.optimizers for g in o.param_groups]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('0', 'ReshapedMuon', 0.1), ('2', 'ReshapedMuon', 0.1), ('0', 'AdamW', 0.0), ('2', 'AdamW', 0.0),
     ('4', 'AdamW', 0.01), ('4', 'AdamW', 0.0)]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim._muon import muon as muon_functional

from ._checks import one_of
from .groups import Partition, by_layer
from .per_group import Params, Part, PerGroupOptimizer, part_groups

__all__ = ["ADAMW_DEFAULTS", "CONV_OPTIONS", "MUON_DEFAULTS", "ReshapedMuon", "muon_split", "split_groups"]

Conv = Literal["reshape", "adamw"]
CONV_OPTIONS = get_args(Conv)
"""``muon_split(conv=...)``: convolution weights orthogonalised reshaped to 2-D, or trained by AdamW."""

MUON_DEFAULTS: Mapping[str, Any] = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "ns_steps": 5}
"""Muon's options unless given: the authors' README and torch's example (lr 0.02, momentum 0.95, Nesterov, 5 steps)."""

ADAMW_DEFAULTS: Mapping[str, Any] = {"lr": 3e-4, "betas": (0.9, 0.95), "weight_decay": 0.01}
"""AdamW's options unless given: the AdamW line of the Muon authors' README."""

_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


class ReshapedMuon(torch.optim.Muon):
    """torch's Muon for weights of two or more dimensions: each is orthogonalised as the matrix
    ``(size(0), numel / size(0))`` (a conv filter bank as out-channels x in-channels * kernel), the
    momentum kept in the weight's own shape; on 2-D weights it is torch's Muon, step for step.

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
            buffers = [self._buffer(p) for p in params]
            muon_functional(
                [_matrix(p) for p in params],
                [_matrix(p.grad) for p in params],
                [_matrix(b) for b in buffers],
                **{key: group[key] for key in ("lr", "weight_decay", "momentum", "nesterov", "ns_steps", "eps")},
                ns_coefficients=group["ns_coefficients"],
                adjust_lr_fn=group["adjust_lr_fn"],
                has_complex=False,
            )
        return loss

    def _buffer(self, param: Tensor) -> Tensor:
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.contiguous_format)
        return state["momentum_buffer"]


def _matrix(tensor: Tensor) -> Tensor:
    """``tensor`` viewed as ``(size(0), rest)`` (shares its storage, so in-place updates reach it)."""
    return tensor.view(tensor.shape[0], -1)


def muon_split(
    partition_or_model: Partition | nn.Module,
    *,
    conv: Conv = "reshape",
    muon_options: Mapping[str, Any] | None = None,
    adamw_options: Mapping[str, Any] | None = None,
    sample_input: Any = None,
) -> PerGroupOptimizer:
    """Muon for the hidden weights of a partition, AdamW for the rest, as one :class:`PerGroupOptimizer`.

    Args:
        partition_or_model: a :class:`~layerwise.Partition` (groups in data-flow order), or a model
            (partitioned with :func:`~layerwise.by_layer` and ``sample_input``).
        conv: ``"reshape"``: weights of more than two dimensions (convolutions) orthogonalised as
            matrices by :class:`ReshapedMuon`; ``"adamw"``: they go to AdamW (torch's Muon then).
        muon_options: options of the Muon part over :data:`MUON_DEFAULTS` (torch's weight decay 0.1 unless given).
        adamw_options: options of the AdamW part over :data:`ADAMW_DEFAULTS`; biases and norms get no decay.
        sample_input: with a model, the input whose forward orders its layers.

    Muon trains every weight of two or more dimensions (of 2 exactly with ``conv="adamw"``) except the
    partition's last group (the head) and embedding tables; AdamW trains those, biases and norm parameters.
    """
    one_of("conv", conv, CONV_OPTIONS)
    muon = {**MUON_DEFAULTS, **_options("muon_options", muon_options)}
    adamw = {**ADAMW_DEFAULTS, **_options("adamw_options", adamw_options)}
    partition = _partition(partition_or_model, sample_input)
    muon_groups, adamw_groups = split_groups(partition, conv)
    if not muon_groups:
        raise ValueError(
            f"partition_or_model: no hidden weight matrix for Muon (every parameter is in the head "
            f"{partition.names[-1]!r}, an embedding, a bias or a norm); train it with AdamW alone"
        )
    sharded = [g["name"] for g in muon_groups if any(hasattr(p, "device_mesh") for p in g["params"])]
    if sharded:
        raise ValueError(
            f"partition_or_model: groups {sorted(set(sharded))} hold sharded (FSDP2) weights; Muon orthogonalises "
            "a whole matrix, which a rank's shard is not, so the Muon split is refused under FSDP2"
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


def _partition(partition_or_model: Partition | nn.Module, sample_input: Any) -> Partition:
    if isinstance(partition_or_model, Partition):
        return partition_or_model
    if isinstance(partition_or_model, nn.Module):
        return by_layer(partition_or_model, sample_input=sample_input)
    got = type(partition_or_model).__name__
    raise TypeError(f"partition_or_model: expected a Partition or an nn.Module, got {got}")


def _embedding_ids(partition: Partition) -> set[int]:
    """The parameters of embedding tables (their modules known from the groups' slots)."""
    return {
        id(module._parameters[attribute])
        for group in partition
        for module, attribute in group.slots
        if isinstance(module, _EMBEDDINGS)
    }


def split_groups(partition: Partition, conv: Conv) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The split of ``partition``: param-group dicts (``name``, ``depth``) for Muon and for AdamW (biases and
    norms marked ``weight_decay=0``), by the rule of :func:`muon_split`."""
    embeddings = _embedding_ids(partition)
    head = partition.names[-1]
    muon_groups, adamw_groups = [], []
    for group in partition.param_groups(weight_decay=1.0, no_decay=("bias", "norm")):  # 0.0 marks the exempt
        exempt = group.pop("weight_decay") == 0.0
        if exempt:
            adamw_groups.append({**group, "weight_decay": 0.0})
            continue
        hidden = {id(p) for p in group["params"] if _for_muon(p, conv) and group["name"] != head} - embeddings
        rest = [p for p in group["params"] if id(p) not in hidden]
        if hidden:
            muon_groups.append({**group, "params": [p for p in group["params"] if id(p) in hidden]})
        if rest:
            adamw_groups.append({**group, "params": rest})
    return muon_groups, adamw_groups


def _for_muon(param: Tensor, conv: Conv) -> bool:
    return param.ndim == 2 or (param.ndim > 2 and conv == "reshape")
