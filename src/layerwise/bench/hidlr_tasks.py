"""Deprecated: moved to ``layerwise.tasks.hidlr_tasks`` (this alias goes in the next release)."""

import warnings

from ..tasks.hidlr_tasks import *  # noqa: F403
from ..tasks.hidlr_tasks import __all__  # noqa: F401

warnings.warn("layerwise.bench.hidlr_tasks moved to layerwise.tasks.hidlr_tasks", DeprecationWarning, stacklevel=2)
