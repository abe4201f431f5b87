"""What a task is (a model factory plus its data) and the registry every command reads tasks from.

Register your own task and every benchmark and command can run it:

Examples:
    >>> from layerwise.tasks import Task, register_task
    >>> register_task(Task(name="my-task", make_model=..., sample_input=..., load_data=...))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .._checks import one_of
from .._registry import Registry
from ..groups import Partition, by_layer
from ..training import slice_batch

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_NAMES",
    "OPTIMIZER_PRESETS",
    "PRECISIONS",
    "REGIMES",
    "TASKS",
    "OptimizerPreset",
    "Task",
    "TaskData",
    "batch_examples",
    "batch_targets",
    "check_labels",
    "check_outputs",
    "cross_entropy",
    "example_accuracy",
    "get_task",
    "is_tensor_pair",
    "logits_of",
    "make_optimizer",
    "model_outputs",
    "optimizer_choice",
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


def model_outputs(model: nn.Module, batch: Any, *, keyword_inputs: bool = False) -> tuple[Any, Any]:
    """``(outputs, targets)`` of the default forward: a dict batch as keyword arguments (less a ``label``
    key; ``labels`` stays, as a Hugging Face model takes it), a tuple's inputs positionally.

    ``keyword_inputs``: an ``(inputs, targets)`` pair whose inputs are a dict passes them as keyword
    arguments (``model(**inputs)``, a Hugging Face model's tokenized inputs) rather than as the one
    argument. :meth:`Task.outputs_on` sets it when the task's ``sample_input`` is a dict, which the
    partition's trace passes as keyword arguments too.

    Examples:
        >>> model_outputs(lambda ids: ids * 2, ({"ids": torch.ones(2)}, torch.zeros(2)), keyword_inputs=True)[0]
        tensor([2., 2.])
    """
    targets = batch_targets(batch)
    if isinstance(batch, Mapping):
        return model(**{key: value for key, value in batch.items() if key != "label"}), targets
    if keyword_inputs and len(batch) == 2 and isinstance(batch[0], Mapping):
        return model(**batch[0]), targets
    return model(*batch[:-1]), targets


def _tensor_rows(x: Any, path: str) -> Iterator[tuple[str, int]]:
    """``(path, length of the first dimension)`` of every tensor in ``x`` (nested dicts, tuples and
    lists; a 0-dimensional tensor has no examples dimension and is left out)."""
    if isinstance(x, torch.Tensor):
        if x.dim():
            yield path, x.shape[0]
    elif isinstance(x, Mapping):
        for key, value in x.items():
            yield from _tensor_rows(value, f"{path}[{key!r}]")
    elif isinstance(x, (tuple, list)):
        for i, value in enumerate(x):
            yield from _tensor_rows(value, f"{path}[{i}]")


def _listing(rows: list[tuple[str, int]], most: int = 4) -> str:
    """``batch[0] 7, batch[1] 3, ... (192 tensors)``: the first ``most`` tensors' examples by path."""
    shown = ", ".join(f"{path} {n}" for path, n in rows[:most])
    return shown if len(rows) <= most else f"{shown}, ... ({len(rows)} tensors)"


def _inputs_examples(name: str, inputs: Any, targets: torch.Tensor) -> int:
    """The examples a tensor pair's ``inputs`` hold: the first dimension every tensor of them shares.

    Raises:
        ValueError: naming ``name`` when the tensors disagree (a list of variable-length tensors, one
            per example, among them) or hold no examples dimension.
    """
    rows = list(_tensor_rows(inputs, "inputs"))
    counts = {n for _, n in rows}
    per_example = isinstance(inputs, (tuple, list)) and len(inputs) == len(targets)
    if len(counts) > 1 and per_example:
        raise ValueError(
            f"{name}: the inputs are a {type(inputs).__name__} of {len(inputs)} tensors of different lengths "
            f"({_listing(rows)}), one per example; a tensor pair's inputs hold all the examples along the first "
            "dimension of each tensor: give variable-length examples as a Dataset and a Task "
            "collate_fn(examples) -> batch that pads them into tensors"
        )
    if len(counts) > 1:
        raise ValueError(
            f"{name}: the inputs' tensors disagree on the examples they hold ({_listing(rows)}); each tensor "
            "of a tensor pair's inputs holds all the examples along its first dimension"
        )
    if not counts:
        raise ValueError(f"{name}: the inputs hold no tensor with an examples (first) dimension")
    return counts.pop()


def batch_examples(batch: Any, collate_fn: Callable[[list[Any]], Any] | None = None) -> int:
    """The examples in a batch: the first dimension its tensors share (inputs and targets alike).

    Examples:
        >>> batch_examples(({"ids": torch.zeros(3, 7), "mask": torch.ones(3, 7)}, torch.zeros(3)))
        3

    Raises:
        ValueError: naming ``collate_fn`` (what made the batch) when its tensors disagree: a list of
            variable-length tensors, one per example, say.
        TypeError: the batch holds no tensor with an examples dimension.
    """
    rows = list(_tensor_rows(batch, "batch"))
    counts = {n for _, n in rows}
    if len(counts) > 1:
        name = "collate_fn" if collate_fn is not None else "collate_fn (default_collate)"
        raise ValueError(
            f"{name}: a batch's tensors disagree on how many examples it holds ({_listing(rows)}); "
            "collate_fn(examples) must return tensors that each hold the batch's examples along their "
            "first dimension (pad variable lengths into one tensor)"
        )
    if not counts:
        raise TypeError(f"batch: no tensor with an examples (first) dimension in a {type(batch).__name__} batch")
    return counts.pop()


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
        inputs, targets = split
        examples = _inputs_examples(name, inputs, targets)
        if examples != len(targets):
            stack = isinstance(inputs, (tuple, list)) and len(inputs) == len(targets)
            hint = f" (a {type(inputs).__name__} of one tensor per example? stack them into one)" if stack else ""
            raise ValueError(f"{name}: inputs hold {examples} examples but targets {len(targets)}{hint}")
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
        score: with ``"accuracy"``: ``score(outputs, targets)`` gives each example's accuracy in [0, 1],
            one value per example (e.g. the mean over binary tasks). Default (:func:`example_accuracy`):
            logits ``[B, C]`` against class-index targets ``[B]`` (or class probabilities ``[B, C]``)
            by their argmax, or one logit per example (``[B]`` or ``[B, 1]``, a binary
            cross-entropy model) against 0/1 targets by its sign (a probability by ``> 0.5`` when
            ``loss`` is ``binary_cross_entropy``); other shapes are refused, never broadcast.
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
            lengths, say); default: torch's ``default_collate``. Every tensor of a batch holds its
            examples along its first dimension (not a list of one tensor per example: the loop counts
            and slices batches by that dimension). A Task field, not a TaskData one: it
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
        batch_outputs: ``batch_outputs(model, batch) -> (outputs, targets)`` for evaluation; default
            (:func:`model_outputs`): a dict batch as keyword arguments (less a ``label`` key), a tuple's
            inputs positionally (an ``(inputs, targets)`` pair's dict inputs as keyword arguments when
            ``sample_input`` is a dict: a Hugging Face model's tokenized inputs), and the targets of
            :func:`batch_targets`. Its outputs (or the default forward's) hold one row per example,
            in a form the metric reads (``score``): each model's first training batch is checked
            before the first optimizer step (:func:`check_outputs`).
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
        """``(outputs, targets)`` of ``model`` on ``batch``: the ``batch_outputs`` hook, or the default
        forward (:func:`model_outputs`; a pair's dict inputs as keyword arguments when ``sample_input``
        is a dict), checked to be one row per example in a form the metric takes (:func:`check_outputs`)."""
        if self.batch_outputs is None:
            keywords = isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], Mapping)
            pair = model_outputs(model, batch, keyword_inputs=keywords and self._keyword_inputs)
        else:
            pair = self.batch_outputs(model, batch)
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(
                    f"batch_outputs: task {self.name!r}'s batch_outputs(model, batch) must return a pair "
                    f"(outputs, targets), got {type(pair).__name__}"
                )
        check_outputs(self, batch, *pair, training=bool(getattr(model, "training", False)))
        return pair[0], pair[1]

    @functools.cached_property
    def _keyword_inputs(self) -> bool:
        """Whether the model takes its inputs as keyword arguments: the task's ``sample_input`` is a dict."""
        return isinstance(self.sample_input(), Mapping)

    def check_batch(self, model: nn.Module, batch: Any) -> None:
        """Refuse a batch, or outputs of ``batch_outputs`` (or the default forward) on it, that the task
        cannot count or score: :func:`check_outputs` with the targets' values, on :meth:`outputs_on`
        run without gradients, every module in eval mode (as evaluation runs it) and the random
        number generators left as they were. Training runs it on each model's first batch."""
        if self.metric != "accuracy":
            batch_examples(batch, self.collate_fn)
            return
        modes = {module: module.training for module in model.modules()}
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        origins = _Origins()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices), origins:
                model.eval()
                outputs, targets = self.outputs_on(model, batch)
        finally:
            for module, training in modes.items():
                module.training = training
        check_outputs(self, batch, outputs, targets, values=True)
        logits = logits_of(outputs)
        if self._reads_logits(logits) and origins.of(logits) == "sigmoid":
            raise ValueError(
                f"{_source(self)}: task {self.name!r}'s one output per example comes from a sigmoid (a probability), "
                "but accuracy reads it as a logit (class 1 where > 0: every example would be class 1); set "
                "Task(loss=torch.nn.functional.binary_cross_entropy) to read probabilities (class 1 where > 0.5), or "
                "return the logits and train with binary_cross_entropy_with_logits"
            )

    def _reads_logits(self, logits: Any) -> bool:
        """Whether the default accuracy reads ``logits`` as one logit per example (class 1 where > 0)."""
        binary = isinstance(logits, torch.Tensor) and (
            logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1)
        )
        return binary and self.metric == "accuracy" and self.score is None and _binary_threshold(self) == 0.0

    def loss_on(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """The training loss of ``model`` on ``batch``: the ``batch_loss`` hook (checked to give a scalar
        tensor), else :meth:`loss_of` the outputs of :meth:`outputs_on`.

        A model's first batch is checked (:func:`check_outputs` with the targets' values) before its
        loss counts: outputs the metric would misread are refused before the first optimizer step. With
        a ``batch_loss`` hook, which does not call ``batch_outputs``, or a training forward that gives
        no tensor of logits, that takes one more forward, as evaluation runs it (:meth:`check_batch`)."""
        first = model not in _CHECKED_MODELS
        if self.batch_loss is None:
            outputs, targets = self.outputs_on(model, batch)
            if first:
                self._check_first(model, batch, (outputs, targets))
            return self.loss_of(outputs, targets)
        if first:
            self._check_first(model, batch, None)
        loss = self.batch_loss(model, batch)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"batch_loss: task {self.name!r}'s batch_loss(model, batch) must return a scalar "
                f"tensor (the batch's mean loss), got {got}"
            )
        return loss

    def _check_first(self, model: nn.Module, batch: Any, trained: tuple[Any, Any] | None) -> None:
        """Check ``model``'s first batch, once: ``trained``, the training forward's outputs and targets,
        when they hold what evaluation reads (a tensor of logits); else by :meth:`check_batch`."""
        logits = None if trained is None else logits_of(trained[0])
        if (
            trained is not None
            and (self.metric != "accuracy" or isinstance(logits, torch.Tensor))
            and not (
                self._reads_logits(logits)  # one output per example: traced, in case a sigmoid gave it
            )
        ):
            check_outputs(self, batch, *trained, values=True)
        else:
            self.check_batch(model, batch)
        _CHECKED_MODELS.add(model)

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

