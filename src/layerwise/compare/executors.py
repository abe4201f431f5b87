"""Where a comparison's runs train: here one after another (``local``), or fanned out as Ray tasks
(``ray``) or Slurm jobs through submitit (``slurm``).

The session keeps the run store and the order of a round (under ``--budget time`` the baselines
first: their training times are the seeds' budgets); an executor only trains what it is given.
Every :class:`Job` holds its run (a :class:`~layerwise.compare.runner.RunSpec`), its task by
reference (:class:`TaskRef`: a registered task's name or a task file's ``PATH.py:FACTORY``, with
the plain fields set on top of it) and the method when layerwise does not register it itself, and
:func:`run_jobs` yields each finished record, or the run's error, as it comes back. A worker
rebuilds the task, loads its data and warms up once per process, trains with ``threads`` torch
threads and adds its ``node`` to the record (host, CPU model, CUDA device), so the report leaves
a seed pair timed on different hardware out of the speed verdict.

Faults: a job whose worker dies (killed, out of memory, a lost node) is submitted once more; a
second death, like any exception in the run, comes back as the run's error. Every submitted job is
listed in ``OUT/in-flight.json`` until it comes back: a driver restarted after a crash takes up the
Slurm jobs still running instead of submitting them again. Ray ends a driver's tasks with the
driver, so those runs are submitted again, and the driver says so.

Examples:
    >>> executor_of("local") is None
    True
    >>> executor_of("ray", cpus_per_run=2)
    RayExecutor(address=None, cpus_per_run=2, gpus_per_run=0, name='ray')
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from .._checks import positive_int
from ..tasks import TASKS, Task, TaskData, resolve_task
from ..tasks.base import split_examples
from ..tasks.from_file import task_file_spec
from .methods import METHODS, register_method
from .runner import RunSpec, run, warm_up

__all__ = [
    "EXECUTORS",
    "INSTALL",
    "IN_FLIGHT",
    "Executor",
    "InFlight",
    "Job",
    "Outcome",
    "RayExecutor",
    "SlurmExecutor",
    "TaskRef",
    "comparison_data",
    "execute",
    "executor_of",
    "node",
    "run_jobs",
]

EXECUTORS = ("local", "ray", "slurm")
"""``local``: this process, one run after another; ``ray``: Ray tasks; ``slurm``: Slurm jobs (submitit)."""

INSTALL = "pip install 'layerwise[cluster]'"
"""What installs Ray and submitit."""

IN_FLIGHT = "in-flight.json"
"""The file in ``--out`` listing the jobs submitted and not yet back."""

_POLL_S = 0.5
"""How often the Slurm executor looks for finished jobs."""

_ADDRESS_TIMEOUT_S = 5.0
"""How long ``--ray-address`` gets to answer."""


def comparison_data(task: Task, quick: bool, test_size: int | None) -> TaskData:
    """The task's data as a comparison uses it: its quick slice, the first ``test_size`` test examples
    (with ``quick``, at most the task's ``quick_test_size``)."""
    data = task.load_data(None, quick)
    sizes = [test_size, task.quick_test_size if quick else None]
    size = min((n for n in sizes if n is not None), default=None)
    if size is not None:
        data = TaskData(data.train, split_examples(data.test, size))
    return data


def node() -> dict[str, Any]:
    """This machine as a record names it: its host, CPU model and CUDA device (None without one).

    >>> sorted(node())
    ['cpu', 'cuda', 'host']
    """
    cuda = torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available() else None
    return {"host": platform.node(), "cpu": _cpu_model(), "cuda": cuda}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()


_PLAIN = (str, int, float, bool, type(None))


def _plain(value: Any) -> bool:
    """Whether ``value`` is JSON-ready data (so a worker can set it on a task it rebuilt)."""
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _built_in(entry: Any, function: str) -> bool:
    """Whether a registry entry comes from layerwise itself (so every worker has it by name)."""
    return getattr(getattr(entry, function, None), "__module__", "").startswith("layerwise.")


@dataclass(frozen=True)
class TaskRef:
    """A task a worker rebuilds: a registered task's name or a task file's ``PATH.py:FACTORY`` with
    the plain fields set on top of it (``fields``, JSON), checked against the task's ``settings``; or,
    when neither names it, the pickled task (``pickled``). ``quick`` and ``test_size``: its data."""

    spec: str | None
    fields: str
    settings: str
    quick: bool
    test_size: int | None
    pickled: bytes | None = None

    @classmethod
    def of(cls, task: Task, quick: bool, test_size: int | None) -> TaskRef:
        """The reference of ``task`` (ValueError when it is neither named nor picklable)."""
        settings = json.dumps(task.settings(), sort_keys=True)
        registered = task.name in TASKS and _built_in(TASKS[task.name], "make_model")
        spec = task_file_spec(task.source_sha256) or (task.name if registered else None)
        plain = {f.name: getattr(task, f.name) for f in dataclasses.fields(task) if _plain(getattr(task, f.name))}
        pickled = None if spec is not None else _pickled(task, "--task")
        return cls(spec, json.dumps(plain, sort_keys=True, default=dict), settings, quick, test_size, pickled)

    def task(self) -> Task:
        """The task rebuilt here, checked to be the driver's (ValueError naming what differs)."""
        if self.spec is None:
            return _unpickled(self.pickled)
        task = dataclasses.replace(resolve_task(self.spec), **json.loads(self.fields))
        if json.dumps(task.settings(), sort_keys=True) != self.settings:
            mine, theirs = task.settings(), json.loads(self.settings)
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(
                f"--task: {self.spec} on {platform.node()} is not the task the comparison runs (differs in "
                f"{', '.join(changed)}); every worker needs the same task file and packages"
            )
        return task


def _pickled(value: Any, flag: str) -> bytes:
    try:
        import cloudpickle
    except ImportError:
        raise ValueError(f"{flag}: sending it to the workers needs cloudpickle; {INSTALL}") from None
    try:
        return cloudpickle.dumps(value)
    except Exception as err:
        raise ValueError(
            f"{flag}: {value!r:.60} cannot be sent to the workers ({type(err).__name__}: {err}); register it in a "
            "task file (--task PATH.py:FACTORY) instead"
        ) from None


def _unpickled(data: bytes | None) -> Any:
    import cloudpickle

    return cloudpickle.loads(data)


@dataclass(frozen=True)
class Job:
    """One run for a worker: its store ``key``, its ``spec``, its task; the ``method`` pickled when
    layerwise does not register it (a worker registers it when it lacks the name), ``data`` pickled
    when the comparison was given its own (else the worker loads the task's), its ``threads``, and
    which ``attempt`` this is (1: after its worker died once)."""

    key: str
    name: str
    spec: RunSpec
    task: TaskRef
    threads: int = 1
    method: bytes | None = None
    data: bytes | None = None
    attempt: int = 0

    @classmethod
    def of(cls, key: str, name: str, spec: RunSpec, task: TaskRef, threads: int, data: TaskData | None) -> Job:
        entry = METHODS[spec.method]
        method = None if _built_in(entry, "build") else _pickled(entry, "--methods")
        return cls(key, name, spec, task, threads, method, None if data is None else _pickled(data, "data"))


_PREPARED: dict[TaskRef, tuple[Task, TaskData]] = {}
"""Each task this worker process rebuilt, with its data (loaded and warmed up once per process)."""


def execute(job: Job) -> dict[str, Any]:
    """Train ``job`` in this process (a worker): its record, naming this node."""
    torch.set_num_threads(job.threads)
    if job.spec.method not in METHODS and job.method is not None:
        register_method(_unpickled(job.method))
    if job.data is not None:
        task, data = job.task.task(), _unpickled(job.data)
    else:
        if job.task not in _PREPARED:
            task = job.task.task()
            data = comparison_data(task, job.task.quick, job.task.test_size)
            warm_up(task, data, 2 if job.task.quick else 10)
            _PREPARED[job.task] = task, data
        task, data = _PREPARED[job.task]
    record = run(task, job.spec, data=data)
    record["node"] = node()
    return record


@dataclass(frozen=True)
class Outcome:
    """What came back of a job: its ``record``, or its ``error`` (``died``: its worker ended without an answer)."""

    record: dict[str, Any] | None = None
    error: str | None = None
    died: bool = False


class Executor(Protocol):
    """An engine that trains jobs: ``check`` before anything is submitted, then ``start`` and ``wait``."""

    name: str
    cpus_per_run: int
    gpus_per_run: int

    def check(self) -> None:
        """Connect, and refuse (ValueError naming the flag) what the engine cannot give."""

    def start(self, job: Job, out: Path) -> tuple[Any, dict[str, Any]]:
        """Submit ``job``: its handle and what :meth:`attach` needs to take it up again."""

    def attach(self, entry: Mapping[str, Any]) -> Any | None:
        """The handle of a job an earlier driver submitted (None: it cannot be taken up)."""

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, Outcome]]:
        """Block until one or more ``handles`` are done; each with its outcome."""


