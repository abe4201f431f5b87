"""A task from a saved Hugging Face sequence classifier and a file of labelled texts: ``--task hf:DIR --data FILE``.

``DIR`` is read offline (``local_files_only``): its ``config.json``, tokenizer and weights (the weights file
transformers would load is checked whole: a truncated ``model.safetensors`` is refused before anything
loads). ``max_length`` is bounded by the checkpoint's own limit (:attr:`Checkpoint.token_limit`). The model
trains through :class:`~layerwise.tasks.pretrained.TextClassifier` (token ids in, logits out, the
attention mask from the padding), with a head as wide as the label column has classes. Its default
partition is the embeddings, each layer of the transformer stack, and the head
(:func:`transformer_partition`). The file's texts are tokenized once and cached in ``cache_dir``
(:func:`~layerwise.tasks.text_files.cached_token_ids`); a fixed, seeded, stratified split holds out
``test_fraction`` of every class. The classes are the label column's sorted values, or the order of
the checkpoint head's ``id2label`` when it names the same ones.

Examples:
    >>> import pathlib, tempfile
    >>> from layerwise.tasks.pretrained import minilm_path
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "reviews.csv").write_text("text,label\\n" + "good,pos\\nbad,neg\\n" * 10)
    >>> spec = HFSpec(minilm_path(), folder / "reviews.csv", cache_dir=folder / "tokenized")
    >>> task, note = hf_task(spec)
    >>> note
    'BertModel holds no classification head: a new 2-way head is trained'
    >>> task.partition_of(task.make_model()).names[:3], len(task.load_data(None, False).train[1])
    (('embeddings', 'layer0', 'layer1'), 16)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import fraction, positive_int
from ..groups import Partition, by_layer, explicit
from .base import Task, TaskData
from .pretrained import TextClassifier, offline_transformers, quiet_transformers
from .text_files import READER, LabelledTexts, cached_token_ids, file_sha256, read_labelled_texts
from .tweets import split_tweets, tokenize

__all__ = [
    "PREFIX",
    "Checkpoint",
    "HFSpec",
    "check_max_length",
    "check_weights",
    "head_note",
    "hf_task",
    "is_hf_task",
    "read_checkpoint",
    "transformer_partition",
]

PREFIX = "hf:"
"""How ``--task`` names a checkpoint folder."""
_SEQUENCE_CLASSIFIER = "ForSequenceClassification"
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
"""The weights files transformers looks for, in the order it prefers them."""
_POSITIONS_AFTER_PADDING = frozenset(
    {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text", "mpnet", "ibert"}
)
"""Model types whose position ids start after the padding index (RoBERTa's scheme): a config's
``max_position_embeddings`` of 514 takes 512 tokens."""
_NO_LIMIT = 10**12
"""A tokenizer's ``model_max_length`` at or above this is transformers' "no limit" sentinel (``int(1e30)``)."""


def is_hf_task(spec: str | None) -> bool:
    """Whether ``--task`` names a Hugging Face checkpoint folder (``hf:DIR``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


@dataclass(frozen=True)
class HFSpec:
    """What ``--task hf:DIR --data FILE`` asks for.

    Attributes:
        checkpoint: the folder ``save_pretrained`` wrote (``config.json``, weights, tokenizer).
        data: a ``.csv``, ``.jsonl`` or ``.parquet`` file with a text and a label column.
        cache_dir: where token ids are cached (a comparison's ``OUT/tokenized``).
        test_fraction: the share of every class held out for evaluation (a fixed split, seed 0).
        max_length: tokens per text (longer texts are truncated).
    """

    checkpoint: Path
    data: Path
    cache_dir: Path
    text_column: str = "text"
    label_column: str = "label"
    test_fraction: float = 0.2
    max_length: int = 128


@dataclass(frozen=True)
class Checkpoint:
    """A checked checkpoint folder: its config (``transformers.PretrainedConfig``) and tokenizer."""

    folder: Path
    config: Any
    tokenizer: Any

    @property
    def architecture(self) -> str:
        """The class the checkpoint was saved from (``BertModel``, ``BertForSequenceClassification``...)."""
        return (self.config.architectures or [type(self.config).__name__])[0]

    @property
    def has_head(self) -> bool:
        """Whether the checkpoint holds a sequence-classification head."""
        return self.architecture.endswith(_SEQUENCE_CLASSIFIER)

    @property
    def token_limits(self) -> dict[str, int]:
        """The most tokens per text the checkpoint takes, by where it says so: its config's
        ``max_position_embeddings`` and its tokenizer's ``model_max_length`` (when set, not the "no limit"
        sentinel)."""
        positions = getattr(self.config, "max_position_embeddings", None)
        where = "config.json's max_position_embeddings"
        pad = getattr(self.config, "pad_token_id", None)
        if self.config.model_type in _POSITIONS_AFTER_PADDING and isinstance(positions, int) and isinstance(pad, int):
            # position ids count from pad_token_id + 1: the first pad_token_id + 1 rows of the table are never a text's
            positions -= pad + 1
            where += f" less the {pad + 1} position(s) {self.config.model_type} keeps before pad_token_id + 1"
        limits = {
            where: positions,
            "its tokenizer's model_max_length": getattr(self.tokenizer, "model_max_length", None),
        }
        return {
            where: limit
            for where, limit in limits.items()
            if isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit < _NO_LIMIT
        }

    @property
    def token_limit(self) -> int | None:
        """The most tokens per text the checkpoint takes (the least of :attr:`token_limits`; None: it sets none)."""
        return min(self.token_limits.values(), default=None)


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """The config and tokenizer of ``folder``, checked to load as a sequence classifier.

    Raises:
        ValueError: naming ``--task hf:DIR``: no such folder, no ``config.json``, a config transformers
            cannot read, a model type ``AutoModelForSequenceClassification`` has no class for, no
            tokenizer, a tokenizer without a padding token, no weights, or a weights file that is
            truncated or corrupt (:func:`check_weights`).
    """
    folder = Path(folder)
    where = f"--task: {PREFIX}{folder}"
    if not (folder / "config.json").is_file():
        what = "no config.json in it" if folder.is_dir() else "no such folder"
        raise ValueError(f"{where}: {what}; expected a sequence-classification checkpoint saved by save_pretrained")
    transformers = offline_transformers()
    with quiet_transformers(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
        except (ValueError, OSError, KeyError) as err:
            raise ValueError(f"{where}: its config.json cannot be read ({err})") from None
        known = transformers.models.auto.modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
        if config.model_type not in known:
            architecture = (config.architectures or [config.model_type])[0]
            raise ValueError(
                f"{where}: a {architecture} checkpoint (model type {config.model_type!r}) is not a sequence "
                "classifier and cannot be loaded as one (AutoModelForSequenceClassification has no class for it)"
            )
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise ValueError(f"{where}: no tokenizer can be loaded from it ({err})") from None
    if tokenizer.pad_token_id is None:
        raise ValueError(f"{where}: its tokenizer has no padding token (set one and save_pretrained it again)")
    if not any((folder / name).is_file() for name in _WEIGHTS):
        raise ValueError(f"{where}: no weights in it (expected one of {list(_WEIGHTS)})")
    check_weights(folder, where)
    return Checkpoint(folder, config, tokenizer)


def check_weights(folder: Path, where: str) -> None:
    """Checks the weights file transformers would load from ``folder`` (the first of ``_WEIGHTS`` there, and the
    shards its index names) is whole, reading no tensor: a ``.safetensors`` file's size is exactly what its
    header describes, a ``.bin`` file saved as a zip archive ends with the archive's directory.

    Raises:
        ValueError: ``where``, the file, and that it is missing, truncated or corrupt (and how to fix it).
    """
    name = next(name for name in _WEIGHTS if (folder / name).is_file())
    files = [folder / name]
    if name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
        except (ValueError, OSError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"{where}: its {folder / name} cannot be read ({type(err).__name__}: {err}); "
                "save the checkpoint again (save_pretrained) or re-install it"
            ) from None
        files = [folder / shard for shard in shards]
    for path in files:
        problem = "is missing (its index names it)" if not path.is_file() else _weights_problem(path)
        if problem:
            fix = "save the checkpoint again (save_pretrained) or re-install it"
            raise ValueError(f"{where}: its weights file {path} {problem}; {fix}")


def _weights_problem(path: Path) -> str | None:
    """What is wrong with the weights file ``path`` (None: it looks whole)."""
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        return _safetensors_problem(path, size)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if size == 0:
        return "is truncated (0 bytes)"
    if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):  # torch.save's zip with no directory at its end
        return f"is truncated or corrupt (a zip archive of {size:,} bytes without its directory at the end)"
    return None


def _safetensors_problem(path: Path, size: int) -> str | None:
    """Whether the safetensors file ``path`` of ``size`` bytes is as long as its header says: 8 bytes (the header's
    length ``n``), ``n`` bytes of JSON, then the tensors up to the largest ``data_offsets`` end."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes: not even a safetensors header)"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"is truncated or corrupt ({size:,} bytes; its header alone claims {length:,})"
        try:
            header = json.loads(handle.read(length))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
            expected = 8 + length + max((int(end) for end in ends), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "is corrupt (its safetensors header cannot be read)"
    if size < expected:
        return f"is truncated ({size:,} bytes where its header describes {expected:,})"
    if size > expected:
        return f"is corrupt ({size:,} bytes where its header describes {expected:,})"
    return None


def check_max_length(max_length: int, checkpoint: Checkpoint) -> None:
    """Refuses a ``--max-length`` the checkpoint cannot take: more tokens than its limit
    (:attr:`Checkpoint.token_limit`: the model's position table would overflow, and a huge length would pad
    every text to it), or no more than the special tokens its tokenizer adds (no room for any text).

    Raises:
        ValueError: naming ``--max-length``, the value and the checkpoint's limit.
    """
    where = f"{PREFIX}{checkpoint.folder}"
    limit = checkpoint.token_limit
    if limit is not None and max_length > limit:
        said = ", ".join(f"{what} {value}" for what, value in checkpoint.token_limits.items())
        raise ValueError(f"--max-length: {max_length} is more tokens than {where} takes: at most {limit} ({said})")
    special = int(checkpoint.tokenizer.num_special_tokens_to_add(pair=False))
    if max_length <= special:
        raise ValueError(
            f"--max-length: {max_length} leaves no room for text: the tokenizer of {where} adds {special} special "
            f"token(s) to every text; use {special + 1} or more"
        )


def _in_head_order(table: LabelledTexts, checkpoint: Checkpoint) -> LabelledTexts:
    """``table`` with its classes in the order of the checkpoint head's ``id2label`` when that names the same
    classes (so a kept head's outputs keep their meaning); else as it is (sorted)."""
    named = [str(checkpoint.config.id2label[i]) for i in sorted(checkpoint.config.id2label)]
    if not checkpoint.has_head or sorted(named) != sorted(str(c) for c in table.classes):
        return table
    position = {str(c): named.index(str(c)) for c in table.classes}
    moved = torch.tensor([position[str(c)] for c in table.classes])
    classes = tuple(sorted(table.classes, key=lambda c: position[str(c)]))
    return dataclasses.replace(table, labels=moved[table.labels], classes=classes)


def head_note(checkpoint: Checkpoint, classes: int) -> str | None:
    """What happens to the checkpoint's head with ``classes`` labels (None: it is kept as saved)."""
    if not checkpoint.has_head:
        return f"{checkpoint.architecture} holds no classification head: a new {classes}-way head is trained"
    if checkpoint.config.num_labels != classes:
        return (
            f"the checkpoint's head has {checkpoint.config.num_labels} outputs and the labels {classes} classes: "
            f"a new {classes}-way head replaces it"
        )
    return None


def _model_factory(checkpoint: Checkpoint, classes: int) -> Callable[[], nn.Module]:
    """Builds the checkpoint as a ``classes``-way :class:`TextClassifier` (a fresh head under the current seed)."""
    where = f"--task: {PREFIX}{checkpoint.folder}"

    def make_model() -> nn.Module:
        transformers = offline_transformers()
        try:
            with quiet_transformers(transformers):
                model = transformers.AutoModelForSequenceClassification.from_pretrained(
                    str(checkpoint.folder),
                    num_labels=classes,
                    ignore_mismatched_sizes=checkpoint.config.num_labels != classes,
                    local_files_only=True,
                )
        except (ValueError, OSError, RuntimeError) as err:
            raise ValueError(f"{where}: loading the model raised {type(err).__name__}: {err}") from None
        return TextClassifier(model, pad_id=int(checkpoint.tokenizer.pad_token_id))

    return make_model


def _layer_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The transformer's layers: the ``ModuleList`` holding the most trainable parameters (None: there is none)."""
    stacks = [
        (sum(p.numel() for p in module.parameters() if p.requires_grad), name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0
    ]
    stacks = [s for s in stacks if s[0] > 0]
    if not stacks:
        return None
    _, name, module = max(stacks, key=lambda s: s[0])
    return name, module


def transformer_partition(model: nn.Module, sample_input: Any) -> Partition:
    """``embeddings``, ``layer0`` ... ``layer{L-1}``, ``head``: what runs before the transformer's layer stack,
    each of its layers, and what runs after it (pooler, classifier), in data-flow order.

    The layer stack is the ``nn.ModuleList`` with the most trainable parameters; the order around it
    comes from a traced forward pass of ``sample_input``. A model with no such list gets
    :func:`~layerwise.groups.by_layer`.

    Examples:
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed, self.out = nn.Embedding(10, 4), nn.Linear(4, 2)
        ...         self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        ...     def forward(self, ids):
        ...         h = self.embed(ids)
        ...         for layer in self.layers:
        ...             h = layer(h)
        ...         return self.out(h.mean(1))
        >>> transformer_partition(Net(), torch.zeros(2, 3, dtype=torch.long)).names
        ('embeddings', 'layer0', 'layer1', 'head')
    """
    layers = by_layer(model, sample_input=sample_input)
    stack = _layer_stack(model)
    if stack is None:
        return layers
    prefix, modules = stack
    assignment: dict[str, list[str]] = {"embeddings": [], **{f"layer{i}": [] for i in range(len(modules))}, "head": []}
    seen_stack = False
    for group in layers:
        for name in group.param_names:
            if name.startswith(prefix + "."):
                seen_stack = True
                assignment[f"layer{name[len(prefix) + 1 :].split('.')[0]}"].append(name)
            else:
                assignment["head" if seen_stack else "embeddings"].append(name)
    assignment["head"].extend(layers.unused)  # parameters the trace never used: with the head, in no layer
    return explicit(model, {group: names for group, names in assignment.items() if names})


def _fingerprint(spec: HFSpec, table: LabelledTexts) -> str:
    """sha256 of everything that decides the task's runs: the file, the checkpoint's files, the columns, the split."""
    files = sorted(p for p in spec.checkpoint.iterdir() if p.is_file())
    identity = {
        "data": table.sha256,
        "reader": READER,
        "checkpoint": {p.name: file_sha256(p) for p in files},
        "columns": [spec.text_column, spec.label_column],
        "test_fraction": spec.test_fraction,
        "max_length": spec.max_length,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _check_spec(spec: HFSpec) -> None:
    what = "the share of every class held out"
    if fraction("--test-fraction", spec.test_fraction, what=what) in (0.0, 1.0):
        raise ValueError(f"--test-fraction: must be {what} in (0, 1), got {spec.test_fraction}")
    positive_int("--max-length", spec.max_length)


def _check_every_class_trains(spec: HFSpec, table: LabelledTexts, train: torch.Tensor, test: torch.Tensor) -> str:
    """Refuses a split holding out every row of a class (its head output would never train, yet be scored); says
    which classes have no held-out row (the test accuracy never scores them), for the task's description."""
    counts = [torch.bincount(table.labels[idx], minlength=len(table.classes)).tolist() for idx in (train, test)]
    rows = torch.bincount(table.labels, minlength=len(table.classes)).tolist()
    untrained = [(c, n) for c, n, trained in zip(table.classes, rows, counts[0]) if trained == 0]
    if untrained:
        named = ", ".join(f"{c!r} ({n} row(s))" for c, n in untrained)
        raise ValueError(
            f"--test-fraction: {spec.test_fraction} holds out every row of class(es) {named} of {spec.data}, so "
            "nothing trains on them; give them more rows, drop them or lower --test-fraction"
        )
    unscored = [(c, n) for c, n, held in zip(table.classes, rows, counts[1]) if held == 0]
    if not unscored:
        return ""
    return ", none of " + ", ".join(f"{c!r} ({n} row(s))" for c, n in unscored)


def _data_loader(
    spec: HFSpec, checkpoint: Checkpoint, table: LabelledTexts, split: tuple[torch.Tensor, torch.Tensor]
) -> Callable[[str | None, bool], TaskData]:
    """The task's ``load_data``: the file's token ids (cached) in the ``(train, test)`` index split."""
    train, test = split

    def load_data(data_dir: str | None, quick: bool) -> TaskData:
        del data_dir, quick  # the file is the data; --quick slices it by the task's quick sizes
        ids = cached_token_ids(table, checkpoint.tokenizer, spec.max_length, spec.cache_dir)
        return TaskData((ids[train], table.labels[train]), (ids[test], table.labels[test]))

    return load_data


def hf_task(spec: HFSpec) -> tuple[Task, str | None]:
    """The fine-tuning task of ``spec``, checked (checkpoint, file, columns, classes, split), and what happens to
    the checkpoint's head (:func:`head_note`; None: it is kept as saved).

    Nothing is tokenized or written until the task's ``load_data`` runs.

    Raises:
        ValueError: naming the flag at fault (``--task``, ``--data``, ``--text-column``, ``--label-column``,
            ``--test-fraction``, ``--max-length``) and what it got.
    """
    _check_spec(spec)
    checkpoint = read_checkpoint(spec.checkpoint)
    check_max_length(spec.max_length, checkpoint)
    table = _in_head_order(read_labelled_texts(spec.data, spec.text_column, spec.label_column), checkpoint)
    train, test = split_tweets(table.labels, spec.test_fraction, seed=0)
    if len(test) == 0 or len(train) == 0:
        raise ValueError(
            f"--test-fraction: {spec.test_fraction} of {len(table.labels)} examples leaves "
            f"{len(train)} to train on and {len(test)} to test on; each needs at least one"
        )
    unscored = _check_every_class_trains(spec, table, train, test)
    classes = len(table.classes)
    sample = tokenize(["a sample text", "another"], 8, checkpoint.tokenizer)
    task = Task(
        name=f"{PREFIX}{spec.checkpoint.name}",
        description=(
            f"{checkpoint.architecture} from {spec.checkpoint} fine-tuned on {spec.data.name} ({len(table.texts)} "
            f"texts, {classes} classes {list(table.classes)}; {len(test)} held out{unscored}), AdamW"
        ),
        make_model=_model_factory(checkpoint, classes),
        sample_input=lambda: sample.clone(),
        load_data=_data_loader(spec, checkpoint, table, (train, test)),
        epochs=2,
        quick_epochs=1,
        batch_size=32,
        quick_train_size=192,
        quick_test_size=64,
        lr=5e-5,
        weight_decay=0.01,
        optimizer="adamw",
        partition=transformer_partition,
        regime="fine-tuning",
        source_sha256=_fingerprint(spec, table),
    )
    return task, head_note(checkpoint, classes)