_CHECKED_MODELS: weakref.WeakSet[nn.Module] = weakref.WeakSet()
"""The models whose first batch :meth:`Task.loss_on` has checked (:meth:`Task.check_batch`)."""

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


_ACCURACY_TAKES = (
    "accuracy takes one row per example: logits [B, C] with class-index targets [B] or class "
    "probabilities [B, C], or one logit per example, [B] or [B, 1], with 0/1 targets [B] or [B, 1]"
)


def _source(task: Task) -> str:
    """What gave a task's outputs: its ``batch_outputs`` hook, or the default forward."""
    return "batch_outputs" if task.batch_outputs is not None else "the default forward"


def _accuracy_form(logits: torch.Tensor, targets: torch.Tensor) -> str | None:
    """How the default accuracy reads ``logits`` against ``targets`` (their rows aside): ``"classes"``,
    ``"probabilities"``, ``"binary"`` (one logit per example), or None (a form it does not read)."""
    if logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1):
        return "binary" if targets.dim() == 1 or (targets.dim() == 2 and targets.shape[1] == 1) else None
    if logits.dim() != 2:
        return None
    if targets.dim() == 1:
        return "classes"
    return "probabilities" if targets.shape == logits.shape and targets.is_floating_point() else None


def _rows(x: Any) -> int | None:
    """The first dimension of a tensor (None for anything else, or a 0-dimensional tensor)."""
    return x.shape[0] if isinstance(x, torch.Tensor) and x.dim() else None


