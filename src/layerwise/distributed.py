"""Data-parallel training that follows ``requires_grad``: freezing and Multirate under DDP.

``DistributedDataParallel`` registers the parameters that require grad when it is built and
expects a gradient for every one of them in every backward. Freezing (FreezeOut, gradual
unfreezing) and Multirate change that set during training, which makes a plain DDP either fail
("Expected to have finished reduction") or, with ``find_unused_parameters=True``, keep
all-reducing zero gradients for the frozen or slow parameters.

:func:`wrap` returns a module that keeps one DDP per set of trainable parameters, built the first
time the set occurs (``init_sync=False``: the parameters are already equal on every rank) and
reused after: a FreezeOut run builds one per freeze event, a Multirate run two (fast steps, slow
steps). Each all-reduces exactly the parameters that require grad, so frozen and slow parameters
cost no communication; :attr:`DistributedModel.bytes_reduced` counts what was sent. Forward
passes without grad (evaluation, Hi-DLR's probes) run the module directly.

Examples:
    >>> import tempfile, torch, torch.distributed as dist, layerwise
    >>> dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> x, y = torch.randn(16, 4), torch.randn(16, 1)
    >>> model = layerwise.distributed.wrap(net)  # instead of DistributedDataParallel(net)
    >>> opt = layerwise.Multirate.from_partition(layerwise.by_head(net, sample_input=x), lr=0.1, k=4)
    >>> for _ in range(4):  # the usual loop, on every rank
    ...     opt.zero_grad(); torch.nn.functional.mse_loss(model(x), y).backward(); opt.step()
    >>> model.replicas   # one DDP for the fast steps, one for the slow steps
    2
    >>> dist.destroy_process_group()
"""

from __future__ import annotations

import gc
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistributedModel", "counting_allreduce", "leave_group", "wrap"]


def counting_allreduce(counter, bucket):  # no annotations: DDP checks them, and they would be strings here
    """A DDP comm hook: the default all-reduce, adding the bucket's bytes to ``counter["bytes"]``.

    Examples:
        >>> ddp.register_comm_hook({"bytes": 0}, counting_allreduce)  # doctest: +SKIP
    """
    buffer = bucket.buffer()
    counter["bytes"] += buffer.numel() * buffer.element_size()
    return allreduce_hook(None, bucket)


class DistributedModel(nn.Module):
    """``module`` data-parallel over the default process group, one DDP per trainable set.

    ``ddp_options`` go to every DDP. Freezing and Multirate need no ``find_unused_parameters``
    (each DDP reduces exactly the parameters that require grad); pass it when the model itself
    has parameters that require grad but some forward passes do not use (a skipped branch).

    ``state_dict`` and attribute access are the wrapped module's (as with ``DDP.module``).
    """

    def __init__(self, module: nn.Module, **ddp_options: Any) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        if isinstance(module, (DistributedDataParallel, DistributedModel)):
            raise TypeError("module: already data-parallel; wrap the plain model")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("wrap: call torch.distributed.init_process_group first")
        super().__init__()
        self.module = module
        self._options = ddp_options
        self._params = list(module.parameters())
        self._replicas: dict[tuple[bool, ...], DistributedDataParallel] = {}
        self._sent = {"bytes": 0}
        for p in self._params:  # one initial sync of every parameter and buffer from rank 0
            dist.broadcast(p.data, 0)
        for b in module.buffers():
            dist.broadcast(b.data, 0)

    @property
    def replicas(self) -> int:
        """How many DDP wrappers (trainable sets) were built so far."""
        return len(self._replicas)

    @property
    def bytes_reduced(self) -> int:
        """Bytes of gradient buckets all-reduced so far by this rank."""
        return self._sent["bytes"]

    def _replica(self, signature: tuple[bool, ...]) -> DistributedDataParallel:
        replica = self._replicas.get(signature)
        if replica is None:
            replica = DistributedDataParallel(self.module, init_sync=False, **self._options)
            replica.register_comm_hook(self._sent, counting_allreduce)
            self._replicas[signature] = replica
        return replica

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        signature = tuple(p.requires_grad for p in self._params)
        if not torch.is_grad_enabled() or not any(signature):
            return self.module(*args, **kwargs)
        replica = self._replica(signature)
        replica.training = self.training  # the flag only: frozen modules keep their inference mode
        return replica(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


def leave_group() -> None:
    """Leave the default process group cleanly: free what still holds it (DDP reducers, FSDP
    modules), wait for every rank, then destroy it. A rank that exits while another still uses
    the group, or while such objects hold it, can abort in gloo's teardown ("terminate called
    without an active exception").

    Examples:
        >>> leave_group()  # doctest: +SKIP
    """
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def wrap(module: nn.Module, **ddp_options: Any) -> DistributedModel:
    """Data-parallel ``module`` that stays correct when layers freeze or parts go slow (see module docs)."""
    return DistributedModel(module, **ddp_options)
