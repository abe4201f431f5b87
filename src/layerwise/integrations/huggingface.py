"""Hugging Face ``transformers.Trainer`` with layerwise techniques (``pip install transformers accelerate``).

Give the Trainer your optimizer and the technique through ``optimizers=(optimizer, scheduler)``:
a :class:`~layerwise.LayerwiseLR` schedule or :class:`~layerwise.FreezeOut` (which freezes groups
as the Trainer steps it) replaces the Trainer's own scheduler; :class:`~layerwise.Multirate` is
the optimizer (with ``None`` as scheduler the Trainer's own schedule, ``lr_scheduler_type``, multiplies
its LRs); :class:`~layerwise.HiDLR` and :class:`~layerwise.SecantLR` are the optimizer and own the LRs
(they declare ``owns_lr``): with ``None`` as scheduler :class:`LayerwiseTrainer` installs one that leaves
every ``lr`` alone instead of the Trainer's default, and refuses any other scheduler (give them their
``schedule=``). :class:`LayerwiseTrainer` adds two things a callback cannot do: every log line
carries each named group's LR (``lr/<group>``) and the number of frozen groups, through all of the
Trainer's loggers, as the optimizer step logged used them (read after that step, before the scheduler's,
as the Trainer reads its ``learning_rate``: group 0's ``lr/`` is the Trainer's ``learning_rate``); and
Hi-DLR gets the loss closure of the current batch for its probes.

Or name the technique: ``technique="freezeout"`` (any method of ``layerwise compare --list``) with its
``technique_settings`` builds the partition, the optimizer and the schedule through
:func:`layerwise.compare.setup` from the Trainer's own ``args``: ``learning_rate``, ``weight_decay``,
the optimizer of ``optim`` (or ``optimizer_cls_and_kwargs``), the total steps (``max_steps`` or the
epochs'), and ``lr_scheduler_type`` (``linear``, ``cosine``, ``constant``, ``constant_with_warmup``)
with its warm-up as the global policy. The default partition is the layers in data-flow order,
traced on the first training batch; ``technique_settings`` may hold ``partition``, ``sample_input``,
``head`` and ``regime`` besides the method's settings.

Examples:
    >>> opt = torch.optim.AdamW(part.param_groups(lr=5e-5))  # doctest: +SKIP
    >>> sched = layerwise.LayerwiseLR(opt, total_steps, schedule=recipes.build("llr", len(part)))  # doctest: +SKIP
    >>> trainer = LayerwiseTrainer(model=model, args=args, train_dataset=data,  # doctest: +SKIP
    ...                            optimizers=(opt, sched))
    >>> trainer.train()  # doctest: +SKIP
    >>> LayerwiseTrainer(model=model, args=args, train_dataset=data,  # doctest: +SKIP
    ...                  technique="freezeout", technique_settings={"t0": 0.5}).train()
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import Trainer, TrainerCallback

from .._warn import warn
from ..compare.methods import Setup
from ..compare.methods.kit import keeps_state
from ..compare.setup import SETUP_KEYWORDS, method_settings, optimizer_choice, setup
from ..hidlr import HiDLR
from ..param_groups import lr_log
from ..wrapping import owns_lr, unwrap_optimizer

__all__ = ["FROM_ARGS", "POLICIES", "LayerwiseTrainer"]

POLICIES = {"linear": "linear", "cosine": "cosine", "constant": "constant", "constant_with_warmup": "constant"}
"""The global policy of a technique by the Trainer's ``lr_scheduler_type`` (the warm-up comes from ``warmup_steps``)."""

FROM_ARGS = {
    "optimizer": "args.optim (or optimizer_cls_and_kwargs)",
    "optimizer_options": "args.optim (or optimizer_cls_and_kwargs)",
    "lr": "args.learning_rate",
    "weight_decay": "args.weight_decay",
    "total_steps": "args.max_steps (or the epochs' steps)",
    "policy": "args.lr_scheduler_type",
    "warmup": "args.warmup_steps",
}
"""The arguments of :func:`layerwise.compare.setup` that a technique takes from the Trainer's ``args``."""


class _KeepLRs(LRScheduler):
    """The scheduler slot of an optimizer that sets its own LRs: steps write nothing, ``get_last_lr`` reads them."""

    def step(self, epoch: int | None = None) -> None:
        self._step_count += 1
        self.last_epoch += 1
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]


class _StepLRs(TrainerCallback):
    """What :meth:`LayerwiseTrainer.log` reports: every group's LR and the frozen groups as the last optimizer
    step used them, read after that step and before the scheduler steps (where the Trainer reads its
    ``learning_rate``)."""

    def __init__(self) -> None:
        self.line: dict[str, float] | None = None

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if optimizer is not None:
            self.line = lr_log(unwrap_optimizer(optimizer).param_groups)


