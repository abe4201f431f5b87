"""The techniques ``layerwise compare`` trains side by side, each built on a fresh model of a task.

A :class:`Method` turns a :class:`Build` (task, model, partition, step count, global policy) and
its settings into a :class:`Setup`: the optimizer, what is stepped after it, and whether
``optimizer.step`` wants a loss closure. Every method starts from the task's optimizer preset and
learning rate, so methods differ only in how the per-group learning rates move and which parts get
a gradient. A method also declares what an equal-cost plan needs: the period over which its step
cost repeats, its rare expensive rounds (:class:`Rounds`), and whether it costs exactly what the
baseline costs. Register your own with :func:`register_method`.

Examples:
    >>> from layerwise.compare.methods import METHODS, resolve_settings
    >>> resolve_settings("freezeout", {"t0": 0.5})
    {'t0': 0.5, 'strategy': 'cubic', 'scale_lr': True}
    >>> METHODS["multirate"].period(resolve_settings("multirate"))
    4
    >>> METHODS["hidlr"].rounds(resolve_settings("hidlr")).count(250)  # probing at steps 0, 16, 48, 112, 240
    5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from torch import nn
from torch.optim import Optimizer

from .. import recipes
from .._checks import (
    boolean,
    finite_nonneg,
    fraction,
    int_between,
    one_of,
    optional,
    positive_int,
    positive_number,
    unit_interval,
)
from .._probe_prefix import MODES as REUSE_MODES
from .._registry import Registry
from ..freezeout import STRATEGIES, FreezeOut, FreezeOutRule
from ..freezing import UNFREEZING_ORDERS, Freezer, FreezeWhenZero, GradualUnfreezing
from ..groups import Partition, by_depth_buckets, by_kind, explicit
from ..hidlr import HiDLR
from ..multirate import Multirate
from ..scheduler import LayerwiseLR, group_depths
from ..secant import MODES, SecantLR
from ..tasks import OPTIMIZER_PRESETS, Task, make_optimizer

__all__ = [
    "HIDLR_PROBING",
    "METHODS",
    "Build",
    "Method",
    "Rounds",
    "Setup",
    "build_setup",
    "check_methods",
    "checked",
    "default_methods",
    "method_snippet",
    "register_method",
    "resolve_settings",
    "two_groups",
]


class Stepped(Protocol):
    """Anything stepped once after every optimizer step (a scheduler, a freezing rule)."""

    def step(self) -> None: ...


@dataclass
class Setup:
    """What a training loop needs for one method.

    Attributes:
        optimizer: stepped every batch.
        scheduler: ``scheduler.step()`` after every ``optimizer.step()`` (None: nothing to step).
        wants_closure: ``optimizer.step(closure)`` with a closure returning the batch loss without backward.
        freezer: the method's :class:`Freezer`, to read which groups are frozen.
        eval_mode: called before every evaluation (Schedule-Free's ``optimizer.eval()``: the model
            takes the weights to evaluate); ``train_mode`` after it and before training.
        cache: options of a :class:`~layerwise.prefix_cache.FrozenPrefixCache` on ``freezer`` that the
            runner puts on the model (the ``+cache`` variants, :mod:`.cached`); None: no cache.
    """

    optimizer: Optimizer
    scheduler: Stepped | None = None
    wants_closure: bool = False
    freezer: Freezer | None = None
    eval_mode: Callable[[], None] | None = None
    train_mode: Callable[[], None] | None = None
    cache: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Build:
    """What a method is built for: a fresh ``model`` of ``task``, its ``partition``, the run's length."""

    task: Task
    model: nn.Module
    partition: Partition
    total_steps: int
    policy: str

    def param_groups(self, partition: Partition | None = None) -> list[dict[str, Any]]:
        """The task's LR and weight decay per group (no decay on biases and norms)."""
        part = self.partition if partition is None else partition
        return part.param_groups(lr=self.task.lr, weight_decay=self.task.weight_decay, no_decay=("bias", "norm"))

    def optimizer(self, partition: Partition | None = None) -> Optimizer:
        """The task's optimizer over :meth:`param_groups`."""
        return make_optimizer(self.task, self.param_groups(partition))


def _everywhere(task: Task, partition: Partition) -> str | None:
    del task, partition
    return None


def _once(settings: Mapping[str, Any]) -> int:
    del settings
    return 1


@dataclass(frozen=True)
class Rounds:
    """A method whose step cost is a plain step plus rare, expensive rounds (Hi-DLR's probing).

    Rounds are too sparse for a short timing block to hold them in the run's proportion (5 rounds
    in 250 steps), so the plan times the block with a round every ``every`` steps (``timed``: the
    settings that do that) and weighs the round steps' extra cost by the rounds a run makes.

    Attributes:
        timed: the settings the timing block runs: a round every ``every`` steps, the first at step 0.
        every: steps from one round to the next in the timing block.
        count: ``count(steps)``: the rounds a run of ``steps`` steps makes.
    """

    timed: Mapping[str, Any]
    every: int
    count: Callable[[int], int]


