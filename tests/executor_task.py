"""A task file the executor tests send to workers by path: the blobs task, and ``dies-once``, the
baseline whose first build kills its own process (its ``marker`` file says it did), and ``fails``."""

import contextlib
import os
import signal
from pathlib import Path

from blobs import blobs_task
from layerwise.compare.methods import METHODS, Method, register_method, resolve_settings


def _dies_once(build, settings):
    marker = Path(settings["marker"])
    if not marker.exists():  # a marker that cannot be written: it dies every time
        with contextlib.suppress(OSError):
            marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return METHODS["baseline"].build(build, resolve_settings("baseline"))


def _fails(build, settings):
    raise RuntimeError("this method fails on purpose")


def make_task():
    if "dies-once" not in METHODS:
        register_method(
            Method("dies-once", "the baseline; its first build kills its process", _dies_once, {"marker": ""})
        )
        register_method(Method("fails", "raises when built", _fails))
    return blobs_task("file-blobs")
