"""Labelled texts from a user's file (``.csv``, ``.jsonl``, ``.parquet``) and their token ids, cached on disk.

The file is read with pandas (parquet also needs ``pyarrow``). Its label column's distinct values,
sorted, are the classes ``0 .. C-1``. Token ids are computed once per (file contents, tokenizer,
max length, text column) and kept in a cache folder, so a second comparison on the same file
skips the tokenizer.

Examples:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "reviews.csv"
    >>> _ = path.write_text("text,label\\ngood,pos\\nbad,neg\\nfine,pos\\n")
    >>> table = read_labelled_texts(path, "text", "label")
    >>> table.texts, table.labels.tolist(), table.classes
    (('good', 'bad', 'fine'), [1, 0, 1], ('neg', 'pos'))
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .pretrained import require
from .tweets import tokenize

__all__ = ["SUFFIXES", "LabelledTexts", "cached_token_ids", "file_sha256", "read_labelled_texts", "tokenizer_sha256"]

SUFFIXES = (".csv", ".jsonl", ".parquet")
"""The file types ``--data`` reads."""


@dataclass(frozen=True)
class LabelledTexts:
    """A file's texts (from ``text_column``), their class indices and the classes (the label column's sorted
    distinct values)."""

    path: Path
    sha256: str
    text_column: str
    texts: tuple[str, ...]
    labels: torch.Tensor
    classes: tuple[Any, ...]


def file_sha256(path: Path) -> str:
    """The sha256 of the file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_labelled_texts(path: str | Path, text_column: str, label_column: str) -> LabelledTexts:
    """The texts and class labels of ``path``.

    Raises:
        ValueError: naming ``--data`` (no such file, an extension other than :data:`SUFFIXES`, parquet
            without pyarrow, an unreadable file), ``--text-column`` / ``--label-column`` (not a column:
            the columns present are listed; empty cells) or ``--label-column`` (fewer than two classes).
    """
    path = Path(path)
    frame = _read_table(path)
    columns = [str(c) for c in frame.columns]
    for flag, column in (("--text-column", text_column), ("--label-column", label_column)):
        if column not in frame.columns:
            raise ValueError(f"{flag}: {column!r} is not a column of {path}; its columns: {columns}")
        empty = int(frame[column].isna().sum())
        if empty:
            raise ValueError(f"{flag}: {empty} row(s) of {path} have no {column!r}")
    classes = _sorted_values(frame[label_column].unique().tolist())
    if len(classes) < 2:
        raise ValueError(
            f"--label-column: {label_column!r} of {path} holds one class ({classes[0]!r}); "
            "a classifier needs two or more"
        )
    index = {value: i for i, value in enumerate(classes)}
    labels = torch.tensor([index[v] for v in frame[label_column].tolist()], dtype=torch.long)
    texts = tuple(str(t) for t in frame[text_column].tolist())
    return LabelledTexts(path, file_sha256(path), text_column, texts, labels, tuple(classes))


def _read_table(path: Path) -> Any:
    """``path`` as a pandas DataFrame, by its extension."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        extension = path.suffix or "(none)"
        raise ValueError(f"--data: unknown extension {extension!r} of {path}; use one of {list(SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"--data: no such file {path}")
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ValueError(f"--data: reading {path} (parquet) needs pyarrow: pip install pyarrow")
    pandas = require("pandas")
    readers = {
        ".csv": pandas.read_csv,
        ".jsonl": lambda p: pandas.read_json(p, lines=True),
        ".parquet": pandas.read_parquet,
    }
    try:
        return readers[suffix](path)
    except (ValueError, UnicodeDecodeError, pandas.errors.ParserError) as err:
        raise ValueError(f"--data: {path} cannot be read as {suffix[1:]}: {err}") from None


def _sorted_values(values: Sequence[Any]) -> list[Any]:
    """Distinct label values sorted (by their text when they do not compare, e.g. ints beside strings)."""
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def tokenizer_sha256(tokenizer: Any) -> str:
    """What decides a tokenizer's ids: its class, padding side and full definition (vocabulary, normalizer...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    identity = json.dumps([type(tokenizer).__name__, tokenizer.padding_side, definition])
    return hashlib.sha256(identity.encode()).hexdigest()


def cached_token_ids(table: LabelledTexts, tokenizer: Any, max_length: int, cache_dir: Path) -> torch.Tensor:
    """Token ids ``[N, max_length]`` of ``table.texts``, from ``cache_dir`` when an earlier call stored them.

    The cache file is named by the sha256 of the file's sha256, its text column, the tokenizer's
    (:func:`tokenizer_sha256`) and ``max_length``; it is written atomically.
    """
    identity = [table.sha256, table.text_column, tokenizer_sha256(tokenizer), max_length]
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        ids = torch.load(path, weights_only=True)
        if isinstance(ids, torch.Tensor) and tuple(ids.shape) == (len(table.texts), max_length):
            return ids
    ids = tokenize(table.texts, max_length, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    torch.save(ids, temporary)
    os.replace(temporary, path)
    return ids