def _no_check(settings: Mapping[str, Any]) -> None:
    del settings


Check = Callable[[str, Any], Any]
"""``check(flag, value)`` raises ValueError (or TypeError) naming ``flag`` for a bad value."""


def checked(method: str, **checks: Check) -> Callable[[Mapping[str, Any]], None]:
    """A :attr:`Method.check` that runs ``checks[key](f"--set {method}.{key}", value)`` for every setting.

    Examples:
        >>> check = checked("mine", k=positive_int)
        >>> check({"k": 0})
        Traceback (most recent call last):
        ...
        ValueError: --set mine.k: must be an int >= 1, got 0
    """

    def check(settings: Mapping[str, Any]) -> None:
        for key, value in settings.items():
            if key in checks:
                checks[key](f"--set {method}.{key}", value)

    return check


def _policy(flag: str, value: Any) -> Any:
    return None if value is None else one_of(flag, value, tuple(recipes.POLICIES))


def _choice(*choices: Any) -> Check:
    def choice(flag: str, value: Any) -> Any:
        return one_of(flag, value, choices)

    return choice


def _t0(flag: str, value: Any) -> float:
    return fraction(flag, value, open_low=True)


@dataclass(frozen=True)
class Method:
    """A named technique: default settings, a builder and the tasks it applies to.

    Attributes:
        build: ``build(Build, settings) -> Setup`` (settings resolved: the defaults updated with overrides).
        defaults: every setting the method has, with its default.
        applies: ``applies(task, partition)`` says why the method cannot run on a task, or None.
        not_default: per regime (``"scratch"``, ``"fine-tuning"``), why the method is left out of
            that regime's default set (it still runs when named).
        period: ``period(settings)``: steps after which the method's step cost repeats (Multirate's
            k); an equal-cost plan times whole periods.
        rounds: ``rounds(settings) -> Rounds``: for a method with rare expensive rounds, how the
            plan times them (None: its cost repeats every ``period`` steps).
        same_cost: the method's steps cost exactly the baseline's (it only moves LRs), so an
            equal-cost plan gives it the baseline's steps without timing it.
        snippet: ``snippet(Build, settings) -> str``: the lines that set the method up in a plain loop.
        check: ``check(settings)`` raises ValueError naming ``--set METHOD.KEY`` for a bad value; it
            needs no model or data, so a comparison refuses bad settings before loading anything.
        uses_task_lr: the method starts from the task's learning rate (False: it sets or finds its own,
            as a parameter-free optimizer does), so an LR sweep runs it once.
        not_parallel: per data-parallel engine (``"ddp"``, ``"fsdp"``), why the method cannot run
            under it; ``layerwise compare --nproc`` / ``--fsdp`` refuses it with that reason.
    """

    name: str
    description: str
    build: Callable[[Build, dict[str, Any]], Setup]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    applies: Callable[[Task, Partition], str | None] = _everywhere
    not_default: Mapping[str, str] = field(default_factory=dict)
    period: Callable[[Mapping[str, Any]], int] = _once
    rounds: Callable[[Mapping[str, Any]], Rounds] | None = None
    same_cost: bool = False
    snippet: Callable[[Build, Mapping[str, Any]], str] | None = None
    check: Callable[[Mapping[str, Any]], None] = _no_check
    uses_task_lr: bool = True
    not_parallel: Mapping[str, str] = field(default_factory=dict)


METHODS: Registry[Method] = Registry("method")
"""Every registered method by name (``layerwise compare --list`` prints them)."""


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (a method of the same name is replaced, with a warning)."""
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a Method, got {type(method).__name__}")
    return METHODS.register(method.name, method, description=method.description)


def resolve_settings(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The method's defaults updated with ``overrides``, checked; unknown keys and bad values raise ValueError."""
    method = METHODS.get(name)
    defaults = dict(method.defaults)
    unknown = sorted(set(overrides or {}) - set(defaults))
    if unknown:
        raise ValueError(f"--set {name}.{unknown[0]}: unknown setting; {name} has {sorted(defaults) or 'none'}")
    settings = {**defaults, **(overrides or {})}
    method.check(settings)
    return settings


def check_methods(task: Task, names: Sequence[str], partition: Partition | None = None) -> None:
    """Raise ValueError naming every method that is unknown or (given the ``partition``) does not apply to ``task``."""
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods: unknown {unknown or 'none given'}; choose from {sorted(METHODS)}")
    if partition is None:
        return
    for name in names:
        reason = METHODS[name].applies(task, partition)
        if reason:
            raise ValueError(f"methods: {name} does not apply to task {task.name!r}: {reason}")


