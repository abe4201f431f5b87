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
Trainer's loggers; and Hi-DLR gets the loss closure of the current batch for its probes.

Examples:
    >>> opt = torch.optim.AdamW(part.param_groups(lr=5e-5))  # doctest: +SKIP
    >>> sched = layerwise.LayerwiseLR(opt, total_steps, schedule=recipes.build("llr", len(part)))  # doctest: +SKIP
    >>> trainer = LayerwiseTrainer(model=model, args=args, train_dataset=data,  # doctest: +SKIP
    ...                            optimizers=(opt, sched))
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from transformers import Trainer

from ..hidlr import HiDLR
from ..param_groups import lr_log
from ..wrapping import owns_lr, unwrap_optimizer

__all__ = ["LayerwiseTrainer"]


class _KeepLRs(LRScheduler):
    """The scheduler slot of an optimizer that sets its own LRs: steps write nothing, ``get_last_lr`` reads them."""

    def step(self, epoch: int | None = None) -> None:
        self._step_count += 1
        self.last_epoch += 1
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]


class LayerwiseTrainer(Trainer):
    """A ``transformers.Trainer`` that logs per-group LRs, feeds Hi-DLR its loss closure, and leaves the LRs of
    an optimizer that owns them (Hi-DLR, SecantLR) to it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.optimizer is not None and owns_lr(self.optimizer):
            self._check_owned_schedule()

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
            warnings.warn(
                f"args: {', '.join(ignored)} ignored: {kind} sets every group's lr itself; give it "
                f"schedule= (e.g. layerwise.Warmup(layerwise.Cosine())) and total_steps= instead",
                UserWarning,
                stacklevel=3,
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
            logs.update(lr_log(optimizer.param_groups))
            if isinstance(optimizer, HiDLR):  # whether its fits are accepted, and why not
                logs.update(optimizer.log_stats)
        super().log(logs, *args, **kwargs)
