"""LoRA adapters as users add them: PEFT's ``LoraConfig`` and ``get_peft_model``, on any model.

``peft_lora`` wraps the chosen linear layers with PEFT's LoRA, keeps the ``head`` modules trainable
through PEFT's ``modules_to_save`` and freezes everything else, so ``layerwise.by_lora(model,
rest="head")`` gives the Hi-DLR paper's groups ``lora_A``, ``lora_B`` and ``head``. PEFT is in the
``pretrained`` extra (``pip install -c constraints.txt 'layerwise[pretrained]'``).

Examples:
    >>> import torch, layerwise
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> model = peft_lora(net, targets=("0",), r=2, head=("2",))
    >>> layerwise.by_lora(model, rest="head").names
    ('lora_A', 'lora_B', 'head')
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn

from .pretrained import minilm_classifier

__all__ = ["PEFT_HINT", "has_lora", "linear_targets", "minilm_lora", "peft_lora"]

PEFT_HINT = "install PEFT with: pip install -c constraints.txt 'layerwise[pretrained]'"
"""How to install what the LoRA tasks and benchmarks need."""


def _peft() -> Any:
    try:
        import peft
    except ImportError as error:
        raise ImportError(f"LoRA adapters come from PEFT, which is not installed; {PEFT_HINT}") from error
    return peft


def _names(flag: str, value: Any) -> list[str]:
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise TypeError(f"{flag}: expected a sequence of module names (not one string), got {value!r}")
    return list(value)


def _ends(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def peft_lora(
    model: nn.Module,
    targets: Sequence[str] = ("query", "value"),
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    head: Sequence[str] = (),
) -> nn.Module:
    """``model`` with PEFT LoRA adapters on the ``nn.Linear`` layers named (or ending with) ``targets``.

    Args:
        targets: module names or dotted name endings (``"query"``, ``"attention.self.value"``).
        r, alpha, dropout: LoRA rank, scale numerator (scaling ``alpha / r``) and input dropout.
        head: modules trained in full besides the adapters (PEFT's ``modules_to_save``), e.g. a new
            classifier.

    Returns:
        A ``peft.PeftModel``; its forward is ``model``'s, and only the LoRA factors and the head train.

    Raises:
        ValueError: a target or head names no module, or a number is out of range (checked before
            PEFT changes ``model``).
    """
    targets, head = _names("targets", targets), _names("head", head)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r: expected a rank, an int >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha: expected a finite number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
    modules = dict(model.named_modules())
    linear = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
    missing = [t for t in targets if not any(_ends(name, t) for name in linear)]
    if not targets or missing:
        raise ValueError(f"targets: no nn.Linear named {missing or targets} (or ending so) in the model")
    absent = [h for h in head if not any(_ends(name, h) for name in modules)]
    if absent:
        raise ValueError(f"head: no module named {absent} (or ending so) in the model")
    peft = _peft()
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, modules_to_save=head or None, bias="none"
    )
    return peft.get_peft_model(model, config)


def linear_targets(model: nn.Module, head: Sequence[str] = ()) -> list[str]:
    """The names of ``model``'s ``nn.Linear`` modules outside the ``head`` modules (the ``lora`` method's targets).

    Examples:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> linear_targets(net, head=["2"])
        ['0']
    """
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any(n == h or n.startswith(h + ".") for h in head)
    ]


def has_lora(names: Sequence[str]) -> bool:
    """Whether parameter ``names`` hold LoRA factors (PEFT's ``lora_A`` / ``lora_B``)."""
    return any(".lora_A." in f".{n}." for n in names) and any(".lora_B." in f".{n}." for n in names)


def minilm_lora(num_labels: int = 3, r: int = 8, alpha: float = 16.0, **config: Any) -> nn.Module:
    """Pretrained all-MiniLM-L6-v2 with PEFT LoRA on the attention's query and value (the LoRA paper's
    choice), rank ``r``, and a new ``num_labels``-way classifier trained in full; ``config`` as
    :func:`~layerwise.tasks.pretrained.minilm_classifier`'s."""
    return peft_lora(minilm_classifier(num_labels, **config), ("query", "value"), r, alpha, head=("classifier",))