def default_methods(task: Task, partition: Partition) -> list[str]:
    """The methods a comparison of ``task`` runs when it names none: those that apply and fit its regime."""
    return [
        name
        for name, method in METHODS.items()
        if task.regime not in method.not_default and method.applies(task, partition) is None
    ]


def build_setup(build: Build, name: str, settings: Mapping[str, Any]) -> Setup:
    """Build method ``name`` (settings already resolved) for ``build``'s fresh model."""
    check_methods(build.task, [name], build.partition)
    return METHODS[name].build(build, dict(settings))


# ---- building blocks -------------------------------------------------------------------------


class _Chain:
    """Steps several objects in order (a freezing rule and a scheduler)."""

    def __init__(self, *parts: Stepped) -> None:
        self.parts = parts

    def step(self) -> None:
        for part in self.parts:
            part.step()


def _needs_groups(count: int) -> Callable[[Task, Partition], str | None]:
    def applies(task: Task, partition: Partition) -> str | None:
        del task
        if len(partition) < count:
            return f"it needs at least {count} groups; the task's partition has {len(partition)}"
        return None

    return applies


def _policy_name(build: Build, settings: Mapping[str, Any]) -> str:
    return settings.get("policy") or build.policy


def _scheduled(recipe: str, *, uses_policy: bool = True) -> Callable[[Build, dict[str, Any]], Setup]:
    """A recipe's schedule; its ``policy`` setting (None: the comparison's) picks the global policy."""

    def build(context: Build, settings: dict[str, Any]) -> Setup:
        optimizer = context.optimizer()
        options = {k: v for k, v in settings.items() if k != "policy"}
        global_policy = recipes.make_policy(_policy_name(context, settings)) if uses_policy else None
        schedule = recipes.build(recipe, len(context.partition), policy=global_policy, **options)
        return Setup(optimizer, LayerwiseLR(optimizer, context.total_steps, schedule=schedule))

    return build


