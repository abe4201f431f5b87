"""Runs of a comparison, stored as they finish in one SQLite file (``DIR/runs.sqlite``).

The file remembers the configuration it was made for (task, budget, policy); opening it with a
different configuration raises ValueError naming what changed instead of mixing results. For a task
read from a file (``--task PATH.py:FACTORY``) the configuration holds the fingerprint of the task
file and of every module it imported from its folder, and the file keeps their list
(:func:`~layerwise.tasks.from_file.task_files`): an edited helper module is refused naming it. Every
run is keyed by its method, settings and seed: a finished run is never redone, a failed one is kept
with its error until it is tried again.

A store with no finished run holds nothing worth keeping: a comparison that fails before any of its
runs finished (its ``with RunStore(...)`` block raises) removes the file, and one whose process was
killed before that (out of memory, say) is taken over by the next configuration, with a warning,
its failed runs dropped.

Every finished run's record carries a checksum beside it: the sha256 of the JSON list
``[configuration, key, record]`` (the three texts as stored), so a record edited, emptied, copied
from another store or another run's key, or whose store's configuration was edited, is refused on
opening, naming the run, before anything trains; so is a record without its ``method`` or ``seed``
(or not those of its row), or with a ``test_metric`` that is not a finite number or null or a
``wall_clock_s`` that is not a finite number >= 0. A store written before checksums, with finished
runs, is refused as written by an older layerwise (its runs cannot be checked).

One comparison writes to a directory at a time: :func:`locked` holds an exclusive ``flock`` on
``DIR/.layerwise.lock`` for as long as the comparison runs, and a second one is refused naming the
holder's PID. The kernel drops the lock when its holder ends, killed or not, so it never stays stuck.

Examples:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "runs.sqlite"
    >>> with RunStore(path, {"task": "fashion-mnist"}) as store:
    ...     store.save(store.key("baseline", {}, 0), {"method": "baseline", "seed": 0, "test_metric": 0.86})
    >>> RunStore(path, {"task": "fashion-mnist"}).finished(RunStore.key("baseline", {}, 0))
    {'method': 'baseline', 'seed': 0, 'test_metric': 0.86}
    >>> RunStore(path, {"task": "other"})
    Traceback (most recent call last):
    ...
    ValueError: --out: ... holds runs of a different configuration ...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._warn import warn
from ..tasks.from_file import task_files

try:
    import fcntl
except ImportError:  # Windows: no flock; comparisons are not locked there
    fcntl = None

__all__ = ["LOCK_NAME", "RunStore", "config_changes", "locked", "prepare_out"]

LOCK_NAME = ".layerwise.lock"
"""The lock file :func:`locked` holds in an output directory (it stays; only its flock matters)."""

_HELD: dict[Path, int] = {}
"""The directories this process holds locked, with how many ``locked`` blocks hold each."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY, method TEXT NOT NULL, seed INTEGER NOT NULL, status TEXT NOT NULL,
    record TEXT, error TEXT, finished REAL NOT NULL, checksum TEXT
);
"""

_FIX = "choose another --out or delete"
"""The way out of every refusal of a stored file (followed by its path)."""


def prepare_out(out: str | Path) -> Path:
    """Create the output directory ``out`` and check it is writable (ValueError naming the problem)."""
    out = Path(out)
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out: {folder} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"--out: cannot write to {out}: {err.strerror or err}") from None
    return out


@contextlib.contextmanager
def locked(out: str | Path) -> Iterator[Path]:
    """Hold ``out`` (created if missing) for one comparison: ValueError naming the holder if another process does.

    Re-entrant within a process; the lock is released when the outermost block ends or the process dies.
    """
    folder = prepare_out(out).resolve()
    with contextlib.ExitStack() as stack:
        if folder not in _HELD and fcntl is not None:
            stack.enter_context(_flock(folder / LOCK_NAME, out))
        _HELD[folder] = _HELD.get(folder, 0) + 1
        try:
            yield folder
        finally:
            _HELD[folder] -= 1
            if not _HELD[folder]:
                del _HELD[folder]


@contextlib.contextmanager
def _flock(path: Path, out: str | Path) -> Iterator[None]:
    """An exclusive flock on ``path`` holding this process's PID, or ValueError naming the holder's."""
    with open(path, "a+") as handle:  # closing the file drops the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ValueError(
                f"--out: {out} is in use by another layerwise compare (PID {holder}); "
                "wait for it to end or choose another --out"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield


class RunStore:
    """The runs of one comparison configuration (``config``: a JSON-ready dict)."""

    def __init__(self, path: str | Path, config: dict[str, Any]) -> None:
        self.path = Path(path)
        prepare_out(self.path.parent)
        self.config = config
        self._config_text = json.dumps(config, sort_keys=True)
        try:
            self._db = sqlite3.connect(self.path)
        except sqlite3.DatabaseError as err:
            raise _unreadable(self.path, err) from None
        try:
            self._db.executescript(_SCHEMA)
            self._adopt()
        except sqlite3.DatabaseError as err:
            self._db.close()
            raise _unreadable(self.path, err) from None
        except BaseException:
            self._db.close()
            raise

    def _adopt(self) -> None:
        """Check the file against this configuration and every finished run, then make it this configuration's."""
        row = self._db.execute("SELECT value FROM config WHERE key = 'config'").fetchone()
        stored = None if row is None else row[0]
        other = stored not in (None, self._config_text)
        finished = self.any_finished()
        if other and finished:
            raise ValueError(self._refusal(stored))
        if other:  # a start that died before any run finished (killed: out of memory, say)
            changes = "; ".join(config_changes(_loaded(stored), self.config))
            note = f"--out: {self.path} held no finished run, only another configuration ({changes}): now this one's"
            warn(note)
        older = "checksum" not in {column[1] for column in self._db.execute("PRAGMA table_info(runs)")}
        if older and finished:
            raise ValueError(
                f"--out: {self.path} was written by an older layerwise: its runs carry no checksum, so an "
                f"edited record could not be told; {_FIX} {self.path}"
            )
        if finished:  # nothing is written into a store that is refused
            self._check_records()
        files = task_files(_source_sha256(self.config))
        with self._db:
            if older:
                self._db.execute("ALTER TABLE runs ADD COLUMN checksum TEXT")
            if stored != self._config_text:
                self._db.execute("DELETE FROM runs WHERE status != 'ok'")
                self._db.execute("DELETE FROM config WHERE key = 'task_files'")
                self._db.execute("INSERT OR REPLACE INTO config VALUES ('config', ?)", (self._config_text,))
            if files is not None:
                self._db.execute("INSERT OR REPLACE INTO config VALUES ('task_files', ?)", (json.dumps(files),))

    def _refusal(self, stored: str) -> str:
        """Why a store of another configuration (``stored``: its text) with finished runs is refused."""
        stored_config = _loaded(stored)
        changes = "; ".join(config_changes(stored_config, self.config)) or "its stored text differs"
        return (
            f"--out: {self.path.parent} holds runs of a different configuration ({changes})"
            f"{self._files_changed(stored_config)}. Choose another --out or delete {self.path}"
        )

    def _files_changed(self, stored_config: Any) -> str:
        """Which of the task's files changed, when the task file's fingerprint did ("" otherwise)."""
        now = task_files(_source_sha256(self.config))
        if now is None or _source_sha256(stored_config) == _source_sha256(self.config):
            return ""
        row = self._db.execute("SELECT value FROM config WHERE key = 'task_files'").fetchone()
        before = None if row is None else _loaded(row[0])
        if not isinstance(before, dict):
            return (
                "; the store does not list the task's files (written by an older layerwise, which fingerprinted "
                f"the task file alone); the fingerprint now covers {_COVERED}: {', '.join(now)}"
            )
        return f"; of {_COVERED}, changed: {', '.join(_file_changes(before, now))}"

    def _check_records(self) -> None:
        """ValueError naming the first finished run whose record fails its checks (nothing when all pass)."""
        twice = self._db.execute("SELECT method, seed FROM runs GROUP BY key HAVING COUNT(*) > 1").fetchone()
        if twice is not None:
            raise ValueError(
                f"--out: {self.path}: the run {twice[0]} seed {twice[1]} is stored twice; {_FIX} {self.path}"
            )
        for row in self._db.execute("SELECT key, method, seed, record, checksum FROM runs WHERE status = 'ok'"):
            self._checked(*row)

    def _checked(self, key: str, method: str, seed: int, record_text: str | None, checksum: str | None) -> dict:
        """The record stored under ``key``, or ValueError naming its run and what is wrong with it."""
        if record_text is None or checksum is None:
            problem = f"has no {'record' if record_text is None else 'checksum'}"
        elif checksum != _checksum(self._config_text, key, record_text):
            problem = "does not match its checksum (changed after it was stored)"
        else:
            record = _loaded(record_text)
            problem = _record_problem(record, method, seed)
            if problem is None:
                return record
        raise ValueError(f"--out: {self.path}: the stored run {method} seed {seed} {problem}; {_FIX} {self.path}")

    @staticmethod
    def variant_key(method: str, settings: dict[str, Any]) -> str:
        """What identifies a method with its settings (the seed aside)."""
        return f"{method}|{json.dumps(settings, sort_keys=True)}"

    @staticmethod
    def key(method: str, settings: dict[str, Any], seed: int) -> str:
        return f"{RunStore.variant_key(method, settings)}|{seed}"

    def finished(self, key: str) -> dict[str, Any] | None:
        """The record of a finished run, checked as on opening; None: never run, or failed."""
        row = self._db.execute(
            "SELECT key, method, seed, record, checksum FROM runs WHERE key = ? AND status = 'ok'", (key,)
        ).fetchone()
        return None if row is None else self._checked(*row)

    def error(self, key: str) -> str | None:
        row = self._db.execute("SELECT error FROM runs WHERE key = ? AND status = 'failed'", (key,)).fetchone()
        return None if row is None else row[0]

    def save(self, key: str, record: dict[str, Any]) -> None:
        """Store a finished run's record with its checksum; one the store would refuse is a ValueError."""
        if not isinstance(record, dict):
            raise TypeError(f"record: the record of {key} must be a dict, got {type(record).__name__}")
        problem = _record_problem(record, record.get("method"), record.get("seed"))
        if problem is not None:
            raise ValueError(f"record: the record of {key} {problem}")
        text = json.dumps(record)
        with self._db:
            self._db.execute(
                f"INSERT OR REPLACE INTO runs ({_COLUMNS}) VALUES (?, ?, ?, 'ok', ?, NULL, ?, ?)",
                (key, record["method"], record["seed"], text, time.time(), _checksum(self._config_text, key, text)),
            )

    def fail(self, key: str, method: str, seed: int, error: str) -> None:
        with self._db:
            self._db.execute(
                f"INSERT OR REPLACE INTO runs ({_COLUMNS}) VALUES (?, ?, ?, 'failed', NULL, ?, ?, NULL)",
                (key, method, seed, error, time.time()),
            )

    def any_finished(self) -> bool:
        """Whether any run finished (a stored record)."""
        return self._db.execute("SELECT 1 FROM runs WHERE status = 'ok' LIMIT 1").fetchone() is not None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *exc: object) -> None:
        """Close; after an error with no finished run, remove the file (nothing in it is worth keeping)."""
        discard = error_type is not None and not self.any_finished()
        self.close()
        if discard:
            self.path.unlink(missing_ok=True)


