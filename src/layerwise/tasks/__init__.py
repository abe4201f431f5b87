"""Tasks: what a benchmark or a comparison trains (a model factory, its data, its optimizer preset).

The package holds the task type and registry (:mod:`.base`), the data readers (Fashion-MNIST,
tweets, a user's file of labelled texts), the built-in models, the packaged pretrained networks and
the Hi-DLR paper's toy problems. The built-in tasks are registered once, by :func:`register_defaults`,
when the package is imported; ``resolve_task`` also reads a user's task from a file, and
:func:`hf_task` builds one from a saved Hugging Face classifier and a data file (``--task hf:DIR``).

Examples:
    >>> from layerwise.tasks import TASKS, get_task
    >>> get_task("fashion-mnist").regime
    'scratch'
    >>> "effnet-finetune" in TASKS
    True
"""

from __future__ import annotations

from . import fashion_tasks, hidlr_tasks, pretrained_tasks
from .base import (
    OPTIMIZER_NAMES,
    OPTIMIZER_PRESETS,
    OPTIMIZERS,
    REGIMES,
    TASKS,
    OptimizerPreset,
    Task,
    TaskData,
    get_task,
    logits_of,
    make_optimizer,
    optimizer_choice,
    optimizer_preset,
    register_task,
)
from .from_file import is_task_file, load_task_file
from .hf_checkpoint import HFSpec, hf_task, is_hf_task

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_NAMES",
    "OPTIMIZER_PRESETS",
    "REGIMES",
    "TASKS",
    "HFSpec",
    "OptimizerPreset",
    "Task",
    "TaskData",
    "get_task",
    "hf_task",
    "load_task_file",
    "logits_of",
    "make_optimizer",
    "optimizer_choice",
    "optimizer_preset",
    "register_defaults",
    "register_task",
    "resolve_task",
]


def register_defaults() -> None:
    """Register the built-in tasks (from scratch, the Hi-DLR problems, fine-tuning)."""
    for module in (fashion_tasks, hidlr_tasks, pretrained_tasks):
        for task in module.default_tasks():
            register_task(task)


def resolve_task(task: str | Task) -> Task:
    """A Task as given, a registered task by name, or ``PATH.py:FACTORY``'s task.

    ``hf:DIR`` alone is refused: it needs its data file (``hf_task(HFSpec(DIR, FILE, CACHE_DIR))``).
    """
    if isinstance(task, Task):
        return task
    if not isinstance(task, str):
        raise TypeError(f"task: expected a task name, PATH.py:FACTORY or a Task, got {type(task).__name__}")
    if is_hf_task(task):
        raise ValueError(
            f"task: {task} needs a data file; build it with layerwise.tasks.hf_task(HFSpec(DIR, FILE, CACHE_DIR)) "
            "or run `layerwise compare --task hf:DIR --data FILE`"
        )
    if is_task_file(task):
        return load_task_file(task)
    if task not in TASKS:
        raise ValueError(
            f"task: unknown {task!r}; choose from {sorted(TASKS)}, or PATH.py:FACTORY (a function returning a Task)"
        )
    return get_task(task)


register_defaults()
