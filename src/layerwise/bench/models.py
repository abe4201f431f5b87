"""Built-in models for benchmarks, ``layerwise schedule --model`` and tests.

Example:
    >>> from layerwise.bench.models import build_model
    >>> model, sample = build_model("resnet-cnn")
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MODELS", "BasicBlock", "ResNetCNN", "TransformerClassifier", "build_model"]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers with a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCNN(nn.Module):
    """A small ResNet for 28x28 grey images: stem, three stages, linear head."""

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TransformerClassifier(nn.Module):
    """Token embedding + ``nn.TransformerEncoder`` + mean-pool + linear head."""

    def __init__(
        self,
        vocab: int = 1000,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        num_classes: int = 2,
        max_len: int = 64,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(1, max_len, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        return self.head(self.norm(self.encoder(x)).mean(dim=1))


def _resnet() -> tuple[nn.Module, torch.Tensor]:
    return ResNetCNN(), torch.zeros(2, 1, 28, 28)


def _transformer() -> tuple[nn.Module, torch.Tensor]:
    return TransformerClassifier(), torch.zeros(2, 16, dtype=torch.long)


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    return model, torch.zeros(2, 1, 28, 28)


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "resnet-cnn": _resnet,
    "transformer": _transformer,
    "mlp": _mlp,
}
"""Model name -> factory returning ``(model, sample_input)``."""


def build_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A built-in model and a sample input for tracing its execution order."""
    if name not in MODELS:
        raise ValueError(f"model: unknown {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name]()
