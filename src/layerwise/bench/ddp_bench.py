"""``layerwise bench ddp``: what freezing and slow parts cost under data parallelism, ``wrap`` vs plain DDP.

Two gloo processes on this machine train an MLP (``depth`` hidden layers of ``width``) in three
phases: every layer trainable; the first two thirds frozen (FreezeOut partway through); only the
head trainable (a Multirate fast step). Each phase is timed with
:func:`layerwise.distributed.wrap` and with the plain alternative that survives freezing,
``DistributedDataParallel(find_unused_parameters=True)`` built at the start, in alternating
rounds (median per step after warm-up), and both count the gradient bytes they all-reduce.
Re-wrapping a plain DDP after each freeze is timed too (its construction broadcasts the model).

Examples:
    >>> run_ddp_bench(quick=True)["phases"]["frozen_prefix"]["speedup"]  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..distributed import counting_allreduce, wrap
from .two_ranks import run_on_two_ranks, two_rank_config

__all__ = ["run_ddp_bench"]

PHASES = ("all_trainable", "frozen_prefix", "head_only")


def _mlp(width: int, depth: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _set_phase(net: nn.Sequential, phase: str, depth: int) -> None:
    linears = [m for m in net if isinstance(m, nn.Linear)]
    trainable = {"all_trainable": len(linears), "frozen_prefix": len(linears) - 2 * depth // 3, "head_only": 1}[phase]
    for index, layer in enumerate(linears):
        layer.requires_grad_(index >= len(linears) - trainable)
        for p in layer.parameters():
            p.grad = None


def _phases(rank: int, config: dict[str, Any]) -> dict[str, Any]:
    width, depth, batch = config["width"], config["depth"], config["batch"]
    net = _mlp(width, depth)
    wrapped = wrap(net)
    plain_counter = {"bytes": 0}
    plain = DistributedDataParallel(net, find_unused_parameters=True)
    plain.register_comm_hook(plain_counter, counting_allreduce)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(batch, width, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def step(model: nn.Module) -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(model: nn.Module, count: int) -> float:
        dist.barrier()
        start = time.perf_counter()
        for _ in range(count):
            step(model)
        dist.barrier()
        return (time.perf_counter() - start) / count

    results: dict[str, Any] = {}
    for phase in PHASES:
        _set_phase(net, phase, depth)
        frozen = [p for p in net.parameters() if not p.requires_grad]
        for model in (wrapped, plain):
            for _ in range(config["warmup"]):
                step(model)
        samples: dict[str, list[float]] = {"wrap": [], "find_unused": []}
        for _ in range(config["repeats"]):
            samples["wrap"].append(timed(wrapped, config["number"]))
            samples["find_unused"].append(timed(plain, config["number"]))
        sent = {}
        for name, model, read in (
            ("wrap", wrapped, lambda: wrapped.bytes_reduced),
            ("find_unused", plain, lambda: plain_counter["bytes"]),
        ):
            before = read()
            step(model)
            sent[name] = read() - before
        frozen_grads = any(p.grad is not None for p in frozen)
        dist.barrier()
        start = time.perf_counter()
        DistributedDataParallel(net)  # what re-wrapping after a freeze costs (it broadcasts the model)
        rewrap_ms = (time.perf_counter() - start) * 1e3
        ms = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
        results[phase] = {
            "step_ms": ms,
            "speedup": ms["find_unused"] / ms["wrap"],
            "bytes_all_reduced_per_step": sent,
            "find_unused_writes_frozen_grads": frozen_grads,
            "rewrap_ms": rewrap_ms,
        }
    return results


def run_ddp_bench(
    quick: bool = False,
    *,
    width: int = 1024,
    depth: int = 6,
    batch: int = 64,
    warmup: int | None = None,
    repeats: int | None = None,
    number: int | None = None,
) -> dict[str, Any]:
    """Step time and all-reduced bytes of ``wrap`` vs ``find_unused_parameters=True`` in each phase."""
    config = two_rank_config(
        quick, width=width, depth=depth, batch=batch, warmup=warmup, repeats=repeats, number=number
    )
    phases = run_on_two_ranks(_phases, config)
    return {"bench": "ddp", "processes": 2, "backend": "gloo", **config, "phases": phases}
