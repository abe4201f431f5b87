"""The ``+cache`` variants of the freezing methods: the same method with a :class:`FrozenPrefixCache`.

``freezeout+cache``, ``autofreeze+cache``, ``gradual-unfreezing+cache``, ``head-only+cache``, ``layer-freezing+cache``,
``fine-tune+cache`` and ``lp-ft+cache`` build exactly what their method builds; the runner then
serves the frozen prefix's output from a cache keyed by example index (the task's data has no
random augmentation). They are separate methods, so a report shows each gain beside the method
without it. ``cache_dtype`` stores the outputs in ``"float16"`` or ``"bfloat16"``.

A ``+cache`` run is trusted only after its self-check: the cache runs the first
:data:`SELF_CHECK` batches that compute prefix rows and the first :data:`SELF_CHECK` that serve
stored ones again without the cache, and a different output stops the run with an error naming
the method (:class:`~layerwise.prefix_cache.FrozenPrefixCache`'s ``verify``).

Examples:
    >>> from layerwise.compare.methods import METHODS
    >>> METHODS["freezeout+cache"].defaults["cache_dtype"] is None
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from .._checks import one_of
from ..groups import Partition
from ..tasks import Task
from .methods.kit import METHODS, Build, Method, Setup, register_method

__all__ = ["CACHED", "SELF_CHECK", "cached_variant", "register_cached"]

CACHED = ("freezeout", "autofreeze", "gradual-unfreezing", "head-only", "layer-freezing", "fine-tune", "lp-ft")
"""The methods that freeze a prefix, in the order their variants are registered."""

DTYPES = {None: None, "float16": torch.float16, "bfloat16": torch.bfloat16}

_KEYS = ("cache_dtype",)

SELF_CHECK = 2
"""Batches of each kind (rows computed, rows served) a ``+cache`` run checks against the forward without the cache."""


def _own(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in settings.items() if key not in _KEYS}


def cached_variant(method: Method) -> Method:
    """``method`` with its frozen prefix served from a cache, named ``METHOD+cache``."""
    name = f"{method.name}+cache"

    def build(context: Build, settings: dict[str, Any]) -> Setup:
        setup = method.build(context, _own(settings))
        if setup.freezer is None:
            raise ValueError(f"{name}: {method.name} has no Freezer, so there is no frozen prefix to cache")
        return replace(setup, cache={"dtype": DTYPES[settings["cache_dtype"]], "verify": SELF_CHECK, "label": name})

    def check(settings: Mapping[str, Any]) -> None:
        try:
            method.check(_own(settings))
        except (TypeError, ValueError) as error:  # name the flag the user typed
            raise type(error)(str(error).replace(f"--set {method.name}.", f"--set {name}.")) from None
        if "cache_dtype" in settings:
            one_of(f"--set {name}.cache_dtype", settings["cache_dtype"], tuple(DTYPES))

    def applies(task: Task, partition: Partition) -> str | None:
        if task.accumulate > 1:  # refused with the request (check_request), before any data loads
            return (
                f"the task steps in {task.accumulate} accumulated micro-batches (--accumulate {task.accumulate}), "
                f"and the frozen-prefix cache serves a whole batch's example indices at once: run {method.name} "
                f"without +cache, or {name} without --accumulate"
            )
        return method.applies(task, partition)

    def snippet(context: Build, settings: Mapping[str, Any]) -> str:
        assert method.snippet is not None
        return _with_cache(method.snippet(context, _own(settings)), method.name, settings["cache_dtype"])

    reason = "a cache keyed by example index needs one process (each rank sees other examples)"
    return Method(
        name,
        f"{method.name} with its frozen prefix's output served from a FrozenPrefixCache",
        build,
        {**method.defaults, "cache_dtype": None},
        applies,
        not_default={
            regime: f"the cached variant of {method.name}, run on request" for regime in ("scratch", "fine-tuning")
        },
        snippet=None if method.snippet is None else snippet,
        check=check,
        uses_task_lr=method.uses_task_lr,
        not_parallel={"ddp": reason, "fsdp": reason},
        optimizer_use=method.optimizer_use,
    )


_LOOP_HEADS = {
    "for x, y in loader:": "for index, x, y in indexed_loader:",
    "for step, (x, y) in enumerate(loader):": "for step, (index, x, y) in enumerate(indexed_loader):",
}


def _with_cache(text: str, base: str, dtype: str | None) -> str:
    """A method's snippet with the cache: created before the loop, the forward inside ``cache.batch``."""
    lines = text.split("\n")
    head = next(i for i, line in enumerate(lines) if line.startswith(tuple(_LOOP_HEADS)))
    for old, new in _LOOP_HEADS.items():
        lines[head] = lines[head].replace(old, new, 1)
    lines[head] += "   (a loader of example indices and batches)"
    body = next(i for i in range(head + 1, len(lines)) if lines[i].startswith("    loss = loss_fn(model(x), y)"))
    forward, _, rest = lines[body].strip().partition("; ")
    lines[body : body + 1] = ["    with cache.batch(index):", f"        {forward}", f"    {rest}"]
    freezer = "sched.freezer" if base == "freezeout" else "freezer"
    option = "" if dtype is None else f", dtype=torch.{dtype}"
    lines.insert(head, f"cache = layerwise.FrozenPrefixCache(model, {freezer}, num_examples, same_inputs=True{option})")
    return "\n".join(lines)


def register_cached() -> None:
    """Register ``METHOD+cache`` for every registered method of :data:`CACHED`."""
    for base in CACHED:
        if base in METHODS and f"{base}+cache" not in METHODS:
            register_method(cached_variant(METHODS.get(base)))
