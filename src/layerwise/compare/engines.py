"""Data-parallel comparisons: every run of ``layerwise compare --nproc N`` trained by N processes.

The session works as it always does (the run store, the budgets, the report); each run is then
executed by the N ranks of one gloo process group (under ``--budget time`` they keep the slowest
rank's clock, so they stop together). Every rank builds the same seeded model, draws the same
seeded batches and trains on its
contiguous slice of every global batch (:class:`~layerwise.compare.parallel.Parallel`), its loss
weighted by its share of the batch, so the gradient DDP averages is the global batch's: N
processes reproduce one process training on the global batch up to the order of float
reductions. Every rank evaluates (FSDP needs them all for a forward pass); rank 0's record is the
run's, the others write nothing.

The ranks come from one of two places:

- ``--nproc N`` in one process: a :class:`Pool` forks N workers when the first run starts. They
  inherit the task, its data and the registered methods (nothing is pickled), run one intra-op
  thread each (as ``torchrun`` sets ``OMP_NUM_THREADS=1``; OpenMP threads in a forked child of a
  process that used them can deadlock), join a gloo group over a temporary file and serve the
  session's requests until it closes them. They never outlive the session: each asks the kernel
  for SIGKILL when its parent dies (Linux; elsewhere a thread polls the parent's PID), and a
  SIGTERM to the session ends it through ``SystemExit(143)``, which stops the workers at once.
- ``torchrun`` (``WORLD_SIZE`` and ``RANK`` set, or a process group already initialised): every
  rank runs the same ``layerwise compare``; rank 0 is the session and broadcasts each request to
  the others (:class:`Launched`), which loaded the same task and data themselves and
  :meth:`Launched.follow` the requests. Across nodes every node needs the data; only rank 0 writes.

The model is data-parallel through :func:`layerwise.distributed.wrap` (``engine="ddp"``: one DDP per
trainable set, so freezing and Multirate stay correct), or sharded in place by
:func:`layerwise.fsdp.shard` (``engine="fsdp"``, FSDP2) before its optimizer is built.

Examples:
    >>> from layerwise.compare import compare
    >>> compare("ellipse", ["baseline", "freezeout"], nproc=2, budget="steps")  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import multiprocessing
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from .._checks import positive_int
from ..tasks import Task, TaskData
from .parallel import ENGINES, Parallel, check_parallel, launched_world
from .runner import OnStep, RunSpec, run, warm_up

__all__ = ["Launched", "Pool", "group_for"]

_READY_S = 300.0
"""How long the session waits for forked workers to join their process group."""

_STRAGGLER_S = 30.0
"""After one rank failed, how long the others get to report before the pool is torn down."""

_ORPHAN_POLL_S = 1.0
"""Where the kernel cannot signal a parent's death: how often a worker checks its parent is alive."""

_PR_SET_PDEATHSIG = 1
"""``prctl`` option (linux/prctl.h): the signal this process gets when its parent dies."""


Request = tuple[str, Any]
"""``("run", RunSpec)``; task and data are each rank's own."""


def _execute(
    kind: str, what: Any, parallel: Parallel, task: Task, data: TaskData, on_step: OnStep | None = None
) -> Any:
    """One request on this rank: a run (rank 0 alone writes TensorBoard logs)."""
    if kind == "run":
        spec = what if parallel.rank == 0 else replace(what, tensorboard=None)
        return run(task, spec, data=data, parallel=parallel, on_step=on_step)
    raise ValueError(f"data parallel: unknown request {kind!r}")


def _failure(rank: int, text: str) -> RuntimeError:
    return RuntimeError(f"data-parallel rank {rank} failed:\n{text.rstrip()}")


# ---- --nproc N in one process: forked workers ------------------------------------------------


