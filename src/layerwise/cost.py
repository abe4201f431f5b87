"""Per-group compute cost and FreezeOut's predicted saving, before training.

Two predictions of the wall-clock saving of a freezing schedule:

* :func:`paper_saving`: FreezeOut's eq. (2)-(3), ``1 - sum((1 + t_i) c_i) / sum(2 c_i)``,
  with ``c_i`` the forward FLOPs of group ``i`` (``torch.utils.flop_counter``) and ``t_i``
  the fraction of training it trains; it assumes backward costs as much as forward.
* :func:`timed_saving`: integrates step times measured on this machine with the first
  ``k`` groups frozen (:func:`prefix_step_times`), so it includes the real
  backward/forward ratio, the optimizer step and everything the FLOP count leaves out.

Both also predict the saving with a :class:`~layerwise.prefix_cache.FrozenPrefixCache` serving
the frozen prefix (``cached=True``): a frozen group then costs neither its backward nor its
forward. The predictions assume every frozen forward is served (all hits); the first pass over
the data after each freeze computes (or advances) the prefix, so a short run saves less.
:func:`predict_saving` makes every prediction a report shows, under the keys reports use.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    >>> part = layerwise.by_layer(model, sample_input=torch.zeros(8, 64))
    >>> flops = group_flops(model, part, torch.zeros(8, 64))
    >>> flops
    [65536, 10240]
    >>> round(paper_saving([0.5, 1.0], flops), 3)   # the first layer trains half the run
    0.216
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .freezing import Freezer
from .groups import Partition
from .prefix_cache import FrozenPrefixCache

__all__ = [
    "AUTHORS_LINEAR_FACTOR",
    "authors_saving",
    "group_flops",
    "paper_saving",
    "predict_saving",
    "prefix_step_times",
    "timed_saving",
    "train_fractions",
]


def group_flops(model: nn.Module, partition: Partition, sample_input: Any) -> list[int]:
    """Forward FLOPs of each group's modules on ``sample_input`` (in partition order).

    A module counts for the group owning its parameters; FLOPs of ops outside any
    parameter-owning module (activations, pooling, residual adds) belong to no group.
    """
    counter = FlopCounterMode(display=False, depth=None)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(*sample_input) if isinstance(sample_input, tuple) else model(sample_input)
    finally:
        for module, mode in modes.items():
            module.training = mode
    prefix = type(model).__name__
    counts = {
        name[len(prefix) + 1 :] if name != prefix else "": sum(ops.values())
        for name, ops in counter.get_flop_counts().items()
        if name == prefix or name.startswith(prefix + ".")
    }
    owners = {pname.rpartition(".")[0] for group in partition for pname in group.param_names}

    def own_flops(module_name: str) -> int:
        """FLOPs of a module minus those of its descendants that own parameters themselves."""
        total = counts.get(module_name, 0)
        inner = [o for o in owners if o != module_name and (module_name == "" or o.startswith(module_name + "."))]
        outermost = [o for o in inner if not any(o != x and o.startswith(x + ".") for x in inner)]
        return total - sum(counts.get(o, 0) for o in outermost)

    return [
        sum(own_flops(m) for m in dict.fromkeys(p.rpartition(".")[0] for p in group.param_names)) for group in partition
    ]


def train_fractions(frozen_at: Sequence[int | None], total_steps: int) -> list[float]:
    """Fraction of the run each group trains, from its freeze step (None: to the end).

    Examples:
        >>> train_fractions([25, None], 100)
        [0.25, 1.0]
    """
    return [1.0 if at is None else at / total_steps for at in frozen_at]


def paper_saving(train_fractions: Sequence[float], flops: Sequence[float], *, cached: bool = False) -> float:
    """FreezeOut eq. (2)-(3): ``1 - sum((1 + t_i) c_i) / sum(2 c_i)``.

    ``cached``: the frozen forwards are served from a cache too, ``1 - sum(2 t_i c_i) / sum(2 c_i)``.

    Examples:
        >>> paper_saving([0.5, 1.0], [1.0, 1.0])
        0.125
        >>> paper_saving([0.5, 1.0], [1.0, 1.0], cached=True)
        0.25
    """
    if len(train_fractions) != len(flops):
        raise ValueError(f"train_fractions, flops: lengths differ ({len(train_fractions)} vs {len(flops)})")
    total = sum(2.0 * c for c in flops)
    if total <= 0:
        raise ValueError("flops: the groups have no forward cost to save on")
    forward = (lambda t: t) if cached else (lambda t: 1.0)
    return 1.0 - sum((forward(t) + t) * c for t, c in zip(train_fractions, flops)) / total


AUTHORS_LINEAR_FACTOR = 1.3
"""What the FreezeOut authors' code multiplies its linear-schedule estimate by (the text does not)."""


def authors_saving(paper: float, strategy: str) -> float:
    """The FreezeOut authors' code's estimate: :func:`paper_saving` times 1.3 for the linear schedule.

    Examples:
        >>> authors_saving(0.1, "linear"), authors_saving(0.1, "cubic")
        (0.13, 0.1)
    """
    if strategy not in ("linear", "cubic"):
        raise ValueError(f"strategy: must be 'linear' or 'cubic', got {strategy!r}")
    return round(paper * AUTHORS_LINEAR_FACTOR, 12) if strategy == "linear" else paper


