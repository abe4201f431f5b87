"""Deprecated: moved to ``layerwise.tasks.lora`` (this alias goes in the next release)."""

import warnings

from ..tasks.lora import *  # noqa: F403
from ..tasks.lora import __all__  # noqa: F401

warnings.warn("layerwise.bench.lora moved to layerwise.tasks.lora", DeprecationWarning, stacklevel=2)
