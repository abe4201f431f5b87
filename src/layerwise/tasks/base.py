"""What a task is (a model factory plus its data) and the registry every command reads tasks from.

Register your own task and every benchmark and command can run it:

Examples:
    >>> from layerwise.tasks import Task, register_task
    >>> register_task(Task(name="my-task", make_model=..., sample_input=..., load_data=...))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import torch
from torch import nn

from .._checks import one_of
from .._registry import Registry
from ..groups import Partition, by_layer
from ..training import batch_rows, slice_batch

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_PRESETS",
    "PRECISIONS",
    "REGIMES",
    "TASKS",
    "OptimizerPreset",
    "Task",
    "TaskData",
    "batch_targets",
    "check_labels",
    "cross_entropy",
    "get_task",
    "is_tensor_pair",
    "logits_of",
    "make_optimizer",
    "optimizer_preset",
    "register_task",
    "split_examples",
    "split_size",
]

Split = tuple[torch.Tensor, torch.Tensor]
Data = tuple[Any, torch.Tensor] | torch.utils.data.Dataset
"""A split: ``(inputs, targets)`` (inputs a tensor or a dict/tuple of tensors), or a map-style ``Dataset``."""

Regime = Literal["scratch", "fine-tuning"]
"""How a task's model starts: from a random initialisation, or from pretrained weights."""
REGIMES = get_args(Regime)
Metric = Literal["accuracy", "loss"]
"""``accuracy`` (classification, higher is better) or ``loss`` (lower is better)."""
METRICS = get_args(Metric)


