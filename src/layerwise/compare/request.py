"""A comparison's request: what it trains, how it is judged and where it writes, checked once.

:func:`check_request` is the one place a comparison's input is checked: it returns a frozen
:class:`Request`, and nothing after it checks again. The run store is keyed by a declared part of
it (:meth:`Request.store_key`).

Examples:
    >>> from layerwise.compare.request import check_request
    >>> request = check_request("fashion-mnist", ["baseline", "freezeout"], quick=True, seeds=2)  # doctest: +SKIP
    >>> [variant.label for variant in request.variants], request.seeds  # doctest: +SKIP
    (['baseline', 'freezeout'], Seeds(start=2, most=None))
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from torch import nn

from .. import recipes
from .._checks import finite_nonneg, one_of, positive_int
from ..groups import Partition
from ..tasks import Task, TaskData, resolve_task
from .budget import CLOCKS
from .executors import Executor, executor_of
from .measures import STEPS, TIME, budget_of
from .methods import METHODS, check_methods, default_methods, resolve_settings
from .parallel import check_parallel
from .store import RunStore
from .targets import check_margin, check_target
from .verdicts import AA_LABEL

__all__ = [
    "AUTO_SEEDS",
    "BUDGETS",
    "CompareConfig",
    "Judging",
    "Request",
    "RunOptions",
    "Seeds",
    "Variant",
    "VariantSpec",
    "check_request",
    "parse_overrides",
    "parse_seeds",
]

BUDGETS = (STEPS.name, TIME.name)
"""``steps``: every method trains the task's epochs; ``time``: every method trains for the same wall-clock."""

AUTO_SEEDS = (3, 10)
"""``--seeds auto``: the seeds every method starts with, and the default most a method gets."""

VariantSpec = tuple[str, str, Mapping[str, Any]]
"""A variant as :func:`check_request` takes it: (label, method name, settings overrides)."""


def _positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    if not (optional and value is None):
        positive_int(name, value)


