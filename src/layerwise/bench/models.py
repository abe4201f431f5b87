"""Deprecated: moved to ``layerwise.tasks.models`` (this alias goes in the next release)."""

import warnings

from ..tasks.models import *  # noqa: F403
from ..tasks.models import __all__  # noqa: F401

warnings.warn("layerwise.bench.models moved to layerwise.tasks.models", DeprecationWarning, stacklevel=2)
