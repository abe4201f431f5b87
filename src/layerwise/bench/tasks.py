"""Deprecated: moved to ``layerwise.tasks`` (this alias goes in the next release)."""

import warnings

from ..tasks import *  # noqa: F403
from ..tasks import __all__  # noqa: F401

warnings.warn("layerwise.bench.tasks moved to layerwise.tasks", DeprecationWarning, stacklevel=2)