def _resources(cpus_per_run: int, gpus_per_run: int) -> None:
    positive_int("--cpus-per-run", cpus_per_run)
    if isinstance(gpus_per_run, bool) or not isinstance(gpus_per_run, int) or gpus_per_run < 0:
        raise ValueError(f"--gpus-per-run: a whole number of GPUs >= 0, got {gpus_per_run!r}")


def _too_big(flag: str, wanted: int, most: float, where: str) -> None:
    if wanted > most:
        raise ValueError(f"{flag}: {wanted} per run, but {where} has at most {most:g}")


@dataclass
class RayExecutor:
    """Every run a Ray task with ``cpus_per_run`` CPUs (its torch threads) and ``gpus_per_run`` GPUs, on
    the cluster at ``address`` (``auto``: the one running on this machine; None: one started here, or
    the one ``ray.init`` already connected this process to)."""

    address: str | None = None
    cpus_per_run: int = 1
    gpus_per_run: int = 0
    name: str = field(default="ray", init=False)

    def __post_init__(self) -> None:
        _resources(self.cpus_per_run, self.gpus_per_run)

    def check(self) -> None:
        ray = _imported("ray", "--executor ray")
        if self.address not in (None, "auto"):
            _answers(self.address)
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, log_to_driver=False, **({} if self.address else _LOCAL_RAY))
            except (ConnectionError, RuntimeError) as err:
                raise ValueError(f"--ray-address: no Ray cluster at {self.address}: {err}") from None
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        _too_big("--cpus-per-run", self.cpus_per_run, max(n.get("CPU", 0) for n in nodes), "a node of the Ray cluster")
        _too_big("--gpus-per-run", self.gpus_per_run, max(n.get("GPU", 0) for n in nodes), "a node of the Ray cluster")

    def start(self, job: Job, out: Path) -> tuple[Any, dict[str, Any]]:
        task = _remote_execute().options(
            num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0, name=f"layerwise {job.name}"
        )
        return task.remote(job), {}

    def attach(self, entry: Mapping[str, Any]) -> Any | None:
        return None  # Ray ended an earlier driver's tasks with it

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, Outcome]]:
        ray = _imported("ray", "--executor ray")
        ready, _ = ray.wait(list(handles), num_returns=1)
        done = []
        for ref in ready:
            try:
                done.append((ref, Outcome(record=ray.get(ref))))
            except ray.exceptions.RayTaskError as err:
                done.append((ref, Outcome(error=str(err))))
            except ray.exceptions.RayError as err:
                done.append((ref, Outcome(error=f"{type(err).__name__}: {err}", died=True)))
        return done