def _shapes(outputs: Any, targets: Any, examples: int | None) -> str:
    """``outputs of shape (16, 3) and targets of shape (16, 1) for a batch of 16 examples``."""

    def shape(x: Any) -> str:
        return f"of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"of type {type(x).__name__}"

    batch = "" if examples is None else f" for a batch of {examples} examples"
    return f"outputs {shape(outputs)} and targets {shape(targets)}{batch}"


def _check_accuracy_shapes(task: Task, logits: Any, targets: Any, examples: int | None) -> str:
    """The form the default accuracy reads ``logits`` and ``targets`` in (:func:`_accuracy_form`), their
    rows agreeing with ``examples``; ValueError naming the hook that gave them otherwise."""
    source = _source(task)
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"{source}: task {task.name!r} gave {_shapes(logits, targets, examples)}; accuracy needs tensor "
            "logits (or an output object holding .logits) and tensor targets: give the task a "
            "score(outputs, targets), or use metric='loss'"
        )
    form = _accuracy_form(logits, targets)
    rows = {_rows(logits), _rows(targets)} | ({examples} if examples is not None else set())
    if form is not None and len(rows) == 1:
        return form
    transposed = logits.dim() == 2 and examples is not None and logits.shape[1] == examples != logits.shape[0]
    hint = " (transposed logits? they are [B, C], one row per example)" if transposed else ""
    raise ValueError(
        f"{source}: task {task.name!r} gave {_shapes(logits, targets, examples)}{hint}; {_ACCURACY_TAKES}: "
        f"fix {source}, give the task a score(outputs, targets) -> [B], or use metric='loss'"
    )