@dataclass(frozen=True)
class CompareConfig:
    """Everything that decides which runs a comparison makes (the run store is keyed by it).

    Attributes:
        epochs: epochs of the baseline (default: the task's; its quick epochs with ``quick``).
        train_size: train on the first this many examples (default: the task's ``train_size``).
        policy: the global LR policy every scheduled method shares.
        quick: the task's quick data slice (its ``quick_train_size`` and ``quick_test_size``
            examples), its quick epochs, 3 evaluations per run unless ``eval_points`` is given, and a
            2-step warm-up.
        eval_points: test evaluations per run, evenly spaced (training time excludes them; default 10).
        test_size: evaluate on the first this many test examples (None: all).
        telemetry_every: record :class:`~layerwise.LayerMonitor` telemetry every this many steps.
        budget: ``"time"`` (equal wall-clock) or ``"steps"`` (equal epochs).
        budget_seconds: with ``budget="time"``: the budget itself, for every run the baseline's
            included (default: the baseline's training time on each seed).
        nproc: train each run on this many processes, data-parallel (None or 1: this process alone;
            under torchrun: its world size). See :mod:`.engines`.
        fsdp: shard the model with FSDP2 instead of DDP (needs ``nproc`` or torchrun).
        clock: what times every run, the budget and the curves: ``"wall"`` (elapsed seconds) or
            ``"process"`` (the training process's CPU seconds; on CUDA, CUDA events), which other
            processes on the machine do not move (:func:`~layerwise.compare.budget.clock_of`).
    """

    epochs: int | None = None
    train_size: int | None = None
    policy: str = "cosine"
    quick: bool = False
    eval_points: int | None = None
    test_size: int | None = 5000
    telemetry_every: int | None = None
    budget: Literal["steps", "time"] = "time"
    budget_seconds: float | None = None
    nproc: int | None = None
    fsdp: bool = False
    clock: Literal["wall", "process"] = "wall"

    def __post_init__(self) -> None:
        if self.eval_points is None:
            object.__setattr__(self, "eval_points", 3 if self.quick else 10)
        one_of("--budget", self.budget, BUDGETS)
        one_of("--clock", self.clock, CLOCKS)
        one_of("--policy", self.policy, tuple(recipes.POLICIES))
        seconds = self.budget_seconds
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf:
                raise ValueError(f"--budget-seconds: a finite number of seconds > 0, got {seconds!r}")
            if not self.paced:
                raise ValueError("--budget-seconds: only with --budget time")
        _positive_int("epochs", self.epochs, optional=True)
        _positive_int("train_size", self.train_size, optional=True)
        _positive_int("test_size", self.test_size, optional=True)
        _positive_int("telemetry_every", self.telemetry_every, optional=True)
        _positive_int("eval_points", self.eval_points)
        _positive_int("--nproc", self.nproc, optional=True)
        if not isinstance(self.fsdp, bool):
            raise TypeError(f"--fsdp: expected True or False, got {self.fsdp!r}")

    @property
    def paced(self) -> bool:
        """Whether every run stops by its clock (``budget="time"``) rather than after its steps."""
        return budget_of(self.budget).paced

    @classmethod
    def options(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Variant:
    """One compared variant: its label, its method, the method's resolved settings, and whether it is the
    reference every other variant is judged against (and, under a time budget, timed by)."""

    label: str
    method: str
    settings: dict[str, Any]
    reference: bool = False

    def run_key(self, seed: int) -> str:
        """Its run of ``seed``'s key in the run store (the A/A twin of ``--aa`` apart from the baseline's runs)."""
        return RunStore.key(self.method, self.settings, seed) + ("|aa" if self.label == AA_LABEL else "")


@dataclass(frozen=True)
class Seeds:
    """The seeds: ``start`` of every variant; under ``--seeds auto``, rounds add seeds up to ``most`` (None: none)."""

    start: int = 1
    most: int | None = None


@dataclass(frozen=True)
class Judging:
    """How the verdicts are reached, and (under ``--seeds auto``) when the rounds stop."""

    target: float | None = None
    target_tolerance: float | None = None
    correction: bool = True
    margin: float | None = None
    max_runs: int | None = None
    max_minutes: float | None = None


@dataclass(frozen=True)
class RunOptions:
    """How the runs train and report, beside what decides them: logs, progress, the report's words,
    retiming, the executor (checked and connected) and data replacing the task's."""

    tensorboard: bool = False
    progress: bool = True
    title: str | None = None
    note: str = ""
    retime: bool = False
    executor: Executor | None = None
    data: TaskData | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Request:
    """One comparison, checked (:func:`check_request`): the task, its variants, the configuration, where it
    writes, its seeds, its judging and its run options; ``nproc`` and ``engine`` as the check resolved them.

    ``model`` and ``partition`` are the model the check built for the task (the methods' applicability and
    the default methods need its partition) and its partition; the report's snippets read them, so the
    comparison builds no other. They take no part in equality, the repr or the store key.
    """

    task: Task
    variants: tuple[Variant, ...]
    config: CompareConfig
    out: Path
    seeds: Seeds
    judging: Judging
    options: RunOptions
    nproc: int | None
    engine: str | None
    model: nn.Module = field(compare=False, repr=False)
    partition: Partition = field(compare=False, repr=False)

    @property
    def baseline(self) -> Variant:
        """The reference variant: ``baseline``, else the first."""
        return next(variant for variant in self.variants if variant.reference)

    @property
    def methods(self) -> list[str]:
        """The compared methods, in order (the A/A twin of ``--aa`` aside)."""
        return [variant.method for variant in self.variants if variant.label != AA_LABEL]

    @property
    def epochs(self) -> int:
        """The baseline's epochs: the configuration's, else the task's (its quick ones with ``quick``)."""
        task, config = self.task, self.config
        return config.epochs or (task.quick_epochs if config.quick else task.epochs)

    @property
    def train_size(self) -> int | None:
        """The training examples: the configuration's, else the task's (its quick slice with ``quick``)."""
        task, config = self.task, self.config
        return config.train_size or (task.quick_train_size if config.quick else task.train_size)

    def store_key(self) -> dict[str, Any]:
        """What the run store is keyed by: the task's name and settings (with its file's sha256), the
        configuration as it applies (epochs and train size resolved; the test size only with the task's own
        data; telemetry only when on; the clock only when not the wall clock) and the parallel engine.
        The variants and seeds are in each run's own key; the judging and run options decide no run."""
        config = self.config
        left_out = ("test_size", "train_size", "epochs", "nproc", "fsdp")
        key = {
            "task": self.task.name,
            "task_settings": self.task.settings(),
            **{k: v for k, v in asdict(config).items() if k not in left_out},
            "epochs": self.epochs,
            "train_size": self.train_size,
            **({"test_size": config.test_size} if self.options.data is None else {}),
            **({"parallel": {"nproc": self.nproc, "engine": self.engine}} if self.engine is not None else {}),
        }
        if key["telemetry_every"] is None:
            del key["telemetry_every"]
        if key["clock"] == "wall":  # the clock of every store written before there was a choice
            del key["clock"]
        return key


def check_request(
    task: str | Task = "fashion-mnist",
    methods: Sequence[str] | None = None,
    *,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    variants: Sequence[VariantSpec] | None = None,
    config: CompareConfig | None = None,
    seeds: int | str = 1,
    out: str | Path = "runs/compare",
    target: float | None = None,
    target_tolerance: float | None = None,
    correction: bool = True,
    margin: float | None = None,
    max_runs: int | None = None,
    max_minutes: float | None = None,
    aa: bool = False,
    tensorboard: bool = False,
    progress: bool = True,
    title: str | None = None,
    note: str = "",
    retime: bool = False,
    executor: str | Executor | None = None,
    data: TaskData | None = None,
    **config_fields: Any,
) -> Request:
    """Check a comparison's every input, before any data loads, and return it as one :class:`Request`.

    Unknown options, bad configuration values, unknown or inapplicable methods, every method setting,
    the seeds, the judging and the executor raise ValueError (or TypeError) naming the flag; nothing
    is trained, loaded or written. The task's model is built once, here (:class:`Request`).

    Args:
        task: a registered task's name, ``PATH.py:FACTORY`` or a :class:`~layerwise.tasks.Task`.
        methods: the methods, each its own variant under its name (default: those that fit the task's regime).
        settings: per-method overrides, e.g. ``{"freezeout": {"t0": 0.5}}`` (with ``methods``).
        variants: instead of ``methods`` and ``settings``: ``(label, method, overrides)`` of each variant.
        config: what decides the runs (:class:`CompareConfig`); or give its fields as keywords
            (``budget``, ``epochs``, ...), not both.
        seeds: a count, or ``"auto"`` / ``"auto:MAX"``: seeds added until every method is decided
            (:func:`parse_seeds`; the verdicts then use the group-sequential rule).
        out: the comparison's folder (its run store, records and report).
        target: the metric value for "time to target" (default: the baseline's final mean minus
            ``target_tolerance``: accuracy points, or percent of a loss).
        correction: correct both questions of all the methods together by Holm's rule (False: each
            question tested at 5 % alone).
        margin: the accuracy question's equivalence margin, in accuracy points (a loss: its own units;
            default: 0.5 points, a loss none; :func:`~layerwise.compare.targets.margin_of`).
        max_runs: with ``seeds="auto"``: at most this many runs in all, every seed of every method
            (:func:`~layerwise.compare.rounds.plan_round` fits the rounds to it; at least the first round's runs).
        max_minutes: with ``seeds="auto"``: add no seed round once the comparison has spent this many minutes.
        aa: also train the baseline a second time, as ``"baseline (A/A)"``: its verdict against the
            baseline is this machine's and this task's noise floor (outside the correction's family).
        tensorboard: log each run's telemetry under ``out/tensorboard`` (needs ``telemetry_every``).
        progress: show progress bars.
        title: the report's title.
        note: a sentence added to the report's description of the setting.
        retime: rerun the finished runs timed by an earlier invocation, so every time in the report
            comes from this one.
        executor: where the runs train: ``"local"`` or None (this process, one after another),
            ``"ray"``, ``"slurm"``, or an executor built with its resources
            (:func:`~layerwise.compare.executors.executor_of`); the runs of a round then train at once,
            under ``budget="time"`` the baselines' first.
        data: replaces the task's own data (``config.test_size`` does not apply to it).
    """
    task = resolve_task(task)
    config = _config(config, config_fields)
    start, most = parse_seeds(seeds)
    judging = Judging(target, target_tolerance, correction, margin, max_runs, max_minutes)
    _check_judging(judging, task.metric, most)
    if tensorboard and config.telemetry_every is None:
        raise ValueError("--tensorboard: needs --telemetry N (what to log, how often)")
    model = task.make_model()
    partition = task.partition_of(model)
    specs = _variant_specs(task, partition, methods, settings, variants)
    names = [method for _, method, _ in specs]
    resolved = {label: resolve_settings(method, overrides) for label, method, overrides in specs if method in METHODS}
    check_methods(task, names, partition)  # after the settings: a bad --set is named before an inapplicable method
    checked = [Variant(label, method, resolved[label]) for label, method, _ in specs]
    for variant in checked:
        METHODS[variant.method].fits(task, partition, variant.settings)
    reference = next((v for v in checked if v.label == "baseline"), checked[0])
    checked = [Variant(v.label, v.method, v.settings, v is reference) for v in checked]
    if aa:
        checked.append(Variant(AA_LABEL, reference.method, reference.settings))
    if max_runs is not None and max_runs < start * len(checked):
        raise ValueError(
            f"--max-runs: at least one round, {start * len(checked)} runs ({start} seeds of each of the "
            f"{len(checked)} methods, the baseline included), got {max_runs}"
        )
    nproc, engine = check_parallel(config.nproc, config.fsdp, task, names)
    options = RunOptions(tensorboard, progress, title, note, retime, _checked_executor(executor, nproc, engine), data)
    return Request(
        task, tuple(checked), config, Path(out), Seeds(start, most), judging, options, nproc, engine, model, partition
    )


def _config(config: CompareConfig | None, given: Mapping[str, Any]) -> CompareConfig:
    """The configuration: ``config``, or one built from its fields ``given`` as keywords."""
    unknown = sorted(set(given) - set(CompareConfig.options()))
    if unknown:
        keywords = [p.name for p in inspect.signature(check_request).parameters.values() if p.kind == p.KEYWORD_ONLY]
        known = sorted({*CompareConfig.options(), *keywords})
        raise ValueError(f"compare: unknown option {unknown[0]!r}; choose from {known}")
    if config is not None and given:
        raise ValueError(f"config: give a CompareConfig or its fields as keywords, not both (got {sorted(given)})")
    return config if config is not None else CompareConfig(**given)


def _variant_specs(
    task: Task,
    partition: Partition,
    methods: Sequence[str] | None,
    settings: Mapping[str, Mapping[str, Any]] | None,
    variants: Sequence[VariantSpec] | None,
) -> list[VariantSpec]:
    """The variants as given: ``variants``, else each of ``methods`` (default: the task's) with its ``settings``."""
    settings = dict(settings or {})
    if variants is not None:
        if methods is not None or settings:
            raise ValueError("variants: give variants, or methods with their settings, not both")
        specs = [(label, method, dict(overrides or {})) for label, method, overrides in variants]
    else:
        names = list(methods) if methods is not None else default_methods(task, partition)
        stray = sorted(set(settings) - set(names))
        if stray:
            raise ValueError(f"--set: settings for methods that are not compared: {stray}; compared: {names}")
        specs = [(name, name, dict(settings.get(name, {}))) for name in names]
    labels = [label for label, _, _ in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"methods: need distinct labels, got {labels}")
    return specs


def _check_judging(judging: Judging, metric: str, most: int | None) -> None:
    check_target(judging.target, metric)
    check_margin(judging.margin, metric)
    if judging.target_tolerance is not None:
        finite_nonneg("--target-tolerance", judging.target_tolerance)
    minutes = judging.max_minutes
    valid = isinstance(minutes, (int, float)) and not isinstance(minutes, bool) and 0 < minutes < math.inf
    if minutes is not None and not valid:
        raise ValueError(f"--max-minutes: a finite number of minutes > 0, got {minutes!r}")
    max_runs = judging.max_runs
    if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, int)):
        raise ValueError(f"--max-runs: a whole number of runs, got {max_runs!r}")
    if max_runs is not None and most is None:
        raise ValueError("--max-runs: only with --seeds auto (it caps the runs that added seeds may take)")


