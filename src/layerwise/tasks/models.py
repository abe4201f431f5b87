"""Built-in models for benchmarks, ``layerwise schedule --model`` and tests.

Examples:
    >>> from layerwise.tasks.models import build_model
    >>> model, sample = build_model("resnet-cnn")
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..groups import Partition, by_block, explicit

__all__ = [
    "MODELS",
    "BasicBlock",
    "DenseLayer",
    "DenseNetBC",
    "ResNetCNN",
    "TransformerClassifier",
    "Transition",
    "build_model",
]


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers with a (projected) shortcut; ``residual=False``
    drops the shortcut (a plain two-layer conv block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module | None = nn.Identity() if residual else None
        if residual and (stride != 1 or cin != cout):
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out if self.shortcut is None else out + self.shortcut(x))


class ResNetCNN(nn.Module):
    """A small ResNet for 28x28 grey images: stem, three stages, linear head.

    ``residual=False`` gives the same network without shortcuts: a plain 7-layer CNN.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width, residual=residual)
        self.layer2 = BasicBlock(width, 2 * width, stride=2, residual=residual)
        self.layer3 = BasicBlock(2 * width, 4 * width, stride=2, residual=residual)
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


class DenseLayer(nn.Module):
    """DenseNet-BC bottleneck layer in FreezeOut's order: ReLU-BN-Conv1x1, ReLU-BN-Conv3x3, concat."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(torch.relu(x)))
        out = self.conv2(self.bn2(torch.relu(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """ReLU-BN-Conv1x1 (compression) then 2x2 average pooling."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(self.conv(self.bn(torch.relu(x))), 2)


class DenseNetBC(nn.Module):
    """DenseNet-BC (FreezeOut's architecture) scaled to a CPU: 3 dense blocks of
    ``layers_per_block`` bottleneck layers, growth rate ``growth``, compression 0.5.

    ``features`` is a flat ``nn.Sequential`` (stem, dense layers, transitions, final BN), so
    ``by_block(model, depth=2)`` gives one group per dense layer or transition, plus ``fc``;
    :func:`dense_layer_groups` puts the final BN with ``fc`` (FreezeOut's grouping).
    """

    def __init__(self, growth: int = 12, layers_per_block: int = 4, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        channels = 2 * growth
        features: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for block in range(3):
            for _ in range(layers_per_block):
                features.append(DenseLayer(channels, growth))
                channels += growth
            if block < 2:
                features.append(Transition(channels, channels // 2))
                channels //= 2
        features.append(nn.BatchNorm2d(channels))
        self.features = nn.Sequential(*features)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.features(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def dense_layer_groups(model: DenseNetBC, sample: torch.Tensor) -> Partition:
    """FreezeOut's groups of a :class:`DenseNetBC`: the stem, each dense layer and transition in turn,
    and last ``fc`` with the final BatchNorm, which trains to the end with the classifier as in the
    authors' code (it has no layer of its own there).

    Examples:
        >>> len(dense_layer_groups(DenseNetBC(), torch.zeros(2, 1, 28, 28)))
        16
    """
    part = by_block(model, 2, sample_input=sample)
    *layers, final_norm, head = part
    if not isinstance(model.get_submodule(final_norm.name), nn.BatchNorm2d) or head.name != "fc":
        raise ValueError(f"model: expected a DenseNetBC ending in its final BatchNorm and fc, got groups {part.names}")
    return explicit(
        model, {g.name: list(g.param_names) for g in layers} | {"fc": [*final_norm.param_names, *head.param_names]}
    )


def _resnet() -> tuple[nn.Module, torch.Tensor]:
    return ResNetCNN(), torch.zeros(2, 1, 28, 28)


def _plain() -> tuple[nn.Module, torch.Tensor]:
    return ResNetCNN(residual=False), torch.zeros(2, 1, 28, 28)


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


def _densenet() -> tuple[nn.Module, torch.Tensor]:
    return DenseNetBC(), torch.zeros(2, 1, 28, 28)


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "resnet-cnn": _resnet,
    "plain-cnn": _plain,
    "densenet-bc": _densenet,
    "transformer": _transformer,
    "mlp": _mlp,
}
"""Model name -> factory returning ``(model, sample_input)``."""


def build_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A built-in model and a sample input for tracing its execution order."""
    if name not in MODELS:
        raise ValueError(f"model: unknown {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name]()