_COLUMNS = "key, method, seed, status, record, error, finished, checksum"
"""The columns of ``runs`` in the order the store writes them (a table of an older layerwise has them too)."""

_COVERED = "the task file and the modules it imports from its folder"
"""What a task file's fingerprint covers (:func:`~layerwise.tasks.from_file.task_files`)."""


def _checksum(config_text: str, key: str, record_text: str) -> str:
    """What binds a record to its key and its store's configuration: sha256 of the JSON list of the three texts."""
    return hashlib.sha256(json.dumps([config_text, key, record_text]).encode()).hexdigest()


def _record_problem(record: Any, method: Any, seed: Any) -> str | None:
    """What is wrong with a finished run's ``record`` stored as ``method`` seed ``seed`` (None: nothing)."""
    if not isinstance(record, dict):
        return "is not a JSON object"
    for field, kind, wanted in (("method", str, "a string"), ("seed", int, "an int")):
        if field not in record:
            return f"lacks its {field}"
        if not isinstance(record[field], kind) or isinstance(record[field], bool):
            return f"has {field} {record[field]!r}, expected {wanted}"
    if (record["method"], record["seed"]) != (method, seed):
        return f"records {record['method']} seed {record['seed']}, not its row's"
    metric, seconds = record.get("test_metric"), record.get("wall_clock_s", 0.0)
    if metric is not None and not _finite(metric):
        return f"has test_metric {metric!r}, expected a finite number or null"
    if not (_finite(seconds) and seconds >= 0):
        return f"has wall_clock_s {seconds!r}, expected a finite number >= 0"
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _file_changes(before: dict[str, Any], now: dict[str, str]) -> list[str]:
    """Each file whose sha256 differs from ``before`` to ``now``, with how: edited, now imported, gone."""
    changed = sorted(name for name in set(before) | set(now) if before.get(name) != now.get(name))
    return [
        f"{name} {'now imported' if name not in before else 'edited' if name in now else 'gone'}" for name in changed
    ]


