"""One call from a method's name to its training setup, on your model: :func:`setup`.

``layerwise compare`` builds each method for a fresh model of a task through the registry of
:mod:`layerwise.compare.methods`. :func:`setup` builds the same :class:`~layerwise.compare.methods.Setup`
with the same builders for your model, optimizer, learning rate and step count (a minimal
:class:`~layerwise.tasks.Task` holds them). The loop below trains any method: change the name to
try another.

Examples:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    >>> run = setup(model, "freezeout", optimizer="sgd", lr=0.1, total_steps=4, sample_input=x, t0=0.5)
    >>> type(run.optimizer).__name__, type(run.scheduler).__name__
    ('SGD', 'FreezeOut')
    >>> opt, sched = run.optimizer, run.scheduler
    >>> for _ in range(4):
    ...     loss = torch.nn.functional.cross_entropy(model(x), y); opt.zero_grad(); loss.backward()
    ...     if run.wants_closure: opt.step(lambda: torch.nn.functional.cross_entropy(model(x), y))
    ...     else: opt.step()
    ...     if sched is not None: sched.step()
    >>> run.freezer.frozen
    ('0',)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .. import recipes
from .._checks import finite_nonneg, one_of, positive_int
from ..groups import Partition
from ..tasks import OPTIMIZER_NAMES, REGIMES, Task, TaskData, optimizer_choice
from .methods.kit import METHODS, OPTIMIZER_SETTINGS, Build, Setup, build_setup, resolve_settings

__all__ = [
    "OPTIMIZER_NAMES",
    "SETUP_KEYWORDS",
    "method_settings",
    "optimizer_choice",
    "setup",
]

SETUP_KEYWORDS = (
    "optimizer",
    "lr",
    "total_steps",
    "weight_decay",
    "optimizer_options",
    "partition",
    "sample_input",
    "policy",
    "warmup",
    "head",
    "regime",
)
"""The keyword arguments of :func:`setup` that are not a method's settings."""


_CACHE_SUFFIX = "+cache"
"""The suffix of the cached variants (:mod:`layerwise.compare.cached`), which :func:`setup` refuses."""


def _check_method(method: Any) -> str:
    """``method``, a registered method :func:`setup` builds (ValueError naming the accepted ones otherwise)."""
    if not isinstance(method, str):
        raise TypeError(f"method: expected a method's name (a str), got {type(method).__name__}")
    accepted = sorted(name for name in METHODS if not name.endswith(_CACHE_SUFFIX))
    if method in METHODS and method.endswith(_CACHE_SUFFIX):
        base = method.removesuffix(_CACHE_SUFFIX)
        raise ValueError(
            f"method: {method} serves the frozen prefix from a cache keyed by example index, which layerwise "
            f"compare's loader gives; set up {base!r} and put layerwise.FrozenPrefixCache(model, freezer, "
            "num_examples, same_inputs=True) with its freezer around your forward (with cache.batch(index): ...)"
        )
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; choose from {accepted}")
    return method


