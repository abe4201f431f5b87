"""Shared plumbing for optimizers that wrap other optimizers (``HiDLR``, ``Multirate``).

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

__all__ = ["Wrapper", "init_hooks"]


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
