"""Labelled texts from a user's file (``.csv``, ``.jsonl``, ``.parquet``) and their token ids, cached on disk.

The file is read with pandas (parquet also needs ``pyarrow``); a ``.csv`` or ``.jsonl`` file is UTF-8
text (a byte-order mark is allowed). A CSV's cells are read as written: as text, only an empty cell
is missing (``NA``, ``null`` or ``007`` are kept), and its header is read as written too, so a text or
label column named twice is refused instead of pandas' renaming (``text.1``). Its label column's
distinct values, sorted (a CSV's numbers first, by value: ``2`` before ``10``), are the classes
``0 .. C-1``. Token ids are computed once per (file contents, tokenizer, max length, text column) and
kept in a cache folder, so a second comparison on the same file skips the tokenizer.

Examples:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "reviews.csv"
    >>> _ = path.write_text("text,label\\ngood,pos\\nbad,neg\\nfine,pos\\n")
    >>> table = read_labelled_texts(path, "text", "label")
    >>> table.texts, table.labels.tolist(), table.classes
    (('good', 'bad', 'fine'), [1, 0, 1], ('neg', 'pos'))
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .pretrained import require
from .tweets import tokenize

__all__ = [
    "READER",
    "SUFFIXES",
    "LabelledTexts",
    "cached_token_ids",
    "file_sha256",
    "read_labelled_texts",
    "tokenizer_sha256",
]

SUFFIXES = (".csv", ".jsonl", ".parquet")
"""The file types ``--data`` reads."""

READER = 2
"""How a file's cells become texts and labels (2: every CSV cell as written, only an empty cell missing).
Part of every cache key and fingerprint, so token ids and runs of an older reading are not reused."""


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
            without pyarrow, an unreadable or non-UTF-8 file, no rows, the text or label column named twice
            in its header, CSV rows with more fields than the header), ``--text-column`` /
            ``--label-column`` (not a column: the columns present are listed; empty cells) or
            ``--label-column`` (fewer than two classes; two labels that read alike, e.g. ``1`` and ``"1"``
            or ``pos`` and ``" pos"``).
    """
    path = Path(path)
    frame, columns = _read_table(path, text_column, label_column)
    if len(frame) == 0:
        what = "a header" if columns else "nothing"
        raise ValueError(f"--data: {path} holds no rows (only {what}); it needs a row per text, with its label")
    for flag, column in (("--text-column", text_column), ("--label-column", label_column)):
        if column not in columns:
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
    _check_distinct(path, label_column, classes)
    index = {value: i for i, value in enumerate(classes)}
    labels = torch.tensor([index[v] for v in frame[label_column].tolist()], dtype=torch.long)
    texts = tuple(str(t) for t in frame[text_column].tolist())
    return LabelledTexts(path, file_sha256(path), text_column, texts, labels, tuple(classes))


def _read_table(path: Path, text_column: str, label_column: str) -> tuple[Any, list[str]]:
    """``path`` as a pandas DataFrame, by its extension, and its columns as the file names them."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        extension = path.suffix or "(none)"
        raise ValueError(f"--data: unknown extension {extension!r} of {path}; use one of {list(SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"--data: no such file {path}")
    if suffix == ".parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ValueError(f"--data: reading {path} (parquet) needs pyarrow: pip install pyarrow")
    pandas = require("pandas")
    if suffix == ".jsonl":
        with _reading(path, pandas):
            repeated = _repeated_jsonl_key(path)
        if repeated is not None:
            raise ValueError(
                f"--data: line {repeated[0]} of {path} names the key {repeated[1]!r} twice; "
                "a JSON object holds each key once"
            )
        with _reading(path, pandas):  # dtype=False: a label "01" stays "01", not the class of 1
            frame = pandas.read_json(path, lines=True, dtype=False)
        return frame, [str(c) for c in frame.columns]
    if suffix == ".parquet":
        import pyarrow.parquet

        with _reading(path, pandas):
            header = [str(name) for name in pyarrow.parquet.read_schema(path).names]
        _check_named_once(path, header, text_column, label_column)
        with _reading(path, pandas):
            return pandas.read_parquet(path), header
    with _reading(path, pandas):
        header = _csv_header(path)
    if not header:
        raise ValueError(f"--data: {path} is empty; it needs a header row naming its columns, then a row per text")
    _check_named_once(path, header, text_column, label_column)
    with _reading(path, pandas), warnings.catch_warnings():
        # a ParserWarning: rows with more fields than the header (pandas would make the first field an index)
        warnings.simplefilter("error", pandas.errors.ParserWarning)
        return pandas.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], index_col=False), header


@contextlib.contextmanager
def _reading(path: Path, pandas: Any) -> Iterator[None]:
    """Turns what reading ``path`` raises into one line naming ``--data``: not UTF-8 (where, how to convert), CSV
    rows longer than the header (where), or the reader's first line."""
    try:
        yield
    except UnicodeDecodeError:
        raise ValueError(_not_utf8(path)) from None
    except pandas.errors.ParserWarning:
        line, header = _first_long_row(path)
        where = f"line {line} of {path} holds" if line else f"rows of {path} hold"
        raise ValueError(
            f"--data: {where} more fields than its header names ({header}); quote a text that holds a comma"
        ) from None
    except (ValueError, OSError, csv.Error, pandas.errors.ParserError) as err:
        first = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise ValueError(f"--data: {path} cannot be read as {path.suffix.lower()[1:]}: {first}") from None


