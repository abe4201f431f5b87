"""Deprecated: moved to ``layerwise.tasks.pretrained_tasks`` (this alias goes in the next release)."""

import warnings

from ..tasks.pretrained_tasks import *  # noqa: F403
from ..tasks.pretrained_tasks import __all__  # noqa: F401

warnings.warn(
    "layerwise.bench.pretrained_tasks moved to layerwise.tasks.pretrained_tasks", DeprecationWarning, stacklevel=2
)