def _freezeout(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = context.optimizer()  # FreezeOut's per-layer cosine is the whole schedule: no global policy
    freezeout = FreezeOut(context.model, optimizer, context.total_steps, **settings)
    return Setup(optimizer, freezeout, freezer=freezeout.freezer)


def _freezeout_soft(context: Build, settings: dict[str, Any]) -> Setup:
    """FreezeOut's LRs, but every group stays in the backward pass (soft freezing: no speed-up)."""
    optimizer = context.optimizer()
    depth = max(group_depths(optimizer.param_groups)) + 1
    rule = FreezeOutRule.build(depth, settings["t0"], settings["strategy"], scale_lr=settings["scale_lr"])
    return Setup(optimizer, LayerwiseLR(optimizer, context.total_steps, layers=rule))


def _policy_only(context: Build, optimizer: Optimizer) -> LayerwiseLR:
    return LayerwiseLR(optimizer, context.total_steps, policy=recipes.make_policy(context.policy))


def _adamw(context: Build, settings: dict[str, Any]) -> Setup:
    groups = context.partition.param_groups(
        lr=settings["lr"], weight_decay=settings["weight_decay"], no_decay=("bias", "norm")
    )
    optimizer = OPTIMIZER_PRESETS.get("adamw").build(groups, settings["lr"], settings["weight_decay"])
    return Setup(optimizer, _policy_only(context, optimizer))


def _head_only(context: Build, settings: dict[str, Any]) -> Setup:
    del settings
    optimizer = context.optimizer()
    freezer = Freezer(context.model, optimizer)
    freezer.freeze(*context.partition.names[:-1])
    return Setup(optimizer, _policy_only(context, optimizer), freezer=freezer)


def _unfreeze_every(context: Build, until: float) -> int:
    until = fraction("gradual-unfreezing.until", until, open_low=True)
    return max(1, round(until * context.total_steps / max(1, len(context.partition) - 1)))


def _gradual_unfreezing(context: Build, settings: dict[str, Any]) -> Setup:
    optimizer = context.optimizer()
    freezer = Freezer(context.model, optimizer)
    unfreezing = GradualUnfreezing(freezer, _unfreeze_every(context, settings["until"]), order=settings["order"])
    return Setup(optimizer, _Chain(unfreezing, _policy_only(context, optimizer)), freezer=freezer)


def _multirate_fast(context: Build, fast: Any) -> list[str]:
    count = len(context.partition)
    int_between("multirate.fast", fast, 1, count - 1, f"{count - 1} (the number of last groups that are fast)")
    return list(context.partition.names[-fast:])


def _multirate_base_options(task: Task, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The task preset's options; heavy-ball momentum (no Nesterov), the paper's Algorithm 1, unless asked;
    the ablations' ``drift`` (False: Algorithm 2), ``same_lr`` (h_S = h_F) and ``weight_decay``."""
    options = dict(OPTIMIZER_PRESETS.get(task.optimizer).options)
    if settings["heavy_ball"] and options.get("nesterov"):
        options["nesterov"] = False
    decay = settings["weight_decay"]
    options["weight_decay"] = task.weight_decay if decay is None else decay
    if not settings["drift"]:
        options["drift"] = False
    if settings["same_lr"]:
        options["slow_lr"] = task.lr  # the fast part's step (Table 2's ablation)
    return options


def _multirate(context: Build, settings: dict[str, Any]) -> Setup:
    k, task = settings["k"], context.task
    preset = OPTIMIZER_PRESETS.get(task.optimizer)
    # h = k x the task's LR: the fast part steps the task's LR every step, the slow part k x it every k steps
    optimizer = Multirate.from_partition(
        context.partition,
        fast=_multirate_fast(context, settings["fast"]),
        lr=task.lr * k,
        k=k,
        base=preset.cls,
        model=context.model,
        **_multirate_base_options(task, settings),
    )
    return Setup(optimizer, _policy_only(context, optimizer))


def _multirate_applies(task: Task, partition: Partition) -> str | None:
    if not task.head:
        return "the task's model has no output head to train fast (Task.head is False)"
    return _needs_groups(2)(task, partition)


SPLITS = ("head", "bias", "norm")
"""Hi-DLR's two-group splits (the paper's Table 2): the head, the biases or the norm layers vs the rest."""


def two_groups(model: nn.Module, partition: Partition, split: str) -> Partition:
    """``partition``'s parameters in two groups: ``rest`` first, then the head, the biases or the norms."""
    one_of("split", split, SPLITS)
    if split == "head":
        named = {"rest": list(partition.groups[:-1]), "head": [partition.groups[-1]]}
    else:
        kinds = by_kind(model)
        chosen = {id(p) for p in kinds[split].params} if split in kinds.names else set()
        named = {"rest": [], split: []}
        for group in partition:
            for name, param in zip(group.param_names, group.params):
                named[split if id(param) in chosen else "rest"].append(name)
        return explicit(model, {name: names for name, names in named.items() if names})
    return explicit(model, {name: [n for g in groups for n in g.param_names] for name, groups in named.items()})


def _hidlr_partition(context: Build, buckets: int | None, split: str | None = None) -> Partition:
    task, partition = context.task, context.partition
    if split is not None:
        return two_groups(context.model, partition, split)
    if buckets == 1:  # Hi-ULR (GeN): one learning rate, whatever the task's own groups
        return explicit(context.model, {"all": [name for group in partition for name in group.param_names]})
    if buckets is None or task.partition is not None:
        return partition  # a task's own partition (NAM's feature networks, a toy's x and y) is kept
    positive_int("hidlr.groups", buckets)
    return by_depth_buckets(context.model, min(buckets, len(partition)), sample_input=task.sample_input())


def _hidlr_options(task: Task, settings: Mapping[str, Any]) -> dict[str, Any]:
    clip, cap = settings["clip"], settings["max_interval"]
    return {
        "update_every": settings["update_every"],
        "gamma": settings["gamma"],
        "clip": None if clip is None else (0.0, clip * task.lr),
        "joint_scale": settings["joint_scale"],
        "per_group": settings["per_group"],
        "max_interval": None if cap is None else max(cap, settings["update_every"]),  # never below Phi
        "interval_tolerance": settings["interval_tolerance"],
        "probe_fraction": settings["probe_fraction"],
        "prefix_reuse": settings["prefix_reuse"],
    }


def _hidlr(context: Build, settings: dict[str, Any]) -> Setup:
    base = context.optimizer(_hidlr_partition(context, settings["groups"], settings["split"]))
    options = _hidlr_options(context.task, settings)
    if options["prefix_reuse"] == "allow" and any(hasattr(p, "device_mesh") for p in context.model.parameters()):
        options["prefix_reuse"] = False  # FSDP2 shards: no reuse, as "allow" falls back where reuse is not valid
    optimizer = HiDLR(
        base,
        schedule=recipes.make_policy(context.policy),
        total_steps=context.total_steps,
        model=context.model,
        **options,
    )
    return Setup(optimizer, wants_closure=True)


def _secant_mode(task: Task, settings: Mapping[str, Any]) -> str:
    return settings["mode"] or ("bb" if task.optimizer == "gd" else "line")


def _secant(context: Build, settings: dict[str, Any]) -> Setup:
    clip = settings["clip"]
    optimizer = SecantLR(
        context.optimizer(),
        mode=_secant_mode(context.task, settings),
        beta=settings["beta"],
        gamma=settings["gamma"],
        scale=settings["scale"],
        clip=None if clip is None else (0.0, clip * context.task.lr),
        schedule=recipes.make_policy(context.policy),
        total_steps=context.total_steps,
    )
    return Setup(optimizer)


def _freezeout_hidlr(context: Build, settings: dict[str, Any]) -> Setup:
    groups = _hidlr_partition(context, settings["groups"], settings["split"])
    base = context.optimizer(groups)
    # no 1/t_i scaling: Hi-DLR finds each group's LR itself
    schedule = recipes.build("freezeout", len(groups), t0=settings["t0"], strategy=settings["strategy"], scale_lr=False)
    optimizer = HiDLR(
        base,
        schedule=schedule,
        total_steps=context.total_steps,
        model=context.model,
        **_hidlr_options(context.task, settings),
    )
    freeze = FreezeWhenZero.from_schedule(Freezer(context.model, base), schedule, context.total_steps)
    return Setup(optimizer, freeze, wants_closure=True, freezer=freeze.freezer)


# ---- snippets: the lines a user copies into a plain PyTorch loop -----------------------------


_LOOPS = {
    "sched": "loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step(); sched.step()",
    "closure": "loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step(lambda: loss_fn(model(x), y))",
    "plain": "loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()",
}


def _loop(kind: str, steps: int) -> str:
    return f"for x, y in loader:   # {steps} steps\n    {_LOOPS[kind]}"


def method_snippet(build: Build, name: str, settings: Mapping[str, Any]) -> str | None:
    """The lines that set method ``name`` up with ``settings`` in a plain PyTorch loop (None: no snippet)."""
    method = METHODS.get(name)
    if method.snippet is None:
        return None
    if build.task.partition is None:
        imports, part = "import torch, layerwise, layerwise.recipes", "part = layerwise.by_layer(model, sample_input=x)"
    else:
        imports = "import torch, layerwise, layerwise.recipes, layerwise.tasks"
        part = f"part = layerwise.tasks.get_task({build.task.name!r}).partition_of(model)   # the task's own groups"
    return f"{imports}\n{part}\n{method.snippet(build, settings)}"


def _optimizer_line(build: Build) -> str:
    task = build.task
    preset = OPTIMIZER_PRESETS.get(task.optimizer)
    options = "".join(f", {k}={v!r}" for k, v in preset.options.items())
    return (
        f"opt = torch.optim.{preset.cls.__name__}(part.param_groups(lr={task.lr:g}, "
        f'weight_decay={task.weight_decay:g}, no_decay=("bias", "norm")), lr={task.lr:g}{options})'
    )


def _kwargs(settings: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={settings[k]!r}" for k in keys)


def _policy_expr(name: str) -> str:
    return f'layerwise.recipes.make_policy("{name}")'


def _scheduled_snippet(recipe: str, *, uses_policy: bool = True):
    def snippet(build: Build, settings: Mapping[str, Any]) -> str:
        options = [k for k in settings if k != "policy" and settings[k] is not None]
        policy = f", policy={_policy_expr(_policy_name(build, settings))}" if uses_policy else ""
        extra = f", {_kwargs(settings, options)}" if options else ""
        return (
            f"{_optimizer_line(build)}\n"
            f'schedule = layerwise.recipes.build("{recipe}", len(part){policy}{extra})\n'
            f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, schedule=schedule)\n"
            f"{_loop('sched', build.total_steps)}"
        )

    return snippet


def _policy_snippet(build: Build) -> str:
    return (
        f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, policy={_policy_expr(build.policy)})\n"
        f"{_loop('sched', build.total_steps)}"
    )


def _freezeout_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"{_optimizer_line(build)}\n"
        f"sched = layerwise.FreezeOut(model, opt, total_steps={build.total_steps}, "
        f"{_kwargs(settings, ['t0', 'strategy', 'scale_lr'])})\n"
        f"{_loop('sched', build.total_steps)}"
    )


