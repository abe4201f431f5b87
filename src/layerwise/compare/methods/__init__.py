"""The techniques ``layerwise compare`` trains side by side, each built on a fresh model of a task.

A :class:`Method` turns a :class:`Build` (task, model, partition, step count, global policy) and
its settings into a :class:`Setup`: the optimizer, what is stepped after it, and whether
``optimizer.step`` wants a loss closure. Every method starts from the task's optimizer preset and
learning rate, so methods differ only in how the per-group learning rates move and which parts get
a gradient. Register your own with :func:`register_method`, written with :mod:`.kit`.

Each family file holds its methods' builders, checks, snippets and registry entries, and one
``register_<family>()``; :func:`register_defaults` calls them in the order a comparison runs them.

Examples:
    >>> from layerwise.compare.methods import METHODS, resolve_settings
    >>> resolve_settings("freezeout", {"t0": 0.5})
    {'t0': 0.5, 'strategy': 'cubic', 'scale_lr': True}
    >>> METHODS["freezeout"].description
    'FreezeOut: per-group cosine to zero, earliest groups first, then frozen (out of the backward pass)'
"""

from __future__ import annotations

from .autofreeze import register_autofreeze
from .baselines import register_baselines
from .fine_tuning import register_fine_tuning
from .found_lrs import HIDLR_PROBING, SPLITS, register_found_lrs, two_groups
from .freezeout import register_freezeout
from .kit import (
    METHODS,
    OPTIMIZER_USES,
    Build,
    Method,
    Setup,
    build_setup,
    check_methods,
    checked,
    default_methods,
    method_snippet,
    register_method,
    resolve_settings,
)
from .layer_lrs import register_layer_lrs
from .lisa import register_lisa
from .multirate import register_multirate
from .spectral import register_spectral

__all__ = [
    "HIDLR_PROBING",
    "METHODS",
    "OPTIMIZER_USES",
    "SPLITS",
    "Build",
    "Method",
    "Setup",
    "build_setup",
    "check_methods",
    "checked",
    "default_methods",
    "method_snippet",
    "register_defaults",
    "register_method",
    "resolve_settings",
    "two_groups",
]


def register_defaults() -> None:
    """Register the built-in methods, family by family, in the order a comparison runs them."""
    register_baselines()
    register_fine_tuning()
    register_layer_lrs()
    register_freezeout()
    register_autofreeze()
    register_lisa()
    register_multirate()
    register_found_lrs()
    register_spectral()


register_defaults()
