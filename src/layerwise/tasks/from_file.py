r"""A user's own task from a Python file: ``--task path/to/file.py:factory``.

The file is imported as a module (nothing of it is registered), with its folder on the import path
while it loads (so it may import a module beside it), and ``factory()`` must return a
:class:`~layerwise.tasks.Task`. Any failure, in the file, the factory or later in the task's own
``make_model``, ``sample_input``, ``load_data`` or ``partition``, is one ValueError naming the file, the
factory, the part that failed and its exception (the original is chained).

The task's ``source_sha256`` fingerprints the task file and every module it imported from its own
folder (found in ``sys.modules`` once the factory returned: a module ``NAME`` whose file is the
folder's ``NAME.py``, or a package ``NAME/``, whose ``.py`` files all count), so a comparison's run
store refuses the runs of an edited task file or helper module and names the files that changed
(:func:`task_files`). A task file alone keeps the sha256 of its source as its fingerprint; with helper
modules it is the sha256 of every file's sha256 by its path in the folder. Data files the task reads
are not fingerprinted. A module the files import only later (inside ``make_model``, say) counts too:
every ``import``/``from ... import`` statement of the task file and of its helpers, at any depth, that
names a module of the folder is followed, whether or not it ran yet. The modules a task file brought in from its folder
are dropped from ``sys.modules`` before the next task file loads, so a reload runs the helpers as they
are on disk, as their fingerprint says.

The task's data is loaded once per ``(data_dir, quick)`` and its class labels are checked against the
model's output on the first batch (:func:`~layerwise.tasks.base.check_labels`).

Examples:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "my_task.py"
    >>> _ = path.write_text(
    ...     "from layerwise.tasks import get_task\n"
    ...     "def make_task():\n"
    ...     "    return get_task('ellipse')\n"
    ... )
    >>> task = load_task_file(f"{path}:make_task")
    >>> task.name, list(task_files(task.source_sha256))
    ('ellipse', ['my_task.py'])
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ..training import slice_batch
from .base import Task, TaskData, check_labels

__all__ = ["is_task_file", "load_task_file", "task_file_spec", "task_files"]

_FILES_OF: dict[str, dict[str, str]] = {}
"""The files behind each fingerprint :func:`load_task_file` gave in this process (see :func:`task_files`)."""

_SPEC_OF: dict[str, str] = {}
"""The ``PATH.py:FACTORY`` (the path absolute) behind each fingerprint :func:`load_task_file` gave in this process."""

_BROUGHT_IN: set[str] = set()
"""The modules task files of this process brought in from their folders (dropped before the next load)."""


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
    folder = path.resolve().parent
    _forget_brought_in()
    before = set(sys.modules)
    try:
        task = _made(path, factory_name, spec)
    finally:  # a failed load's helpers load again from disk too
        helpers = _modules_from(folder)
        _BROUGHT_IN.update(name for name in sys.modules if name.partition(".")[0] in set(helpers) - before)
    source_sha256 = _fingerprint(path.resolve(), {**_imported_from(path.resolve()), **helpers})
    _SPEC_OF[source_sha256] = f"{path.resolve()}:{factory_name}"
    return _checked(dataclasses.replace(task, source_sha256=source_sha256), spec)


def _made(path: Path, factory_name: str, spec: str) -> Task:
    """What the factory ``factory_name`` of the file ``path`` returns (checked to be a Task)."""
    module = _import(path, spec)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"--task: {path} has no callable {factory_name!r}")
    task = _reporting(spec, f"{factory_name}()", factory)()
    if not isinstance(task, Task):
        raise TypeError(f"--task: {spec} returned {type(task).__name__}, expected a layerwise.tasks.Task")
    return task


def task_files(source_sha256: str | None) -> dict[str, str] | None:
    """The files a task file's fingerprint (its task's ``source_sha256``) covers: each one's sha256 by
    its path relative to the task file's folder; None for a fingerprint no task file of this process has."""
    files = _FILES_OF.get(source_sha256) if source_sha256 is not None else None
    return None if files is None else dict(files)


def task_file_spec(source_sha256: str | None) -> str | None:
    """How to load a task file's task again, in another process: ``PATH.py:FACTORY`` with the path
    absolute, for a fingerprint (its task's ``source_sha256``) a task file of this process gave; else None."""
    return _SPEC_OF.get(source_sha256) if source_sha256 is not None else None


def _forget_brought_in() -> None:
    """Drop the modules earlier task files brought in from their folders, so they load again from disk."""
    for name in _BROUGHT_IN:
        sys.modules.pop(name, None)
    _BROUGHT_IN.clear()


def _fingerprint(task_file: Path, helpers: dict[str, list[Path]]) -> str:
    """The fingerprint of the task file (a resolved path) and the ``helpers`` it imported from its folder
    (the file's own sha256 when there are none); remembers the files for :func:`task_files`."""
    folder = task_file.parent
    sources = {task_file, *(file for files in helpers.values() for file in files)}
    files = {file.relative_to(folder).as_posix(): _sha256(file) for file in sorted(sources)}
    digest = files[task_file.name] if len(files) == 1 else _sha256_of(json.dumps(files, sort_keys=True).encode())
    _FILES_OF[digest] = files
    return digest


def _modules_from(folder: Path) -> dict[str, list[Path]]:
    """The top-level modules in ``sys.modules`` that were imported from ``folder``, each with its
    source files: ``NAME.py``, or every ``.py`` file of the package ``NAME/``."""
    found = {}
    for entry in sorted(folder.iterdir()):
        name = entry.stem if entry.suffix == ".py" else entry.name
        module = sys.modules.get(name)
        if module is None or not (entry.is_dir() or entry.suffix == ".py") or not _loaded_from(module, entry):
            continue
        found[name] = sorted(entry.rglob("*.py")) if entry.is_dir() else [entry]
    return found


def _imported_from(task_file: Path) -> dict[str, list[Path]]:
    """The modules of the task file's folder that it or its helpers name in an import statement anywhere
    (inside a function too), each with its source files, read from the source without running it."""
    folder, found = task_file.parent, {}
    pending = [task_file]
    while pending:
        source = pending.pop()
        for name in _import_names(source):
            entry = folder / f"{name}.py" if (folder / f"{name}.py").is_file() else folder / name
            if name in found or not (entry.suffix == ".py" or (entry / "__init__.py").is_file()):
                continue
            found[name] = sorted(entry.rglob("*.py")) if entry.is_dir() else [entry]
            pending.extend(found[name])
    return found


def _import_names(source: Path) -> set[str]:
    """The top-level module names a Python file's absolute import statements name (none if it does not parse)."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (SyntaxError, ValueError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def _loaded_from(module: ModuleType, entry: Path) -> bool:
    """Whether ``module`` was loaded from ``entry`` (its file, or its package folder)."""
    where = getattr(module, "__file__", None)
    places = [where] if where else list(getattr(module, "__path__", []))
    return any(Path(place).resolve().is_relative_to(entry.resolve()) for place in places)


def _sha256(file: Path) -> str:
    return _sha256_of(file.read_bytes())


def _sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    x, y = data.train
    first = slice(0, task.batch_size)
    with torch.no_grad():  # the task's own forward: its batch_outputs, or a dict's keys as keyword arguments
        outputs, _ = task.outputs_on(model, (slice_batch(x, first), y[first]))
    for _, labels in (data.train, data.test):
        check_labels(task, outputs, labels)