def _freezeout_soft_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"{_optimizer_line(build)}\n"
        f"rule = layerwise.FreezeOutRule.build(len(part), {settings['t0']!r}, {settings['strategy']!r}, "
        f"scale_lr={settings['scale_lr']!r})   # the LRs only: nothing leaves the backward pass\n"
        f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, layers=rule)\n"
        f"{_loop('sched', build.total_steps)}"
    )


def _head_only_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    del settings
    return (
        f"{_optimizer_line(build)}\n"
        "freezer = layerwise.Freezer(model, opt); freezer.freeze(*part.names[:-1])   # only the head trains\n"
        f"{_policy_snippet(build)}"
    )


def _unfreezing_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"{_optimizer_line(build)}\n"
        "freezer = layerwise.Freezer(model, opt)\n"
        f"unfreeze = layerwise.GradualUnfreezing(freezer, "
        f"every={_unfreeze_every(build, settings['until'])}, order={settings['order']!r})\n"
        f"{_policy_snippet(build)}; unfreeze.step()"
    )


def _multirate_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    task, k = build.task, settings["k"]
    preset = OPTIMIZER_PRESETS.get(task.optimizer)
    options = "".join(f", {key}={value!r}" for key, value in _multirate_base_options(task, settings).items())
    return (
        f"opt = layerwise.Multirate.from_partition(part, fast={_multirate_fast(build, settings['fast'])!r}, "
        f"lr={task.lr * k:g}, k={k}, base=torch.optim.{preset.cls.__name__}, model=model{options})\n"
        f"{_policy_snippet(build)}"
    )


