"""Hi-DLR's prefix reuse: the probes of group k start from the activations entering group k.

Within a probing round every probe moves some groups and leaves the others at the round's
weights, so the forward up to the first moved group is the same in every probe that moves only
later groups. :class:`PrefixReuse` finds, for each probed group, the deepest clean cut before
its parameters are first read (:mod:`layerwise._cuts`; no parameter of that group or a later one
in the prefix), records the cut's outputs in the first probe that reaches it, and serves them to
the later probes of the round instead of recomputing the prefix. Losses are bitwise those of a
full forward when the prefix is deterministic (BatchNorm in training mode is: its batch
statistics are the same in every probe; dropout is not, and a cut past a dropout in training
mode, or past an op given its own ``torch.Generator``, is not used). Where no clean cut lies
right before a group (a skip connection crosses its boundary), a shallower one is used, with a
warning (``"strict"``: a ValueError).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ._cuts import Cut, Stubs, Trace, trace_cuts
from ._warn import warn

__all__ = ["MODES", "PrefixReuse"]

MODES = (False, True, "allow", "strict")
"""``HiDLR(prefix_reuse=...)``: off; on, with a warning where a group's cut falls back to a shallower
one; on, falling back silently (``"allow"``); on, raising instead (``"strict"``)."""

_RANDOM = (nn.modules.dropout._DropoutNd,)


class PrefixReuse:
    """Serves each probe the deepest prefix activations recorded earlier in the round."""

    def __init__(self, model: nn.Module, mode: bool | str) -> None:
        if any(hasattr(p, "device_mesh") for p in model.parameters()):
            raise ValueError("prefix_reuse: not with sharded (FSDP2) parameters; use prefix_reuse=False")
        self.model, self.mode = model, mode
        self.trace: Trace | None = None
        self.cuts: list[Cut | None] = []
        self.captured: dict[int, tuple[Cut, list[Tensor]]] = {}  # cut position -> outputs at the round's weights
        self.stubs = Stubs()
        self.reused = 0
        self._warned = False
        self._groups: list[set[int]] = []

    def begin(self, groups: Sequence[Sequence[Tensor]]) -> None:
        """A new round probing ``groups`` (parameters of each probed group, in data-flow order)."""
        self.captured.clear()
        self._groups = [{id(p) for p in params} for params in groups]
        self.cuts = self._cuts() if self.trace is not None else []

    def _cuts(self) -> list[Cut | None]:
        assert self.trace is not None
        state = {id(t) for t in (*self.model.parameters(), *self.model.buffers())}
        cuts: list[Cut | None] = []
        for i in range(len(self._groups)):
            moving = set().union(*self._groups[i:])
            cut, why = self.trace.deepest(state - moving)
            if cut is not None and self._random(cut):
                cut, why = None, f"a dropout in training mode lies before probed group {i}"
            elif cut is not None and (drawn := self.trace.draws(cut)) is not None:
                cut, why = None, f"an op given a torch.Generator ({drawn!r}) lies before probed group {i}"
            if why is not None and i > 0:
                message = f"prefix_reuse: the probes of group {i} start from a shallower cut: {why}"
                if self.mode == "strict":
                    raise ValueError(f"{message} (prefix_reuse='strict')")
                if self.mode is True and not self._warned:
                    self._warned = True
                    warn(message + " (said once)")
            cuts.append(cut)
        return cuts

    def _random(self, cut: Cut) -> bool:
        assert self.trace is not None
        return any(
            m.training and isinstance(m, _RANDOM) and m.p > 0
            for index in cut.stubbed
            for m in self.trace.calls[index].module.modules()
        )

    def call(self, closure: Callable[[], Tensor], moved: Sequence[int]) -> Tensor:
        """``closure()`` for a probe moving the groups ``moved`` (indices into the round's groups)."""
        if self.trace is None:
            return self._first(closure)
        first = min(moved)
        target = self.cuts[first] if first < len(self.cuts) else None
        source = None
        for position, (cut, values) in self.captured.items():
            if target is not None and position <= target.position and (source is None or position > source[0].position):
                source = (cut, values)
        into: list[Tensor] = []
        if source is not None:
            self.stubs.serve(self.trace, source[0], source[1], len(source[1][0]) if source[1] else 0)
            self.reused += 1
        wants = target is not None and target.position not in self.captured
        if wants and (source is None or source[0].position < target.position):
            self.stubs.capture(self.trace, target, into)
        try:
            loss = closure()
        finally:
            self.stubs.remove()
        if into and target is not None:
            self.captured[target.position] = (target, into)
        return loss

    def _first(self, closure: Callable[[], Tensor]) -> Tensor:
        """The very first probe: record the model's inputs, then trace its forward once."""
        seen: list[tuple[Any, Any]] = []
        hook = self.model.register_forward_pre_hook(
            lambda _m, args, kwargs: seen.append((args, kwargs)) if not seen else None, with_kwargs=True
        )
        try:
            loss = closure()
        finally:
            hook.remove()
        if seen:
            args, kwargs = seen[0]
            tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor) and t.ndim]
            rows = tensors[0].shape[0] if tensors else 1
            with torch.no_grad():
                self.trace = trace_cuts(self.model, args, kwargs, rows)
            self.cuts = self._cuts()
        return loss