def timed_saving(train_fractions: Sequence[float], step_times: Sequence[float]) -> float:
    """Saving predicted from measured step times.

    ``step_times[k]`` is the time of a training step with the first ``k`` groups frozen;
    group ``k`` trains for the first ``train_fractions[k]`` of the run (non-decreasing).

    Examples:
        >>> round(timed_saving([0.5, 1.0], [1.0, 0.6]), 6)
        0.2
    """
    if len(train_fractions) != len(step_times):
        raise ValueError("train_fractions, step_times: one entry per group each")
    if list(train_fractions) != sorted(train_fractions):
        raise ValueError("train_fractions: groups must freeze in data-flow order (non-decreasing)")
    mean, previous = 0.0, 0.0
    for k, fraction in enumerate(train_fractions):
        mean += step_times[k] * (min(fraction, 1.0) - previous)
        previous = min(fraction, 1.0)
    mean += step_times[-1] * (1.0 - previous)  # the rest of the run, if the last group stops early
    return 1.0 - mean / step_times[0]


def predict_saving(
    train_fractions: Sequence[float],
    flops: Sequence[float],
    *,
    strategy: str | None = None,
    step_times: Sequence[float] | None = None,
    cached_step_times: Sequence[float] | None = None,
) -> dict[str, float]:
    """A freezing schedule's predicted wall-clock savings, each a fraction of training, by report key.

    Group ``i`` trains for ``train_fractions[i]`` of the run and costs ``flops[i]`` forward FLOPs
    (:func:`group_flops`): ``predicted_saving_paper`` and ``predicted_saving_paper_cached``
    (:func:`paper_saving`); with FreezeOut's ``strategy``, ``predicted_saving_authors``
    (:func:`authors_saving`); with ``step_times`` and ``cached_step_times`` of :func:`prefix_step_times`
    (plain, ``cached=True``), ``predicted_saving_timed`` and ``predicted_saving_timed_cached``
    (:func:`timed_saving`).

    Examples:
        >>> saving = predict_saving([0.5, 1.0], [1.0, 1.0], strategy="linear", step_times=[1.0, 0.6])
        >>> {key: round(value, 4) for key, value in saving.items()}  # doctest: +NORMALIZE_WHITESPACE
        {'predicted_saving_paper': 0.125, 'predicted_saving_paper_cached': 0.25,
         'predicted_saving_authors': 0.1625, 'predicted_saving_timed': 0.2}
    """
    paper = paper_saving(train_fractions, flops)
    saving = {
        "predicted_saving_paper": paper,
        "predicted_saving_paper_cached": paper_saving(train_fractions, flops, cached=True),
    }
    if strategy is not None:
        saving["predicted_saving_authors"] = authors_saving(paper, strategy)
    if step_times is not None:
        saving["predicted_saving_timed"] = timed_saving(train_fractions, step_times)
    if cached_step_times is not None:
        saving["predicted_saving_timed_cached"] = timed_saving(train_fractions, cached_step_times)
    return saving


def prefix_step_times(
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    *,
    warmup: int = 2,
    repeats: int = 7,
    sync: Callable[[], object] | None = None,
    cached: bool = False,
) -> list[float]:
    """Median step time (forward, backward, SGD step) with the first k groups frozen, k = 0..K-1.

    ``cached``: each copy with a frozen prefix serves it from a warm
    :class:`~layerwise.prefix_cache.FrozenPrefixCache` (keyed by the batch's rows; ``warmup`` >= 1).

    Runs on K deep copies of ``model`` (copy k with its first k groups frozen), stepped round-robin
    so a drift of the machine's speed hits every k alike (all K copies and their optimizer state
    are in memory at once). ``param_groups`` are the model's groups
    in data-flow order (``name`` keys; parameters are matched by position in ``model.parameters()``).
    """
    wait = sync or (lambda: None)  # e.g. torch.cuda.synchronize: queued device work ends before each clock reading
    index = {id(p): i for i, p in enumerate(model.parameters())}
    if cached and warmup < 1:
        raise ValueError(f"warmup: a cached measurement needs at least 1 warm-up step to fill the cache, got {warmup}")
    steppers = []
    caches: list[FrozenPrefixCache | None] = []
    for k in range(len(dict.fromkeys(g["name"] for g in param_groups))):
        twin = copy.deepcopy(model).train()
        twin_params = list(twin.parameters())
        groups = [{"name": g["name"], "params": [twin_params[index[id(p)]] for p in g["params"]]} for g in param_groups]
        optimizer = torch.optim.SGD(groups, lr=1e-6, momentum=0.9)
        freezer = Freezer(twin, optimizer)
        if k:
            freezer.freeze(*freezer.names[:k])
        steppers.append((twin, optimizer))
        caches.append(
            FrozenPrefixCache(twin, freezer, len(batch[1]), same_inputs=True, shallower="allow")
            if cached and k
            else None
        )
    x, y = batch
    rows = torch.arange(len(y))

    def step(twin: nn.Module, optimizer: torch.optim.Optimizer, cache: FrozenPrefixCache | None) -> float:
        wait()
        start = time.perf_counter()
        with nullcontext() if cache is None else cache.batch(rows):
            loss = loss_fn(twin(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        wait()
        return time.perf_counter() - start

    samples: list[list[float]] = [[] for _ in steppers]
    for r in range(warmup + repeats):
        for k, (twin, optimizer) in enumerate(steppers):
            elapsed = step(twin, optimizer, caches[k])
            if r >= warmup:
                samples[k].append(elapsed)
    for cache in caches:
        if cache is not None:
            cache.remove()
    return [statistics.median(s) for s in samples]
