"""Hugging Face ``transformers.Trainer`` with layerwise techniques (``pip install transformers accelerate``).

Give the Trainer your optimizer and the technique through ``optimizers=(optimizer, scheduler)``:
a :class:`~layerwise.LayerwiseLR` schedule or :class:`~layerwise.FreezeOut` (which freezes groups
as the Trainer steps it) replaces the Trainer's own scheduler; :class:`~layerwise.Multirate` is
the optimizer (with ``None`` as scheduler the Trainer's linear decay multiplies its LRs);
:class:`~layerwise.HiDLR` and :class:`~layerwise.SecantLR` are the optimizer and own the LRs
(give them their ``schedule=``; a Trainer scheduler would be overwritten every step). :class:`LayerwiseTrainer` adds two
things a callback cannot do: every log line carries each named group's LR (``lr/<group>``) and
the number of frozen groups, through all of the Trainer's loggers; and Hi-DLR gets the loss
closure of the current batch for its probes.

Examples:
    >>> opt = torch.optim.AdamW(part.param_groups(lr=5e-5))  # doctest: +SKIP
    >>> sched = layerwise.LayerwiseLR(opt, total_steps, schedule=recipes.build("llr", len(part)))  # doctest: +SKIP
    >>> trainer = LayerwiseTrainer(model=model, args=args, train_dataset=data,  # doctest: +SKIP
    ...                            optimizers=(opt, sched))
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from ..hidlr import HiDLR
from ..param_groups import lr_log

__all__ = ["LayerwiseTrainer"]


def _unwrap(optimizer: Any) -> Any:
    """The optimizer inside accelerate's ``AcceleratedOptimizer`` (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer) if not isinstance(optimizer, HiDLR) else optimizer


class LayerwiseTrainer(Trainer):
    """A ``transformers.Trainer`` that logs per-group LRs and feeds Hi-DLR its loss closure."""

    def training_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        optimizer = _unwrap(self.optimizer)
        if isinstance(optimizer, HiDLR):
            prepared = self._prepare_inputs(inputs)

            def closure() -> Any:
                return self.compute_loss(model, dict(prepared))

            optimizer.closure = closure
        return super().training_step(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        optimizer = _unwrap(self.optimizer) if self.optimizer is not None else None
        if optimizer is not None and "loss" in logs:
            logs.update(lr_log(optimizer.param_groups))
        super().log(logs, *args, **kwargs)