def _die_with(parent: int) -> None:
    """End this worker when the process ``parent`` ends, however it ends (SIGKILL included).

    Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere a daemon thread polls ``os.getppid()``.
    A parent that died before either was in place is caught by the PID check.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the session's handler: Pool.close terminates
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="layerwise-orphan-watch").start()
    if os.getppid() != parent:
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_ORPHAN_POLL_S)
    os._exit(1)


def _pool_worker(
    rank: int, world: int, engine: str, store: str, task: Task, data: TaskData, requests, replies, parent: int
) -> None:
    torch.set_num_threads(1)
    try:
        _die_with(parent)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        parallel = Parallel(rank, world, engine)
        warm_up(task, data)
    except BaseException:
        replies.put(("ready", rank, traceback.format_exc()))
        return
    replies.put(("ready", rank, None))

    def progress(step: int, total: int, loss: float) -> None:
        replies.put(("step", rank, (step, total, loss)))

    try:
        while True:
            request = requests.get()
            if request is None:
                return
            kind, what, wants_progress = request
            try:
                on_step = progress if wants_progress and rank == 0 else None
                value = _execute(kind, what, parallel, task, data, on_step)
            except Exception:
                replies.put(("done", rank, (False, traceback.format_exc())))
            else:
                replies.put(("done", rank, (True, value if rank == 0 else None)))
    finally:
        dist.destroy_process_group()


class _Group:
    """What a session asks of a group of ranks: a run, done on every rank (``_send``: how this
    group's rank 0 hands a request to the others and gathers the answer)."""

    def _send(self, kind: str, task: Task, data: TaskData, what: Any, on_step: OnStep | None = None) -> Any:
        raise NotImplementedError

    def run_one(
        self,
        task: Task,
        method: str,
        settings: Mapping[str, Any] | None = None,
        *,
        data: TaskData,
        on_step: OnStep | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """:func:`~layerwise.compare.runner.run_one` on every rank; rank 0's record."""
        return self._send("run", task, data, RunSpec(method, dict(settings or {}), **spec), on_step)


class Pool(_Group):
    """``nproc`` forked ranks serving one comparison's requests (started on the first one).

    The workers inherit the task and data of the first request, so every later one must use the
    same. A rank that fails fails the request with its traceback; a rank that dies, or others left
    waiting in a collective after a failure, end the pool, and the next request starts a new one.
    """

    def __init__(self, nproc: int, engine: str) -> None:
        positive_int("--nproc", nproc)
        if engine not in ENGINES:
            raise ValueError(f"engine: one of {ENGINES}, got {engine!r}")
        self.nproc, self.engine = nproc, engine
        self._processes: list[Any] = []
        self._requests: list[Any] = []
        self._replies: Any = None
        self._folder: str | None = None
        self._inputs: tuple[Task, TaskData] | None = None
        self._sigterm: Any = None

    rank = 0
    """The session's process leads (the workers are ranks 0 to ``nproc - 1`` of their own group)."""

    def _start(self, task: Task, data: TaskData) -> None:
        if self._processes and self._inputs is not None:
            if self._inputs[0] is task and self._inputs[1] is data:
                return
            self.close()
        context = multiprocessing.get_context("fork")
        self._folder = tempfile.mkdtemp(prefix="layerwise-nproc-")
        store = os.path.join(self._folder, "store")
        self._replies = context.Queue()
        self._requests = [context.Queue() for _ in range(self.nproc)]
        self._inputs = (task, data)
        for rank in range(self.nproc):
            args = (rank, self.nproc, self.engine, store, task, data, self._requests[rank], self._replies, os.getpid())
            process = context.Process(target=_pool_worker, args=args, daemon=True, name=f"layerwise-rank{rank}")
            process.start()
            self._processes.append(process)
        self._exit_on_sigterm()
        ready = self._collect("ready", _READY_S)
        failed = [(rank, text) for rank, text in sorted(ready.items()) if text is not None]
        if failed:
            self.close()
            raise _failure(*failed[0])

    def _collect(self, kind: str, timeout: float | None, on_step=None) -> dict[int, Any]:
        got: dict[int, Any] = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(got) < self.nproc:
            try:
                what, rank, value = self._replies.get(timeout=1.0)
            except queue.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self._processes) if not p.is_alive() and r not in got]
                if dead:
                    self.close()
                    raise RuntimeError(f"data-parallel rank {dead[0][0]} exited with code {dead[0][1]}") from None
                if deadline is not None and time.monotonic() > deadline:
                    self.close()  # the others wait in a collective for the rank that failed
                    if kind == "done":
                        return got
                    silent = sorted(set(range(self.nproc)) - set(got))
                    raise RuntimeError(f"data parallel: ranks {silent} did not answer") from None
                continue
            if what == "step":
                if on_step is not None:
                    on_step(*value)
                continue
            got[rank] = value
            if kind == "done" and not value[0] and deadline is None:  # one failed: the others get a while
                deadline = time.monotonic() + _STRAGGLER_S
        return got

    def _send(self, kind: str, task: Task, data: TaskData, what: Any, on_step: OnStep | None = None) -> Any:
        self._start(task, data)
        for requests in self._requests:
            requests.put((kind, what, on_step is not None))
        done = self._collect("done", None, on_step)
        failed = [(rank, text) for rank, (ok, text) in sorted(done.items()) if not ok]
        if failed:
            raise _failure(*failed[0])
        return done[0][1]

    def _exit_on_sigterm(self) -> None:
        """While workers run, SIGTERM raises ``SystemExit(143)`` here, so ``with Pool`` stops them.

        Only from the main thread (where Python runs signal handlers), and only over the default action.
        """
        if threading.current_thread() is not threading.main_thread() or self._sigterm is not None:
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._sigterm = signal.signal(signal.SIGTERM, _raise_exit)

    def close(self, grace: float = 10.0) -> None:
        """Stop the workers (each leaves its process group; after ``grace`` seconds it is terminated) and clean up."""
        for requests in self._requests:
            with contextlib.suppress(OSError, ValueError):  # a queue already closed
                requests.put(None)
        for process in self._processes:
            process.join(timeout=grace)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
        self._processes, self._requests, self._inputs = [], [], None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(grace=10.0 if kind is None else 0.0)  # on an error the workers may be mid-run: no waiting


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


