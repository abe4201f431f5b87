"""Deprecated: moved to ``layerwise.tasks.hidlr_problems`` (this alias goes in the next release)."""

import warnings

from ..tasks.hidlr_problems import *  # noqa: F403
from ..tasks.hidlr_problems import __all__  # noqa: F401

warnings.warn(
    "layerwise.bench.hidlr_problems moved to layerwise.tasks.hidlr_problems", DeprecationWarning, stacklevel=2
)
