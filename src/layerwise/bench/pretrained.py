"""Deprecated: moved to ``layerwise.tasks.pretrained`` (this alias goes in the next release)."""

import warnings

from ..tasks.pretrained import *  # noqa: F403
from ..tasks.pretrained import __all__  # noqa: F401

warnings.warn("layerwise.bench.pretrained moved to layerwise.tasks.pretrained", DeprecationWarning, stacklevel=2)