# ---- torchrun: every rank runs the CLI, rank 0 leads ------------------------------------------

_OWN_GROUP = False


def _join_launched_group() -> None:
    global _OWN_GROUP
    if not dist.is_initialized():
        dist.init_process_group("gloo")  # env:// from torchrun's MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
        _OWN_GROUP = True
        atexit.register(_leave_launched_group)


def _leave_launched_group() -> None:
    """At exit: free what still holds the group (DDP reducers), wait for every rank, then leave.

    A rank that exits while DDP objects still hold the group, or while another rank still uses
    it, can abort in gloo's teardown ("terminate called without an active exception").
    """
    global _OWN_GROUP
    if _OWN_GROUP and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
    _OWN_GROUP = False


class Launched(_Group):
    """This process's rank of a torchrun group: rank 0 leads a comparison, the others follow it.

    Rank 0 broadcasts every request, does its own part and gathers every rank's outcome; the
    followers (:meth:`follow`) do theirs on the task and data they loaded themselves.
    """

    def __init__(self, engine: str) -> None:
        _join_launched_group()
        self.parallel = Parallel(dist.get_rank(), dist.get_world_size(), engine)

    @property
    def rank(self) -> int:
        return self.parallel.rank

    def _everyone(self, kind: str, what: Any, task: Task, data: TaskData, on_step: OnStep | None = None) -> Any:
        try:
            ok, value = True, _execute(kind, what, self.parallel, task, data, on_step)
        except Exception:
            ok, value = False, traceback.format_exc()
        outcomes: list[Any] = [None] * self.parallel.world
        dist.all_gather_object(outcomes, None if ok else value)
        failed = [(rank, text) for rank, text in enumerate(outcomes) if text is not None]
        if failed:
            raise _failure(*failed[0])
        return value

    def _send(self, kind: str, task: Task, data: TaskData, what: Any, on_step: OnStep | None = None) -> Any:
        dist.broadcast_object_list([(kind, what)], src=0)
        return self._everyone(kind, what, task, data, on_step)

    def follow(self, task: Task, load: Callable[[], TaskData]) -> None:
        """A follower's part of rank 0's comparison, until rank 0 closes it (``load``: the data, on first use)."""
        data = None
        while True:
            message: list[Any] = [None]
            dist.broadcast_object_list(message, src=0)
            if message[0] is None:
                return
            kind, what = message[0]
            if data is None:
                data = load()
                warm_up(task, data)
            with contextlib.suppress(RuntimeError):  # rank 0 records the failure
                self._everyone(kind, what, task, data)

    def close(self) -> None:
        """Rank 0: end the followers' part of this comparison."""
        if self.rank == 0:
            dist.broadcast_object_list([None], src=0)

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def group_for(nproc: int | None, fsdp: bool) -> Pool | Launched | None:
    """What executes a comparison's runs: None (this process alone), a :class:`Pool` or this torchrun rank."""
    nproc, engine = check_parallel(nproc, fsdp)
    if engine is None:
        return None
    world = launched_world()
    if world is not None:
        return Launched(engine)
    return Pool(nproc, engine)
