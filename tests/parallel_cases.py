"""The training cases the data-parallel tests share (DDP in test_distributed, FSDP2 in test_fsdp).

Each case trains the same small MLP for ``STEPS`` steps; a run with ``world`` ranks gives rank
``r`` its slice of every global batch, so it must equal one process with the global batch.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import torch
from torch import nn

import layerwise
from layerwise import (
    FreezeOut,
    Freezer,
    GradualUnfreezing,
    HiDLR,
    LayerwiseLR,
    Multirate,
    RandomSubsetMultirate,
    SecantLR,
    recipes,
)

STEPS = 9
GLOBAL_BATCH = 16
CASES = ("llr", "freezeout", "unfreezing", "multirate", "subsets", "hidlr", "secant")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a test's process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def batch(step: int, rank: int | None = None, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``, or rank ``rank``'s slice of it."""
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randint(0, 3, (GLOBAL_BATCH,), generator=g)
    if rank is None:
        return x, y
    size = GLOBAL_BATCH // world
    return x[rank * size : (rank + 1) * size], y[rank * size : (rank + 1) * size]


def build(case: str, model: nn.Module, prepare: Callable[[nn.Module], object] | None = None):
    """``(optimizer, technique or None)``; ``prepare(model)`` (e.g. sharding) runs after the
    partition is built and before the optimizer, as a user of FSDP2 does."""
    part = layerwise.by_layer(model, sample_input=torch.zeros(2, 6))
    if prepare is not None:
        prepare(model)
    if case == "llr":
        opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
        return opt, LayerwiseLR(opt, STEPS, schedule=recipes.build("llr", 3, policy=recipes.make_policy("onecycle")))
    if case in ("freezeout", "unused"):
        opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
        return opt, FreezeOut(model, opt, STEPS, t0=0.3, strategy="linear")
    if case == "unfreezing":
        opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
        return opt, GradualUnfreezing(Freezer(model, opt), every=3)
    if case == "multirate":
        return Multirate.from_partition(part, fast=[part.names[-1]], lr=0.3, k=3, momentum=0.9), None
    if case == "subsets":
        layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        chances = {layers[0].weight: 0.5, layers[-1].weight: 0.3}
        return RandomSubsetMultirate(model.parameters(), lr=0.1, k=2, probabilities=chances, momentum=0.9), None
    if case == "hidlr":
        return HiDLR(torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9), update_every=2, clip=(0, 0.5)), None
    if case == "secant":
        return SecantLR(torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9), mode="line", clip=(0, 0.5)), None
    raise ValueError(case)


def take_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One step of the standard loop (with the loss closure Hi-DLR probes)."""
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    if isinstance(opt, HiDLR):
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    else:
        opt.step()
