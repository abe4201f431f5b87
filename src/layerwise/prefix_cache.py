"""Frozen layers that cost nothing: serve what a frozen prefix computes from a cache.

A frozen prefix in inference mode is a fixed function of its input, so when the same examples
come back (the next epoch, the next phase of a fine-tuning recipe) its output can be read
instead of computed. :class:`FrozenPrefixCache` keys that output by example index: inside
``with cache.batch(indices):`` the model's forward skips the prefix for the examples it has
stored, computes it (and stores it) for the others, and runs the rest of the network as usual.

It cuts at the deepest *clean* cut inside the frozen prefix (:mod:`layerwise._cuts`): the end of
a module call after which nothing the prefix computed is read except that call's outputs. A
ResNet stage boundary is one; a point inside a residual block, whose skip connection crosses it,
is not, and the cache then cuts at the block's start (a warning says why; ``shallower="raise"``
raises instead). When a deeper group freezes, stored entries are advanced lazily through the
newly frozen layers from the old entries, not from the input; when a group unfreezes, or a
prefix parameter or buffer changes in any way (its storage, its version counter, or a checksum of
its bits taken every batch, which sees a write through ``.data``), the entries behind it are
dropped. The cache is derived data: it is not saved in checkpoints, and a resumed run rebuilds it.

Validity is checked, not assumed: the inputs must be declared free of random augmentation
(``same_inputs=True``), no norm or dropout module in the prefix may be in training mode, a
prefix that draws random numbers (its computation changes the RNG state, or an op is given a
``torch.Generator``) is refused, and a cut after which a branch decision reads the prefix's
output is not used. What no trace can see (Python state the prefix reads) is caught by a
self-check, on request (``compare``'s ``+cache`` methods ask for it): the first ``verify`` batches
that compute rows and the first ``verify`` that serve stored ones are run again without the cache
and must give the same output.

Examples:
    >>> import torch, layerwise
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> opt = torch.optim.SGD(layerwise.by_layer(model, sample_input=x).param_groups(lr=0.1))
    >>> freezer = layerwise.Freezer(model, opt)
    >>> freezer.freeze("0")
    >>> cache = FrozenPrefixCache(model, freezer, num_examples=64, same_inputs=True)
    >>> for epoch in range(2):
    ...     for index in torch.arange(64).split(16):
    ...         with cache.batch(index):
    ...             loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
    ...         opt.zero_grad(); loss.backward(); opt.step()
    >>> cache.stats["hits"], cache.stats["misses"], cache.boundary
    (64, 64, '1')
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils import _pytree as pytree

from ._checks import boolean, one_of, positive_int
from ._cuts import Cut, Stop, Stubs, Trace, trace_cuts
from ._warn import warn
from .freezing import Freezer

__all__ = ["FrozenPrefixCache"]

_STORAGE = (None, torch.float16, torch.bfloat16)
SHALLOWER = ("warn", "raise", "allow")
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.uint16, torch.float64: np.float64}
_TRAINING_SENSITIVE = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_TOLERANCE = {None: 1e-4, torch.float16: 5e-2, torch.bfloat16: 5e-2}  # of the self-check, relative to the output


def _stamp(tensors: list[torch.Tensor]) -> tuple[list[tuple[int, int]], torch.Tensor | None]:
    """Where each tensor's data lives and its version, and a checksum of its bits: the row and column
    sums of each tensor as a matrix of integers, which any single changed element changes."""
    places = [(t.data_ptr(), t._version) for t in tensors]
    sums = []
    for t in tensors:
        bits = t.detach().contiguous()
        bits = bits.view(_BITS.get(bits.element_size(), torch.uint8))
        if not bits.numel():  # nothing to sum (and no row length to infer)
            continue
        matrix = bits.reshape(bits.shape[0] if bits.ndim > 1 else 1, -1)
        # sums in the bits' own type (they wrap): a changed element changes its row's and its column's sum
        sums += [matrix.sum(0, dtype=bits.dtype).long(), matrix.sum(1, dtype=bits.dtype).long()]
    if not sums:
        return places, None
    return places, torch.cat([part.to(sums[0].device) for part in sums])


class _Shadow:
    """What a self-checked batch needs to run its forward again without the cache."""

    def __init__(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], served: bool) -> None:
        self.args, self.kwargs = pytree.tree_map(_copy, (args, kwargs))
        self.served = served
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.buffers = {name: b.detach().clone() for name, b in model.named_buffers()}


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


class _Store:
    """The stored rows of one cut: one tensor (or memmap) per kept output leaf, a slot per example."""

    def __init__(
        self,
        cut: Cut,
        leaves: list[tuple[tuple[int, ...], torch.dtype, torch.device]],
        num_examples: int,
        capacity: int,
        storage: torch.dtype | None,
        directory: Path | None,
        state: list[torch.Tensor],
    ) -> None:
        self.cut = cut
        self.slot = torch.full((num_examples,), -1, dtype=torch.long)
        self.used = 0  # slots written
        self.live = 0  # slots still holding a row
        self.capacity = capacity
        self.dtypes = [dtype for _, dtype, _ in leaves]
        self.devices = [device for _, _, device in leaves]  # where the model reads them (a memmap is on the CPU)
        self.data: list[torch.Tensor] = []
        self.files: list[Path] = []
        for j, (shape, dtype, device) in enumerate(leaves):
            kept = storage if storage is not None and dtype.is_floating_point else dtype
            if directory is None:
                self.data.append(torch.empty((capacity, *shape), dtype=kept, device=device))
                continue
            if kept not in _NUMPY:
                raise TypeError(f"directory: cannot store {kept} on disk (float32/16/64 or bfloat16)")
            path = directory / f"cut{cut.position}-{j}.bin"
            array = np.memmap(path, dtype=_NUMPY[kept], mode="w+", shape=(max(capacity, 1), *shape))
            self.files.append(path)
            self.data.append(torch.from_numpy(array).view(kept))
        self.row_bytes = sum(int(np.prod(t.shape[1:])) * t.element_size() for t in self.data)
        self.state = state
        self.places, self.checksum = _stamp(state)
        self.seconds, self.rows = 0.0, 0  # time computing the prefix from the input, and its rows

    @property
    def bytes(self) -> int:
        return self.used * self.row_bytes

    def valid(self) -> bool:
        """Whether every tensor the prefix reads is as it was when the store was made (no write at all)."""
        places, checksum = _stamp(self.state)
        return places == self.places and (checksum is None or torch.equal(checksum, self.checksum))

    def get(self, slots: torch.Tensor) -> list[torch.Tensor]:
        return [
            d[slots.to(d.device)].to(device=device, dtype=dtype)
            for d, dtype, device in zip(self.data, self.dtypes, self.devices)
        ]

    def put(self, index: torch.Tensor, values: list[torch.Tensor], room: int) -> int:
        """Store the rows of ``index`` without a slot, at most ``room`` of them; returns how many."""
        new, first = np.unique(index.numpy(), return_index=True)
        fresh = self.slot[torch.from_numpy(new)] < 0
        take = min(int(fresh.sum()), self.capacity - self.used, room)
        if take <= 0:
            return 0
        chosen = torch.from_numpy(new)[fresh][:take]
        rows = torch.from_numpy(first)[fresh][:take]
        for d, v in zip(self.data, values):
            if tuple(v.shape[1:]) != tuple(d.shape[1:]):
                raise ValueError(
                    f"FrozenPrefixCache: the frozen prefix's output (cut after op {self.cut.position}) has rows "
                    f"of shape {tuple(v.shape[1:])} in this batch but {tuple(d.shape[1:])} in the first: a row "
                    "per example must keep its shape from batch to batch (a model that trims padding per batch, "
                    "such as layerwise.tasks.pretrained.TextClassifier(trim=True), cannot be cached; build it "
                    "with trim=False)"
                )
        slots = torch.arange(self.used, self.used + take)
        self.slot[chosen] = slots
        for d, v in zip(self.data, values):
            d[slots.to(d.device)] = v[rows.to(v.device)].to(d.dtype)
        self.used += take
        self.live += take
        return take

    def forget(self, index: torch.Tensor) -> None:
        """Release the rows of ``index`` (advanced to a deeper cut); their bytes stay until the store is dropped."""
        held = torch.unique(index)
        held = held[self.slot[held] >= 0]
        self.slot[held] = -1
        self.live -= len(held)

    def close(self) -> None:
        self.data.clear()
        for path in self.files:
            path.unlink(missing_ok=True)


def _difference(output: Any, expected: Any) -> float:
    """The largest difference between two outputs' floating tensors, relative to the expected's largest value
    (inf when their structures or other values differ)."""
    got, spec = pytree.tree_flatten(output)
    want, want_spec = pytree.tree_flatten(expected)
    if spec != want_spec:
        return float("inf")
    worst = 0.0
    for a, b in zip(got, want):
        if not isinstance(a, torch.Tensor) or not a.is_floating_point():
            if not (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b):
                return float("inf")
            continue
        if a.shape != b.shape:
            return float("inf")
        if a.numel():
            scale = max(float(b.abs().max()), 1e-12)
            worst = max(worst, float((a.detach() - b).abs().max()) / scale)
    return worst


class FrozenPrefixCache:
    """Serves a frozen prefix's output from a cache keyed by example index.

    Args:
        model: the model being trained (its forward is hooked; nothing else changes).
        freezer: the :class:`~layerwise.freezing.Freezer` that freezes its groups (FreezeOut's,
            gradual unfreezing's, ...): its frozen groups, plus parameters no param group holds that
            do not require grad, are what the cache may skip.
        num_examples: the training set's size; indices are ``0 .. num_examples - 1``.
        same_inputs: declares that example ``i`` is the same input every time (no random
            augmentation). Required; ``False`` is refused, since a cache would replay one augmentation.
        max_bytes: cap on the stored bytes, all cuts together; rows past it are computed as without
            the cache.
        dtype: store floating outputs as ``torch.float16`` or ``torch.bfloat16`` (None: as computed;
            training then equals training without the cache bitwise).
        directory: store on disk in numpy memmaps there (for data sets larger than memory); True: a
            temporary directory. None: in memory, on the activations' device.
        shallower: when the cache must cut shallower than the frozen prefix (a skip connection
            crosses the deeper boundary): ``"warn"`` (once), ``"raise"`` a ValueError, or ``"allow"``
            silently; ``stats["shallower_cuts"]`` counts those batches either way.
        verify: self-check the first ``verify`` batches that compute prefix rows and the first
            ``verify`` that serve stored ones: each forward runs again without the cache (same
            RNG state and buffers) and a different output raises a RuntimeError (0: no check). The
            check runs those forwards twice, so a ``torch.Generator`` of the model's own after the
            cut draws twice: leave it at 0 for such a model.
        label: how the self-check's error names this cache (``compare`` gives its method's name).
    """

    def __init__(
        self,
        model: nn.Module,
        freezer: Freezer,
        num_examples: int,
        *,
        same_inputs: bool,
        max_bytes: int = 2**30,
        dtype: torch.dtype | None = None,
        directory: str | Path | bool | None = None,
        shallower: str = "warn",
        verify: int = 0,
        label: str = "FrozenPrefixCache",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not isinstance(freezer, Freezer):
            raise TypeError(f"freezer: expected a layerwise Freezer, got {type(freezer).__name__}")
        if freezer.model is not model:
            raise ValueError("freezer: freezes another model than the one given")
        positive_int("num_examples", num_examples)
        boolean("same_inputs", same_inputs)
        if not same_inputs:
            raise ValueError(
                "same_inputs: must be True (each example index gives the same input every time); with random "
                "augmentation a cache would replay the first augmentation of every example, so it is refused"
            )
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes <= 0:
            raise ValueError(f"max_bytes: must be a positive number of bytes (an int), got {max_bytes!r}")
        if dtype not in _STORAGE:
            raise ValueError(f"dtype: must be one of {_STORAGE}, got {dtype!r}")
        one_of("shallower", shallower, SHALLOWER)
        if isinstance(verify, bool) or not isinstance(verify, int) or verify < 0:
            raise ValueError(f"verify: must be a number of batches to self-check (an int >= 0), got {verify!r}")
        if not isinstance(label, str):
            raise TypeError(f"label: expected a str, got {type(label).__name__}")
        if directory is True:
            self._tmp = tempfile.TemporaryDirectory(prefix="layerwise-cache-")
            directory = self._tmp.name
        elif directory is not None and directory is not False:
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
        self.model, self.freezer, self.num_examples = model, freezer, int(num_examples)
        self.max_bytes, self.dtype, self.shallower = int(max_bytes), dtype, shallower
        self.verify, self.label = verify, label
        self._checked = {False: 0, True: 0}  # self-checked batches that computed rows / that served some
        self._shadow: _Shadow | None = None
        self.directory = None if directory in (None, False) else Path(directory)
        self._state = {id(t): t for t in (*model.parameters(), *model.buffers())}
        self._trace: Trace | None = None
        self._stores: list[_Store] = []  # shallow to deep cuts
        self._index: torch.Tensor | None = None
        self._busy = False
        self._stubs = Stubs()
        self._warned = False
        self.stats: dict[str, Any] = dict.fromkeys(
            ("hits", "misses", "advanced", "uncached", "stored_rows", "shallower_cuts", "verified"), 0
        )
        self.stats.update(stored_bytes=0, prefix_seconds=0.0, saved_seconds=0.0)
        self.boundary: str | None = None
        self._hooks = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True, always_call=True),
        ]

    # ---- the user's side -------------------------------------------------------------------

    @contextmanager
    def batch(self, indices: torch.Tensor | np.ndarray | list[int]) -> Iterator[None]:
        """Forwards inside are for the training examples ``indices`` (one per input row)."""
        given = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        if given.size == 0:
            raise ValueError("indices: empty; give one example index per row of the batch")
        if given.dtype.kind not in "iu":
            raise TypeError(
                f"indices: must be integer example indices (one per row of the batch), got dtype {given.dtype}; "
                "a float or bool index would be truncated to another example"
            )
        index = torch.as_tensor(given, dtype=torch.long).reshape(-1)
        if int(index.min()) < 0 or int(index.max()) >= self.num_examples:
            raise ValueError(
                f"indices: must lie in [0, num_examples={self.num_examples}), got {int(index.min())}"
                f"..{int(index.max())}"
            )
        self._index = index
        try:
            yield
        finally:
            self._index = None

    def remove(self) -> None:
        """Unhook the model and free the stored entries."""
        for handle in self._hooks:
            handle.remove()
        self._drop(list(self._stores))

    def clear(self) -> None:
        """Free every stored entry (they are rebuilt as the examples come back)."""
        self._drop(list(self._stores))

    # ---- the forward hooks -----------------------------------------------------------------

    def _before(self, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._busy:
            return None
        if self._index is None:
            if model.training and self.freezer.frozen:
                raise ValueError(
                    "indices: the model was called in training mode outside `with cache.batch(indices):`; the "
                    "cache needs each row's example index (or call cache.remove() to train without it)"
                )
            return None
        index = self._index
        rows = len(index)
        if not any(
            isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == rows for t in pytree.tree_leaves((args, kwargs))
        ):
            raise ValueError(f"indices: {rows} indices, but no input tensor of the forward has {rows} rows")
        frozen = self._frozen_ids()
        if not frozen:
            self.stats["uncached"] += rows
            return None
        if self._trace is None:
            if rows < 2:
                self.stats["uncached"] += rows
                return None
            self._trace = self._run(lambda: trace_cuts(model, args, kwargs, rows))
        self._check_prefix(frozen)
        cut, why = self._choose(frozen)
        self._refuse_generators(cut)
        self._explain(cut, why)
        self._drop([s for s in self._stores if not s.valid() or not s.cut.params <= frozen])
        if cut is None:
            self.stats["uncached"] += rows
            return None
        self.boundary = self._trace.name(cut)
        served = self.stats["hits"] + self.stats["advanced"]
        values = self._gather(cut, index, args, kwargs)
        served = self.stats["hits"] + self.stats["advanced"] > served
        if self._checked[served] < self.verify:
            self._checked[served] += 1
            self._shadow = _Shadow(model, args, kwargs, served)
        self._stubs.serve(self._trace, cut, values, rows)
        return None

    def _after(self, model: nn.Module, _args: Any, _kwargs: Any, output: Any) -> None:
        if self._busy:
            return
        self._stubs.remove()
        shadow, self._shadow = self._shadow, None
        if shadow is not None and output is not None:
            self._self_check(model, shadow, output)

    # ---- the self-check --------------------------------------------------------------------

    def _self_check(self, model: nn.Module, shadow: _Shadow, output: Any) -> None:
        """Run the batch's forward again without the cache, from the same RNG state and on copies of the
        buffers as they were (the model's own are not written: a backward may need their versions); the
        outputs must agree (bitwise up to the rounding of a sub-batch, or of half-precision storage)."""
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        torch.set_rng_state(shadow.rng)
        if shadow.cuda_rng is not None:
            torch.cuda.set_rng_state_all(shadow.cuda_rng)
        self._busy = True
        try:
            with torch.no_grad():
                expected = torch.func.functional_call(model, shadow.buffers, shadow.args, shadow.kwargs)
        finally:
            self._busy = False
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        self.stats["verified"] += 1
        difference = _difference(output, expected)
        if difference > _TOLERANCE[self.dtype]:
            kind = "served stored rows" if shadow.served else "computed its rows"
            raise RuntimeError(
                f"{self.label}: self-check failed: with the cache (cut at {self.boundary!r}, a batch that {kind}) "
                f"the model's output differs from the output without it by {difference:.3g} (relative); the frozen "
                "prefix is not a fixed function of each example's input (Python state or control flow the trace "
                "cannot see), so stored activations would be wrong: train without the cache"
            )

    # ---- choosing the cut ------------------------------------------------------------------

    def _frozen_ids(self) -> set[int]:
        names = set(self.freezer.frozen)
        held = {id(p) for g in self.freezer.optimizer.param_groups for p in g["params"]}
        frozen = {id(p) for g in self.freezer.optimizer.param_groups if g["name"] in names for p in g["params"]}
        frozen |= {id(p) for p in self.model.parameters() if not p.requires_grad and id(p) not in held}
        if not frozen:
            return set()
        return frozen | {id(b) for b in self.model.buffers()}

    def _check_prefix(self, frozen: set[int]) -> None:
        """The frozen groups must come before every trainable one in the data flow."""
        assert self._trace is not None
        first = self._trace.first_read
        trainable = [first[id(p)] for p in self.model.parameters() if id(p) not in frozen and id(p) in first]
        if not trainable:
            return
        late = sorted(
            {
                g["name"]
                for g in self.freezer.optimizer.param_groups
                if g["name"] in self.freezer.frozen and any(first.get(id(p), -1) > min(trainable) for p in g["params"])
            }
        )
        if late:
            raise ValueError(
                f"freezer: the frozen groups {late} are not a prefix of the network (a trainable group runs before "
                "them), so there is no frozen prefix to cache; freeze input-side groups first, or call "
                "cache.remove() to train without the cache"
            )

    def _refuse_generators(self, cut: Cut | None) -> None:
        """A prefix with an op given a ``torch.Generator`` draws other numbers on every pass: refused."""
        assert self._trace is not None
        drawn = None if cut is None else self._trace.draws(cut)
        if drawn is not None:
            raise ValueError(
                f"model: the frozen prefix up to {self._trace.name(cut)!r} draws random numbers from its own "
                f"torch.Generator ({drawn!r}), so its output is not a fixed function of its input and cannot be "
                "cached; make the op deterministic in inference mode or train without the cache"
            )

    def _explain(self, cut: Cut | None, why: str | None) -> None:
        """A cut shallower than the frozen prefix: raise, or count it (and warn the first time)."""
        if why is None:
            return
        assert self._trace is not None
        where = "no cut" if cut is None else f"cutting at {self._trace.name(cut)!r}"
        message = f"FrozenPrefixCache: {where}, not deeper in the frozen prefix: {why}"
        if self.shallower == "raise":
            raise ValueError(f"shallower='raise': {message}")
        self.stats["shallower_cuts"] += 1
        if self.shallower == "warn" and not self._warned:
            self._warned = True
            warn(f"{message} (said once; stats['shallower_cuts'] counts the batches)")

    def _choose(self, frozen: set[int]) -> tuple[Cut | None, str | None]:
        """The deepest clean cut of the frozen prefix with no dropout or norm module in training mode before it.

        A parameter-free one (a dropout between blocks) moves the cut before it; one inside a frozen
        module (frozen by hand, with no Freezer to put it in inference mode) is refused.
        """
        trace = self._trace
        assert trace is not None
        cut, why = trace.deepest(frozen)
        inside = {
            id(m)
            for owner in self.model.modules()
            if (params := list(owner.parameters())) and all(id(p) in frozen for p in params)
            for m in owner.modules()
        }
        names = {id(m): n for n, m in self.model.named_modules()}
        while cut is not None:
            culprit = next(
                (
                    m
                    for call in cut.stubbed
                    for m in trace.calls[call].module.modules()
                    if m.training and isinstance(m, _TRAINING_SENSITIVE) and getattr(m, "p", 1) != 0
                ),
                None,
            )
            if culprit is None:
                break
            what = f"module {names.get(id(culprit), '?')!r} ({type(culprit).__name__})"
            if id(culprit) in inside:
                raise ValueError(
                    f"model: {what} of a frozen module is in training mode, so the frozen prefix is not a fixed "
                    "function of its input; put it in eval mode (a Freezer does so for the modules of the groups "
                    "it freezes) or train without the cache"
                )
            why = f"{what} is in training mode, so the prefix ends before it"
            cut = next((c for c in reversed(trace.cuts) if c.position < cut.position and c.params <= frozen), None)
        return cut, why

    # ---- computing and storing the prefix --------------------------------------------------

    def _store_for(self, cut: Cut, values: list[torch.Tensor]) -> _Store:
        for store in self._stores:
            if store.cut == cut:
                return store
        leaves = [(tuple(v.shape[1:]), v.dtype, v.device) for v in values]
        row = sum(int(np.prod(shape)) * (self._kept_dtype(dtype)).itemsize for shape, dtype, _ in leaves)
        capacity = min(self.num_examples, self.max_bytes // max(row, 1))
        state = [self._state[k] for k in cut.params if k in self._state]
        store = _Store(cut, leaves, self.num_examples, capacity, self.dtype, self.directory, state)
        self._stores.append(store)
        self._stores.sort(key=lambda s: s.cut.position)
        return store

    def _kept_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.dtype if self.dtype is not None and dtype.is_floating_point else dtype

    def _gather(
        self, cut: Cut, index: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[torch.Tensor]:
        """The cut's kept outputs for every row: stored, advanced from a shallower cut, or computed."""
        rows = len(index)
        values: list[torch.Tensor | None] = [None] * len(cut.kept)
        todo = torch.ones(rows, dtype=torch.bool)
        store = next((s for s in self._stores if s.cut == cut), None)
        if store is not None:
            slots = store.slot[index]
            hit = slots >= 0
            if hit.any():
                self._place(values, hit, store.get(slots[hit]), rows)
                todo &= ~hit
                count = int(hit.sum())
                self.stats["hits"] += count
                if store.rows:
                    self.stats["saved_seconds"] += count * store.seconds / store.rows
        for older in reversed([s for s in self._stores if s.cut.position < cut.position]):
            if not todo.any():
                break
            slots = older.slot[index]
            ready = todo & (slots >= 0)
            if ready.any():
                part = self._prefix(cut, args, kwargs, ready, rows, older.get(slots[ready]), older.cut)
                self._place(values, ready, part, rows)
                self._keep(cut, index[ready], part)
                self.stats["advanced"] += int(ready.sum())
                todo &= ~ready
                older.forget(index[ready])
                if older.live == 0:
                    self._drop([older])
        if todo.any():
            start = time.perf_counter()
            part = self._prefix(cut, args, kwargs, todo, rows)
            seconds = self._elapsed(start, part)
            self._place(values, todo, part, rows)
            kept = self._keep(cut, index[todo], part)
            kept.seconds += seconds
            kept.rows += int(todo.sum())
            self.stats["misses"] += int(todo.sum())
            self.stats["prefix_seconds"] += seconds
        return values  # type: ignore[return-value]

    def _elapsed(self, start: float, part: list[torch.Tensor]) -> float:
        if part and part[0].is_cuda:
            torch.cuda.synchronize(part[0].device)
        return time.perf_counter() - start

    @staticmethod
    def _place(values: list[torch.Tensor | None], mask: torch.Tensor, part: list[torch.Tensor], rows: int) -> None:
        for j, v in enumerate(part):
            if values[j] is None:
                values[j] = torch.empty((rows, *v.shape[1:]), dtype=v.dtype, device=v.device)
            values[j][mask.to(v.device)] = v  # type: ignore[index]

    def _keep(self, cut: Cut, index: torch.Tensor, part: list[torch.Tensor]) -> _Store:
        store = self._store_for(cut, part)
        room = (self.max_bytes - sum(s.bytes for s in self._stores)) // max(store.row_bytes, 1)
        if room < len(index):  # make room: older cuts go first
            self._drop([s for s in self._stores if s is not store])
            room = (self.max_bytes - store.bytes) // max(store.row_bytes, 1)
        store.put(index, part, int(room))
        self._count()
        return store

    def _count(self) -> None:
        self.stats["stored_rows"] = sum(s.live for s in self._stores)
        self.stats["stored_bytes"] = sum(s.bytes for s in self._stores)

    def _drop(self, stores: list[_Store]) -> None:
        for store in stores:
            store.close()
            self._stores.remove(store)
        self._count()

    def _prefix(
        self,
        cut: Cut,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        mask: torch.Tensor,
        rows: int,
        served: list[torch.Tensor] | None = None,
        served_cut: Cut | None = None,
    ) -> list[torch.Tensor]:
        """Run the forward on the rows in ``mask`` up to ``cut`` only; from ``served`` at ``served_cut`` if given."""
        take = mask.nonzero().reshape(-1)
        count = len(take)

        def rows_of(value: Any) -> Any:  # a copy, also of every row: a forward may edit its input in place
            if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == rows:
                return value[take.to(value.device)]
            return value

        sub_args, sub_kwargs = pytree.tree_map(rows_of, (args, kwargs))

        def forward() -> list[torch.Tensor]:
            trace = self._trace
            assert trace is not None
            if served_cut is not None:
                self._stubs.serve(trace, served_cut, served, count)
            self._stubs.stop_at(trace, cut)
            try:
                with torch.no_grad():
                    self.model(*sub_args, **sub_kwargs)
            except Stop as stop:
                return stop.values
            finally:
                self._stubs.remove()
            raise RuntimeError(f"FrozenPrefixCache: the forward never reached {trace.name(cut)!r}")

        return self._run(forward, self._trace.name(cut) if self._trace is not None else None)

    def _run(self, work: Any, what: str | None = None) -> Any:
        """``work()`` with the hooks passive and the RNG state as it was. With ``what`` (a prefix's name),
        a prefix that drew random numbers is refused: its outputs would differ on the next pass."""
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self._busy = True
        try:
            result = work()
            drew = not torch.equal(rng, torch.get_rng_state()) or (
                cuda_rng is not None
                and any(not torch.equal(a, b) for a, b in zip(cuda_rng, torch.cuda.get_rng_state_all()))
            )
            if what is not None and drew:
                raise ValueError(
                    f"model: the frozen prefix up to {what!r} draws random numbers (a random op, or dropout in "
                    "training mode), so its output is not a fixed function of its input and cannot be cached"
                )
            return result
        finally:
            self._busy = False
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)

    def __repr__(self) -> str:
        return (
            f"FrozenPrefixCache(boundary={self.boundary!r}, hits={self.stats['hits']}, misses={self.stats['misses']}, "
            f"stored_bytes={self.stats['stored_bytes']})"
        )
