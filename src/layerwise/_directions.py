"""The update a base optimizer would make, computed from its state without stepping it.

Hi-DLR needs each group's update direction at learning rate 1 (its group ratio). Stepping the
optimizer and restoring parameters and state works for any optimizer but copies the whole state.
For ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay), ``Adam`` and ``AdamW`` on
their single-tensor path (the one torch takes on CPU, or with ``foreach=False``), this module
repeats torch's arithmetic, op for op, on temporaries: ``param_after - param`` is bitwise what a
step would give, and nothing is written. Other optimizers and options (fused, foreach, amsgrad,
tensor learning rates, complex parameters, ...) report ``None`` from :func:`rule_for`, and the
caller steps and restores.

Examples:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2)); w.grad = torch.full((2,), 0.5)
    >>> opt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> rule = rule_for(opt)
    >>> rule(opt.param_groups[0], w, 1.0)  # the change one step at lr 1 would make
    tensor([-0.5000, -0.5000])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer

from ._shards import local

__all__ = ["rule_for"]

Rule = Callable[[dict[str, Any], Tensor, float], Tensor]
"""``rule(group, param, lr) -> change``: this rank's part of ``param_after - param``."""


def _single_tensor(optimizer: Optimizer) -> bool:
    """Whether every group steps on torch's single-tensor path with plain float hyperparameters."""
    for group in optimizer.param_groups:
        if group.get("fused") or group.get("differentiable") or group.get("capturable"):
            return False
        if group.get("foreach") is None:
            if any(local(p).device.type != "cpu" for p in group["params"]):
                return False  # torch defaults to foreach kernels off the CPU
        elif group["foreach"]:
            return False
        if isinstance(group["lr"], Tensor) or any(torch.is_complex(p) for p in group["params"]):
            return False
        if any(isinstance(beta, Tensor) for beta in group.get("betas", ())):
            return False
    return True


def _gradient(group: dict[str, Any], param: Tensor) -> tuple[Tensor, Tensor | None]:
    """This rank's part of ``param`` and of the gradient the step follows (negated with ``maximize``)."""
    p = local(param).detach()
    if param.grad is None:
        return p, None
    grad = local(param.grad)
    return p, -grad if group["maximize"] else grad


def _sgd(optimizer: Optimizer) -> Rule:
    def change(group: dict[str, Any], param: Tensor, lr: float) -> Tensor:
        p, grad = _gradient(group, param)
        if grad is None:
            return torch.zeros_like(p)  # no gradient: the step leaves it
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        momentum = group["momentum"]
        if momentum != 0:
            buf = optimizer.state.get(param, {}).get("momentum_buffer")
            buf = (
                grad.detach().clone()
                if buf is None
                else local(buf).mul(momentum).add_(grad, alpha=1 - group["dampening"])
            )
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        return p.add(grad, alpha=-lr).sub_(p)

    return change


def _adam(optimizer: Optimizer) -> Rule:
    def change(group: dict[str, Any], param: Tensor, lr: float) -> Tensor:
        p, grad = _gradient(group, param)
        if grad is None:
            return torch.zeros_like(p)
        state = optimizer.state.get(param, {})
        beta1, beta2 = group["betas"]
        step = float(state["step"] + 1) if "step" in state else 1.0  # a float32 count, as torch keeps it
        moved = p
        weight_decay = group["weight_decay"]
        if weight_decay != 0:
            if group.get("decoupled_weight_decay", isinstance(optimizer, AdamW)):
                moved = p.mul(1 - lr * weight_decay)
            else:
                grad = grad.add(p, alpha=weight_decay)
        exp_avg = local(state["exp_avg"]) if "exp_avg" in state else torch.zeros_like(p)
        exp_avg_sq = local(state["exp_avg_sq"]) if "exp_avg_sq" in state else torch.zeros_like(p)
        exp_avg = exp_avg.lerp(grad, 1 - beta1)
        exp_avg_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**step)
        denom = (exp_avg_sq.sqrt() / (1 - beta2**step) ** 0.5).add_(group["eps"])
        return moved.addcdiv(exp_avg, denom, value=-step_size).sub_(p)

    return change


def rule_for(optimizer: Optimizer) -> Rule | None:
    """The no-step update rule of ``optimizer`` (exactly its class SGD, Adam or AdamW, on the
    single-tensor path, without amsgrad), or None: step and restore instead."""
    if not _single_tensor(optimizer):
        return None
    if type(optimizer) is SGD:
        return _sgd(optimizer)
    if type(optimizer) in (Adam, AdamW) and not any(g["amsgrad"] for g in optimizer.param_groups):
        return _adam(optimizer)
    return None