def _hidlr_snippet_options(build: Build, settings: Mapping[str, Any]) -> str:
    options = _hidlr_options(build.task, settings)
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def _hidlr_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    buckets, split = settings["groups"], settings["split"]
    regroup = (
        f"part = layerwise.by_depth_buckets(model, {buckets}, sample_input=x)\n"
        if buckets is not None and build.task.partition is None
        else ""
    )
    if buckets == 1:
        regroup = 'part = layerwise.explicit(model, {"all": [n for g in part for n in g.param_names]})   # Hi-ULR\n'

    if split is not None:
        regroup = f'part = layerwise.compare.methods.two_groups(model, part, "{split}")   # {split} | rest\n'

    return (
        f"{regroup}{_optimizer_line(build)}\n"
        f"opt = layerwise.HiDLR(opt, schedule={_policy_expr(build.policy)}, total_steps={build.total_steps}, "
        f"model=model, {_hidlr_snippet_options(build, settings)})\n"
        f"{_loop('closure', build.total_steps)}   # the closure: forward only, for the probes"
    )


def _secant_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    clip = settings["clip"]
    return (
        f"{_optimizer_line(build)}\n"
        f'opt = layerwise.SecantLR(opt, mode="{_secant_mode(build.task, settings)}", '
        f"{_kwargs(settings, ['beta', 'gamma', 'scale'])}, "
        f"clip={None if clip is None else (0.0, clip * build.task.lr)!r}, "
        f"schedule={_policy_expr(build.policy)}, total_steps={build.total_steps})\n"
        f"{_loop('plain', build.total_steps)}"
    )


def _adamw_snippet(build: Build, settings: Mapping[str, Any]) -> str:
    return (
        f"opt = torch.optim.AdamW(part.param_groups(lr={settings['lr']:g}, weight_decay={settings['weight_decay']:g}, "
        f'no_decay=("bias", "norm")), lr={settings["lr"]:g})\n'
        f"{_policy_snippet(build)}"
    )


# ---- the registered methods ------------------------------------------------------------------

_HIDLR_CHECKS: dict[str, Check] = {
    "groups": optional(positive_int),
    "split": optional(_choice(*SPLITS)),
    "update_every": positive_int,
    "gamma": unit_interval,
    "clip": optional(positive_number),
    "joint_scale": boolean,
    "per_group": boolean,
    "max_interval": optional(positive_int),
    "interval_tolerance": positive_number,
    "probe_fraction": lambda name, value: fraction(name, value, open_low=True, what="a fraction of the batch"),
    "prefix_reuse": _choice(*REUSE_MODES),
}
_FREEZEOUT_CHECKS: dict[str, Check] = {"t0": _t0, "strategy": _choice(*STRATEGIES), "scale_lr": boolean}

HIDLR_PROBING = {
    "max_interval": 128,  # adaptive: as accurate as fixed Phi, fewer rounds (BENCHMARKS.md, Hi-DLR probing)
    "interval_tolerance": 1.0,  # the interval grows unless a round moves an LR by more than 100 %
    "probe_fraction": 1.0,  # half-batch probes cost 1.5 points at equal steps
    "prefix_reuse": "allow",  # bitwise the same losses, fewer forward ops; off where not valid
}
"""The ``hidlr`` method's probing options (``bench hidlr --quick`` times them as ``relative_speed_adaptive``)."""

_HIDLR_DEFAULTS = {
    "groups": 3,
    "split": None,
    "update_every": 16,
    "gamma": 0.9,
    "clip": 10.0,
    "joint_scale": False,
    "per_group": True,
    **HIDLR_PROBING,
}

