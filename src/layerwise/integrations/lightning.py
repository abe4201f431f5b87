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
* Or name the technique: ``LayerwiseCallback(technique="freezeout", technique_settings={"t0": 0.5})``
  (any method of ``layerwise compare --list``) builds the partition, the optimizer and the schedule
  through :func:`layerwise.compare.setup` when fit starts, from what Lightning already has
  (:data:`FROM_TRAINER`): the class and the options (``lr``, ``weight_decay``, ``momentum``, ...) of
  the optimizer ``configure_optimizers`` returns, whose param groups it replaces, and the total steps
  ``trainer.estimated_stepping_batches``. The default partition is the module's layers in data-flow
  order, traced on ``technique_settings["sample_input"]``, else on the module's
  ``example_input_array``; ``technique_settings`` may hold ``partition``, ``sample_input``, ``head``,
  ``regime``, ``policy`` and ``warmup`` besides the method's settings. ``configure_optimizers`` returns
  the optimizer alone: the technique brings its schedule.

:class:`LayerwiseCallback` steps that technique after every optimizer step (so gradient
accumulation is respected) or every epoch; logs ``lr/<group>`` and ``frozen_groups`` on every
step through all of the Trainer's loggers, as that step used them (read after the optimizer step, before
Lightning steps its schedulers and the callback its technique); gives Hi-DLR its probe closure (the module's
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

import inspect
import math
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any, Literal, get_args

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
from torch import Tensor
from torch.optim import Optimizer

from .._checks import one_of
from ..compare.methods import Setup
from ..compare.methods.kit import Chain
from ..compare.setup import SETUP_KEYWORDS, method_settings, setup
from ..hidlr import HiDLR
from ..param_groups import lr_log
from ..technique import Technique
from ..wrapping import owns_lr

__all__ = ["FROM_TRAINER", "LayerwiseCallback"]

FROM_TRAINER = {
    "optimizer": "the class of the optimizer configure_optimizers returns",
    "optimizer_options": "the defaults of the optimizer configure_optimizers returns",
    "lr": "the defaults['lr'] of the optimizer configure_optimizers returns",
    "weight_decay": "the defaults['weight_decay'] of the optimizer configure_optimizers returns",
    "total_steps": "trainer.estimated_stepping_batches",
}
"""The arguments of :func:`layerwise.compare.setup` that a named technique takes from the Trainer."""

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


class _Saved:
    """A named technique's stepped part (its schedule, its freezing rule; a :class:`Chain` of them), stepped
    and saved in Lightning checkpoints: its state is every part's, in order."""

    def __init__(self, name: str, stepped: Any) -> None:
        self.name, self.stepped = name, stepped
        self.chain = stepped if isinstance(stepped, Chain) else Chain(stepped)

    def step(self) -> None:
        self.stepped.step()

    def unsaved(self) -> str | None:
        """The first part that keeps no state (a checkpoint could not resume it), else None."""
        return self.chain.unsaved()

    def refusal(self) -> str:
        return (
            f"technique={self.name!r}: its {self.unsaved()} keeps no state, so a Lightning checkpoint could not "
            "resume it; fit it with enable_checkpointing=False and no save_checkpoint, or choose a technique that saves"
        )

    def state_dict(self) -> dict[str, Any]:
        if self.unsaved() is not None:
            raise ValueError(self.refusal())
        return self.chain.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        try:
            self.chain.load_state_dict(state_dict)
        except ValueError as err:
            raise ValueError(f"technique={self.name!r}: {err}") from None


class LayerwiseCallback(Callback):
    """Applies a layerwise technique inside ``lightning.Trainer.fit`` and logs every group's LR.

    Args:
        technique: ``(module, optimizer) -> object with step()/state_dict()/load_state_dict()``,
            called once the Trainer has built the optimizer; a method's name (``layerwise compare
            --list``), built by :func:`layerwise.compare.setup` from the Trainer's optimizer and steps
            (:data:`FROM_TRAINER`) in place of that optimizer; or ``None`` to only log (and feed Hi-DLR)
            when the technique is the optimizer or scheduler itself.
        technique_settings: with a named technique: the method's settings, and ``partition``,
            ``sample_input``, ``head``, ``regime``, ``policy`` or ``warmup`` for :func:`layerwise.compare.setup`.
        interval: step the technique after every optimizer step (``"step"``) or every epoch (a factory's only).
        log: log ``lr/<group>`` and ``frozen_groups`` on every optimizer step: as that step used them.

    Attributes:
        technique_setup: a named technique's :class:`~layerwise.compare.methods.Setup` once fit has started
            (its ``optimizer`` is the Trainer's now; its ``freezer`` says what is frozen).

    A named technique whose schedule keeps no state (``fine-tune``, ``lp-ft``, ``layer-freezing``) is
    refused when checkpointing is on: a checkpoint could not resume it. Schedule-Free and DoG evaluate
    other weights than they train: the callback swaps them in for validation and after fit.
    """

    def __init__(
        self,
        technique: Callable[[LightningModule, Optimizer], Technique] | str | None = None,
        *,
        technique_settings: Mapping[str, Any] | None = None,
        interval: Interval = "step",
        log: bool = True,
    ) -> None:
        if technique is not None and not callable(technique) and not isinstance(technique, str):
            raise TypeError(
                "technique: expected a method's name or a function (module, optimizer) -> technique, "
                f"got {type(technique).__name__}"
            )
        one_of("interval", interval, INTERVALS)
        self.name = technique if isinstance(technique, str) else None
        self.technique_settings = dict(technique_settings or {})
        if self.name is not None:
            self._check_named(interval)
        elif technique_settings is not None:
            raise ValueError("technique_settings: given with a named technique only (technique='freezeout', ...)")
        self.factory = None if isinstance(technique, str) else technique
        self.interval = interval
        self.log = log
        self.technique: Technique | None = None
        self.technique_setup: Setup | None = None
        self._built_for: Optimizer | None = None
        self._pending: dict[str, Any] | None = None
        self._last_step = 0
        self._line: dict[str, float] | None = None
        self._hook: Any = None
        self._evaluating = False

    def _check_named(self, interval: str) -> None:
        """Refuse a named technique, setting or interval that cannot be built, before anything runs."""
        assert self.name is not None
        from_trainer = sorted(set(self.technique_settings) & set(FROM_TRAINER))
        if from_trainer:
            key = from_trainer[0]
            raise ValueError(f"technique_settings: {key!r} comes from {FROM_TRAINER[key]}; set it there")
        method_settings(self.name, {k: v for k, v in self.technique_settings.items() if k not in SETUP_KEYWORDS})
        if interval != "step":
            raise ValueError(
                f"interval: technique={self.name!r} steps its schedule after every optimizer step; "
                "interval='epoch' is for a factory's technique"
            )

    @staticmethod
    def _optimizer(trainer: Trainer) -> Optimizer:
        if len(trainer.optimizers) != 1:
            count = len(trainer.optimizers)
            raise ValueError(f"LayerwiseCallback: expects exactly one optimizer, the Trainer has {count}")
        return trainer.optimizers[0]

    def _build_named(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        """The named technique's Setup from the Trainer's optimizer and steps; its optimizer replaces the Trainer's."""
        assert self.name is not None
        if trainer.lr_scheduler_configs:
            scheduler = type(trainer.lr_scheduler_configs[0].scheduler).__name__
            raise ValueError(
                f"configure_optimizers: technique={self.name!r} brings its own schedule, so the scheduler "
                f"{scheduler} is refused; return the optimizer alone (technique_settings may give policy= and warmup=)"
            )
        steps = trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ValueError(f"technique={self.name!r}: its schedule spans the run's steps; set Trainer(max_steps=...)")
        cls, defaults = type(optimizer), dict(optimizer.defaults)
        takes = inspect.signature(cls).parameters
        options = {k: v for k, v in defaults.items() if k in takes and k not in ("params", "lr", "weight_decay")}
        settings = dict(self.technique_settings)
        if "partition" not in settings and "sample_input" not in settings:
            sample = pl_module.example_input_array
            if sample is None:
                raise ValueError(
                    f"technique={self.name!r}: its partition is traced on one forward: set the module's "
                    "example_input_array (a batch of its inputs), or give technique_settings sample_input= "
                    "or partition="
                )
            settings["sample_input"] = trainer.strategy.batch_to_device(sample)
        run = setup(
            pl_module,
            self.name,
            optimizer=cls,
            optimizer_options=options,
            lr=defaults["lr"],
            weight_decay=defaults.get("weight_decay", 0.0),
            total_steps=int(steps),
            **settings,
        )
        saved = None if run.scheduler is None else _Saved(self.name, run.scheduler)
        if saved is not None and saved.unsaved() is not None and trainer.checkpoint_callbacks:
            raise ValueError(saved.refusal())
        trainer.strategy.optimizers = [run.optimizer]
        self.technique_setup, self.technique = run, saved

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizer = self._optimizer(trainer)
        if self.name is not None:
            self._start_named(trainer, pl_module, optimizer)
            return
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

    def _start_named(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        if self._built_for is not optimizer:  # first fit, or a later fit with a new optimizer
            if self.technique_setup is not None and self._pending is None:
                raise ValueError(
                    "LayerwiseCallback: fit() built a new optimizer for a technique already under way; "
                    "resume with fit(ckpt_path=...), or give a fresh run a new LayerwiseCallback"
                )
            self._build_named(trainer, pl_module, optimizer)
            self._built_for = self._optimizer(trainer)
        if self._pending is not None:
            if self.technique is None:
                raise ValueError(f"technique={self.name!r}: the checkpoint holds a state this technique does not keep")
            self.technique.load_state_dict(self._pending)
            self._pending = None

    def _evaluated(self, evaluating: bool) -> None:
        """A named technique's weights to evaluate in the model (Schedule-Free's, DoG's average), or its own back."""
        run = self.technique_setup
        if run is None or evaluating == self._evaluating:
            return
        swap = run.eval_mode if evaluating else run.train_mode
        if swap is not None:
            swap()
        self._evaluating = evaluating

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_step = trainer.global_step
        self._evaluating = True  # the weights it trains: whatever state the run starts from
        self._evaluated(False)
        if self.log:

            def record(optimizer: Optimizer, args: Any, kwargs: Any) -> None:
                self._line = lr_log(optimizer.param_groups)

            self._hook = self._optimizer(trainer).register_step_post_hook(record)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluated(True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._evaluated(False)

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
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._evaluated(True)

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
            line = dict(self._line or lr_log(optimizer.param_groups))  # as the step used them
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
