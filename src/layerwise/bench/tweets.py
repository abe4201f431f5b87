"""Deprecated: moved to ``layerwise.tasks.tweets`` (this alias goes in the next release)."""

import warnings

from ..tasks.tweets import *  # noqa: F403
from ..tasks.tweets import __all__  # noqa: F401

warnings.warn("layerwise.bench.tweets moved to layerwise.tasks.tweets", DeprecationWarning, stacklevel=2)