def _check_binary_targets(task: Task, targets: torch.Tensor) -> None:
    """ValueError naming the hook when the targets of a single-logit model are not all 0 or 1."""
    if bool(((targets == 0) | (targets == 1)).all()):
        return
    seen = [round(float(v), 4) for v in targets.detach().flatten().unique()[:6].tolist()]
    raise ValueError(
        f"{_source(task)}: task {task.name!r} gives one output per example, read as a binary logit, but "
        f"its targets hold values other than 0 and 1 ({seen}); binary accuracy takes 0/1 targets: give the "
        "model one output per class for class-index targets, or the task a score(outputs, targets)"
    )


def check_outputs(
    task: Task, batch: Any, outputs: Any, targets: Any, *, values: bool = False, training: bool = False
) -> None:
    """Refuse the ``(outputs, targets)`` of a batch that the task's metric would misread.

    The batch's tensors agree on its examples B (:func:`batch_examples`). With the ``accuracy``
    metric, outputs and targets hold one row per example, B of each; without a ``score``, the
    logits (:func:`logits_of`) and targets take a form :func:`example_accuracy` reads, and with
    ``values`` the targets of one logit per example are checked to be 0 or 1. The ``loss`` metric
    reads the loss alone. ``training``: outputs of a forward in training mode, which only the loss
    reads: outputs that are not a tensor of logits (an auxiliary head's too, say) are left to it.

    Examples:
        >>> task = Task(name="t", make_model=None, sample_input=None, load_data=None)
        >>> check_outputs(task, (torch.zeros(4, 2), torch.zeros(4)), torch.zeros(4, 3), torch.zeros(4))
        >>> check_outputs(task, (torch.zeros(4, 2), torch.zeros(4)), torch.zeros(3, 4), torch.zeros(4))
        Traceback (most recent call last):
        ...
        ValueError: the default forward: task 't' gave outputs of shape (3, 4) and targets of shape (4,) ...

    Raises:
        ValueError: naming ``batch_outputs`` (or the default forward), the shapes seen and the forms
            accepted; or ``collate_fn``, for a batch whose tensors disagree.
        TypeError: naming the hook, for outputs or targets that are not tensors (without a ``score``).
    """
    examples = batch_examples(batch, task.collate_fn)
    if task.metric != "accuracy" or (training and not isinstance(logits_of(outputs), torch.Tensor)):
        return
    if task.score is None:
        form = _check_accuracy_shapes(task, logits_of(outputs), targets, examples)
        if values and form == "binary":
            _check_binary_targets(task, targets)
        return
    logits, source = logits_of(outputs), _source(task)
    if any(rows not in (None, examples) for rows in (_rows(logits), _rows(targets))):
        raise ValueError(
            f"{source}: task {task.name!r} gave {_shapes(logits, targets, examples)}; its "
            f"score(outputs, targets) reads one row per example: {source} must give {examples} rows"
        )