_MULTIRATE_DEFAULTS = {"heavy_ball": True, "drift": True, "same_lr": False, "weight_decay": None}
_MULTIRATE_CHECKS: dict[str, Check] = {
    "k": positive_int,
    "fast": positive_int,
    "heavy_ball": boolean,
    "drift": boolean,
    "same_lr": boolean,
    "weight_decay": optional(finite_nonneg),
}

_RANDOM_BODY = "from scratch, the body's random features are not worth keeping"
_FINE_TUNING_ONLY = "a fine-tuning method"


_TIMED_ROUND_EVERY = 4
"""Hi-DLR's probing interval in the plan's timing block: 3 rounds besides step 0's in 16 steps."""


def _hidlr_round_count(update_every: int, max_interval: int | None, steps: int) -> int:
    """Probing rounds in ``steps`` steps: at step 0, then every Phi steps, Phi doubling up to the cap if adaptive.

    An adaptive interval is counted as it ramps when every round is accepted with a small move (the
    default comparison's case); a round that moves an LR more keeps the interval, so a run can make more.
    """
    count, step, interval = 0, 0, update_every
    while step < steps:
        count, step = count + 1, step + interval
        if max_interval is not None:
            interval = min(2 * interval, max_interval)
    return count


def _hidlr_rounds(settings: Mapping[str, Any]) -> Rounds:
    every = _TIMED_ROUND_EVERY
    timed = {**settings, "update_every": every, "max_interval": None}
    return Rounds(timed, every, partial(_hidlr_round_count, settings["update_every"], settings["max_interval"]))


def _multirate_period(settings: Mapping[str, Any]) -> int:
    return settings["k"]


