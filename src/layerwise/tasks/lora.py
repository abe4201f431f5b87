"""LoRA (low-rank adaptation) for ``nn.Linear`` layers, with PEFT's parameter names.

``add_lora`` wraps chosen linear layers as ``LoRALinear`` (frozen base plus a trainable
``lora_B @ lora_A`` update) and freezes everything else, so ``layerwise.by_lora(model)`` gives the
groups ``lora_A``, ``lora_B`` and ``other`` (what ``trainable`` kept, e.g. the classifier head).

Examples:
    >>> import layerwise
    >>> from layerwise.tasks.lora import add_lora
    >>> model = add_lora(text_model, targets=("query", "value"), r=8, trainable=("classifier",))  # doctest: +SKIP
    >>> layerwise.by_lora(model).names  # doctest: +SKIP
    ('lora_A', 'lora_B', 'other')
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LoRALinear", "add_lora", "lora_parameters"]


class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * dropout(x) @ lora_A.T @ lora_B.T`` with ``base`` frozen.

    ``lora_A`` ``[r, in]`` starts Kaiming-uniform and ``lora_B`` ``[out, r]`` at zero, so the layer
    starts equal to ``base``.

    Examples:
        >>> layer = LoRALinear(nn.Linear(16, 4), r=2)
        >>> [name for name, p in layer.named_parameters() if p.requires_grad]
        ['lora_A', 'lora_B']
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base: expected an nn.Linear, got {type(base).__name__}")
        if r < 1:
            raise ValueError(f"r: expected a rank >= 1, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        kwargs = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **kwargs))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **kwargs))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear and PEFT
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = nn.functional.linear(nn.functional.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scaling * update

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}"


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` is a run of whole dotted components of ``name`` (``"value"`` matches ``a.value``)."""
    return f".{pattern}." in f".{name}."


def add_lora(
    model: nn.Module,
    targets: Sequence[str] = ("query", "value"),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    trainable: Sequence[str] = (),
) -> nn.Module:
    """Wrap every ``nn.Linear`` whose name ends with a ``targets`` entry as :class:`LoRALinear`, in place.

    Afterwards only the LoRA factors and the parameters whose names contain a ``trainable``
    entry (whole dotted components, e.g. ``"classifier"``) require gradients.

    Args:
        targets: module names or dotted name endings (``"query"``, ``"attention.self.value"``).
        r, alpha, dropout: LoRA rank, scale numerator (scaling ``alpha / r``) and input dropout.
        trainable: parameter-name parts kept trainable besides the LoRA factors.

    Returns:
        ``model`` itself.

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> net = add_lora(net, targets=("0",), r=2, trainable=("2",))
        >>> [name for name, p in net.named_parameters() if p.requires_grad]
        ['0.lora_A', '0.lora_B', '2.weight', '2.bias']
    """
    if isinstance(targets, str) or isinstance(trainable, str):
        raise TypeError("targets, trainable: expected sequences of names, not a single string")
    chosen = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]
    if not chosen:
        raise ValueError(f"targets: no nn.Linear named {list(targets)} (or ending so) in the model")
    names = [name for name, _ in model.named_parameters()]
    unused = sorted(t for t in trainable if not any(_matches(name, t) for name in names))
    if unused:
        raise ValueError(f"trainable: no parameter name contains {unused}")
    for name, module in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(module, r=r, alpha=alpha, dropout=dropout))
    for name, param in model.named_parameters():
        keep = any(_matches(name, t) for t in (*trainable, "lora_A", "lora_B"))
        param.requires_grad_(keep)
    return model


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs of every LoRA factor in ``model``."""
    return [(n, p) for n, p in model.named_parameters() if _matches(n, "lora_A") or _matches(n, "lora_B")]
