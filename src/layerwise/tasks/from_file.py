r"""A user's own task from a Python file: ``--task path/to/file.py:factory``.

The file is imported as a module (nothing of it is registered) and ``factory()`` must return a
:class:`~layerwise.tasks.Task`.

Examples:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "my_task.py"
    >>> _ = path.write_text(
    ...     "from layerwise.tasks import get_task\n"
    ...     "def make_task():\n"
    ...     "    return get_task('ellipse')\n"
    ... )
    >>> load_task_file(f"{path}:make_task").name
    'ellipse'
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .base import Task

__all__ = ["is_task_file", "load_task_file"]


def is_task_file(spec: str) -> bool:
    """Whether ``spec`` names a file's factory (``something.py:name``) rather than a registered task."""
    path, sep, factory = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and bool(factory)


def load_task_file(spec: str) -> Task:
    """Import ``path.py`` and return what its ``factory()`` returns (it must be a Task).

    Raises:
        ValueError: ``spec`` is not ``PATH.py:FACTORY``, the file does not exist, or it has no such callable.
        TypeError: the factory returned something other than a Task.
    """
    path_text, sep, factory_name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not factory_name.isidentifier():
        raise ValueError(f"--task: expected a registered task or PATH.py:FACTORY, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"--task: no such file {path}")
    module_spec = importlib.util.spec_from_file_location(f"layerwise_user_task_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"--task: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"--task: {path} has no callable {factory_name!r}")
    task = factory()
    if not isinstance(task, Task):
        raise TypeError(f"--task: {spec} returned {type(task).__name__}, expected a layerwise.tasks.Task")
    return task