def _repeated_jsonl_key(path: Path) -> tuple[int, str] | None:
    """The first ``.jsonl`` line naming a key twice and the key (a JSON reader keeps the last value
    without a word); None if there is none."""

    def once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        twice = next((key for key in keys if keys.count(key) > 1), None)
        if twice is not None:
            raise _RepeatedKey(twice)
        return dict(pairs)

    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                json.loads(line, object_pairs_hook=once)
            except _RepeatedKey as repeated:
                return number, repeated.args[0]
            except json.JSONDecodeError:
                return None  # pandas' reader says what is wrong with the file
    return None


class _RepeatedKey(Exception):
    """A JSON object's key named twice (raised from the decoder's hook)."""


def _csv_header(path: Path) -> list[str]:
    """The first non-blank row of the CSV ``path``, as written (after a byte-order mark); empty for an empty file."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return next((row for row in csv.reader(handle) if row), [])


def _first_long_row(path: Path) -> tuple[int, list[str]]:
    """The line number of the first CSV record of ``path`` with more fields than its header (0: none), and the
    header."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        header = next((row for row in reader if row), [])
        try:
            for row in reader:
                if len(row) > len(header):
                    return reader.line_num, header
        except csv.Error:  # a field past the csv module's size limit: the line is not known
            pass
    return 0, header


def _check_named_once(path: Path, columns: Sequence[str], text_column: str, label_column: str) -> None:
    """Refuses a header naming the text or label column twice (pandas would rename the second and read the first)."""
    twice = sorted({c for c in columns if c in (text_column, label_column) and list(columns).count(c) > 1})
    if twice:
        raise ValueError(
            f"--data: {path} names the column(s) {twice} more than once (its columns: {list(columns)}); "
            "it needs one text column and one label column, each named once (--text-column, --label-column)"
        )


def _not_utf8(path: Path) -> str:
    """Why ``path`` is not UTF-8: the first line with a byte that is not, and how to convert it."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                return (
                    f"--data: {path} is not UTF-8 (byte 0x{line[err.start]:02x} on line {number}); "
                    f"save it as UTF-8, e.g. for a latin-1 file: iconv -f latin1 -t utf-8 {path} > new{path.suffix}"
                )
    return f"--data: {path} is not UTF-8; save it as UTF-8"


def _sorted_values(values: Sequence[Any]) -> list[Any]:
    """Distinct label values sorted: texts (a CSV's cells) with the numbers first, as numbers (``2`` before
    ``10``), then the rest; other values by value (by their text when they do not compare, e.g. ints beside
    strings)."""
    if all(isinstance(v, str) for v in values):
        return sorted(values, key=_label_key)
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _label_key(text: str) -> tuple[int, float, str]:
    """Sorts a label's text: finite numbers first, by value, then the rest by text."""
    try:
        number = float(text)
    except ValueError:
        return (1, 0.0, text)
    return (0, number, text) if math.isfinite(number) else (1, 0.0, text)


def _check_distinct(path: Path, label_column: str, classes: Sequence[Any]) -> None:
    """Refuses two labels that read alike (``1`` and ``"1"``, ``pos`` and ``" pos"``): they would be two classes."""
    seen: dict[str, Any] = {}
    for value in classes:
        shown = str(value).strip()
        if shown in seen:
            raise ValueError(
                f"--label-column: {label_column!r} of {path} holds {seen[shown]!r} and {value!r}, two classes that "
                "read alike; write each class one way"
            )
        seen[shown] = value


def tokenizer_sha256(tokenizer: Any) -> str:
    """What decides a tokenizer's ids: its class, padding side and full definition (vocabulary, normalizer...)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    identity = json.dumps([type(tokenizer).__name__, tokenizer.padding_side, definition])
    return hashlib.sha256(identity.encode()).hexdigest()


def cached_token_ids(table: LabelledTexts, tokenizer: Any, max_length: int, cache_dir: Path) -> torch.Tensor:
    """Token ids ``[N, max_length]`` of ``table.texts``, from ``cache_dir`` when an earlier call stored them.

    The cache file is named by the sha256 of the file's sha256, its text column, the tokenizer's
    (:func:`tokenizer_sha256`), ``max_length`` and :data:`READER`; it is written atomically.
    """
    identity = [table.sha256, table.text_column, tokenizer_sha256(tokenizer), max_length, READER]
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
