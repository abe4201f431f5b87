"""``torch.compile`` with techniques that change which parameters require grad.

What holds (torch 2.13, tested against the same training uncompiled): Dynamo guards every
parameter's ``requires_grad``, so a compiled model recompiles when a group freezes or unfreezes
and when a Multirate step changes kind, and it trains exactly the parameters an eager model
trains. Schedules and Hi-DLR (whose probes run under ``torch.no_grad``: one more graph) compile
as they are.

The cost is one compilation per distinct trainable set (:func:`trainable_sets`) and way of
calling the model (training, evaluation). After ``torch._dynamo.config.recompile_limit`` of them
(8 by default) Dynamo stops compiling the model and runs it eagerly, still correctly, with a
warning: a FreezeOut over a handful of groups with evaluation between freezes gets there.
:func:`allow_recompiles` raises the limit to what a technique needs.

A frozen parameter never trains by mistake: autograd skips a leaf that stopped requiring grad
even in a graph recorded before the freeze, and the :class:`~layerwise.Freezer` checks before
every optimizer step that no frozen parameter holds a gradient (one written by code outside
autograd would let weight decay or momentum move it) and raises if one does.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
    ...                             torch.nn.Linear(8, 2))
    >>> x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    >>> part = layerwise.by_layer(model, sample_input=x)
    >>> fo = layerwise.FreezeOut(model, torch.optim.SGD(part.param_groups(lr=0.1)), total_steps=100)
    >>> trainable_sets(fo)   # every group trains, then the first two freeze one after the other
    3
    >>> limit = allow_recompiles(fo)   # before torch.compile(model); train with the compiled model
"""

from __future__ import annotations

import torch

from ._checks import positive_int
from .technique import ChangesTrainable, Technique

__all__ = ["allow_recompiles", "trainable_sets"]


def trainable_sets(technique: Technique | ChangesTrainable) -> int:
    """How many distinct sets of parameters requiring grad ``technique`` trains over a run, at most.

    A technique that changes them declares it (:class:`~layerwise.technique.ChangesTrainable`:
    FreezeOut, gradual unfreezing, Multirate); anything else trains one set.
    """
    return technique.trainable_sets() if isinstance(technique, ChangesTrainable) else 1


def allow_recompiles(technique: Technique | ChangesTrainable, modes: int = 2, extra: int = 0) -> int:
    """Raise Dynamo's recompile limit so a compiled model keeps compiling through ``technique``'s run.

    Every trainable set is compiled once per way the model is called: ``modes`` counts them
    (training and evaluation: 2; add one for Hi-DLR's ``no_grad`` probes). ``extra`` adds graphs
    made once. Never lowers the limit; returns the limit now in force.
    """
    positive_int("modes", modes)
    positive_int("extra", extra, minimum=0)
    config = torch._dynamo.config  # torch imports _dynamo on this first use: importing it costs a second
    key = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    needed = trainable_sets(technique) * modes + extra
    setattr(config, key, max(getattr(config, key), needed))
    return getattr(config, key)
