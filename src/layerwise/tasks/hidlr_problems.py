"""The Hi-DLR paper's reproduction problems: two 2-D test functions and NAM synthetic regression.

Examples:
    >>> problem = TOYS["ellipse"]
    >>> float(problem.loss(torch.tensor(0.0), torch.tensor(0.0)))
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["NAM", "TOYS", "Toy", "grid", "hidlr_variants", "nam_synthetic_data"]


@dataclass(frozen=True)
class Toy:
    """A 2-D function of (x, y) with the paper's start point and minimiser (App. A.1)."""

    loss: Callable[[Tensor, Tensor], Tensor]
    start: tuple[float, float]
    minimiser: tuple[float, float]


def _ellipse(x: Tensor, y: Tensor) -> Tensor:
    return x**2 + 100 * y**2


def _beale(x: Tensor, y: Tensor) -> Tensor:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _rosenbrock(x: Tensor, y: Tensor) -> Tensor:
    return 100 * (y - x**2) ** 2 + (1 - x) ** 2


def _beale_rosenbrock(x: Tensor, y: Tensor) -> Tensor:
    return _beale(x, torch.full_like(x, 0.5)) + _rosenbrock(torch.ones_like(y), y)


TOYS = {
    "ellipse": Toy(_ellipse, (50.0, 1.0), (0.0, 0.0)),
    "beale-rosenbrock": Toy(_beale_rosenbrock, (4.0, 3.0), (3.0, 1.0)),
}

SHAPES: tuple[Callable[[Tensor], Tensor], ...] = (
    lambda x: 2 * x**2 * torch.tanh(x),
    lambda x: torch.sin(x) * torch.cos(x) + x**2,
    lambda x: 20 / (1 + torch.exp(-5 * torch.sin(x))),
    lambda x: 20 * torch.sin(2 * x) ** 3 - 6 * torch.cos(x) + x**2,
    lambda x: x**3,
    lambda x: x,
)
"""f_1 .. f_6 of App. B.3; features 7 to 10 have no effect."""


def nam_synthetic_data(n: int = 3000, features: int = 10, seed: int = 0, low: float = -2.0, high: float = 2.0):
    """``X`` uniform on ``[low, high]^features`` and ``y = sum_i f_i(X_i) + N(0, 1)`` (App. B.3).

    The paper does not give the distribution of ``X``; uniform on [-2, 2] is this project's choice.
    """
    g = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n, features, generator=g)
    y = sum(f(x[:, i]) for i, f in enumerate(SHAPES)) + torch.randn(n, generator=g)
    return x, y


class NAM(nn.Module):
    """Neural additive model: one MLP per feature plus a bias, ``g(y) = beta + sum_k f_k(x_k)``.

    Parameters are named ``features.<k>.*`` and ``beta``, so one group per sub-network plus the bias
    is ``by_patterns(model, [(r"features\\.(\\d+)\\.", ...)])`` or :meth:`groups`.
    """

    def __init__(self, features: int = 10, hidden: int = 32) -> None:
        super().__init__()
        self.features = nn.ModuleList(
            nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
            for _ in range(features)
        )
        self.beta = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        parts = [net(x[:, k : k + 1]) for k, net in enumerate(self.features)]
        return self.beta + torch.cat(parts, 1).sum(1)

    def groups(self, lr: float) -> list[dict]:
        """K + 1 param groups: the bias ``beta`` first, then one per sub-network."""
        nets = [
            {"params": list(net.parameters()), "name": f"f{k + 1}", "lr": lr} for k, net in enumerate(self.features)
        ]
        return [{"params": [self.beta], "name": "beta", "lr": lr}, *nets]


def grid(start: float, count: int) -> list[float]:
    """The paper's toy grid ``start * 10^(k/2)``, k = 0..count-1 (App. A.1)."""
    return [start * math.pow(10.0, k / 2) for k in range(count)]


def hidlr_variants(phi: int, gamma: float, clip_top: float) -> dict[str, tuple[str, dict]]:
    """Name -> (mode, HiDLR options) of the compared variants: as published, ``eta*`` clipped to
    ``[0, clip_top]``, and clipped with this library's ``joint_scale`` and ``per_group``; and Hi-DLR
    with the paper's anchored fit (``L_j - L_0``, no intercept) beside the default free intercept."""
    paper = {"update_every": phi, "gamma": gamma}
    clip = {**paper, "clip": (0.0, clip_top)}
    return {
        "hi-ulr": ("hi-ulr", paper),
        "hi-dlr": ("hi-dlr", paper),
        "hi-dlr anchored": ("hi-dlr", {**paper, "anchored": True}),
        "hi-ulr clip": ("hi-ulr", clip),
        "hi-dlr clip": ("hi-dlr", clip),
        "hi-dlr clip anchored": ("hi-dlr", {**clip, "anchored": True}),
        "hi-dlr clip+joint+per-group": ("hi-dlr", {**clip, "joint_scale": True, "per_group": True}),
    }
