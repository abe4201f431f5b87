"""Shared plumbing for optimizers that wrap other optimizers (``HiDLR``, ``Multirate``), and
:func:`unwrap_optimizer` for the wrappers other libraries hand back (accelerate's ``AcceleratedOptimizer``).

They subclass ``torch.optim.Optimizer`` (so schedulers, ``GradScaler`` and hooks accept them) but
keep their parameters in the wrapped optimizers, so ``Optimizer.__init__`` (which would take the
params over) is replaced by :func:`init_hooks`.

Examples:
    >>> import torch
    >>> class Scaled(torch.optim.Optimizer):
    ...     def __init__(self, inner):
    ...         init_hooks(self, inner.defaults)
    ...         self.inner = inner
    >>> opt = Scaled(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    >>> opt.defaults["lr"]
    0.1
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch.optim import Optimizer

__all__ = ["Wrapper", "init_hooks", "is_step_wrapper", "owns_lr", "unwrap_optimizer"]


def _has_hooks(optimizer: Any) -> bool:
    """A torch ``Optimizer`` with its own step-hook machinery (``Optimizer.__init__`` or :func:`init_hooks` ran)."""
    return isinstance(optimizer, Optimizer) and hasattr(optimizer, "_optimizer_step_pre_hooks")


def is_step_wrapper(optimizer: Any) -> bool:
    """Whether ``optimizer`` only passes its steps on to the torch optimizer it exposes as ``.optimizer``
    (accelerate's ``AcceleratedOptimizer``, Lightning's ``LightningOptimizer``)."""
    return not _has_hooks(optimizer) and _has_hooks(getattr(optimizer, "optimizer", None))


def unwrap_optimizer(optimizer: Any, argument: str = "optimizer") -> Optimizer:
    """The torch optimizer a technique should act on: ``optimizer`` itself, or the one a wrapper exposes.

    Wrappers such as accelerate's ``AcceleratedOptimizer`` or Lightning's ``LightningOptimizer`` pass
    ``param_groups`` and ``step`` through to ``.optimizer`` but lack ``Optimizer``'s hook machinery, so a
    technique registering a step hook on them would fail mid-run. They are unwrapped once; the
    training loop keeps stepping the wrapper, which steps the inner optimizer (and its hooks).
    Raises TypeError, naming ``argument``, for anything else.
    """
    if _has_hooks(optimizer):
        return optimizer
    if is_step_wrapper(optimizer):
        return optimizer.optimizer
    why = " (an Optimizer subclass that never ran Optimizer.__init__)" if isinstance(optimizer, Optimizer) else ""
    raise TypeError(
        f"{argument}: expected a torch.optim.Optimizer, or a wrapper exposing one as .optimizer (such as "
        f"accelerate's AcceleratedOptimizer), got {type(optimizer).__name__}{why}; pass the optimizer it wraps"
    )


def owns_lr(optimizer: Any) -> bool:
    """Whether ``optimizer`` (or the one a wrapper exposes) sets its groups' LRs itself (declares ``owns_lr``,
    as Hi-DLR and SecantLR do), so a trainer must give it a schedule that leaves ``lr`` alone."""
    inner = optimizer if _has_hooks(optimizer) else getattr(optimizer, "optimizer", optimizer)
    return bool(getattr(inner, "owns_lr", False))


def init_hooks(optimizer: Optimizer, defaults: dict[str, Any]) -> None:
    """Give a wrapping optimizer ``Optimizer``'s hook machinery, without its param bookkeeping."""
    optimizer.defaults = defaults
    optimizer._optimizer_step_pre_hooks = OrderedDict()
    optimizer._optimizer_step_post_hooks = OrderedDict()
    optimizer._optimizer_state_dict_pre_hooks = OrderedDict()
    optimizer._optimizer_state_dict_post_hooks = OrderedDict()
    optimizer._optimizer_load_state_dict_pre_hooks = OrderedDict()
    optimizer._optimizer_load_state_dict_post_hooks = OrderedDict()
    optimizer._patch_step_function()


class Wrapper(Optimizer):
    """Base of optimizers that keep their parameters in one wrapped ``self.optimizer``.

    ``param_groups``, ``state`` and ``zero_grad`` are the wrapped optimizer's, so schedulers,
    loggers and ``GradScaler`` see its groups; subclasses call :func:`init_hooks` and set
    ``self.optimizer`` in ``__init__``.
    """

    optimizer: Optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