def _checked_executor(executor: str | Executor | None, nproc: int | None, engine: str | None) -> Executor | None:
    """The executor of a comparison's runs (None: this process), connected and checked before any run is
    submitted: ValueError naming the flag. A data-parallel run (``--nproc``, ``--fsdp``, torchrun) trains here."""
    chosen = executor_of(executor)
    if chosen is None:
        return None
    if engine is not None or (nproc or 1) > 1:
        flag = "--fsdp" if engine == "fsdp" else "--nproc"
        raise ValueError(
            f"{flag}: a data-parallel run trains on this machine's processes; with --executor {chosen.name} every "
            "run is one process (drop --nproc and --fsdp, or use --executor local)"
        )
    chosen.check()
    return chosen


def parse_seeds(seeds: int | str) -> tuple[int, int | None]:
    """``seeds`` as given: a count, or ``"auto"`` / ``"auto:MAX"``: 3 seeds, then one more per round to
    the baseline and every undecided method, at most MAX (default 10). Returns (start, MAX or None).

    >>> parse_seeds(3), parse_seeds("auto"), parse_seeds("auto:6")
    ((3, None), (3, 10), (3, 6))
    """
    if isinstance(seeds, str) and (seeds == "auto" or seeds.startswith("auto:")):
        most = seeds.partition(":")[2] or str(AUTO_SEEDS[1])
        if not most.isdigit() or int(most) < AUTO_SEEDS[0]:
            raise ValueError(f"--seeds: auto or auto:MAX with an integer MAX >= {AUTO_SEEDS[0]}, got {seeds!r}")
        return AUTO_SEEDS[0], int(most)
    if isinstance(seeds, str):
        if not seeds.isdigit():
            raise ValueError(f"--seeds: a count >= 1, auto, or auto:MAX, got {seeds!r}")
        seeds = int(seeds)
    positive_int("--seeds", seeds)
    return seeds, None


def parse_overrides(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["freezeout.t0=0.5", ...]`` -> ``{"freezeout": {"t0": 0.5}}`` (values parsed as JSON when they can be)."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        method, dot, key = target.rpartition(".")
        if not sep or not dot or not method or not key:
            raise ValueError(f"--set: expected METHOD.KEY=VALUE (e.g. freezeout.t0=0.5), got {item!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        overrides.setdefault(method, {})[key] = parsed
    return overrides
