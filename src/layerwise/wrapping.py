"""Shared plumbing for optimizers that wrap other optimizers (``HiDLR``, ``Multirate``).

They subclass ``torch.optim.Optimizer`` (so schedulers, ``GradScaler`` and hooks accept them) but
keep their parameters in the wrapped optimizers, so ``Optimizer.__init__`` (which would take the
params over) is replaced by :func:`init_hooks`.

Example:
    >>> class Wrapper(torch.optim.Optimizer):
    ...     def __init__(self, inner):
    ...         init_hooks(self, inner.defaults)
    ...         self.inner = inner
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch.optim import Optimizer

__all__ = ["init_hooks"]


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
