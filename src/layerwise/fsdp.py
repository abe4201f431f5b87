"""Sharded data parallelism (FSDP2, ``fully_shard``) with layers that freeze, unfreeze or go slow.

PyTorch's FSDP2 shards every parameter as a ``DTensor`` and, unlike FSDP1's flat parameters,
allows ``requires_grad`` to differ between parameters and to change during training. On top of it:

* every technique works on the sharded model: their in-place arithmetic uses each rank's
  shards, their per-group sums (SecantLR's secants, LayerMonitor's norms) are summed over the
  shards, and Hi-DLR averages its probe losses over the ranks, so every rank sets the same LRs;
* a frozen block costs no reduce-scatter, holds no gradient and no optimizer state (the
  ``Freezer`` pops it); Multirate's slow part is reduce-scattered on refresh steps only;
* :func:`shard` applies ``fully_shard`` per block and at the root and counts the bytes every
  collective moves (:func:`comm_bytes`); ``frozen="gathered"`` keeps frozen blocks unsharded so
  they are not all-gathered again on every step (memory traded for communication);
* :func:`save` / :func:`load` write model, optimizer and technique states with
  ``torch.distributed.checkpoint``: each rank writes its shards, and a checkpoint loads into
  another world size (DCP reshards), into a 1-process run too.

A partition may be built before or after sharding (:attr:`layerwise.groups.Group.params` reads the
parameters from their modules, so it gives the sharded ones); the optimizer and the techniques are
built after it (one built before holds the replaced tensors: Multirate refuses it when it steps).

Examples:
    >>> import tempfile, torch, torch.distributed as dist, layerwise
    >>> dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> x, y = torch.randn(16, 4), torch.randn(16, 1)
    >>> part = layerwise.by_layer(net, sample_input=x)
    >>> model = layerwise.fsdp.shard(net)  # fully_shard on each Linear and on the root
    >>> opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
    >>> freezeout = layerwise.FreezeOut(net, opt, total_steps=4, t0=0.5)
    >>> for _ in range(4):  # the usual loop, on every rank
    ...     opt.zero_grad(); torch.nn.functional.mse_loss(model(x), y).backward(); opt.step(); freezeout.step()
    >>> sorted(layerwise.fsdp.comm_bytes(model))
    ['all_gather', 'reduce_scatter']
    >>> path = tempfile.mkdtemp()
    >>> layerwise.fsdp.save(path, model, opt, freezeout=freezeout)
    >>> layerwise.fsdp.load(path, model, opt, freezeout=freezeout)
    >>> dist.destroy_process_group()
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel, fully_shard

try:  # FSDP2's custom-collective interface (torch >= 2.9); without it, collectives are not counted
    from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter
except ImportError:  # pragma: no cover - older torch (e.g. a GPU machine's own build)
    AllGather = ReduceScatter = object  # type: ignore[assignment,misc]
from torch.distributed.tensor import DTensor, Shard

from ._checks import one_of
from .state_check import STAMP_KEYS, check_optimizer_state, check_state

__all__ = ["FROZEN", "comm_bytes", "count_collectives", "load", "save", "shard"]

FROZEN = ("sharded", "gathered")
"""What :func:`shard` does with a block whose parameters are all frozen: ``"sharded"`` (FSDP's
default: all-gathered before every forward, freed after) or ``"gathered"`` (all-gathered once
and kept whole while it stays frozen: no communication, the block's full size in memory)."""

_COUNTERS: weakref.WeakKeyDictionary[nn.Module, dict[str, int]] = weakref.WeakKeyDictionary()


class _CountingAllGather(AllGather):
    """FSDP's all-gather, adding the gathered (unsharded) buffer's bytes to a counter."""

    def __init__(self, counter: dict[str, int]) -> None:
        self.counter = counter

    def allocate(self, size: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: Tensor, input_tensor: Tensor, group: dist.ProcessGroup, async_op: bool = False):
        self.counter["all_gather"] += output_tensor.numel() * output_tensor.element_size()
        return dist.all_gather_single(output_tensor, input_tensor, group=group, async_op=async_op)


class _CountingReduceScatter(ReduceScatter):
    """FSDP's reduce-scatter, adding the reduced (unsharded) gradient buffer's bytes to a counter."""

    def __init__(self, counter: dict[str, int]) -> None:
        self.counter = counter

    def allocate(self, size: Sequence[int], *, dtype: torch.dtype, device: torch.device) -> Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: Tensor, input_tensor: Tensor, group: dist.ProcessGroup, op: Any, async_op=False):
        self.counter["reduce_scatter"] += input_tensor.numel() * input_tensor.element_size()
        return dist.reduce_scatter_single(
            output=output_tensor, input=input_tensor, group=group, op=op, async_op=async_op
        )