def _unreadable(path: Path, err: sqlite3.DatabaseError) -> ValueError:
    return ValueError(f"--out: {path} is not a readable run store ({err}); delete it or choose another --out")


def _loaded(text: str) -> Any:
    """A stored JSON text's value (None for text that is not JSON)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def _source_sha256(config: Any) -> str | None:
    """The task file's fingerprint in a store configuration (None: not a task file's)."""
    settings = config.get("task_settings") if isinstance(config, dict) else None
    return settings.get("source_sha256") if isinstance(settings, dict) else None


def config_changes(stored: Any, wanted: Any, at: str = "") -> list[str]:
    """What differs from ``stored`` to ``wanted`` (JSON values), one ``"key: old -> new"`` each.

    Examples:
        >>> config_changes({"task": "t", "task_settings": {"lr": 0.05}}, {"task": "t", "task_settings": {"lr": 0.01}})
        ['task_settings.lr: 0.05 -> 0.01']
    """
    if not (isinstance(stored, dict) and isinstance(wanted, dict)):
        return [] if stored == wanted else [f"{at or 'configuration'}: {_shown(stored)} -> {_shown(wanted)}"]
    changes = []
    for key in sorted(set(stored) | set(wanted)):
        where = f"{at}.{key}" if at else key
        changes += config_changes(stored.get(key, _MISSING), wanted.get(key, _MISSING), where)
    return changes


_MISSING = "(unset)"
"""How :func:`config_changes` shows a key one configuration lacks."""


def _shown(value: Any) -> str:
    return value if value is _MISSING else json.dumps(value)
