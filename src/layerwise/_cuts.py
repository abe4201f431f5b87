"""Where a forward pass can be cut: the clean cuts of a model's data flow, found by tracing one forward.

A cut sits at the end of one module call. Everything before it (the *prefix*) can be replaced by
stored outputs only if the rest of the forward reads nothing the prefix computed except that
call's outputs: a skip connection that crosses the cut, or a tensor of an earlier module read
later, makes the cut unclean. :func:`trace_cuts` runs one forward under ``torch.no_grad`` with a
``TorchFunctionMode`` that records which op produced and which ops read every tensor, and the
span of every module call; :meth:`Trace.deepest` picks, for a set of frozen parameters, the
deepest clean cut whose prefix reads only those parameters.

At a cut, the prefix's *maximal* calls (those whose parent call ends after the cut) are the ones a
caller replaces: the cut's own call returns the stored outputs, the others return placeholders of
the traced shapes (whatever reads them is itself in the prefix). Code of a parent module between
those calls still runs, on the placeholders: a cut is refused when its results are read after
the cut, or turned into a Python value (``bool``, ``item()``, ``tolist()``: a branch decision)
before it.

Every op that draws from an explicit ``torch.Generator`` is recorded: :meth:`Trace.draws` says
whether a cut's prefix holds one (its output then differs on every pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

__all__ = ["Call", "Cut", "Stop", "Stubs", "Trace", "trace_cuts"]

_METADATA = frozenset(
    {
        "size",
        "dim",
        "ndim",
        "ndimension",
        "shape",
        "dtype",
        "device",
        "numel",
        "nelement",
        "is_floating_point",
        "is_complex",
        "requires_grad",
        "is_cuda",
        "layout",
        "stride",
        "is_contiguous",
        "element_size",
        "grad_fn",
        "is_leaf",
        "names",
        "__len__",
        "__hash__",
        "get_device",
        "storage_offset",
        "dim_order",
        "nbytes",
        "itemsize",
        "is_sparse",
        "is_quantized",
        "is_meta",
        "is_nested",
        "is_signed",
        "is_inference",
    }
)
"""Functions that read only a tensor's metadata, which a placeholder of the traced shape keeps."""

_PYTHON = (bool, int, float, complex, str)


def _python_value(result: Any) -> bool:
    """Whether an op's result is a Python value (``bool(t)``, ``t.item()``, ``t.tolist()``, ``torch.equal``)."""
    leaves = pytree.tree_leaves(result)
    return bool(leaves) and all(isinstance(leaf, _PYTHON) for leaf in leaves)


@dataclass(frozen=True)
class Leaf:
    """One leaf of a call's output: a tensor's shape, dtype and device, or another value as traced."""

    key: int | None  # the tensor's id during the trace, None for a non-tensor
    shape: tuple[int, ...] = ()
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    value: Any = None

    def placeholder(self, rows: int, traced_rows: int) -> Any:
        """An uninitialized tensor of the traced shape (batch rows set to ``rows``), or the traced value."""
        if self.key is None:
            return self.value
        shape = (rows, *self.shape[1:]) if self.shape and self.shape[0] == traced_rows else self.shape
        return torch.empty(shape, dtype=self.dtype, device=self.device)


@dataclass
class Call:
    """One module call of the traced forward: ops ``[start, end)`` ran inside it."""

    name: str
    module: nn.Module
    ordinal: int  # which call of this module it was (0: the first)
    start: int
    end: int = -1
    done: int = -1  # completion order among all calls
    parent: int | None = None
    spec: Any = None  # the output's pytree structure
    leaves: tuple[Leaf, ...] = ()


@dataclass(frozen=True)
class Cut:
    """A clean cut: at the end of ``calls[call]``, with the prefix's maximal calls in ``stubbed``."""

    call: int
    stubbed: tuple[int, ...]
    kept: tuple[int, ...]  # the cut call's output leaves read after the cut (what a cache stores)
    params: frozenset[int]  # ids of the parameters and buffers the prefix reads
    position: int  # ops before the cut