def register_defaults() -> None:
    """Register the built-in methods, in the order a comparison runs them."""
    scratch_only = {"fine-tuning": "a from-scratch experiment (Smith's layer LRs); not in the fine-tuning set"}
    for method in (
        Method(
            "baseline",
            "uniform LR under the global policy (full training or full fine-tuning)",
            _scheduled("constant"),
            {"policy": None},
            same_cost=True,
            snippet=_scheduled_snippet("constant"),
            check=checked("baseline", policy=_policy),
        ),
        Method(
            "adamw",
            "uniform AdamW at `lr` (instead of the task's optimizer) under the global policy",
            _adamw,
            {"lr": 1e-3, "weight_decay": 0.01},
            check=checked("adamw", lr=positive_number, weight_decay=finite_nonneg),
            uses_task_lr=False,
            not_default={regime: "another base optimizer, run on request" for regime in ("scratch", "fine-tuning")},
            snippet=_adamw_snippet,
        ),
        Method(
            "head-only",
            "only the last group (the head) trains; the rest stays frozen at its pretrained weights",
            _head_only,
            applies=_multirate_applies,
            not_default={"scratch": _RANDOM_BODY},
            snippet=_head_only_snippet,
        ),
        Method(
            "discriminative",
            "ULMFiT discriminative LRs: each group 1/ratio of the next (the head at the full LR), times the policy",
            _scheduled("discriminative"),
            {"ratio": 2.6, "policy": None},
            _needs_groups(2),
            not_default={"scratch": "slows the early layers a random start needs most (-15 points on fashion-mnist)"},
            same_cost=True,
            snippet=_scheduled_snippet("discriminative"),
            check=checked("discriminative", ratio=positive_number, policy=_policy),
        ),
        Method(
            "gradual-unfreezing",
            "ULMFiT gradual unfreezing: the head first, then one more group towards the input at even intervals "
            "until `until` of training, times the policy; `order=input-first` runs from the input to the head",
            _gradual_unfreezing,
            {"until": 0.5, "order": "head-first"},
            _needs_groups(2),
            not_default={"scratch": _RANDOM_BODY},
            snippet=_unfreezing_snippet,
            check=checked("gradual-unfreezing", until=_t0, order=_choice(*UNFREEZING_ORDERS)),
        ),
        Method(
            "llr",
            "Smith's layer LRs: multipliers `first` -> `last` across depth that reverse linearly by the end, "
            "times the policy",
            _scheduled("llr"),
            {"first": 1.5, "last": 0.5, "policy": None},
            _needs_groups(2),
            not_default=scratch_only,
            same_cost=True,
            snippet=_scheduled_snippet("llr"),
            check=checked("llr", first=finite_nonneg, last=finite_nonneg, policy=_policy),
        ),
        Method(
            "staggered",
            "a 1cycle per group, peaks staggered from the first group (20 %) to the last (60 %); `first_high` -> "
            "`last_high` and `first_low` -> `last_low` spread the groups' maxima and minima (None: 1 and 0.04 x it)",
            _scheduled("staggered", uses_policy=False),
            {
                "first_peak": 0.2,
                "last_peak": 0.6,
                "first_high": None,
                "last_high": None,
                "first_low": None,
                "last_low": None,
            },
            _needs_groups(2),
            not_default=scratch_only,
            same_cost=True,
            snippet=_scheduled_snippet("staggered", uses_policy=False),
            check=checked(
                "staggered",
                first_peak=fraction,
                last_peak=fraction,
                **dict.fromkeys(("first_high", "last_high", "first_low", "last_low"), optional(finite_nonneg)),
            ),
        ),
        Method(
            "freezeout",
            "FreezeOut: per-group cosine to zero, earliest groups first, then frozen (out of the backward pass)",
            _freezeout,
            {"t0": 0.8, "strategy": "cubic", "scale_lr": True},
            _needs_groups(2),
            snippet=_freezeout_snippet,
            check=checked("freezeout", **_FREEZEOUT_CHECKS),
        ),
        Method(
            "freezeout-soft",
            "soft freezing (Smith's thread): FreezeOut's per-group cosine to zero, but no group leaves the backward "
            "pass, so it costs what the baseline costs; beside `freezeout` it isolates what hard freezing buys",
            _freezeout_soft,
            {"t0": 0.8, "strategy": "cubic", "scale_lr": True},
            _needs_groups(2),
            not_default={"scratch": "an ablation, run on request", "fine-tuning": "an ablation, run on request"},
            same_cost=True,
            snippet=_freezeout_soft_snippet,
            check=checked("freezeout-soft", **_FREEZEOUT_CHECKS),
        ),
        Method(
            "multirate",
            "Multirate (Algorithm 1): the last `fast` groups step every step, the rest get a gradient every k steps; "
            "on SGD tasks heavy-ball momentum as in the paper's Algorithm 1 (`heavy_ball=false`: the task's Nesterov); "
            "ablations: `drift=false` (Algorithm 2), `same_lr` (slow step = fast step), `weight_decay` (None: task's)",
            _multirate,
            {**_MULTIRATE_DEFAULTS, "k": 4, "fast": 1},
            _multirate_applies,
            not_default={"scratch": f"{_FINE_TUNING_ONLY}: from scratch it is 13 points behind at 250 steps"},
            period=_multirate_period,
            snippet=_multirate_snippet,
            check=checked("multirate", **_MULTIRATE_CHECKS),
        ),
        Method(
            "multirate-block",
            "Multirate with the head and the last block fast (`fast` = 2 last groups)",
            _multirate,
            {**_MULTIRATE_DEFAULTS, "k": 4, "fast": 2},
            _needs_groups(3),
            not_default={"scratch": _FINE_TUNING_ONLY},
            period=_multirate_period,
            snippet=_multirate_snippet,
            check=checked("multirate-block", **_MULTIRATE_CHECKS),
        ),
        Method(
            "hidlr",
            "Hi-DLR: per-group LRs from a quadratic fit of 4K probe losses every `update_every` steps, "
            "on `groups` layer buckets (or two groups, `split` = head, bias or norm vs the rest: the paper's "
            "Table 2; groups=1 is Hi-ULR); eta* clipped to `clip` x the task LR; times the policy",
            _hidlr,
            _HIDLR_DEFAULTS,
            rounds=_hidlr_rounds,
            snippet=_hidlr_snippet,
            check=checked("hidlr", **_HIDLR_CHECKS),
        ),
        Method(
            "secant",
            "Smith's secant layer LRs: each group's LR from running averages of its weight and gradient changes "
            "(mode bb = 1/curvature for gradient descent, line = secant line minimum for other optimizers; "
            "None picks by the task's optimizer), clipped to `clip` x the task LR, times the policy",
            _secant,
            {"mode": None, "beta": 0.9, "gamma": 0.9, "scale": 1.0, "clip": 10.0},
            not_default={"fine-tuning": "a from-scratch experiment; not in the fine-tuning set"},
            snippet=_secant_snippet,
            check=checked(
                "secant",
                mode=optional(_choice(*MODES)),
                beta=unit_interval,
                gamma=unit_interval,
                scale=positive_number,
                clip=optional(positive_number),
            ),
        ),
        Method(
            "freezeout+hidlr",
            "Hi-DLR's LRs times FreezeOut's per-group cosine, groups frozen when their factor reaches 0",
            _freezeout_hidlr,
            {**_HIDLR_DEFAULTS, "t0": 0.8, "strategy": "cubic"},
            _needs_groups(2),
            not_default={"fine-tuning": "a combination; FreezeOut and Hi-DLR each run in the fine-tuning set"},
            rounds=_hidlr_rounds,
            check=checked("freezeout+hidlr", **_HIDLR_CHECKS, **{k: _FREEZEOUT_CHECKS[k] for k in ("t0", "strategy")}),
        ),
    ):
        register_method(method)


register_defaults()
