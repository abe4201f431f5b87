"""What a trainer, a compiler or a harness may rely on in a technique, declared instead of type-switched.

A technique is stepped once per optimizer step (or per epoch) and resumes exactly from its
``state_dict``: :class:`Technique`. A technique that changes which parameters require grad
during a run declares how many distinct trainable sets it goes through (:class:`ChangesTrainable`),
which is what ``torch.compile`` recompiles for (:func:`layerwise.compiling.trainable_sets`).
Schedulers (:class:`~layerwise.LayerwiseLR`, :class:`~layerwise.FreezeOut`), the freezing rules and
the wrapping optimizers (``Multirate``, ``HiDLR``) all satisfy the protocols structurally.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    >>> opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=torch.zeros(1, 2)).param_groups(lr=0.1))
    >>> freezeout = layerwise.FreezeOut(model, opt, total_steps=10)
    >>> isinstance(freezeout, Technique), isinstance(freezeout, ChangesTrainable), freezeout.trainable_sets()
    (True, True, 2)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["ChangesTrainable", "Technique"]


@runtime_checkable
class Technique(Protocol):
    """Stepped after every optimizer step (or epoch); saved and loaded with the model and optimizer."""

    def step(self, *args: Any, **kwargs: Any) -> Any: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


@runtime_checkable
class ChangesTrainable(Protocol):
    """A technique whose set of parameters requiring grad changes during a run."""

    def trainable_sets(self) -> int:
        """How many distinct sets of parameters requiring grad it trains over a run, at most."""
        ...