class _SetupSchedule:
    """The Trainer's scheduler slot for a technique's :class:`~layerwise.compare.methods.Setup`: every step
    steps what the Setup steps after the optimizer (its LR schedule, its freezing; None: nothing, the
    optimizer keeps its LRs); ``get_last_lr`` reads every group's LR."""

    def __init__(self, optimizer: Optimizer, stepped: Any) -> None:
        self.optimizer, self.stepped = optimizer, stepped

    def step(self) -> None:
        if self.stepped is not None:
            self.stepped.step()

    def get_last_lr(self) -> list[float]:
        return [float(group["lr"]) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"technique": self.stepped.state_dict()} if keeps_state(self.stepped) else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.stepped is None:
            return
        if "technique" not in state_dict or not keeps_state(self.stepped):
            raise ValueError(
                f"resume_from_checkpoint: the technique's {type(self.stepped).__name__} keeps no state to resume "
                "from; train it again from the start"
            )
        self.stepped.load_state_dict(state_dict["technique"])


class LayerwiseTrainer(Trainer):
    """A ``transformers.Trainer`` that logs per-group LRs, feeds Hi-DLR its loss closure, leaves the LRs of
    an optimizer that owns them (Hi-DLR, SecantLR) to it, and builds a named ``technique`` from its ``args``.

    Args:
        technique: a method's name (``layerwise compare --list``): the optimizer and the schedule come from
            :func:`layerwise.compare.setup` when training starts; None: ``optimizers`` or the Trainer's own.
        technique_settings: the method's settings, and ``partition``, ``sample_input``, ``head`` or ``regime``
            for :func:`layerwise.compare.setup` (the rest of its arguments come from ``args``: :data:`FROM_ARGS`).
        *args, **kwargs: the Trainer's.

    Attributes:
        technique_setup: the technique's :class:`~layerwise.compare.methods.Setup` once training has started
            (its ``freezer`` says what is frozen).
    """

    def __init__(
        self,
        *args: Any,
        technique: str | None = None,
        technique_settings: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._step_lrs = _StepLRs()
        self.add_callback(self._step_lrs)
        self.technique = technique
        self.technique_settings = dict(technique_settings or {})
        self.technique_setup: Setup | None = None
        self._technique_steps: int | None = None
        if technique is not None:
            self._check_technique()
        if self.optimizer is not None and owns_lr(self.optimizer):
            self._check_owned_schedule()

    def _check_technique(self) -> None:
        """Refuse ``optimizers`` beside ``technique``, and a technique, setting or ``args`` it cannot build."""
        if self.optimizer is not None or self.lr_scheduler is not None:
            raise ValueError(
                f"optimizers: technique={self.technique!r} builds the optimizer and the scheduler from args; "
                "give LayerwiseTrainer technique= or optimizers=, not both"
            )
        from_args = sorted(set(self.technique_settings) & set(FROM_ARGS))
        if from_args:
            raise ValueError(f"technique_settings: {from_args[0]!r} comes from {FROM_ARGS[from_args[0]]}; set it there")
        method_settings(self.technique, {k: v for k, v in self.technique_settings.items() if k not in SETUP_KEYWORDS})
        self._technique_policy()
        optimizer = self._technique_optimizer()[0]
        try:
            optimizer_choice(optimizer)
        except ValueError as error:
            raise ValueError(f"args.optim: {self._optim_name()} gives {optimizer!r}; {error}") from None

    def _optim_name(self) -> str:
        return str(getattr(self.args.optim, "value", self.args.optim))

    def _technique_policy(self) -> str:
        kind = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
        if kind not in POLICIES:
            raise ValueError(
                f"args.lr_scheduler_type: {kind!r} has no layerwise policy for technique={self.technique!r}; "
                f"choose from {sorted(POLICIES)}"
            )
        return POLICIES[kind]

    def _technique_optimizer(self) -> tuple[Any, dict[str, Any]]:
        """The class and options of ``optimizer_cls_and_kwargs``, else of ``args.optim`` (less lr and decay)."""
        chosen = self.optimizer_cls_and_kwargs or self.get_optimizer_cls_and_kwargs(self.args, self.model)
        cls, options = chosen
        return cls, {key: value for key, value in options.items() if key not in ("lr", "weight_decay", "params")}

    def set_initial_training_values(self, args: Any, dataloader: Any) -> tuple[Any, ...]:
        values = super().set_initial_training_values(args, dataloader)
        self._technique_steps = values[-1]  # max_steps: the technique's schedules span them
        return values

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self._technique_steps = num_training_steps
        super().create_optimizer_and_scheduler(num_training_steps)

    def create_optimizer(self, model: Any = None) -> Optimizer:
        """The Trainer's optimizer, or the technique's with its scheduler slot (:func:`layerwise.compare.setup`)."""
        if self.technique is None or self.optimizer is not None:
            return super().create_optimizer(model)
        self.technique_setup = self._build_technique(self.model if model is None else model)
        self.optimizer = self.technique_setup.optimizer
        self.lr_scheduler = _SetupSchedule(self.optimizer, self.technique_setup.scheduler)
        return self.optimizer

    def _build_technique(self, model: Any) -> Setup:
        steps = self._technique_steps
        if steps is None:
            raise ValueError(
                f"technique={self.technique!r}: its schedules need the run's steps, known when train() starts "
                "(or call create_optimizer_and_scheduler(num_training_steps))"
            )
        warmup_steps = self.args.get_warmup_steps(steps)
        if warmup_steps >= steps:
            raise ValueError(f"args.warmup_steps: {warmup_steps} warm-up steps leave none of the {steps} steps")
        cls, options = self._technique_optimizer()
        settings = dict(self.technique_settings)
        if "partition" not in settings and "sample_input" not in settings:
            settings["sample_input"] = self._first_batch()
        return setup(
            model,
            self.technique,
            optimizer=cls,
            optimizer_options=options,
            lr=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            total_steps=steps,
            policy=self._technique_policy(),
            warmup=warmup_steps / steps,
            **settings,
        )

    def _first_batch(self) -> Any:
        """The model's inputs of the first training batch, on its device, without the labels (the random number
        generators left as they were)."""
        with torch.random.fork_rng(devices=[]):
            batch = self._prepare_inputs(next(iter(self.get_train_dataloader())))
        labels = {*self.label_names, "labels", "label", "label_ids"}
        return {key: value for key, value in batch.items() if key not in labels}

    @contextmanager
    def _evaluated_weights(self) -> Iterator[None]:
        """The weights the technique evaluates (Schedule-Free's, DoG's average) in the model, then its own back."""
        run = self.technique_setup
        if run is None or run.eval_mode is None:
            yield
            return
        run.eval_mode()
        try:
            yield
        finally:
            if run.train_mode is not None:
                run.train_mode()

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with self._evaluated_weights():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        with self._evaluated_weights():
            return super().predict(*args, **kwargs)

    def _check_owned_schedule(self) -> None:
        """Refuse a scheduler beside an optimizer that owns its LRs; warn once that schedule arguments are ignored."""
        kind = type(unwrap_optimizer(self.optimizer)).__name__
        if self.lr_scheduler is not None:
            raise ValueError(
                f"optimizers: {kind} sets every group's lr itself, so the scheduler "
                f"{type(self.lr_scheduler).__name__} would overwrite it (or be overwritten); pass "
                f"optimizers=(optimizer, None) and give {kind} its schedule= and total_steps="
            )
        args = self.args
        ignored = [
            f"{name}={value!r}"
            for name, value, default in (
                ("lr_scheduler_type", str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)), "linear"),
                ("warmup_steps", getattr(args, "warmup_steps", 0), 0),
                ("warmup_ratio", getattr(args, "warmup_ratio", 0), 0),
            )
            if value not in (default, None)
        ]
        if ignored:
            warn(
                f"args: {', '.join(ignored)} ignored: {kind} sets every group's lr itself; give it "
                f"schedule= (e.g. layerwise.Warmup(layerwise.Cosine())) and total_steps= instead",
            )

    def create_scheduler(self, num_training_steps: int, optimizer: Optimizer | None = None) -> LRScheduler:
        """The Trainer's schedule, except for an optimizer that owns its LRs: one that leaves them alone."""
        optimizer = self.optimizer if optimizer is None else optimizer
        if self.lr_scheduler is None and optimizer is not None and owns_lr(optimizer):
            self.lr_scheduler = _KeepLRs(unwrap_optimizer(optimizer))
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        optimizer = unwrap_optimizer(self.optimizer)
        if isinstance(optimizer, HiDLR):
            prepared = self._prepare_inputs(inputs)

            def closure() -> Any:
                return self.compute_loss(model, dict(prepared))

            optimizer.closure = closure
        return super().training_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        optimizer = unwrap_optimizer(self.optimizer) if self.optimizer is not None else None
        if optimizer is not None and "loss" in logs:
            logs.update(self._step_lrs.line or lr_log(optimizer.param_groups))
            if isinstance(optimizer, HiDLR):  # whether its fits are accepted, and why not
                logs.update(optimizer.log_stats)
        super().log(logs, *args, **kwargs)
