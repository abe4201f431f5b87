r"""A user's own task from a Python file: ``--task path/to/file.py:factory``.

The file is imported as a module (nothing of it is registered), with its folder on the import path
while it loads (so it may import a module beside it), and ``factory()`` must return a
:class:`~layerwise.tasks.Task`, which gets the sha256 of the file's source as its ``source_sha256``
(a comparison's run store refuses the runs of an edited file). Any failure, in the file, the factory
or later in the task's own ``make_model``, ``sample_input``, ``load_data`` or ``partition``, is one
ValueError naming the file, the factory, the part that failed and its exception (the original is
chained). The task's data is loaded once per ``(data_dir, quick)`` and its class labels are checked
against the model's output on the first batch (:func:`~layerwise.tasks.base.check_labels`).

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

import dataclasses
import functools
import hashlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..training import slice_batch
from .base import Task, TaskData, check_labels

__all__ = ["is_task_file", "load_task_file"]


def is_task_file(spec: str) -> bool:
    """Whether ``spec`` names a file's factory (``something.py:name``) rather than a registered task."""
    path, sep, factory = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and bool(factory)


def load_task_file(spec: str) -> Task:
    """Import ``path.py`` and return what its ``factory()`` returns (it must be a Task).

    Raises:
        ValueError: ``spec`` is not ``PATH.py:FACTORY``, the file does not exist, cannot be imported
            (a syntax error, an exception at import), has no such callable, or the factory raised.
        TypeError: the factory returned something other than a Task.
    """
    path_text, sep, factory_name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not factory_name.isidentifier():
        raise ValueError(f"--task: expected a registered task or PATH.py:FACTORY, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"--task: no such file {path}")
    module = _import(path, spec)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"--task: {path} has no callable {factory_name!r}")
    task = _reporting(spec, f"{factory_name}()", factory)()
    if not isinstance(task, Task):
        raise TypeError(f"--task: {spec} returned {type(task).__name__}, expected a layerwise.tasks.Task")
    source_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return _checked(dataclasses.replace(task, source_sha256=source_sha256), spec)


def _import(path: Path, spec: str) -> ModuleType:
    """The file ``path`` as a module, imported with its folder first on ``sys.path``."""
    module_spec = importlib.util.spec_from_file_location(f"layerwise_user_task_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise ValueError(f"--task: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        _reporting(spec, "importing the file", module_spec.loader.exec_module)(module)
    finally:
        sys.path.remove(folder)
    return module


def _reporting(spec: str, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, whose exceptions become one ValueError naming ``spec`` and ``part``."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise ValueError(f"--task: {spec}: {part} raised {type(err).__name__}: {err}") from err

    return call


def _checked(task: Task, spec: str) -> Task:
    """``task`` with its callables reporting ``spec`` on failure and its data loaded once and label-checked."""

    def reporting(part: str) -> Any:
        fn = getattr(task, part)
        return None if fn is None else _reporting(spec, f"task {task.name!r}'s {part}()", fn)

    make_model, load_data = reporting("make_model"), reporting("load_data")
    loaded: dict[tuple[Any, bool], TaskData] = {}

    def load_once(data_dir: str | None, quick: bool) -> TaskData:
        key = (data_dir, quick)
        if key not in loaded:
            data = load_data(data_dir, quick)
            _check_data_labels(task, make_model(), data)
            loaded[key] = data
        return loaded[key]

    wrapped = {"make_model": make_model, "sample_input": reporting("sample_input"), "partition": reporting("partition")}
    return dataclasses.replace(task, load_data=load_once, **wrapped)


def _check_data_labels(task: Task, model: torch.nn.Module, data: TaskData) -> None:
    """Every train and test label against the model's output on the first training batch."""
    if not all(isinstance(split, tuple) for split in (data.train, data.test)):
        return  # a Dataset's labels are not read ahead of training
    x, _ = data.train
    with torch.no_grad():
        outputs = model(slice_batch(x, slice(0, task.batch_size)))
    for _, labels in (data.train, data.test):
        check_labels(task, outputs, labels)