class _Origins(TorchFunctionMode):
    """Records, over one forward, the torch op each tensor came from (through reshapes: ``squeeze``, ``view``...)."""

    _RESHAPES = frozenset({"squeeze", "unsqueeze", "view", "reshape", "flatten", "contiguous", "to", "float", "clone"})

    def __init__(self) -> None:
        super().__init__()
        self.made: dict[int, tuple[torch.Tensor, str]] = {}

    def of(self, tensor: Any) -> str | None:
        """The op that made ``tensor`` in the traced forward (None: not made there)."""
        made = self.made.get(id(tensor))
        return made[1] if made is not None and made[0] is tensor else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if isinstance(result, torch.Tensor):
            name = getattr(func, "__name__", "").rstrip("_")
            source = args[0] if args else None
            kept = self.of(source) if name in self._RESHAPES else None
            self.made[id(result)] = (result, kept or name)
        return result


def _binary_threshold(task: Task) -> float:
    """Where one output per example says class 1: 0.5 for a probability (the task's loss is
    ``binary_cross_entropy`` or ``nn.BCELoss``), else 0 (a logit)."""
    probability = task.loss is nn.functional.binary_cross_entropy or isinstance(task.loss, nn.BCELoss)
    return 0.5 if probability else 0.0


def example_accuracy(task: Task, outputs: Any, targets: Any, examples: int | None = None) -> torch.Tensor:
    """Each example's accuracy on a batch, ``examples`` values in [0, 1] (B): the task's ``score``, else
    read from the shapes of the logits (:func:`logits_of`) and targets, never broadcast:

    - logits ``[B, C]`` (C >= 2) and class-index targets ``[B]``: 1 where the argmax is the label;
    - logits ``[B, C]`` and class probabilities ``[B, C]`` (floats): 1 where the two argmaxes agree;
    - one logit per example, ``[B]`` or ``[B, 1]``, and 0/1 targets ``[B]`` or ``[B, 1]``: 1 where
      ``logit > 0`` says the target (``> 0.5``, a probability, when the task's loss is
      ``binary_cross_entropy`` or ``nn.BCELoss``).

    Examples:
        >>> task = Task(name="t", make_model=None, sample_input=None, load_data=None)
        >>> example_accuracy(task, torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1.0, 1.0, 0.0]))
        tensor([1., 0., 0.])

    Raises:
        ValueError: naming ``batch_outputs`` (or the default forward) for any other shapes or rows, or
            for targets of a single logit other than 0 and 1; naming ``score`` when it does not give
            one value per example.
    """
    if task.score is not None:
        hits = task.score(outputs, targets)
        wrong = not isinstance(hits, torch.Tensor) or hits.dim() != 1
        if wrong or (examples is not None and hits.shape[0] != examples):
            got = f"shape {tuple(hits.shape)}" if isinstance(hits, torch.Tensor) else type(hits).__name__
            want = "one value per example" + ("" if examples is None else f", shape ({examples},)")
            raise ValueError(f"score: task {task.name!r}'s score(outputs, targets) must give {want}, got {got}")
        return hits
    logits = logits_of(outputs)
    form = _check_accuracy_shapes(task, logits, targets, examples)
    if form == "classes":
        return (logits.argmax(1) == targets).float()
    if form == "probabilities":
        return (logits.argmax(1) == targets.argmax(1)).float()
    _check_binary_targets(task, targets)
    return ((logits.reshape(-1) > _binary_threshold(task)) == targets.reshape(-1).bool()).float()


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