def method_settings(method: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``method``'s settings for :func:`setup`: its defaults updated with ``settings``, checked.

    Its own ``lr`` and ``weight_decay`` (:data:`OPTIMIZER_SETTINGS`) are :func:`setup`'s arguments, not settings.

    Examples:
        >>> method_settings("freezeout", {"t0": 0.5})
        {'t0': 0.5, 'strategy': 'cubic', 'scale_lr': True}
        >>> method_settings("freezeout", {"t1": 0.5})
        Traceback (most recent call last):
        ...
        ValueError: freezeout: unknown setting 't1'; freezeout takes ['scale_lr', 'strategy', 't0']

    Raises:
        ValueError: naming the method and the setting (an unknown one with the settings it takes).
    """
    defaults = METHODS[_check_method(method)].defaults
    takes = sorted(set(defaults) - set(OPTIMIZER_SETTINGS) - {"policy"})
    unknown = sorted(set(settings) - set(takes))
    if unknown:
        own = " and ".join(sorted(set(defaults) - set(takes)))
        keywords = f" (its {own} {'are' if ' and ' in own else 'is'} setup()'s own argument)" if own else ""
        raise ValueError(f"{method}: unknown setting {unknown[0]!r}; {method} takes {takes or 'none'}{keywords}")
    try:
        return resolve_settings(method, settings)
    except (TypeError, ValueError) as error:  # the flag of the command line is the setting here
        raise type(error)(str(error).replace("--set ", "", 1)) from None


def _check_lr(lr: Any) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr: must be a finite number > 0, got {lr!r}")
    return float(lr)


def _check_warmup(warmup: Any) -> float:
    value = finite_nonneg("warmup", warmup)
    if value >= 1:
        raise ValueError(f"warmup: must be a fraction of training in [0, 1), got {warmup!r}")
    return value


def _check_partition(model: nn.Module, partition: Any, sample_input: Any) -> None:
    if partition is None:
        if sample_input is None:
            raise ValueError(
                "sample_input: the default partition puts the model's layers in the order data flows through "
                "them, traced on one forward: pass sample_input= (a batch of inputs) or partition="
            )
        return
    if not isinstance(partition, Partition):
        raise TypeError(f"partition: expected a layerwise.Partition or None, got {type(partition).__name__}")
    owned = {id(p) for p in model.parameters()}
    if any(id(p) not in owned for group in partition for p in group.params):
        raise ValueError("partition: holds parameters that are not the model's; build it from this model")


def _check_optimizer_options(optimizer_options: Any) -> None:
    if optimizer_options is None:
        return
    if not isinstance(optimizer_options, Mapping):
        raise TypeError(f"optimizer_options: expected a dict or None, got {type(optimizer_options).__name__}")
    own = sorted(set(optimizer_options) & set(OPTIMIZER_SETTINGS))
    if own:
        raise ValueError(f"optimizer_options: {own} are setup()'s own arguments; pass them as lr= and weight_decay=")


def _no_data(data_dir: str | None, quick: bool) -> TaskData:
    del data_dir, quick
    raise ValueError("setup(): the task of one setup() call holds no data; train the model in your own loop")


def _task(model: nn.Module, options: Mapping[str, Any]) -> Task:
    """The minimal task :func:`setup` builds a method for: the model and the training job's settings."""
    partition, sample_input = options["partition"], options["sample_input"]
    return Task(
        name=type(model).__name__,
        make_model=lambda: model,
        sample_input=lambda: sample_input,
        load_data=_no_data,
        lr=options["lr"],
        weight_decay=options["weight_decay"],
        optimizer=options["optimizer"],
        optimizer_options=dict(options["optimizer_options"] or {}),
        partition=None if partition is None else lambda model, sample: partition,
        head=options["head"],
        regime=options["regime"] or "scratch",
    )


def _policy_name(policy: str, warmup: float) -> str:
    """``policy``, or a registered policy of it after a linear warm-up over ``warmup`` of training."""
    if not warmup:
        return policy
    name = f"{policy}+warmup{warmup:g}"
    if name not in recipes.POLICIES:
        recipes.POLICIES.register(
            name,
            functools.partial(recipes.make_policy, policy, warmup),
            description=f"{policy} after a linear warm-up over {warmup:g} of training",
        )
    return name


def _refusal(method: str, task: Task, partition: Partition, regime_given: bool) -> str | None:
    """Why ``method`` does not apply to the model, with the argument that would change that; None: it applies."""
    applies = METHODS[method].applies
    reason = applies(task, partition)
    if reason is None:
        return None
    if not regime_given and applies(replace(task, regime="fine-tuning"), partition) is None:
        return f"{reason}; pass regime='fine-tuning' if the model starts from pretrained weights"
    if not task.head and applies(replace(task, head=True), partition) is None:
        return f"{reason}; pass head=True if the last group ({partition.names[-1]!r}) is the model's output head"
    return reason


def setup(
    model: nn.Module,
    method: str,
    *,
    optimizer: str | type[Optimizer] = torch.optim.AdamW,
    lr: float,
    total_steps: int,
    weight_decay: float = 0.0,
    optimizer_options: Mapping[str, Any] | None = None,
    partition: Partition | None = None,
    sample_input: Any = None,
    policy: str = "constant",
    warmup: float = 0.0,
    head: bool = True,
    regime: str | None = None,
    **settings: Any,
) -> Setup:
    """Method ``method`` set up for ``model``, as ``layerwise compare`` builds it for a task's model.

    After every ``loss.backward()``: ``run.optimizer.step()`` (given a closure returning the batch loss,
    without backward, when ``run.wants_closure``: Hi-DLR's probes), then ``run.scheduler.step()`` unless
    it is None. Before an evaluation call ``run.eval_mode()`` and after it ``run.train_mode()`` where
    they are set (Schedule-Free, DoG evaluate other weights than they train).

    Args:
        model: the model to train (its parameters as they are: pretrained or fresh).
        method: a registered method's name (``layerwise compare --list``); the ``+cache`` variants are
            refused (their cache is fed by the comparison's loader of example indices).
        optimizer: a preset (``"sgd"``: Nesterov momentum 0.9; ``"gd"``; ``"adamw"``), any ``torch.optim``
            optimizer's name in any case (``"adam"``, ``"adadelta"``, ...) or an Optimizer class taking
            ``lr`` and ``weight_decay``; methods that bring their own (``adamw``, ``muon``, the
            parameter-free peers) use theirs.
        lr: the learning rate every group starts from (a method with its own ``lr`` setting takes it).
        total_steps: the optimizer steps the schedules span.
        weight_decay: decay of every group but biases and norms (a method with its own
            ``weight_decay`` setting takes it).
        optimizer_options: the optimizer's other options (``betas``, ``momentum``, ...).
        partition: the named groups, in data-flow order; default: one per layer, traced on ``sample_input``.
        sample_input: a batch of the model's inputs (a tensor, a tuple of positional or a dict of keyword
            arguments), for the default partition and the methods that trace the model.
        policy: the global LR policy (``recipes.POLICIES``: ``constant``, ``cosine``, ``linear``, ...);
            methods with a schedule of their own (FreezeOut, ``staggered``, ``fine-tune``, Schedule-Free,
            DoG) do not follow it.
        warmup: a linear warm-up over this fraction of training, before the policy.
        head: the partition's last group is an output head (what Multirate trains fast, ``head-only`` trains).
        regime: ``"fine-tuning"`` (the model starts from pretrained weights) or ``"scratch"``; the methods
            that need to know (``fine-tune``, ``lp-ft``) are refused without it.
        **settings: the method's settings (``resolve_settings``: its defaults updated with these).

    Raises:
        ValueError: (or TypeError) naming the argument and what it accepts, before anything is built: an
            unknown method, a setting it does not take or a bad value, an unknown optimizer, ``lr`` <= 0
            or not finite, ``total_steps`` < 1, a method that does not apply to the model.
    """
    given = {
        "optimizer": optimizer,
        "lr": lr,
        "total_steps": total_steps,
        "weight_decay": weight_decay,
        "optimizer_options": optimizer_options,
        "partition": partition,
        "sample_input": sample_input,
        "policy": policy,
        "warmup": warmup,
        "head": head,
        "regime": regime,
    }
    options = _checked_options(model, method, given)
    resolved = method_settings(method, settings)
    resolved.update({key: options[key] for key in OPTIMIZER_SETTINGS if key in resolved})
    task = _task(model, options)
    groups = task.partition_of(model)
    reason = _refusal(method, task, groups, regime is not None)
    if reason:
        raise ValueError(f"method: {method} does not apply to this model: {reason}")
    build = Build(task, model, groups, options["total_steps"], _policy_name(policy, options["warmup"]))
    return build_setup(build, method, resolved)


def _checked_options(model: Any, method: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`setup`'s arguments other than the settings, checked (the first bad one raises)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    _check_method(method)
    options = dict(given)
    options["optimizer"] = optimizer_choice(options["optimizer"])
    options["lr"] = _check_lr(options["lr"])
    options["total_steps"] = positive_int("total_steps", options["total_steps"])
    options["weight_decay"] = finite_nonneg("weight_decay", options["weight_decay"])
    _check_optimizer_options(options["optimizer_options"])
    one_of("policy", options["policy"], tuple(recipes.POLICIES))
    options["warmup"] = _check_warmup(options["warmup"])
    if not isinstance(options["head"], bool):
        raise TypeError(f"head: expected True or False, got {options['head']!r}")
    if options["regime"] is not None:
        one_of("regime", options["regime"], REGIMES)
    _check_partition(model, options["partition"], options["sample_input"])
    return options