def _blocks(model: nn.Module, blocks: Iterable[str | nn.Module] | None) -> list[nn.Module]:
    if blocks is None:  # each child that holds parameters
        return [child for child in model.children() if any(True for _ in child.parameters())]
    by_name = dict(model.named_modules())
    chosen = []
    for block in blocks:
        if isinstance(block, str):
            if block not in by_name or block == "":
                raise ValueError(f"blocks: no submodule named {block!r}; e.g. {[n for n in by_name if n][:6]}")
            block = by_name[block]
        if not isinstance(block, nn.Module) or not any(block is m for m in by_name.values()) or block is model:
            raise ValueError("blocks: expected names or submodules of model (not the model itself)")
        chosen.append(block)
    return chosen


def shard(
    model: nn.Module,
    *,
    blocks: Iterable[str | nn.Module] | None = None,
    frozen: Literal["sharded", "gathered"] = "sharded",
    **fsdp_options: Any,
) -> nn.Module:
    """``fully_shard`` every block of ``model`` and its root, in place; returns ``model``.

    Args:
        model: the plain model, on every rank (call after ``init_process_group``).
        blocks: the units of sharding, names or submodules in data-flow order (a transformer's
            layers, a ResNet's stages); default: each child of the root that has parameters.
            Freezing saves communication per block, so a block should not straddle a freeze
            boundary.
        frozen: one of :data:`FROZEN`.
        **fsdp_options: passed to every ``fully_shard`` call (``mesh``, ``mp_policy``, ...).

    Every FSDP module counts the bytes its all-gathers and reduce-scatters move
    (:func:`comm_bytes`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, FullyShardedDataParallel) or any(
        isinstance(m, FullyShardedDataParallel) for m in model.modules()
    ):
        raise TypeError(
            "model: wrapped in FSDP1's FullyShardedDataParallel, whose flat parameters merge layers; "
            "pass the plain model (layerwise.fsdp.shard applies FSDP2's fully_shard)"
        )
    if isinstance(model, FSDPModule):
        raise TypeError("model: already sharded (fully_shard was called on it); pass the plain model")
    one_of("frozen", frozen, FROZEN)
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("shard: call torch.distributed.init_process_group first")
    units = _blocks(model, blocks)
    for unit in units:
        fully_shard(unit, **fsdp_options)
    fully_shard(model, **fsdp_options)
    count_collectives(model)
    model.register_forward_pre_hook(_FollowTrainable(units, keep_frozen=frozen == "gathered"), prepend=True)
    return model


class _FollowTrainable:
    """A forward pre-hook on the root that fits FSDP's schedule to what trains now.

    * Backward prefetch: FSDP all-gathers, during the backward of block i, block i - 1 (the
      next one backward usually needs). Backward stops at the first trainable block, so block
      i - 1 is prefetched only if it or a block before it trains; otherwise block i "prefetches"
      itself, which FSDP skips, and a frozen prefix is all-gathered once per step, not twice.
    * ``frozen="gathered"``: frozen blocks stay unsharded after their forward and backward (one
      all-gather while they stay frozen); a block that trains again is resharded, as FSDP does.
    """

    def __init__(self, units: list[nn.Module], keep_frozen: bool) -> None:
        self.units = units
        self.params = [list(unit.parameters()) for unit in units]  # the sharded ones: a kept block's
        self.keep_frozen = keep_frozen  # module attributes hold unsharded copies, whose flags do not follow
        self.kept: set[int] = set()
        self.signature: tuple[bool, ...] | None = None

    def __call__(self, _module: nn.Module, _args: Any) -> None:
        trains = tuple(any(p.requires_grad for p in params) for params in self.params)
        if trains == self.signature:
            return
        self.signature = trains
        for i, unit in enumerate(self.units):
            needed = i > 0 and any(trains[:i])
            unit.set_modules_to_backward_prefetch([self.units[i - 1] if needed else unit])  # type: ignore[operator]
            if self.keep_frozen:
                self._keep(unit, frozen=not trains[i])

    def _keep(self, unit: nn.Module, frozen: bool) -> None:
        if frozen == (id(unit) in self.kept):
            return
        unit.set_reshard_after_forward(not frozen, recurse=False)  # type: ignore[operator]
        unit.set_reshard_after_backward(not frozen, recurse=False)  # type: ignore[operator]
        if frozen:
            self.kept.add(id(unit))
        else:  # the whole copy is stale once the block trains: FSDP gathers it again
            self.kept.discard(id(unit))
            unit.reshard()  # type: ignore[operator]


def count_collectives(model: nn.Module) -> None:
    """Count the bytes of every all-gather and reduce-scatter of a ``fully_shard``-ed ``model``
    (:func:`shard` does this; call it on a model you sharded yourself), read by :func:`comm_bytes`."""
    if AllGather is object:
        raise RuntimeError(
            f"count_collectives: needs FSDP2's custom collectives (torch >= 2.9), not {torch.__version__}"
        )
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not modules:
        raise ValueError("model: has no FSDP2 module (call fully_shard or layerwise.fsdp.shard first)")
    counter = {"all_gather": 0, "reduce_scatter": 0}
    _COUNTERS[model] = counter
    for module in modules:
        module.set_custom_all_gather(_CountingAllGather(counter))
        module.set_custom_reduce_scatter(_CountingReduceScatter(counter))


def comm_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes this rank's all-gathers and reduce-scatters moved so far (the unsharded buffers' sizes),
    for a model sharded by :func:`shard`: ``{"all_gather": ..., "reduce_scatter": ...}``."""
    if model not in _COUNTERS:
        raise ValueError("model: not sharded by layerwise.fsdp.shard, so its collectives are not counted")
    return dict(_COUNTERS[model])