@functools.cache
def _remote_execute() -> Any:
    """:func:`execute` as a Ray remote function (made once: Ray exports a function when it is made)."""
    return _imported("ray", "--executor ray").remote(execute)


_LOCAL_RAY = {"include_dashboard": False}
"""How a Ray started by the driver is started (no dashboard: nothing listens on this machine's ports)."""


def _answers(address: str) -> None:
    """ValueError naming ``--ray-address`` when nothing answers at ``HOST:PORT`` (``ray://HOST:PORT``)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address: HOST:PORT, ray://HOST:PORT or auto, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=_ADDRESS_TIMEOUT_S).close()
    except OSError as err:
        raise ValueError(
            f"--ray-address: nothing answers at {address} ({err.strerror or err}); start the cluster "
            "(ray start --head) or drop --ray-address to start Ray here"
        ) from None


def _imported(module: str, flag: str) -> Any:
    """The optional ``module``, or ValueError saying how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"{flag}: needs {module}, which is not installed; {INSTALL}") from None


@dataclass
class SlurmExecutor:
    """Every run a Slurm job through submitit: ``cpus_per_run`` CPUs, ``gpus_per_run`` GPUs, at most
    ``minutes`` long, on ``partition``; its files under ``folder`` (default: ``OUT/slurm``).
    ``cluster="local"``: submitit's local executor, each job a process of this machine (no Slurm)."""

    cpus_per_run: int = 1
    gpus_per_run: int = 0
    partition: str | None = None
    minutes: int = 60
    folder: Path | None = None
    cluster: str = "slurm"
    name: str = field(default="slurm", init=False)

    def __post_init__(self) -> None:
        _resources(self.cpus_per_run, self.gpus_per_run)
        positive_int("--slurm-minutes", self.minutes)
        if self.cluster not in ("slurm", "local"):
            raise ValueError(f"cluster: slurm or local (submitit's local executor), got {self.cluster!r}")

    def check(self) -> None:
        _imported("submitit", "--executor slurm")
        if self.cluster == "local":
            cpus, gpus, where = os.cpu_count() or 1, torch.cuda.device_count(), "this machine"
        else:
            cpus, gpus = _slurm_nodes()
            where = "a node of the Slurm cluster"
        _too_big("--cpus-per-run", self.cpus_per_run, cpus, where)
        _too_big("--gpus-per-run", self.gpus_per_run, gpus, where)

    def _executor(self, out: Path) -> Any:
        import submitit

        executor = submitit.AutoExecutor(folder=(self.folder or out / "slurm").resolve(), cluster=self.cluster)
        parameters = {"timeout_min": self.minutes, "cpus_per_task": self.cpus_per_run}
        if self.gpus_per_run:
            parameters["gpus_per_node"] = self.gpus_per_run
        if self.partition is not None and self.cluster == "slurm":
            parameters["slurm_partition"] = self.partition
        executor.update_parameters(name="layerwise", **parameters)
        return executor

    def start(self, job: Job, out: Path) -> tuple[Any, dict[str, Any]]:
        submitted = self._executor(out).submit(execute, job)
        return submitted, {"job_id": submitted.job_id, "folder": str(submitted.paths.folder), "cluster": self.cluster}

    def attach(self, entry: Mapping[str, Any]) -> Any | None:
        import submitit

        kind = submitit.LocalJob if entry.get("cluster") == "local" else submitit.SlurmJob
        return kind(folder=entry["folder"], job_id=entry["job_id"])

    def wait(self, handles: Sequence[Any]) -> list[tuple[Any, Outcome]]:
        while True:
            done = [(job, _outcome(job)) for job in handles if not _running(job)]
            if done:
                return done
            time.sleep(_POLL_S)


