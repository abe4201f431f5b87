"""Runs of a comparison, stored as they finish in one SQLite file (``DIR/runs.sqlite``).

The file remembers the configuration it was made for (task, budget, policy); opening it with a
different configuration raises ValueError naming what changed instead of mixing results. Every run
is keyed by its method, settings and seed: a finished run is never redone, a failed one is kept
with its error until it is tried again. A comparison that fails before any of its runs finished
(its ``with RunStore(...)`` block raises) removes the file, so the directory stays free for any
configuration.

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
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    record TEXT, error TEXT, finished REAL NOT NULL
);
"""


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
        wanted = json.dumps(config, sort_keys=True)
        try:
            self._db = sqlite3.connect(self.path)
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM config WHERE key = 'config'").fetchone()
        except sqlite3.DatabaseError as err:
            raise ValueError(
                f"--out: {self.path} is not a readable run store ({err}); delete it or choose another --out"
            ) from None
        if row is None:
            with self._db:
                self._db.execute("INSERT INTO config VALUES ('config', ?)", (wanted,))
        elif row[0] != wanted:
            self._db.close()
            changes = "; ".join(config_changes(json.loads(row[0]), json.loads(wanted)))
            raise ValueError(
                f"--out: {self.path.parent} holds runs of a different configuration ({changes}). "
                f"Choose another --out or delete {self.path}"
            )
        self.config = config

    @staticmethod
    def variant_key(method: str, settings: dict[str, Any]) -> str:
        """What identifies a method with its settings (the seed aside)."""
        return f"{method}|{json.dumps(settings, sort_keys=True)}"

    @staticmethod
    def key(method: str, settings: dict[str, Any], seed: int) -> str:
        return f"{RunStore.variant_key(method, settings)}|{seed}"

    def finished(self, key: str) -> dict[str, Any] | None:
        """The record of a finished run, or None (never run, or failed)."""
        row = self._db.execute("SELECT record FROM runs WHERE key = ? AND status = 'ok'", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def error(self, key: str) -> str | None:
        row = self._db.execute("SELECT error FROM runs WHERE key = ? AND status = 'failed'", (key,)).fetchone()
        return None if row is None else row[0]

    def save(self, key: str, record: dict[str, Any]) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, 'ok', ?, NULL, ?)",
                (key, record["method"], record["seed"], json.dumps(record), time.time()),
            )

    def fail(self, key: str, method: str, seed: int, error: str) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, 'failed', NULL, ?, ?)",
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
