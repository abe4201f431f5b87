"""Local shards and global sums of parameters that may be sharded (FSDP2's DTensors).

Under ``fully_shard`` every parameter is a ``DTensor`` whose rank-local piece is a slice of the
full tensor. The techniques' in-place arithmetic (Hi-DLR's probes, Multirate's drift) works on
those local pieces, and per-group reductions (dot products, norms) sum the local parts over the
shards' process group, so every rank sees the global value. On plain tensors every function here
is the identity, so single-process and DDP runs are unchanged.

Examples:
    >>> import torch
    >>> local_all([torch.ones(2)])[0]
    tensor([1., 1.])
    >>> float(global_sums(torch.tensor([3.0]), [torch.ones(2)], "demo")[0])
    3.0
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.fsdp import FlatParameter, FSDPModule
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

__all__ = [
    "check_current",
    "global_sums",
    "local",
    "local_all",
    "local_like",
    "refuse_flat_parameters",
    "shaped_like",
    "shard_group",
    "unsharded_names",
]


def local(tensor: Tensor) -> Tensor:
    """The rank-local piece of a DTensor (a view: writing it writes the parameter); else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_all(tensors: Iterable[Tensor]) -> list[Tensor]:
    """:func:`local` of each tensor."""
    return [local(t) for t in tensors]


def shaped_like(param: Tensor, piece: Tensor) -> Tensor:
    """``piece`` (this rank's part of a tensor shaped like ``param``) as a tensor laid out like
    ``param``: a DTensor on ``param``'s mesh when ``param`` is one, so checkpoints hold the whole
    tensor (``torch.distributed.checkpoint`` saves each shard once and reshards on load)."""
    if not isinstance(param, DTensor):
        return piece
    return DTensor.from_local(
        piece, param.device_mesh, param.placements, shape=param.shape, stride=param.stride(), run_check=False
    )


def local_like(value: Tensor, param: Tensor) -> Tensor:
    """The part of ``value`` (a tensor shaped like ``param``, sharded or whole) that this rank holds
    of ``param``, on ``param``'s device and dtype. Whole into sharded scatters (a collective)."""
    if isinstance(value, DTensor) and not isinstance(param, DTensor):
        value = value.full_tensor()
    elif isinstance(param, DTensor) and not isinstance(value, DTensor):
        value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    elif isinstance(param, DTensor) and (value.device_mesh, value.placements) != (param.device_mesh, param.placements):
        value = value.redistribute(param.device_mesh, param.placements)
    target = local(param)
    return local(value).to(device=target.device, dtype=target.dtype)


def shard_group(params: Sequence[Tensor], what: str) -> dist.ProcessGroup | None:
    """The process group over which ``params``' shards are spread; None for unsharded tensors.

    Raises ``ValueError`` naming ``what`` when the parameters mix sharded and unsharded tensors,
    or DTensors on different device meshes: their local sums could not be reduced as one.
    """
    meshes = []
    plain = 0
    for p in params:
        if isinstance(p, DTensor):
            if p.device_mesh not in meshes:
                meshes.append(p.device_mesh)
        else:
            plain += 1
    if not meshes:
        return None
    if len(meshes) > 1:
        raise ValueError(
            f"{what}: mixes DTensors from {len(meshes)} different device meshes; a group's parameters must be "
            "sharded over one mesh (fully_shard the model with one mesh)"
        )
    if plain:
        raise ValueError(
            f"{what}: mixes sharded (DTensor) and unsharded parameters; fully_shard the model's root too, "
            "so every parameter is sharded"
        )
    mesh = meshes[0]
    placements = {p.placements for p in params}  # type: ignore[union-attr]
    if len(placements) > 1 or mesh.ndim != 1 or not all(isinstance(x, Shard) for x in next(iter(placements))):
        raise ValueError(f"{what}: expects parameters sharded on a 1-D mesh (fully_shard); got {placements}")
    return mesh.get_group()


def global_sums(values: Tensor, params: Sequence[Tensor], what: str) -> Tensor:
    """``values`` (sums over the local shards of ``params``) summed over the shards' ranks.

    A no-op when ``params`` are plain tensors (each rank already holds them whole).
    """
    group = shard_group(params, what)
    if group is None:
        return values
    values = values.clone()
    dist.all_reduce(values, group=group)
    return values


def check_current(params: Iterable[Tensor], what: str) -> None:
    """``ValueError`` naming ``what`` when ``params`` hold tensors that ``fully_shard`` has replaced.

    FSDP2 registers a new sharded parameter in place of each one it takes and tags the one it took;
    an optimizer or technique built before sharding holds the tagged ones, which the model no longer
    uses: they get no gradient and never move. One attribute look-up per tensor (about 40 us for 300
    tensors), so cheap enough to call on every step. (A torch release that does not tag them gets no detection.)
    """
    if any(hasattr(p, "_fsdp_orig_uid") for p in params):
        raise ValueError(
            f"{what}: holds parameters that fully_shard has replaced (it was built before the model was "
            "sharded, so it would step tensors the model no longer uses); build the optimizer and the technique "
            "after layerwise.fsdp.shard / fully_shard"
        )


def refuse_flat_parameters(params: Iterable[Tensor], argument: str) -> None:
    """``TypeError`` for FSDP1's flat parameters, which merge layers that layerwise must tell apart."""
    if any(isinstance(p, FlatParameter) for p in params):
        raise TypeError(
            f"{argument}: holds FSDP1 FlatParameters (FullyShardedDataParallel), which merge a block's layers into "
            "one tensor; use FSDP2 instead: torch.distributed.fsdp.fully_shard, or layerwise.fsdp.shard(model)"
        )


def unsharded_names(model: nn.Module) -> dict[int, str]:
    """``{id(tensor): parameter name}`` for the unsharded tensors FSDP2 passes to the ops in a forward.

    FSDP2 swaps each sharded parameter for an unsharded one during its module's forward, the same
    tensor object on every forward, so a traced forward pass recognises it by identity. Each
    FSDP module is unsharded for a moment (a collective: every rank calls this) and resharded.
    Empty for a model without FSDP2 modules.
    """
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not sharded:
        return {}
    for module in sharded:
        module.unshard()
    names = {id(p): name for name, p in model.named_parameters()}
    for module in sharded:
        module.reshard()
    return names