def _takes_lr(cls: type[torch.optim.Optimizer]) -> bool:
    parameters = inspect.signature(cls).parameters
    return all(name in parameters for name in ("lr", "weight_decay"))


def _torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer class of ``torch.optim`` by its lower-case name."""
    found = {name.lower(): getattr(torch.optim, name) for name in dir(torch.optim)}
    return {
        name: cls
        for name, cls in sorted(found.items())
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
    }


_TORCH_OPTIMIZERS = _torch_optimizers()
_WITHOUT_DECAY = {name: cls for name, cls in _TORCH_OPTIMIZERS.items() if not _takes_lr(cls)}

OPTIMIZER_NAMES = tuple(sorted(set(OPTIMIZER_PRESETS) | (set(_TORCH_OPTIMIZERS) - set(_WITHOUT_DECAY))))
"""The optimizer names a task and :func:`layerwise.compare.setup` take (any case): the presets (``sgd`` is
SGD with Nesterov momentum 0.9, ``gd`` plain gradient descent, ``adamw``) and every ``torch.optim``
optimizer taking ``lr`` and ``weight_decay`` (``adam``, ``adadelta``, ``rmsprop``, ...)."""


def optimizer_choice(optimizer: Any) -> str | type[torch.optim.Optimizer]:
    """What ``optimizer`` names: a preset's name, or an Optimizer class taking ``lr`` and ``weight_decay``.

    Examples:
        >>> optimizer_choice("SGD"), optimizer_choice("adadelta").__name__
        ('sgd', 'Adadelta')

    Raises:
        ValueError: naming ``optimizer`` and :data:`OPTIMIZER_NAMES`; a ``torch.optim`` optimizer that takes
            no ``weight_decay`` (``lbfgs``, ``rprop``, ``sparseadam``) is named as such.
    """
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer) and _takes_lr(optimizer):
        return optimizer
    if isinstance(optimizer, str):
        name = optimizer.lower()
        if name in OPTIMIZER_PRESETS:
            return name
        if name in OPTIMIZER_NAMES:
            return _TORCH_OPTIMIZERS[name]
        if name in _WITHOUT_DECAY:
            raise ValueError(
                f"optimizer: torch.optim.{_WITHOUT_DECAY[name].__name__} takes no weight_decay, and every method "
                f"builds its optimizer with each group's lr and weight_decay; choose from {list(OPTIMIZER_NAMES)}"
            )
    raise ValueError(
        f"optimizer: expected one of {list(OPTIMIZER_NAMES)} (any case) or a torch.optim.Optimizer subclass "
        f"taking lr and weight_decay, got {optimizer!r}"
    )


"""The preset names: ``sgd`` (Nesterov momentum 0.9), ``adamw``, ``gd`` (plain gradient descent)."""


def optimizer_preset(task: Task) -> OptimizerPreset:
    """The task's optimizer as a preset: a named preset with ``optimizer_options`` over its options, or the class.

    Raises:
        ValueError: naming ``optimizer`` (neither a name of :data:`OPTIMIZER_NAMES`, in any case, nor an
            Optimizer subclass taking ``lr`` and ``weight_decay``) or ``optimizer_options`` (an option the
            class does not take, or ``lr`` or ``weight_decay``, which are the task's fields).
    """
    chosen, options = optimizer_choice(task.optimizer), dict(task.optimizer_options)
    if isinstance(chosen, str):
        preset = OPTIMIZER_PRESETS.get(chosen)
        preset = OptimizerPreset(chosen, preset.cls, {**preset.options, **options}, preset.description)
    else:
        preset = OptimizerPreset(chosen.__name__, chosen, options, f"{chosen.__module__}.{chosen.__qualname__}")
    _check_options(preset)
    return preset


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
