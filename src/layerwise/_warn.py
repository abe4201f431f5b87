"""Warnings at the user's line: :func:`warn` points a warning at the first caller outside layerwise and torch.

A warning raised deep in a technique (LayerwiseLR's step inside FreezeOut's, Hi-DLR's fit inside
torch's ``Optimizer.step`` wrapper, a builder called by another builder) would otherwise name a line
of layerwise or torch, whichever path led there. Under a trainer (Lightning, transformers) the line
named is the trainer's call into layerwise.

Examples:
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn("careful")
    >>> caught[0].filename.startswith("<doctest")
    True
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

__all__ = ["warn"]

_INSIDE = tuple(os.path.dirname(os.path.realpath(path)) + os.sep for path in (__file__, torch.__file__))
"""The folders of layerwise's and torch's modules: a warning names no line of theirs."""


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` at the first caller outside layerwise and torch (the outermost
    frame, if every one is inside: layerwise's own command line)."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and os.path.realpath(frame.f_code.co_filename).startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
