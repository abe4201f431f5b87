"""PyTorch Lightning with layerwise techniques (``pip install lightning``).

Where each technique goes:

* :class:`~layerwise.LayerwiseLR` is a torch ``LRScheduler``: return it from
  ``configure_optimizers`` with ``"interval": "step"``.
* :class:`~layerwise.Multirate`, :class:`~layerwise.HiDLR` and :class:`~layerwise.SecantLR` are
  optimizers: return them from ``configure_optimizers``. Hi-DLR and SecantLR set every group's LR
  themselves (they declare ``owns_lr``): return them without a scheduler (give them ``schedule=``);
  :class:`LayerwiseCallback` refuses a scheduler beside them. Multirate takes any scheduler.
* :class:`~layerwise.FreezeOut` and :class:`~layerwise.GradualUnfreezing` need the optimizer
  Lightning builds: give :class:`LayerwiseCallback` a factory ``(module, optimizer) -> technique``.

:class:`LayerwiseCallback` steps that technique after every optimizer step (so gradient
accumulation is respected) or every epoch; logs ``lr/<group>`` and ``frozen_groups`` on every
step through all of the Trainer's loggers; gives Hi-DLR its probe closure (the module's
``training_step`` on the current batch through the Trainer's strategy and precision context,
under ``torch.no_grad``, with ``self.log`` muted; other side effects of ``training_step``, such
as metric updates, happen once per probe); and saves and restores the technique's state in
Lightning checkpoints. Frozen modules stay in inference mode when Lightning switches the model
back to ``train()`` after validation (see :class:`~layerwise.Freezer`).

Tested on one device. Lightning wraps multi-device models in a plain DDP, which fails when a
layer freezes or a Multirate step leaves the slow part out; there, use
``strategy="ddp_find_unused_parameters_true"`` (it all-reduces the frozen parameters' zeros).

Examples:
    >>> callback = LayerwiseCallback(  # doctest: +SKIP
    ...     lambda module, opt: FreezeOut(module, opt, module.trainer.estimated_stepping_batches))
    >>> lightning.Trainer(max_epochs=10, callbacks=[callback]).fit(module, data)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Literal, get_args

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor
from torch.optim import Optimizer

from .._checks import one_of
from ..hidlr import HiDLR
from ..param_groups import lr_log
from ..technique import Technique
from ..wrapping import owns_lr

__all__ = ["LayerwiseCallback"]

Interval = Literal["step", "epoch"]
INTERVALS = get_args(Interval)


@contextmanager
def _logging_muted(module: LightningModule):
    """``module.log``/``log_dict`` do nothing inside (probe forwards must not log)."""
    module.__dict__["log"] = module.__dict__["log_dict"] = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del module.__dict__["log"], module.__dict__["log_dict"]


def _loss_of(output: Any) -> Tensor:
    loss = output["loss"] if isinstance(output, dict) else output
    if not isinstance(loss, Tensor):
        raise TypeError(f"training_step: HiDLR needs the loss tensor (or a dict with 'loss'), got {output!r}")
    return loss


class LayerwiseCallback(Callback):
    """Applies a layerwise technique inside ``lightning.Trainer.fit`` and logs every group's LR.

    Args:
        technique: ``(module, optimizer) -> object with step()/state_dict()/load_state_dict()``,
            called once the Trainer has built the optimizer; or ``None`` to only log (and feed
            Hi-DLR) when the technique is the optimizer or scheduler itself.
        interval: step the technique after every optimizer step (``"step"``) or every epoch.
        log: log ``lr/<group>`` and ``frozen_groups`` on every optimizer step.
    """

    def __init__(
        self,
        technique: Callable[[LightningModule, Optimizer], Technique] | None = None,
        *,
        interval: Interval = "step",
        log: bool = True,
    ) -> None:
        if technique is not None and not callable(technique):
            raise TypeError(
                f"technique: expected a function (module, optimizer) -> technique, got {type(technique).__name__}"
            )
        one_of("interval", interval, INTERVALS)
        self.factory = technique
        self.interval = interval
        self.log = log
        self.technique: Technique | None = None
        self._built_for: Optimizer | None = None
        self._pending: dict[str, Any] | None = None
        self._last_step = 0

    @staticmethod
    def _optimizer(trainer: Trainer) -> Optimizer:
        if len(trainer.optimizers) != 1:
            count = len(trainer.optimizers)
            raise ValueError(f"LayerwiseCallback: expects exactly one optimizer, the Trainer has {count}")
        return trainer.optimizers[0]

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = self._optimizer(trainer)
        if owns_lr(optimizer) and trainer.lr_scheduler_configs:
            kind, scheduler = type(optimizer).__name__, type(trainer.lr_scheduler_configs[0].scheduler).__name__
            raise ValueError(
                f"configure_optimizers: {kind} sets every group's lr itself, so the scheduler {scheduler} would "
                f"overwrite it (or be overwritten); return {kind} alone and give it schedule= and total_steps="
            )
        if self.factory is None:
            if self._pending is not None:
                raise ValueError("LayerwiseCallback: the checkpoint holds a technique's state; no technique was given")
            return
        if self._built_for is not optimizer:  # first fit, or a later fit with a new optimizer
            if self.technique is not None and self._pending is None:
                raise ValueError(
                    "LayerwiseCallback: fit() built a new optimizer for a technique already under way; "
                    "resume with fit(ckpt_path=...), or give a fresh run a new LayerwiseCallback"
                )
            self.technique = self.factory(pl_module, optimizer)
            self._built_for = optimizer
            if not callable(getattr(self.technique, "step", None)):
                raise TypeError(f"technique: the factory returned {type(self.technique).__name__}, which has no step()")
        if self._pending is not None:
            self.technique.load_state_dict(self._pending)
            self._pending = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = trainer.global_step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        optimizer = self._optimizer(trainer)
        if isinstance(optimizer, HiDLR):
            takes_index = is_param_in_hook_signature(pl_module.training_step, "batch_idx", min_args=2)
            args = (batch, batch_idx) if takes_index else (batch,)

            def closure() -> Tensor:
                with _logging_muted(pl_module):
                    return _loss_of(trainer.strategy.training_step(*args))

            optimizer.closure = closure

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = self._optimizer(trainer)
        if isinstance(optimizer, HiDLR):
            optimizer.closure = None  # release the last batch; a later step(closure) means Hi-DLR's own kind

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._last_step:  # accumulating gradients: no optimizer step yet
            return
        self._last_step = trainer.global_step
        if self.technique is not None and self.interval == "step":
            self.technique.step()
        if self.log:
            optimizer = self._optimizer(trainer)
            line = lr_log(optimizer.param_groups)
            if isinstance(optimizer, HiDLR):  # whether its fits are accepted, and why not
                line |= optimizer.log_stats
            pl_module.log_dict(line, on_step=True, on_epoch=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.technique is not None and self.interval == "epoch":
            self.technique.step()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.technique is None else {"technique": self.technique.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the technique when :meth:`on_fit_start` builds it (Lightning restores callbacks first)."""
        if "technique" in state_dict:
            self._pending = state_dict["technique"]