@dataclass
class Trace:
    """The calls, the clean cuts (shallow to deep) and why each other candidate is not clean."""

    calls: list[Call]
    cuts: list[Cut]
    rejected: list[tuple[int, frozenset[int], str]]  # (position, params read, reason)
    rows: int  # the traced batch's size
    first_read: dict[int, int] = field(default_factory=dict, repr=False)  # parameter id -> its first op
    drawing: list[tuple[int, str]] = field(default_factory=list, repr=False)  # (op, name) given a Generator

    def deepest(self, frozen: set[int]) -> tuple[Cut | None, str | None]:
        """The deepest clean cut whose prefix reads only ``frozen`` parameters, and the reason a deeper
        candidate that also reads only frozen ones is not clean (None when the chosen cut is the deepest)."""
        best = None
        for cut in self.cuts:
            if cut.params <= frozen:
                best = cut
        floor = -1 if best is None else best.position
        reason = None
        for position, params, why in self.rejected:
            if position > floor and params <= frozen:
                reason = why
        return best, reason

    def draws(self, cut: Cut) -> str | None:
        """The first op before ``cut``'s end that draws from an explicit ``torch.Generator``, or None:
        inside the prefix's calls or in the code between them (a stored output holds that draw)."""
        end = self.calls[cut.call].end
        return next((name for op, name in self.drawing if op < end), None)

    def name(self, cut: Cut) -> str:
        call = self.calls[cut.call]
        return call.name + (f" (call {call.ordinal + 1})" if call.ordinal else "")


