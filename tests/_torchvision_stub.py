"""Importing timm without torchvision: PyPI's torchvision is a CUDA build that cannot load beside the
CPU torch of this project's machines (and breaks transformers' imports), so ``make setup`` removes it.

timm imports torchvision at import time (transforms, datasets, ``FrozenBatchNorm2d``) but the tests
use none of it: :func:`import_without_torchvision` imports a module with permissive stand-ins for
every ``torchvision`` module, then removes them, so nothing else in the session sees a torchvision.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
from importlib.util import find_spec


class _Anything(type):
    """A class whose every attribute is another distinct stand-in class (``InterpolationMode.BILINEAR``)."""

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        child = _Anything(name, (_Stub,), {})
        type.__setattr__(cls, name, child)
        return child

    def __call__(cls, *args, **kwargs):
        return cls


class _Stub(metaclass=_Anything):
    pass


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        child = _Anything(name, (_Stub,), {})
        setattr(self, name, child)
        return child


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def import_without_torchvision(*names: str) -> list[types.ModuleType]:
    """Import ``names`` (a real torchvision is used when one is installed)."""
    if find_spec("torchvision") is not None:
        return [importlib.import_module(n) for n in names]
    finder = _Finder()
    sys.meta_path.insert(0, finder)
    try:
        return [importlib.import_module(n) for n in names]
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
