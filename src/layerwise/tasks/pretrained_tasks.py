"""Benchmark tasks on offline pretrained models (install: ``pip install 'layerwise[pretrained]'``).

* ``minilm-sentiment``: all-MiniLM-L6-v2 fine-tuned on 3-class tweet sentiment (``tasks.tweets``).
* ``effnet-fashion``: ImageNet EfficientNet-Lite0 fine-tuned on Fashion-MNIST resized to 64x64.

* ``effnet-finetune``: the same network at 32x32 in five groups, the main job's fine-tuning regime.
* ``minilm-finetune``: MiniLM on the tweets in five groups (embeddings to head), 4000 tweets.
* ``minilm-finetune-padded``: the same at a fixed width of 64 tokens (no per-batch trimming), so a
  frozen prefix's rows keep their shape and the frozen-prefix cache (``+cache`` methods) can serve them.
* ``minilm-sentiment-lora``: MiniLM with PEFT LoRA adapters (query, value; r 8) and a trained head, in
  the Hi-DLR paper's groups ``lora_A``, ``lora_B``, ``head``; 4000 tweets.

All are registered when ``layerwise.tasks`` is imported; the heavy packages
(``transformers``, the weight packages) are imported only when a model or the data is built.
Their ``lr`` and ``weight_decay`` are AdamW settings.

Examples:
    >>> from layerwise.tasks import get_task
    >>> task = get_task("minilm-sentiment")
    >>> model, data = task.make_model(), task.load_data(None, True)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..groups import Partition, by_lora, by_patterns
from .base import Task, TaskData
from .fashion_mnist import load_fashion_mnist
from .lora import minilm_lora
from .pretrained import EFFNET_SIZE, efficientnet_lite0, minilm_classifier
from .tweets import LABELS, load_tweet_data

__all__ = ["EFFNET_STAGES", "FINETUNE_SIZE", "MINILM_BLOCKS", "default_tasks", "fashion_unit_data", "tweet_task_data"]


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


EFFNET_STAGES = [
    (r"^model\._(conv_stem|bn0|blocks\.[0-2])\.", "early"),
    (r"^model\._blocks\.[3-8]\.", "middle blocks"),
    (r"^model\._blocks\.(9|1[0-4])\.", "late blocks"),
    (r"^model\.(_blocks\.15\.|_conv_head\.|_bn1\.)", "last block"),
    (r"^model\._fc\.", "head"),
]
"""EfficientNet-Lite0 in five groups, input to output: stem and blocks 0-2, blocks 3-8, blocks 9-14, the
last block with the head convolution (the Multirate bench's "last block"), and the classifier."""

MINILM_BLOCKS = [
    (r"^model\.bert\.(embeddings\.|encoder\.layer\.[01]\.)", "early"),
    (r"^model\.bert\.encoder\.layer\.[23]\.", "middle layers"),
    (r"^model\.bert\.encoder\.layer\.4\.", "late layer"),
    (r"^model\.bert\.(encoder\.layer\.5\.|pooler\.)", "last block"),
    (r"^model\.classifier\.", "head"),
]
"""MiniLM-L6 in five groups, input to output: embeddings with layers 0-1, layers 2-3, layer 4, the last layer
with the pooler (the Multirate bench's "last block"), and the classifier."""

FINETUNE_SIZE = 32
"""Side length of ``effnet-finetune``'s inputs (see that task's description)."""


def _effnet_stages(model: torch.nn.Module, sample: torch.Tensor) -> Partition:
    del sample  # the rules are already in data-flow order
    return by_patterns(model, EFFNET_STAGES)


def _minilm_blocks(model: torch.nn.Module, sample: torch.Tensor) -> Partition:
    del sample  # the rules are already in data-flow order
    return by_patterns(model, MINILM_BLOCKS)


def _lora_groups(model: torch.nn.Module, sample: torch.Tensor) -> Partition:
    del sample
    return by_lora(model, rest="head")


def _minilm_lora() -> torch.nn.Module:
    # dropout off, as in the Hi-DLR LoRA bench: every probe of a step evaluates one fixed function
    return minilm_lora(len(LABELS), r=8, alpha=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def default_tasks() -> list[Task]:
    """The fine-tuning tasks on packaged pretrained weights (heavy libraries load only when used)."""
    minilm_sentiment = Task(
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
        quick_train_size=192,  # 6 steps and 64 test tweets: --quick is a 2-minute smoke run on 2 cores
        quick_test_size=64,
        lr=5e-5,
        weight_decay=0.01,
        optimizer="adamw",
        regime="fine-tuning",
    )
    minilm_finetune = replace(
        minilm_sentiment,
        name="minilm-finetune",
        description=(
            "Tweet sentiment (3 classes, 64 tokens), pretrained all-MiniLM-L6-v2 fine-tuned in 5 groups "
            "(early, middle layers, late layer, last block, head), AdamW"
        ),
        partition=_minilm_blocks,
        train_size=4000,
    )
    return [
        minilm_sentiment,
        Task(
            name="effnet-fashion",
            description=(
                f"Fashion-MNIST resized to {EFFNET_SIZE}x{EFFNET_SIZE}, ImageNet-pretrained EfficientNet-Lite0 "
                "(3.4M parameters) fine-tuned in 5 groups, AdamW settings"
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
            partition=_effnet_stages,
            regime="fine-tuning",
        ),
        Task(
            name="effnet-finetune",
            description=(
                f"Fashion-MNIST at {FINETUNE_SIZE}x{FINETUNE_SIZE}, ImageNet-pretrained EfficientNet-Lite0 "
                "fine-tuned in 5 groups (early, middle blocks, late blocks, last block, head), AdamW; "
                "sized for the main job's budget"
            ),
            make_model=lambda: efficientnet_lite0(num_classes=10, size=FINETUNE_SIZE),
            sample_input=lambda: torch.zeros(2, 1, 28, 28),
            load_data=fashion_unit_data,
            epochs=2,
            quick_epochs=1,
            batch_size=32,
            lr=1e-3,  # the best of x0.3, x1, x3 at the main job's size, 3 seeds (BENCHMARKS.md, "The baselines' LR")
            weight_decay=0.01,
            optimizer="adamw",
            partition=_effnet_stages,
            train_size=4000,
            quick_train_size=192,
            quick_test_size=256,
            regime="fine-tuning",
        ),
        minilm_finetune,
        replace(
            minilm_finetune,
            name="minilm-finetune-padded",
            description=(
                "minilm-finetune at a fixed 64 tokens per tweet (padding masked, not trimmed per batch): "
                "slower steps, but an example's rows in a frozen prefix keep their shape, so the +cache "
                "methods can serve them"
            ),
            make_model=lambda: minilm_classifier(num_labels=len(LABELS), trim=False),
        ),
        replace(
            minilm_finetune,
            name="minilm-sentiment-lora",
            description=(
                "Tweet sentiment (3 classes, 64 tokens), pretrained all-MiniLM-L6-v2 with PEFT LoRA adapters "
                "(query, value; r 8, alpha 16; dropout off) and a new head trained in full, in the groups lora_A, "
                "lora_B, head; AdamW at LoRA's usual 1e-3 (the best of 1e-4..3e-3 in the Hi-DLR LoRA bench)"
            ),
            make_model=_minilm_lora,
            lr=1e-3,
            partition=_lora_groups,
        ),
    ]