# ----------------------------------------------------------------------------- checkpoints


def _describe(value: Any) -> Any:
    """A JSON-able layout of a state: containers kept, tensors as shape, dtype and shard dim."""
    if isinstance(value, Mapping):
        return {"dict": [[_key(k), _describe(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [_describe(v) for v in value]}
    if isinstance(value, Tensor):
        dim = None
        if isinstance(value, DTensor):
            dims = [p.dim for p in value.placements if isinstance(p, Shard)]
            dim = dims[0] if dims else None
        return {"tensor": [list(value.shape), str(value.dtype).removeprefix("torch."), dim]}
    return {"value": None}


def _key(key: Any) -> list:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"state: keys must be str or int, got {type(key).__name__}")
    return ["int" if isinstance(key, int) else "str", key]


def _plain(value: Any) -> Any:
    """``value`` as DCP stores it: string keys, lists for tuples (DCP keeps tuples whole)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _template(layout: Any, mesh: Any) -> Any:
    """Empty tensors (sharded on ``mesh`` where the saved ones were) in the saved structure."""
    if "dict" in layout:
        return {str(k): _template(v, mesh) for (_, k), v in layout["dict"]}
    for kind in ("list", "tuple"):
        if kind in layout:
            return [_template(v, mesh) for v in layout[kind]]
    if "tensor" in layout:
        shape, dtype, dim = layout["tensor"]
        dtype = getattr(torch, dtype)
        if dim is not None and mesh is not None:
            return torch.distributed.tensor.empty(*shape, dtype=dtype, device_mesh=mesh, placements=[Shard(dim)])
        return torch.empty(*shape, dtype=dtype)
    return None


def _restore(layout: Any, value: Any) -> Any:
    """The loaded ``value`` back in the saved structure (int keys, tuples)."""
    if "dict" in layout:
        return {(int(k) if kind == "int" else k): _restore(v, value[str(k)]) for (kind, k), v in layout["dict"]}
    if "list" in layout:
        return [_restore(v, x) for v, x in zip(layout["list"], value)]
    if "tuple" in layout:
        return tuple(_restore(v, x) for v, x in zip(layout["tuple"], value))
    return value


def _mesh(model: nn.Module) -> Any:
    for p in model.parameters():
        if isinstance(p, DTensor):
            return p.device_mesh
    return None


def _states(optimizer: torch.optim.Optimizer, techniques: Mapping[str, Any]) -> dict[str, Any]:
    for name, technique in techniques.items():
        if not callable(getattr(technique, "state_dict", None)) or not callable(
            getattr(technique, "load_state_dict", None)
        ):
            raise TypeError(f"{name}: expected an object with state_dict() and load_state_dict()")
    return {"optimizer": optimizer, **techniques}


def save(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, **techniques: Any) -> None:
    """Write a checkpoint of ``model``, ``optimizer`` and each named technique (anything with
    ``state_dict``) with ``torch.distributed.checkpoint``; every rank calls it, each writes its shards.

    ``optimizer`` is the one the loop steps (a HiDLR or Multirate wrapper included); its
    ``state_dict`` is saved as it is, DTensors sharded, so the checkpoint reshards on load.
    A failed write raises ``ValueError`` naming ``path``, the same on every rank.
    """
    objects = _states(optimizer, techniques)
    for module in model.modules():  # blocks kept gathered (frozen="gathered") register their shards again
        if isinstance(module, FSDPModule):
            module.reshard()
    states = {name: obj.state_dict() for name, obj in objects.items()}
    layout = {name: _describe(state) for name, state in states.items()}
    saved = {"model": get_model_state_dict(model), "states": _plain(states), "layout": json.dumps(layout)}
    with _checkpoint_errors(path, "write"):
        dcp.save(saved, checkpoint_id=path)


def load(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, **techniques: Any) -> None:
    """Load a :func:`save` checkpoint into ``model``, ``optimizer`` and the same named techniques,
    at this run's world size (sharded or not).

    Every state is read and checked first (its ``check_state_dict``, else the technique, groups and
    settings it was saved with, and a plain optimizer's parameter counts and shapes); a mismatch
    raises ``ValueError`` naming the argument before the model or any state changes. Then the model
    loads, the optimizer, and the techniques in the order given. A missing checkpoint raises
    ``FileNotFoundError`` and an unreadable one ``ValueError``, naming ``path``, the same on every rank.
    """
    objects = _states(optimizer, techniques)
    _require_checkpoint(path)
    head = {"layout": ""}
    with _checkpoint_errors(path, "read"):
        dcp.load(head, checkpoint_id=path)
    layout = json.loads(head["layout"])
    missing = sorted(set(objects) - set(layout))
    if missing:
        raise ValueError(f"techniques: {missing} not in the checkpoint, which holds {sorted(layout)}")
    mesh = _mesh(model)
    target = {"states": {name: _template(layout[name], mesh) for name in objects}}
    with _checkpoint_errors(path, "read"):
        dcp.load(target, checkpoint_id=path)
    states = {name: _restore(layout[name], target["states"][name]) for name in objects}
    for name, obj in objects.items():
        _check_loadable(name, obj, states[name])
    weights = {"model": get_model_state_dict(model)}  # DCP reads into the model's own tensors
    with _checkpoint_errors(path, "read"):
        dcp.load(weights, checkpoint_id=path)
    set_model_state_dict(model, weights["model"])
    for name, obj in objects.items():
        obj.load_state_dict(states[name])


def _check_loadable(name: str, obj: Any, state: Any) -> None:
    """Raise unless ``state`` loads into ``obj`` (the keyword ``name``), changing nothing: its own
    ``check_state_dict`` when it has one, else the identity its ``state_dict`` is stamped with, else
    (a torch optimizer) the saved groups' parameter counts and shapes."""
    try:
        check = getattr(obj, "check_state_dict", None)
        if callable(check):
            check(state)
            return
        current = obj.state_dict()
        if isinstance(current, Mapping) and "technique" in current:
            check_state(state, {key: current.get(key) for key in STAMP_KEYS})
        elif isinstance(obj, torch.optim.Optimizer):
            check_optimizer_state(obj, state, "state_dict")
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}; nothing was loaded (the model and every state are as they were)") from err


def _require_checkpoint(path: str) -> None:
    """``FileNotFoundError`` on every rank when rank 0 finds no checkpoint metadata in a local ``path``,
    raised before DCP, which would log a traceback from every rank (URLs are left to DCP)."""
    if "://" in str(path):
        return
    found = os.path.isdir(path) and any(name.endswith(".metadata") for name in os.listdir(path))
    if dist.is_available() and dist.is_initialized():
        verdict = [found]
        dist.broadcast_object_list(verdict, src=0)  # the ranks agree, so none waits in a collective alone
        found = verdict[0]
    if not found:
        raise FileNotFoundError(_NO_CHECKPOINT.format(path=path))


_NO_CHECKPOINT = "path: no checkpoint at {path!r} (layerwise.fsdp.save writes a directory with a .metadata file)"


@contextlib.contextmanager
def _checkpoint_errors(path: str, action: str) -> Iterator[None]:
    """torch's ``CheckpointException`` (a ``BaseException`` holding every rank's traceback) as one
    ``FileNotFoundError`` (nothing at ``path``) or ``ValueError`` naming ``path``, raised on every rank."""
    try:
        yield
    except CheckpointException as err:
        ranks = sorted(err.failures)
        cause = err.failures[ranks[0]][0]  # (exception, stack summary) per failed rank
        text = f"{type(cause).__name__}: {cause}"
        if action == "read" and (isinstance(cause, FileNotFoundError) or "No such file or directory" in text):
            raise FileNotFoundError(_NO_CHECKPOINT.format(path=path)) from None
        raise ValueError(f"path: could not {action} the checkpoint {path!r} (ranks {ranks}): {text}") from None