class _Recorder(TorchFunctionMode):
    """Records every op's input and output tensor ids and the innermost module call it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[int, ...]] = []
        self.writes: list[tuple[int, ...]] = []
        self.inside: list[int | None] = []
        self.converts: list[bool] = []  # the op returned a Python value computed from tensor data
        self.drawing: list[tuple[int, str]] = []  # (op, name) of the ops given a torch.Generator
        self.stack: list[int] = []
        self.alive: dict[int, torch.Tensor] = {}

    def _ids(self, value: Any) -> tuple[int, ...]:
        out = []
        for leaf in pytree.tree_leaves(value):
            if isinstance(leaf, torch.Tensor):
                self.alive[id(leaf)] = leaf
                out.append(id(leaf))
        return tuple(out)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if name == "__get__":
            name = getattr(getattr(func, "__self__", None), "__name__", "")
        if name not in _METADATA:
            if any(isinstance(leaf, torch.Generator) for leaf in pytree.tree_leaves((args, kwargs))):
                self.drawing.append((len(self.reads), name))
            self.reads.append(self._ids((args, kwargs)))
            self.writes.append(self._ids(result))
            self.inside.append(self.stack[-1] if self.stack else None)
            self.converts.append(_python_value(result))
        return result


def _leaves(recorder: _Recorder, output: Any) -> tuple[Any, tuple[Leaf, ...]]:
    values, spec = pytree.tree_flatten(output)
    leaves = []
    for value in values:
        if isinstance(value, torch.Tensor):
            recorder.alive[id(value)] = value
            leaves.append(Leaf(id(value), tuple(value.shape), value.dtype, value.device))
        else:
            leaves.append(Leaf(None, value=value))
    return spec, tuple(leaves)


def trace_cuts(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], rows: int) -> Trace:
    """Trace ``model(*args, **kwargs)`` once (no grad; buffers and RNG restored) and find its clean cuts.

    ``rows`` is the batch size: a cut's outputs read later must have it as their first dimension.
    The forward runs on copies of the input tensors, so one that edits its input in place edits
    no tensor of the caller.
    """
    recorder = _Recorder()
    calls: list[Call] = []
    counts: dict[int, int] = {}
    names = {id(m): n for n, m in model.named_modules()}
    handles = []

    def enter(module: nn.Module, _args: Any) -> None:
        index = len(calls)
        calls.append(
            Call(
                names[id(module)],
                module,
                counts.get(id(module), 0),
                len(recorder.reads),
                parent=recorder.stack[-1] if recorder.stack else None,
            )
        )
        counts[id(module)] = counts.get(id(module), 0) + 1
        recorder.stack.append(index)

    def leave(module: nn.Module, _args: Any, output: Any) -> None:
        index = recorder.stack.pop()
        call = calls[index]
        call.end, call.done = len(recorder.reads), sum(c.done >= 0 for c in calls)
        call.spec, call.leaves = _leaves(recorder, output)

    for module in model.modules():
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    buffers = {key: b.detach().clone() for key, b in model.named_buffers()}
    with torch.no_grad():
        args, kwargs = pytree.tree_map(lambda v: v.clone() if isinstance(v, torch.Tensor) else v, (args, kwargs))
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        with torch.no_grad(), recorder:
            output = model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for key, b in model.named_buffers():
                b.copy_(buffers[key])
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    returned = set(recorder._ids(output))
    stateful = {id(t) for t in (*model.parameters(), *model.buffers())}
    return _analyse(recorder, calls, returned, stateful, rows)


def _analyse(
    recorder: _Recorder,
    calls: list[Call],
    returned: set[int],
    stateful: set[int],
    rows: int,
) -> Trace:
    ops = len(recorder.reads)
    producer: dict[int, int] = {}
    for index, writes in enumerate(recorder.writes):
        for key in writes:
            producer.setdefault(key, index)
    reads_at: dict[int, list[int]] = {}
    for index, reads in enumerate(recorder.reads):
        for key in reads:
            reads_at.setdefault(key, []).append(index)
    for key in returned:
        reads_at.setdefault(key, []).append(ops)

    def where(index: int | None) -> str:
        if index is None or index >= ops:
            return "the model's output"
        call = recorder.inside[index]
        return f"module {calls[call].name or '(root)'!r}" if call is not None else "the root's forward"

    cuts: list[Cut] = []
    rejected: list[tuple[int, frozenset[int], str]] = []
    order = sorted((i for i, c in enumerate(calls) if c.parent is not None), key=lambda i: calls[i].done)
    for index in order:
        cut_call = calls[index]
        position = cut_call.end
        if position <= 0:
            continue
        stubbed = [
            i
            for i, c in enumerate(calls)
            if 0 <= c.done <= cut_call.done and c.parent is not None and calls[c.parent].done > cut_call.done
        ]
        inside = set()
        for i in stubbed:
            inside.update(range(calls[i].start, calls[i].end))
        params = frozenset(k for i in range(position) for k in recorder.reads[i] if k in stateful)
        tainted: set[int] = set()
        for i in stubbed:
            tainted.update(leaf.key for leaf in calls[i].leaves if leaf.key is not None)
        decision = None  # the first op outside the stubbed calls that turns a prefix's tensor into a Python value
        for op in range(position):
            if op in inside or any(k in tainted for k in recorder.reads[op]):
                if decision is None and op not in inside and recorder.converts[op]:
                    decision = op
                tainted.update(recorder.writes[op])
        tainted -= stateful
        kept_keys = {leaf.key for leaf in cut_call.leaves if leaf.key is not None}
        reason = None
        if decision is not None:
            reason = (
                f"{where(decision)} turns a tensor computed before the end of {cut_call.name!r} into a Python value "
                "(bool(), item(), tolist(): a branch decision) before that end, where the cache would serve it "
                "uninitialized placeholders (data-dependent control flow crosses the cut)"
            )
        for key in tainted:
            if reason is not None:
                break
            later = [i for i in reads_at.get(key, ()) if i >= position]
            if not later:
                continue
            made = producer.get(key)
            if key in kept_keys:
                shape = recorder.alive[key].shape
                if not shape or shape[0] != rows:
                    reason = (
                        f"the output of {cut_call.name!r} read after it has shape {tuple(shape)}, not one row "
                        f"per example (batch of {rows})"
                    )
                    break
                continue
            reason = (
                f"a tensor computed in {where(made)} before the end of {cut_call.name!r} is read after it by "
                f"{where(later[0])} (a skip connection or a reused activation crosses the cut)"
            )
            break
        kept = tuple(
            j
            for j, leaf in enumerate(cut_call.leaves)
            if leaf.key is not None and max(reads_at.get(leaf.key, [-1])) >= position
        )
        if reason is None and not kept:
            reason = f"nothing after {cut_call.name!r} reads its output"
        if reason is None:
            cuts.append(Cut(index, tuple(stubbed), kept, params, position))
        else:
            rejected.append((position, params, f"cut after {cut_call.name!r}: {reason}"))
    first_read: dict[int, int] = {}
    for op, reads in enumerate(recorder.reads):
        for key in reads:
            if key in stateful:
                first_read.setdefault(key, op)
    return Trace(calls, cuts, rejected, rows, first_read, recorder.drawing)


class Stop(Exception):
    """Raised by a cut's call (:meth:`Stubs.stop_at`), carrying its kept outputs."""

    def __init__(self, values: list[torch.Tensor]) -> None:
        super().__init__()
        self.values = values