def logits_of(outputs: Any) -> Any:
    """A model's output tensor: its ``logits`` for an output object that holds them (a Hugging Face
    ``ModelOutput``), else ``outputs`` itself."""
    logits = getattr(outputs, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else outputs


def cross_entropy(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """A task's default loss: cross-entropy of the model's logits (:func:`logits_of`) against ``targets``."""
    return nn.functional.cross_entropy(logits_of(outputs), targets)


def batch_targets(batch: Any) -> Any:
    """A batch's targets: the ``labels`` (else ``label``) of a dict batch, the last element of a tuple or list.

    Examples:
        >>> batch_targets({"ids": torch.zeros(2, 3), "labels": torch.tensor([1, 0])})
        tensor([1, 0])

    Raises:
        TypeError: naming ``batch_outputs`` (the hook that gives the targets of any other batch).
    """
    if isinstance(batch, Mapping):
        for key in ("labels", "label"):
            if key in batch:
                return batch[key]
        raise TypeError(
            f"batch: a dict batch needs a 'labels' or 'label' key, got keys {sorted(batch)}; "
            "or give the task a batch_outputs(model, batch) -> (outputs, targets)"
        )
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[-1]
    raise TypeError(
        f"batch: cannot find the targets of a {type(batch).__name__} batch (a dict with 'labels' or "
        "a tuple ending with them); give the task a batch_outputs(model, batch) -> (outputs, targets)"
    )


def model_outputs(model: nn.Module, batch: Any) -> tuple[Any, Any]:
    """``(outputs, targets)`` of the default forward: a dict batch as keyword arguments (less a ``label``
    key; ``labels`` stays, as a Hugging Face model takes it), a tuple's inputs positionally."""
    targets = batch_targets(batch)
    if isinstance(batch, Mapping):
        return model(**{key: value for key, value in batch.items() if key != "label"}), targets
    return model(*batch[:-1]), targets


def _is_tensors(x: Any) -> bool:
    """A tensor, or a non-empty dict, tuple or list of them (nested)."""
    if isinstance(x, torch.Tensor):
        return True
    items = list(x.values()) if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else []
    return bool(items) and all(_is_tensors(item) for item in items)


def is_tensor_pair(split: Any) -> bool:
    """``(inputs, targets)``: targets a tensor, inputs a tensor or a dict/tuple of tensors (a tokenized dict)."""
    return isinstance(split, tuple) and len(split) == 2 and isinstance(split[1], torch.Tensor) and _is_tensors(split[0])


def _check_split(name: str, split: Any) -> None:
    """TypeError naming ``name`` unless ``split`` is a pair of tensors of one length or a sized map-style Dataset."""
    if is_tensor_pair(split):
        if batch_rows(split[0]) != len(split[1]):
            raise ValueError(f"{name}: inputs hold {batch_rows(split[0])} examples but targets {len(split[1])}")
        return
    if isinstance(split, torch.utils.data.IterableDataset) or not (
        hasattr(split, "__getitem__") and hasattr(split, "__len__") and not isinstance(split, (tuple, list, dict))
    ):
        raise TypeError(
            f"{name}: expected (inputs, targets) tensors or a map-style torch.utils.data.Dataset with __len__, "
            f"got {type(split).__name__}"
        )


def split_size(split: Data) -> int:
    """The number of examples of a split (tensors or a Dataset)."""
    return len(split[1]) if is_tensor_pair(split) else len(split)


def split_examples(split: Data, size: int | None) -> Data:
    """The first ``size`` examples of a split (None: all): sliced tensors, or a ``Subset`` of a Dataset.

    Examples:
        >>> split_size(split_examples((torch.zeros(5, 2), torch.zeros(5)), 3))
        3
    """
    if size is None or size >= split_size(split):
        return split
    if is_tensor_pair(split):
        return slice_batch(split[0], slice(0, size)), split[1][:size]
    return torch.utils.data.Subset(split, range(size))


@dataclass(frozen=True)
class TaskData:
    """A task's train and test splits: each ``(inputs, targets)`` tensors or a map-style ``Dataset``.

    A Dataset's examples are batched by the task's ``collate_fn`` (default: torch's
    ``default_collate``): the batch may be a tensor pair, a tuple, or a dict of tensors.
    """

    train: Data
    test: Data

    def __post_init__(self) -> None:
        _check_split("train", self.train)
        _check_split("test", self.test)


@dataclass(frozen=True)
class Task:
    """What a benchmark needs to train something.

    Attributes:
        make_model: builds a fresh model (called after seeding).
        sample_input: a small input batch for tracing execution order.
        load_data: ``load_data(data_dir, quick) -> TaskData``.
        loss: loss function ``loss(outputs, targets)`` of the model's own outputs; the default,
            :func:`cross_entropy`, reads the ``logits`` of an output object that has them (a Hugging
            Face ``ModelOutput``), so such a model needs no loss of its own.
        epochs: default epochs; ``quick_epochs`` for ``--quick``.
        batch_size, lr, weight_decay: default training settings.
        optimizer: one of :data:`OPTIMIZERS` (a preset), or any ``torch.optim.Optimizer`` subclass
            whose constructor takes ``lr`` and ``weight_decay``. Either way it is built with the
            task's ``lr`` and ``weight_decay`` (the fields, never options) over the method's param
            groups, whose own ``lr`` and ``weight_decay`` win.
        optimizer_options: the optimizer's other constructor options (``betas``, ``momentum``...):
            they override a preset's options or are a class's options.
        metric: ``"accuracy"`` (classification, higher is better) or ``"loss"`` (lower is better).
        score: with ``"accuracy"``: ``score(outputs, targets)`` gives each example's accuracy in [0, 1]
            (default: 1 where the argmax of the logits is the label); e.g. the mean over binary tasks.
        partition: ``partition(model, sample_input) -> Partition``; default: the layers in data-flow order.
        head: the last group is an output head (what Multirate trains fast by default).
        train_size: examples ``layerwise compare`` trains on by default (None: all).
        quick_train_size: examples it trains on with ``--quick`` (None: all of the quick slice).
        quick_test_size: test examples it evaluates with ``--quick`` (None: all of the quick slice).
        regime: ``"scratch"`` (trained from a random start) or ``"fine-tuning"`` (pretrained weights);
            a comparison's default methods are those that make sense in the regime.
        source_sha256: the sha256 of the file the task was read from (set by ``--task PATH.py:FACTORY``),
            so a comparison's run store tells an edited task file from the old one.
        collate_fn: ``collate_fn(examples) -> batch`` for a ``Dataset`` split (padding variable
            lengths, say); default: torch's ``default_collate``. A Task field, not a TaskData one: it
            decides the batches, so it belongs with the other fields that decide a run (``settings``).
        train_transform: ``train_transform(example, generator) -> example``, applied to every training
            example as it is drawn (random augmentation); its draws come from ``generator``, seeded from
            (seed, epoch, example index), so every method of one seed sees the same augmented examples.
            The frozen-prefix cache refuses such a task.
        num_workers: ``DataLoader`` worker processes that collate the training batches (0: in this
            process); the batches are the same whatever the number.
        batch_loss: ``batch_loss(model, batch) -> loss``, a scalar tensor; default: the task's ``loss``
            of the outputs and targets of ``batch_outputs``, or the model's own ``.loss`` (a Hugging
            Face ``ModelOutput``) when ``loss`` is the default cross-entropy.
        precision: ``"fp32"``, or ``"bf16"``: every forward (training, Hi-DLR's probes, evaluation)
            under ``torch.autocast`` in bfloat16, as a bf16 training script runs.
        clip_grad_norm: clip the gradients of the optimizer's parameters to this total norm after
            every backward, before the optimizer steps (so Hi-DLR's probe direction and Multirate's
            refresh see the clipped gradient); None: no clipping.
        accumulate: split every batch into this many micro-batches, each one's backward accumulated
            (weighted by its share of the batch) before one optimizer step: the gradient of the batch.
        batch_outputs: ``batch_outputs(model, batch) -> (outputs, targets)`` for evaluation; default: a
            dict batch as keyword arguments (less a ``label`` key), a tuple's inputs positionally, and
            the targets of :func:`batch_targets`.
    """

    name: str
    make_model: Callable[[], nn.Module]
    sample_input: Callable[[], Any]
    load_data: Callable[[str | None, bool], TaskData]
    description: str = ""
    loss: Callable[[Any, torch.Tensor], torch.Tensor] = cross_entropy
    epochs: int = 2
    quick_epochs: int = 1
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    optimizer: str | type[torch.optim.Optimizer] = "sgd"
    optimizer_options: Mapping[str, Any] = field(default_factory=dict)
    metric: Metric = "accuracy"
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    partition: Callable[[nn.Module, Any], Partition] | None = None
    head: bool = True
    train_size: int | None = None
    quick_train_size: int | None = None
    quick_test_size: int | None = None
    regime: Regime = "scratch"
    source_sha256: str | None = None
    collate_fn: Callable[[list[Any]], Any] | None = None
    train_transform: Callable[[Any, torch.Generator], Any] | None = None
    num_workers: int = 0
    batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None
    batch_outputs: Callable[[nn.Module, Any], tuple[Any, Any]] | None = None
    precision: str = "fp32"
    clip_grad_norm: float | None = None
    accumulate: int = 1

    def __post_init__(self) -> None:
        optimizer_preset(self)  # refuses an unknown optimizer or options it does not take
        one_of("metric", self.metric, METRICS)
        one_of("regime", self.regime, REGIMES)
        if not isinstance(self.num_workers, int) or isinstance(self.num_workers, bool) or self.num_workers < 0:
            raise ValueError(f"num_workers: expected an int >= 0, got {self.num_workers!r}")
        one_of("precision", self.precision, PRECISIONS)
        if self.clip_grad_norm is not None:
            clip = self.clip_grad_norm
            if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not 0 < clip < math.inf:
                raise ValueError(f"clip_grad_norm: a finite number > 0 or None, got {clip!r}")
        if not isinstance(self.accumulate, int) or isinstance(self.accumulate, bool) or self.accumulate < 1:
            raise ValueError(f"accumulate: micro-batches per step, an int >= 1, got {self.accumulate!r}")
        for hook in ("collate_fn", "train_transform", "batch_loss", "batch_outputs"):
            if getattr(self, hook) is not None and not callable(getattr(self, hook)):
                raise TypeError(f"{hook}: expected a callable or None, got {type(getattr(self, hook)).__name__}")

    def outputs_on(self, model: nn.Module, batch: Any) -> tuple[Any, Any]:
        """``(outputs, targets)`` of ``model`` on ``batch``: the ``batch_outputs`` hook, or the default forward."""
        return model_outputs(model, batch) if self.batch_outputs is None else self.batch_outputs(model, batch)

    def loss_on(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The training loss of ``model`` on ``batch``: the ``batch_loss`` hook (checked to give a scalar
        tensor), else :meth:`loss_of` the outputs of :meth:`outputs_on`."""
        if self.batch_loss is None:
            return self.loss_of(*self.outputs_on(model, batch))
        loss = self.batch_loss(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"batch_loss: task {self.name!r}'s batch_loss(model, batch) must return a scalar "
                f"tensor (the batch's mean loss), got {got}"
            )
        return loss

    def loss_of(self, outputs: Any, targets: Any) -> torch.Tensor:
        """The task's ``loss`` of ``outputs``; with the default loss, the model's own ``.loss`` when it has one."""
        own = getattr(outputs, "loss", None)
        if self.loss is cross_entropy and isinstance(own, torch.Tensor):
            return own
        return self.loss(outputs, targets)

    @property
    def optimizer_name(self) -> str:
        """The optimizer as a report names it: the preset's name or the class's."""
        return self.optimizer if isinstance(self.optimizer, str) else self.optimizer.__name__

    def settings(self) -> dict[str, Any]:
        """Every field that decides a run (all but ``name`` and ``description``), JSON-ready and stable
        across processes: callables and classes by their qualified name."""
        left_out = ("name", "description", "num_workers")  # workers collate the same batches
        return {
            f.name: _stable(getattr(self, f.name))
            for f in fields(self)
            if f.name not in left_out
            and not (f.name in _DEFAULT_LEFT_OUT and getattr(self, f.name) == _DEFAULT_LEFT_OUT[f.name])
        }

    def partition_of(self, model: nn.Module) -> Partition:
        """The task's partition of ``model`` (layers in data-flow order unless the task says otherwise)."""
        sample = self.sample_input()
        return by_layer(model, sample_input=sample) if self.partition is None else self.partition(model, sample)

    def groups(self, model: nn.Module) -> Partition:
        """Deprecated name of :meth:`partition_of` (``partition`` is the field that builds it)."""
        warnings.warn("Task.groups(model) is now Task.partition_of(model)", DeprecationWarning, stacklevel=2)
        return self.partition_of(model)


_DEFAULT_LEFT_OUT = {
    "collate_fn": None,
    "train_transform": None,
    "batch_loss": None,
    "batch_outputs": None,
    "precision": "fp32",
    "clip_grad_norm": None,
    "accumulate": 1,
}
"""Fields left out of :meth:`Task.settings` at their defaults, so run stores written before they existed stay valid."""

PRECISIONS = ("fp32", "bf16")
"""``Task.precision``: float32, or bfloat16 autocast (float16 would need a GradScaler: not offered on CPU)."""

_IGNORED_LABEL = -100
"""``cross_entropy``'s default ``ignore_index``: a label it skips."""


def check_labels(task: Task, outputs: Any, labels: torch.Tensor) -> None:
    """Refuse class labels the model's ``outputs`` cannot score under the task's cross-entropy.

    ``outputs`` is the model's output on a batch (its dim 1 holds the classes); ``labels`` any
    integer class labels of the task (a whole split). Tasks with another loss, or with soft or
    float targets, are not checked.

    Raises:
        ValueError: naming the task, the labels' range and the model's output width.
    """
    outputs = logits_of(outputs)
    if task.loss not in (cross_entropy, nn.functional.cross_entropy):
        return
    if not isinstance(outputs, torch.Tensor) or outputs.dim() < 2:
        return
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        return
    labels = labels[labels != _IGNORED_LABEL]
    if labels.numel() == 0:
        return
    width, low, high = outputs.shape[1], int(labels.min()), int(labels.max())
    if low < 0 or high >= width:
        raise ValueError(
            f"task {task.name!r}: labels range over [{low}, {high}] but the model outputs {width} classes; "
            f"labels must lie in [0, {width - 1}] (or the model's last layer needs {high + 1} outputs)"
        )


@dataclass(frozen=True)
class OptimizerPreset:
    """A task's optimizer: a class and the options it is built with (besides ``lr`` and ``weight_decay``)."""

    name: str
    cls: type[torch.optim.Optimizer]
    options: Mapping[str, Any]
    description: str = ""

    def build(self, param_groups: list[dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """The optimizer over ``param_groups`` (their own ``lr`` and ``weight_decay`` win)."""
        return self.cls(param_groups, lr=lr, weight_decay=weight_decay, **self.options)

    @property
    def class_path(self) -> str:
        """The class as code names it after ``import torch`` (and its module, outside ``torch.optim``)."""
        if getattr(torch.optim, self.cls.__name__, None) is self.cls:
            return f"torch.optim.{self.cls.__name__}"
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


OPTIMIZER_PRESETS: Registry[OptimizerPreset] = Registry("optimizer")
"""The optimizers a :class:`Task` can name."""
for _preset in (
    OptimizerPreset("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}, "SGD with Nesterov momentum 0.9"),
    OptimizerPreset("adamw", torch.optim.AdamW, {}, "AdamW"),
    OptimizerPreset("gd", torch.optim.SGD, {"momentum": 0.0}, "plain gradient descent"),
):
    OPTIMIZER_PRESETS.register(_preset.name, _preset, description=_preset.description)
OPTIMIZERS = tuple(OPTIMIZER_PRESETS)
"""The preset names: ``sgd`` (Nesterov momentum 0.9), ``adamw``, ``gd`` (plain gradient descent)."""


def optimizer_preset(task: Task) -> OptimizerPreset:
    """The task's optimizer as a preset: a named preset with ``optimizer_options`` over its options, or the class.

    Raises:
        ValueError: naming ``optimizer`` (neither a preset nor an Optimizer subclass taking ``lr`` and
            ``weight_decay``) or ``optimizer_options`` (an option the class does not take, or ``lr``
            or ``weight_decay``, which are the task's fields).
    """
    chosen, options = task.optimizer, dict(task.optimizer_options)
    if isinstance(chosen, str) and chosen in OPTIMIZER_PRESETS:
        preset = OPTIMIZER_PRESETS.get(chosen)
        preset = OptimizerPreset(chosen, preset.cls, {**preset.options, **options}, preset.description)
    elif isinstance(chosen, type) and issubclass(chosen, torch.optim.Optimizer) and _takes_lr(chosen):
        preset = OptimizerPreset(chosen.__name__, chosen, options, f"{chosen.__module__}.{chosen.__qualname__}")
    else:
        raise ValueError(
            f"optimizer: expected one of {list(OPTIMIZER_PRESETS)} or a torch.optim.Optimizer subclass "
            f"taking lr and weight_decay, got {chosen!r}"
        )
    _check_options(preset)
    return preset


def _takes_lr(cls: type[torch.optim.Optimizer]) -> bool:
    parameters = inspect.signature(cls).parameters
    return all(name in parameters for name in ("lr", "weight_decay"))


def _check_options(preset: OptimizerPreset) -> None:
    """ValueError naming ``optimizer_options`` when ``preset.cls`` cannot be built with them."""
    given = set(preset.options) & {"lr", "weight_decay"}
    if given:
        raise ValueError(f"optimizer_options: {sorted(given)} are the task's own fields; set them there")
    try:
        inspect.signature(preset.cls).bind([], lr=0.1, weight_decay=0.0, **preset.options)
    except TypeError as err:
        raise ValueError(f"optimizer_options: {preset.cls.__name__} {err}") from None


def make_optimizer(task: Task, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """The task's optimizer over ``param_groups`` (their ``lr`` and ``weight_decay`` win)."""
    return optimizer_preset(task).build(param_groups, task.lr, task.weight_decay)


def _stable(value: Any) -> Any:
    """``value`` as JSON that names the same thing in every process: callables and classes by qualified name."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    if callable(value):
        named = value if hasattr(value, "__qualname__") else type(value)
        return f"{getattr(named, '__module__', '')}.{named.__qualname__}"
    return repr(value)


TASKS: Registry[Task] = Registry("task")
"""Every registered task by name (the built-in ones are registered when ``layerwise.tasks`` is imported)."""


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (a task of the same name is replaced, with a warning)."""
    if not isinstance(task, Task):
        raise TypeError(f"task: expected a Task, got {type(task).__name__}")
    return TASKS.register(task.name, task, description=task.description)


def get_task(name: str) -> Task:
    """The registered task called ``name`` (ValueError naming the known ones otherwise)."""
    return TASKS.get(name)
