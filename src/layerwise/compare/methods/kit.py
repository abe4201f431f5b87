"""The kit for writing a ``layerwise compare`` method: what a method is, its registry, and the helpers.

A :class:`Method` turns a :class:`Build` (task, model, partition, step count, global policy) and
its settings into a :class:`Setup`: the optimizer, what is stepped after it, and whether
``optimizer.step`` wants a loss closure. A method also declares its settings' checks
(:func:`checked`) and its snippet: the lines that set it up in a plain PyTorch loop, written with
:func:`optimizer_line`, :func:`policy_snippet` and :func:`loop`. Every family file of
:mod:`layerwise.compare.methods` and :mod:`layerwise.compare.peers` is written with this module only.

Examples:
    >>> from layerwise._checks import positive_int
    >>> check = checked("mine", k=positive_int)
    >>> check({"k": 0})
    Traceback (most recent call last):
    ...
    ValueError: --set mine.k: must be an int >= 1, got 0
    >>> print(loop("plain", 3))
    for x, y in loader:   # 3 steps
        loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn
from torch.optim import Optimizer

from ... import recipes
from ..._checks import fraction, one_of
from ..._registry import Registry
from ...freezing import Freezer
from ...groups import Partition
from ...scheduler import LayerwiseLR
from ...tasks import Task, make_optimizer, optimizer_preset

__all__ = [
    "LOOPS",
    "METHODS",
    "OPTIMIZER_SETTINGS",
    "OPTIMIZER_USES",
    "WITHOUT_SETUP",
    "Build",
    "Chain",
    "Check",
    "Method",
    "Setup",
    "Stepped",
    "build_setup",
    "check_methods",
    "checked",
    "choice",
    "default_methods",
    "keeps_state",
    "kwargs_expr",
    "loop",
    "method_snippet",
    "needs_groups",
    "needs_head",
    "optimizer_line",
    "policy_check",
    "policy_expr",
    "policy_only",
    "policy_snippet",
    "positive_fraction",
    "register_method",
    "resolve_settings",
    "scheduled",
    "scheduled_snippet",
    "setup_snippet",
]


class Stepped(Protocol):
    """Anything stepped once after every optimizer step (a scheduler, a freezing rule)."""

    def step(self) -> None: ...


@dataclass
class Setup:
    """What a training loop needs for one method.

    Attributes:
        optimizer: stepped every batch.
        scheduler: what follows the run's progress (an LR policy, freeze times): ``scheduler.step()``
            after every ``optimizer.step()``, or, under ``--budget time``, up to the budget's share
            after each step (0 or several times; timed as training). None: nothing to step. What must
            follow every optimizer step whatever the budget (DoG's iterate averager) is an optimizer
            step hook instead.
        wants_closure: ``optimizer.step(closure)`` with a closure returning the batch loss without backward.
        freezer: the method's :class:`Freezer`, to read which groups are frozen.
        eval_mode: called before every evaluation (Schedule-Free's ``optimizer.eval()``: the model
            takes the weights to evaluate); ``train_mode`` after it and before training.
        cache: options of a :class:`~layerwise.prefix_cache.FrozenPrefixCache` on ``freezer`` that the
            runner puts on the model (the ``+cache`` variants, :mod:`layerwise.compare.cached`); None: no cache.
        records: called when the run ends: what the method recorded (AutoFreeze's decisions), added
            to the run's record.
    """

    optimizer: Optimizer
    scheduler: Stepped | None = None
    wants_closure: bool = False
    freezer: Freezer | None = None
    eval_mode: Callable[[], None] | None = None
    train_mode: Callable[[], None] | None = None
    cache: Mapping[str, Any] | None = None
    records: Callable[[], Mapping[str, Any]] | None = None


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


def _no_check(settings: Mapping[str, Any]) -> None:
    del settings


def _fits_any(task: Task, partition: Partition, settings: Mapping[str, Any]) -> None:
    del task, partition, settings


OPTIMIZER_USES = {
    "task": "trains with the task's optimizer",
    "wraps": "wraps the task's optimizer and sets each group's LR itself",
    "own": "replaces the task's optimizer with its own",
}
"""What a method does with the task's optimizer (:attr:`Method.optimizer_use`), in words."""


@dataclass(frozen=True)
class Method:
    """A named technique: default settings, a builder and the tasks it applies to.

    Attributes:
        build: ``build(Build, settings) -> Setup`` (settings resolved: the defaults updated with overrides).
        defaults: every setting the method has, with its default.
        applies: ``applies(task, partition)`` says why the method cannot run on a task, or None.
        not_default: per regime (``"scratch"``, ``"fine-tuning"``), why the method is left out of
            that regime's default set (it still runs when named).
        snippet: ``snippet(Build, settings) -> str``: the lines that set the method up in a plain loop.
        check: ``check(settings)`` raises ValueError naming ``--set METHOD.KEY`` for a bad value; it
            needs no model or data, so a comparison refuses bad settings before loading anything.
        fits: ``fits(task, partition, settings)`` raises ValueError naming ``--set METHOD.KEY`` for a
            setting this task's partition cannot take (LISA's ``gamma`` above its sampled groups):
            checked with the request, on the model it builds, before anything trains.
        uses_task_lr: the method starts from the task's learning rate (False: it sets or finds its own,
            as a parameter-free optimizer does), so an LR sweep runs it once.
        not_parallel: per data-parallel engine (``"ddp"``, ``"fsdp"``), why the method cannot run
            under it; ``layerwise compare --nproc`` / ``--fsdp`` refuses it with that reason.
        optimizer_use: what it does with the task's optimizer: ``"task"`` (trains with it),
            ``"wraps"`` (wraps it and sets each group's LR itself: Hi-DLR, SecantLR) or ``"own"``
            (its own optimizer: AdamW, Prodigy, Muon, ...); ``--list`` and the report say so.
    """

    name: str
    description: str
    build: Callable[[Build, dict[str, Any]], Setup]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    applies: Callable[[Task, Partition], str | None] = _everywhere
    not_default: Mapping[str, str] = field(default_factory=dict)
    snippet: Callable[[Build, Mapping[str, Any]], str] | None = None
    check: Callable[[Mapping[str, Any]], None] = _no_check
    fits: Callable[[Task, Partition, Mapping[str, Any]], None] = _fits_any
    uses_task_lr: bool = True
    not_parallel: Mapping[str, str] = field(default_factory=dict)
    optimizer_use: str = "task"

    def __post_init__(self) -> None:
        one_of("optimizer_use", self.optimizer_use, tuple(OPTIMIZER_USES))


# ---- the registry ----------------------------------------------------------------------------

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


def method_snippet(build: Build, name: str, settings: Mapping[str, Any]) -> str | None:
    """The lines that set method ``name`` up with ``settings`` in a plain PyTorch loop (None: no snippet):
    :func:`setup_snippet`, then (after :data:`WITHOUT_SETUP`, commented out) the method's own lines, which
    need no ``layerwise.compare`` (the ``+cache`` variants: those alone, not commented)."""
    method = METHODS.get(name)
    if method.snippet is None:
        return None
    if build.task.partition is None:
        imports, part = "import torch, layerwise, layerwise.recipes", "part = layerwise.by_layer(model, sample_input=x)"
    else:
        imports = "import torch, layerwise, layerwise.recipes, layerwise.tasks"
        part = f"part = layerwise.tasks.get_task({build.task.name!r}).partition_of(model)   # the task's own groups"
    plain = f"{imports}\n{part}\n{method.snippet(build, settings)}"
    if name.endswith("+cache"):  # its cache reads a loader of example indices: no one-call form
        return plain
    commented = "\n".join(f"# {line}" for line in plain.split("\n"))
    return f"{setup_snippet(build, name, settings)}\n{WITHOUT_SETUP}\n{commented}"


# ---- checks ----------------------------------------------------------------------------------

Check = Callable[[str, Any], Any]
"""``check(flag, value)`` raises ValueError (or TypeError) naming ``flag`` for a bad value."""


def checked(method: str, **checks: Check) -> Callable[[Mapping[str, Any]], None]:
    """A :attr:`Method.check` that runs ``checks[key](f"--set {method}.{key}", value)`` for every setting."""

    def check(settings: Mapping[str, Any]) -> None:
        for key, value in settings.items():
            if key in checks:
                checks[key](f"--set {method}.{key}", value)

    return check


def policy_check(flag: str, value: Any) -> Any:
    """A ``policy`` setting: None (the comparison's policy) or a registered global policy's name."""
    return None if value is None else one_of(flag, value, tuple(recipes.POLICIES))


def choice(*choices: Any) -> Check:
    """A :data:`Check` accepting one of ``choices``."""

    def check(flag: str, value: Any) -> Any:
        return one_of(flag, value, choices)

    return check


def positive_fraction(flag: str, value: Any) -> float:
    """A :data:`Check` accepting a fraction of training in (0, 1]."""
    return fraction(flag, value, open_low=True)


def needs_groups(count: int) -> Callable[[Task, Partition], str | None]:
    """A :attr:`Method.applies` refusing a partition of fewer than ``count`` groups."""

    def applies(task: Task, partition: Partition) -> str | None:
        del task
        if len(partition) < count:
            return f"it needs at least {count} groups; the task's partition has {len(partition)}"
        return None

    return applies


def needs_head(task: Task, partition: Partition) -> str | None:
    """A :attr:`Method.applies` refusing a model without an output head, or of one group."""
    if not task.head:
        return "the task's model has no output head to train fast (Task.head is False)"
    return needs_groups(2)(task, partition)


# ---- building blocks -------------------------------------------------------------------------


class Chain:
    """Steps several objects in order (a freezing rule and a scheduler); its state is every part's, in order."""

    def __init__(self, *parts: Stepped) -> None:
        self.parts = parts

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def unsaved(self) -> str | None:
        """The class of the first part that keeps no state (a checkpoint could not resume it), else None."""
        return next((type(p).__name__ for p in self.parts if not callable(getattr(p, "state_dict", None))), None)

    def state_dict(self) -> dict[str, Any]:
        missing = self.unsaved()
        if missing is not None:
            raise ValueError(f"its {missing} keeps no state, so a checkpoint could not resume it")
        return {"parts": [part.state_dict() for part in self.parts]}  # type: ignore[attr-defined]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        parts = state_dict.get("parts") if isinstance(state_dict, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.parts):
            raise ValueError("the checkpoint holds another technique's state")
        for part, state in zip(self.parts, parts):
            part.load_state_dict(state)  # type: ignore[attr-defined]


def keeps_state(stepped: Any) -> bool:
    """Whether a Setup's stepped part can be checkpointed (a :class:`Chain`: every part of it)."""
    if isinstance(stepped, Chain):
        return stepped.unsaved() is None
    return callable(getattr(stepped, "state_dict", None))


def policy_only(context: Build, optimizer: Optimizer) -> LayerwiseLR:
    """The comparison's global policy on every group of ``optimizer``, no layer rule."""
    return LayerwiseLR(optimizer, context.total_steps, policy=recipes.make_policy(context.policy))


def _policy_name(build: Build, settings: Mapping[str, Any]) -> str:
    return settings.get("policy") or build.policy


def scheduled(recipe: str, *, uses_policy: bool = True) -> Callable[[Build, dict[str, Any]], Setup]:
    """A builder of ``recipe``'s schedule; its ``policy`` setting (None: the comparison's) picks the global policy."""

    def build(context: Build, settings: dict[str, Any]) -> Setup:
        optimizer = context.optimizer()
        options = {k: v for k, v in settings.items() if k != "policy"}
        global_policy = recipes.make_policy(_policy_name(context, settings)) if uses_policy else None
        schedule = recipes.build(recipe, len(context.partition), policy=global_policy, **options)
        return Setup(optimizer, LayerwiseLR(optimizer, context.total_steps, schedule=schedule))

    return build


# ---- snippets: the lines a user copies into a plain PyTorch loop -----------------------------

LOOPS = {
    "sched": "loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step(); sched.step()",
    "closure": "loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step(lambda: loss_fn(model(x), y))",
    "plain": "loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step()",
    "closure+sched": (
        "loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward(); opt.step(lambda: loss_fn(model(x), y)); "
        "sched.step()"
    ),
}
"""A snippet loop's body by kind: stepping a ``sched`` after ``opt``, a loss ``closure``, both, or ``plain``."""


def loop(kind: str, steps: int) -> str:
    """A snippet's training loop over ``loader`` with the :data:`LOOPS` body ``kind``."""
    return f"for x, y in loader:   # {steps} steps\n    {LOOPS[kind]}"


def optimizer_line(build: Build) -> str:
    """The snippet line making ``opt`` as :meth:`Build.optimizer` does: the task's preset over ``part``."""
    task = build.task
    preset = optimizer_preset(task)
    options = "".join(f", {k}={v!r}" for k, v in preset.options.items())
    return (
        f"opt = {preset.class_path}(part.param_groups(lr={task.lr:g}, "
        f'weight_decay={task.weight_decay:g}, no_decay=("bias", "norm")), lr={task.lr:g}{options})'
    )


def kwargs_expr(settings: Mapping[str, Any], keys: Sequence[str]) -> str:
    """``settings``' ``keys`` as keyword arguments: ``"k=1, t0=0.5"``."""
    return ", ".join(f"{k}={settings[k]!r}" for k in keys)


def policy_expr(name: str) -> str:
    """The snippet expression making global policy ``name``."""
    return f'layerwise.recipes.make_policy("{name}")'


def policy_snippet(build: Build) -> str:
    """The snippet lines of :func:`policy_only` and its loop: ``sched`` stepped after ``opt``."""
    return (
        f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, policy={policy_expr(build.policy)})\n"
        f"{loop('sched', build.total_steps)}"
    )


def scheduled_snippet(recipe: str, *, uses_policy: bool = True) -> Callable[[Build, Mapping[str, Any]], str]:
    """The snippet of :func:`scheduled`'s builder."""

    def snippet(build: Build, settings: Mapping[str, Any]) -> str:
        options = [k for k in settings if k != "policy" and settings[k] is not None]
        policy = f", policy={policy_expr(_policy_name(build, settings))}" if uses_policy else ""
        extra = f", {kwargs_expr(settings, options)}" if options else ""
        return (
            f"{optimizer_line(build)}\n"
            f'schedule = layerwise.recipes.build("{recipe}", len(part){policy}{extra})\n'
            f"sched = layerwise.LayerwiseLR(opt, total_steps={build.total_steps}, schedule=schedule)\n"
            f"{loop('sched', build.total_steps)}"
        )

    return snippet


# ---- the one-call form: layerwise.compare.setup and a loop that trains any method ------------

OPTIMIZER_SETTINGS = ("lr", "weight_decay")
"""A method's own settings that ``layerwise.compare.setup``'s ``lr`` and ``weight_decay`` give (``adamw``,
``muon``, ``lars``, ``lamb``; ``multirate``'s ``weight_decay``)."""

WITHOUT_SETUP = "# or the same without layerwise.compare (uncomment these lines instead):"
"""The line of :func:`method_snippet` between the one-call form and the method's own lines, commented out."""

_SETUP_LOOP = (
    "    loss = loss_fn(model(x), y); opt.zero_grad(); loss.backward()\n"
    "    if setup.wants_closure: opt.step(lambda: loss_fn(model(x), y))   # Hi-DLR's probes: forward only\n"
    "    else: opt.step()\n"
    "    if sched is not None: sched.step()"
)


def _setup_arguments(build: Build, settings: Mapping[str, Any]) -> list[str]:
    """``layerwise.compare.setup``'s arguments that rebuild ``build``'s task, step count and policy."""
    task = build.task
    own = {key: settings[key] for key in OPTIMIZER_SETTINGS if settings.get(key) is not None}
    optimizer = repr(task.optimizer) if isinstance(task.optimizer, str) else optimizer_preset(task).class_path
    arguments = [
        f"optimizer={optimizer}",
        f"lr={own.get('lr', task.lr)!r}",
        f"weight_decay={own.get('weight_decay', task.weight_decay)!r}",
        f"total_steps={build.total_steps}",
        f"policy={_policy_name(build, settings)!r}",
    ]
    if task.optimizer_options:
        arguments.append(f"optimizer_options={dict(task.optimizer_options)!r}")
    if task.partition is None:
        arguments.append("sample_input=x")
    else:
        arguments += ["partition=task.partition_of(model)", "sample_input=task.sample_input()"]
    if task.regime == "fine-tuning":
        arguments.append("regime='fine-tuning'")
    if not task.head:
        arguments.append("head=False")
    return arguments


def _wrapped(items: Sequence[str], width: int = 100) -> str:
    """``items`` joined by commas, in lines of at most ``width`` characters, each indented by four spaces."""
    lines = [f"    {items[0]}"]
    for item in items[1:]:
        if len(lines[-1]) + len(item) + 2 > width:
            lines[-1] += ","
            lines.append(f"    {item}")
        else:
            lines[-1] += f", {item}"
    return "\n".join(lines)


def setup_snippet(build: Build, name: str, settings: Mapping[str, Any]) -> str:
    """The lines that set method ``name`` up in one call, ``layerwise.compare.setup``, and its loop (any method's)."""
    own = [f"{key}={settings[key]!r}" for key in settings if key not in (*OPTIMIZER_SETTINGS, "policy")]
    arguments = _wrapped(["model", repr(name), *_setup_arguments(build, settings), *own])
    task, imports = build.task, "import torch, layerwise, layerwise.compare"
    if task.partition is not None:
        imports += f", layerwise.tasks\ntask = layerwise.tasks.get_task({task.name!r})   # its groups and sample input"
    return (
        f"{imports}\n"
        f"setup = layerwise.compare.setup(\n{arguments})\n"
        "opt, sched = setup.optimizer, setup.scheduler\n"
        f"for x, y in loader:   # {build.total_steps} steps\n{_SETUP_LOOP}\n"
        "if setup.eval_mode is not None: setup.eval_mode()   # the weights it evaluates (Schedule-Free's, DoG's)"
    )