def _slurm_nodes() -> tuple[float, float]:
    """The most CPUs and GPUs a node of this Slurm cluster has (ValueError naming ``--executor`` without Slurm)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise ValueError("--executor slurm: no Slurm here (sbatch and sinfo not found); run it on a login node")
    lines = subprocess.run(["sinfo", "-h", "-o", "%c %G"], capture_output=True, text=True, check=True).stdout
    cpus, gpus = 0.0, 0.0
    for line in lines.splitlines():
        count, _, gres = line.partition(" ")
        cpus = max(cpus, float(count.rstrip("+")) if count.rstrip("+").isdigit() else 0.0)
        for part in gres.split(","):
            count = part.split("(")[0].rsplit(":", 1)[-1]
            if part.startswith("gpu") and count.isdigit():
                gpus = max(gpus, float(count))
    return cpus, gpus


def _running(job: Any) -> bool:
    """Whether a submitit job still runs (a local job an earlier driver started: by its process)."""
    if job.paths.result_pickle.exists():
        return False
    if job.state == "NO PROCESS AND NO RESULT":  # a local job taken up from an earlier driver
        return _alive(int(job.job_id))
    return not job.done()


def _alive(pid: int) -> bool:
    """Whether the local job controller ``pid`` still runs (not a zombie, not another process with its PID)."""
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        with contextlib.suppress(OSError):
            zombie = (proc / "stat").read_text().rpartition(")")[2].split()[0] == "Z"
            return not zombie and b"submitit" in (proc / "cmdline").read_bytes()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _outcome(job: Any) -> Outcome:
    import submitit

    try:
        return Outcome(record=job.result())
    except submitit.core.utils.FailedJobError as err:
        return Outcome(error=str(err))
    except submitit.core.utils.UncompletedJobError as err:
        return Outcome(error=f"{type(err).__name__}: {err}", died=True)


def executor_of(
    executor: str | Executor | None = "local",
    *,
    cpus_per_run: int | None = None,
    gpus_per_run: int | None = None,
    ray_address: str | None = None,
    slurm_partition: str | None = None,
    slurm_minutes: int | None = None,
) -> Executor | None:
    """The executor a comparison's runs go to (None: ``local``, this process), from its name and flags,
    each flag refused (ValueError naming it) where its executor is not the one chosen."""
    if executor is not None and not isinstance(executor, str):
        return executor
    if executor is not None and executor not in EXECUTORS:
        raise ValueError(f"--executor: one of {', '.join(EXECUTORS)}, got {executor!r}")
    flags = {
        "--cpus-per-run": (cpus_per_run, ("ray", "slurm")),
        "--gpus-per-run": (gpus_per_run, ("ray", "slurm")),
        "--ray-address": (ray_address, ("ray",)),
        "--slurm-partition": (slurm_partition, ("slurm",)),
        "--slurm-minutes": (slurm_minutes, ("slurm",)),
    }
    for flag, (value, takers) in flags.items():
        if value is not None and executor not in takers:
            chosen = executor or "local"
            raise ValueError(f"{flag}: only with --executor {' or '.join(takers)}, got --executor {chosen}")
    resources = {"cpus_per_run": cpus_per_run or 1, "gpus_per_run": gpus_per_run or 0}
    if executor == "ray":
        return RayExecutor(ray_address, **resources)
    if executor == "slurm":
        return SlurmExecutor(partition=slurm_partition, minutes=slurm_minutes or 60, **resources)
    return None


class InFlight:
    """``OUT/in-flight.json``: the jobs submitted and not yet back, by store key, with how to take each up."""

    def __init__(self, out: Path) -> None:
        self.path = out / IN_FLIGHT
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            entries = {}
        self.entries: dict[str, dict[str, Any]] = entries if isinstance(entries, dict) else {}

    def add(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = entry
        self._write()

    def drop(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self._write()

    def _write(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(json.dumps(self.entries, indent=1))
        os.replace(temporary, self.path)


def _stderr(text: str) -> None:
    print(text, file=sys.stderr)


def run_jobs(
    executor: Executor, jobs: Sequence[Job], out: Path, say: Callable[[str], None] = _stderr
) -> Iterator[tuple[Job, Outcome]]:
    """Submit every job (taking up the ones an earlier driver left in flight) and yield each as it comes
    back; a job whose worker died is submitted once more, and a second death is its error."""
    journal = InFlight(out)
    handles: dict[Any, Job] = {}
    again, taken = [], []
    for job in jobs:
        entry = journal.entries.get(job.key)
        handle = executor.attach(entry) if entry is not None and entry.get("executor") == executor.name else None
        if handle is not None:
            handles[handle] = dataclasses.replace(job, attempt=entry.get("attempt", 0))
            taken.append(job.name)
            continue
        if entry is not None:
            again.append(f"{job.name} on {entry.get('executor')}")
        _submit(executor, job, out, journal, handles)
    if taken:
        left = f"{len(taken)} run(s) an earlier driver left in flight ({', '.join(taken)})"
        say(f"--executor {executor.name}: {left} taken up, not submitted again")
    if again:
        say(
            f"--executor {executor.name}: {len(again)} run(s) were in flight when the last driver of {out} stopped "
            f"({', '.join(again)}); submitted again: Ray ended its tasks with it, and a job of another executor "
            "is not taken up"
        )
    while handles:
        for handle, outcome in executor.wait(list(handles)):
            job = handles.pop(handle)
            if outcome.died and job.attempt == 0:
                first = (outcome.error or "").partition("\n")[0]
                say(f"{job.name}: its worker died ({first}); submitting it once more")
                _submit(executor, dataclasses.replace(job, attempt=1), out, journal, handles)
                continue
            if outcome.died:
                outcome = Outcome(error=f"its worker died twice; the second time: {outcome.error}", died=True)
            yield job, outcome
            journal.drop(job.key)  # once the driver has stored it


def _submit(executor: Executor, job: Job, out: Path, journal: InFlight, handles: dict[Any, Job]) -> None:
    handle, entry = executor.start(job, out)
    handles[handle] = job
    journal.add(job.key, {"executor": executor.name, "name": job.name, "attempt": job.attempt, **entry})