class Stubs:
    """Replaces module calls for the next forward of a traced model; :meth:`remove` restores them.

    :meth:`serve` makes the cut's call return given values and the prefix's other maximal calls
    return placeholders, so the prefix is not computed; :meth:`stop_at` ends the forward at a cut;
    :meth:`capture` records a cut's kept outputs as the forward passes it. A module's calls are
    counted, so only the traced ordinal is replaced (a module called again after the cut runs).
    """

    def __init__(self) -> None:
        self._active: list[tuple[nn.Module, Any]] = []

    def serve(self, trace: Trace, cut: Cut, values: list[torch.Tensor] | None, rows: int) -> None:
        # A kept tensor may also be an earlier call's output (a cut at an identity module returns its
        # input): every call that returned it during the trace returns the served value, not a placeholder.
        kept = trace.calls[cut.call].leaves
        served = {kept[j].key: value for j, value in zip(cut.kept, values or [])}
        for index in cut.stubbed:
            call = trace.calls[index]

            def produce(call: Call = call) -> Any:
                out = [served.get(leaf.key) for leaf in call.leaves]
                out = [leaf.placeholder(rows, trace.rows) if v is None else v for v, leaf in zip(out, call.leaves)]
                return pytree.tree_unflatten(out, call.spec)

            self._patch(call, lambda original, args, kwargs, produce=produce: produce())

    def stop_at(self, trace: Trace, cut: Cut) -> None:
        def stop(original: Any, args: Any, kwargs: Any) -> Any:
            leaves = pytree.tree_leaves(original(*args, **kwargs))
            raise Stop([leaves[j].detach() for j in cut.kept])

        self._patch(trace.calls[cut.call], stop)

    def capture(self, trace: Trace, cut: Cut, into: list[torch.Tensor]) -> None:
        def keep(original: Any, args: Any, kwargs: Any) -> Any:
            output = original(*args, **kwargs)
            leaves = pytree.tree_leaves(output)
            into[:] = [leaves[j].detach() for j in cut.kept]
            return output

        self._patch(trace.calls[cut.call], keep)

    def _patch(self, call: Call, replacement: Any) -> None:
        module = call.module
        previous = module.__dict__.get("forward")
        original = module.forward
        count = [0]

        def forward(*args: Any, **kwargs: Any) -> Any:
            ordinal = count[0]
            count[0] += 1
            if ordinal != call.ordinal:
                return original(*args, **kwargs)
            return replacement(original, args, kwargs)

        module.__dict__["forward"] = forward
        self._active.append((module, previous))

    def remove(self) -> None:
        while self._active:
            module, previous = self._active.pop()
            if previous is None:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous
