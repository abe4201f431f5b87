"""Deprecated: moved to ``layerwise.tasks.fashion_mnist`` (this alias goes in the next release)."""

import warnings

from ..tasks.fashion_mnist import *  # noqa: F403
from ..tasks.fashion_mnist import __all__  # noqa: F401

warnings.warn("layerwise.bench.fashion_mnist moved to layerwise.tasks.fashion_mnist", DeprecationWarning, stacklevel=2)
