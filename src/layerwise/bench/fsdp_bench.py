"""``layerwise bench fsdp``: what freezing saves under FSDP2, in communication, memory and time.

Two gloo processes train an MLP (``depth`` hidden layers of ``width``, AdamW, one FSDP block per
layer) in three phases: every layer trainable; the first two thirds frozen by a
:class:`~layerwise.Freezer` (FreezeOut partway through); only the head trainable (a Multirate
fast step or a linear probe). Three ways to shard the same model are timed in alternating
rounds (median per step after warm-up):

* ``fully_shard``: FSDP2 as a user applies it (per layer and at the root), FSDP's defaults;
* ``shard``: :func:`layerwise.fsdp.shard`, whose backward prefetch skips the frozen prefix;
* ``gathered``: ``shard(frozen="gathered")``: frozen blocks stay unsharded, gathered once.

Per phase and way: bytes all-gathered and reduce-scattered per step (the unsharded buffers,
FSDP's padding included), step time, and per-rank bytes of parameter shards, of frozen blocks
kept whole, of gradients and of optimizer state; with frozen blocks none of them may have a
reduce-scatter, a gradient or optimizer state (``frozen_blocks_clean``).

Examples:
    >>> run_fsdp_bench(quick=True)["phases"]["frozen_prefix"]["shard"]["reduce_scatter_bytes"]  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from .. import fsdp
from .._shards import local
from ..freezing import Freezer
from ..groups import by_layer
from .two_ranks import run_on_two_ranks, two_rank_config

__all__ = ["run_fsdp_bench"]

PHASES = ("all_trainable", "frozen_prefix", "head_only")
WAYS = ("fully_shard", "shard", "gathered")


def _mlp(width: int, depth: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Sequential(nn.Linear(width, width), nn.ReLU())]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _sharded(way: str, width: int, depth: int) -> tuple[nn.Module, torch.optim.Optimizer, Freezer, list[list]]:
    net = _mlp(width, depth)
    part = by_layer(net, sample_input=torch.zeros(1, width))
    if way == "fully_shard":
        for block in net:
            fully_shard(block)
        fully_shard(net)
        fsdp.count_collectives(net)
    else:
        fsdp.shard(net, frozen="gathered" if way == "gathered" else "sharded")
    opt = torch.optim.AdamW(part.param_groups(lr=1e-4))
    blocks = [list(block.parameters()) for block in net]  # the shards (kept blocks swap in whole copies)
    return net, opt, Freezer(net, opt), blocks


def _bytes(tensors: Any) -> int:
    return sum(local(t).numel() * local(t).element_size() for t in tensors)


def _memory(blocks: list[list], opt: torch.optim.Optimizer, gathered: bool) -> dict[str, int]:
    shards = [p for block in blocks for p in block]
    states = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    kept = [p for block in blocks if gathered and not any(p.requires_grad for p in block) for p in block]
    whole = sum(p.numel() * p.element_size() for p in kept)
    return {
        "param_shard_bytes": _bytes(shards),
        "kept_whole_bytes": whole,
        "grad_bytes": _bytes(p.grad for p in shards if p.grad is not None),
        "optimizer_state_bytes": _bytes(states),
    }


def _phases(rank: int, config: dict[str, Any]) -> dict[str, Any]:
    width, depth, batch = config["width"], config["depth"], config["batch"]
    runs = {way: _sharded(way, width, depth) for way in WAYS}
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(batch, width, generator=g), torch.randint(0, 10, (batch,), generator=g)

    def step(way: str) -> None:
        net, opt, _, _ = runs[way]
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def timed(way: str, count: int) -> float:
        dist.barrier()
        start = time.perf_counter()
        for _ in range(count):
            step(way)
        dist.barrier()
        return (time.perf_counter() - start) / count

    results: dict[str, Any] = {}
    for phase in PHASES:
        for way in WAYS:
            _, _, freezer, _ = runs[way]
            names = freezer.names
            trainable = {"all_trainable": len(names), "frozen_prefix": len(names) - 2 * depth // 3, "head_only": 1}
            freezer.freeze(*names[: len(names) - trainable[phase]])
            for _ in range(config["warmup"]):
                step(way)
        samples: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(config["repeats"]):
            for way in WAYS:
                samples[way].append(timed(way, config["number"]))
        results[phase] = {}
        for way in WAYS:
            net, opt, _, blocks = runs[way]
            before = fsdp.comm_bytes(net)
            step(way)
            after = fsdp.comm_bytes(net)
            frozen = [p for block in blocks for p in block if not p.requires_grad]
            results[phase][way] = {
                "step_ms": statistics.median(samples[way]) * 1e3,
                "all_gather_bytes": after["all_gather"] - before["all_gather"],
                "reduce_scatter_bytes": after["reduce_scatter"] - before["reduce_scatter"],
                **_memory(blocks, opt, way == "gathered"),
                "frozen_blocks_clean": all(p.grad is None and p not in opt.state for p in frozen),
            }
        base = results[phase]["fully_shard"]["step_ms"]
        for way in WAYS:
            results[phase][way]["speedup_vs_fully_shard"] = base / results[phase][way]["step_ms"]
    return results


def run_fsdp_bench(
    quick: bool = False,
    *,
    width: int = 1024,
    depth: int = 6,
    batch: int = 64,
    warmup: int | None = None,
    repeats: int | None = None,
    number: int | None = None,
) -> dict[str, Any]:
    """Communication, memory and step time of the three ways to shard, in each phase (2 gloo processes)."""
    quick_width = 256 if quick and width == 1024 else width
    config = two_rank_config(
        quick, width=quick_width, depth=depth, batch=batch, warmup=warmup, repeats=repeats, number=number
    )
    phases = run_on_two_ranks(_phases, config)
    return {"bench": "fsdp", "processes": 2, "backend": "gloo", "optimizer": "AdamW", **config, "phases": phases}
