"""One registry shape for every named thing: tasks, compare methods, recipes, policies, benchmarks.

A :class:`Registry` is a read-only mapping from name to entry with a description per name. It
warns when a name is registered twice (the new entry wins), lists names with their descriptions
(``compare --list``, ``schedule``), and can hold an entry as an import string (``"module:attr"``)
that is imported the first time it is looked up, so an optional dependency loads only when used.

Examples:
    >>> shapes = Registry("shape")
    >>> _ = shapes.register("square", 4, description="four sides")
    >>> shapes["square"], shapes.describe()
    (4, [('square', 'four sides')])
    >>> shapes.get("circle")
    Traceback (most recent call last):
    ...
    ValueError: shape: unknown 'circle'; choose from ['square']
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from ._warn import warn

__all__ = ["Registry"]

T = TypeVar("T")


class _Lazy:
    """An entry still to import: ``"package.module:attribute"``."""

    def __init__(self, target: str) -> None:
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"target: expected 'package.module:attribute', got {target!r}")
        self.module, self.attribute = module, attribute

    def load(self):
        return getattr(importlib.import_module(self.module), self.attribute)


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one ``kind`` (the word error messages use, e.g. ``"task"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | _Lazy] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, entry: T, *, description: str = "") -> T:
        """Add ``entry`` under ``name`` (a name registered before is replaced, with a warning)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: a non-empty string, got {name!r}")
        if name in self._entries:
            warn(f"{self.kind} {name!r} was already registered; the new one replaces it")
        self._entries[name] = entry
        self._descriptions[name] = description
        return entry

    def register_lazy(self, name: str, target: str, *, description: str = "") -> None:
        """Add an entry imported from ``target`` (``"module:attribute"``) when first looked up."""
        self.register(name, _Lazy(target), description=description)  # type: ignore[arg-type]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's temporary entry, say); an unknown name raises ValueError."""
        self._require(name)
        del self._entries[name], self._descriptions[name]

    def get(self, name: str) -> T:  # type: ignore[override]
        """The entry called ``name``; an unknown name raises ValueError listing the known ones."""
        self._require(name)
        entry = self._entries[name]
        if isinstance(entry, _Lazy):
            entry = self._entries[name] = entry.load()
        return entry

    def _require(self, name: str) -> None:
        if name not in self._entries:
            raise ValueError(f"{self.kind}: unknown {name!r}; choose from {sorted(self._entries)}")

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(name)
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def describe(self, names: list[str] | None = None) -> list[tuple[str, str]]:
        """``(name, description)`` of every entry (or of ``names``), in registration order."""
        return [(name, self._descriptions[name]) for name in (self._entries if names is None else names)]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
