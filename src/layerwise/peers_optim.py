"""LAMB (You et al. 2019), the layer-wise trust-ratio Adam that ``layerwise compare``'s ``lamb`` peer runs.

Written against the paper's Algorithm 2 (arXiv:1904.00962, the published version): per parameter
tensor (a "layer"), Adam's bias-corrected moments give the update direction
``r = m_hat / (sqrt(v_hat) + eps) + weight_decay * w`` and the step is
``w -= lr * (||w|| / ||r||) * r`` (the trust ratio is 1 when either norm is 0; the paper's scaling
function phi is the identity). pytorch-optimizer's ``Lamb`` follows the paper's v3 instead (no bias
correction, decoupled decay, ``||w||`` clamped at 10), so the peer uses this one.

Examples:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> opt = Lamb([w], lr=0.1)
    >>> w.grad = torch.tensor([1.0, 1.0]); opt.step()
    >>> [round(v, 4) for v in w.tolist()]  # ||w|| = 5, r = (1, 1) up to eps: each moves 0.1 * 5 / sqrt(2)
    [2.6464, 3.6464]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from ._checks import finite_nonneg, unit_interval

__all__ = ["Lamb"]


class Lamb(Optimizer):
    """LAMB: Adam moments, one trust ratio ``||w|| / ||r||`` per parameter tensor.

    Args:
        lr: the step size relative to each tensor's norm (the update's norm is ``lr * ||w||``).
        betas: Adam's moment coefficients.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: added to the update direction (``+ weight_decay * w``), inside the trust ratio.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        finite_nonneg("lr", lr)
        for index, beta in enumerate(betas):
            unit_interval(f"betas[{index}]", beta)
        finite_nonneg("eps", eps)
        finite_nonneg("weight_decay", weight_decay)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        grad, t = param.grad, state["step"]
        state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1**t)
        v_hat = state["exp_avg_sq"] / (1 - beta2**t)
        update = m_hat / (v_hat.sqrt() + group["eps"])
        if group["weight_decay"]:
            update.add_(param, alpha=group["weight_decay"])
        w_norm, r_norm = param.norm(), update.norm()
        trust = torch.where((w_norm > 0) & (r_norm > 0), w_norm / r_norm, torch.ones_like(w_norm))
        param.sub_(update * (group["lr"] * trust))
