"""What the data-parallel benches share: their settings and a run on two gloo processes.

Examples:
    >>> two_rank_config(quick=True, width=16, depth=3, batch=4)["repeats"]
    3
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..distributed import leave_group

__all__ = ["run_on_two_ranks", "two_rank_config"]

Phases = Callable[[int, dict[str, Any]], dict[str, Any]]
"""``phases(rank, config) -> results``: one rank's measurements (rank 0's are kept)."""


def two_rank_config(
    quick: bool,
    *,
    width: int,
    depth: int,
    batch: int,
    warmup: int | None = None,
    repeats: int | None = None,
    number: int | None = None,
) -> dict[str, Any]:
    """The MLP and timing settings of a bench of three phases (all trainable, a frozen prefix, the head)."""
    if depth < 3:
        raise ValueError(f"depth: must be >= 3 (a frozen prefix and a trainable rest), got {depth!r}")
    return {
        "width": width,
        "depth": depth,
        "batch": batch,
        "warmup": warmup if warmup is not None else (2 if quick else 5),
        "repeats": repeats if repeats is not None else (3 if quick else 7),
        "number": number if number is not None else (3 if quick else 10),
    }


def _rank(rank: int, port: int, phases: Phases, config: dict[str, Any], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    results = phases(rank, config)  # its DDP/FSDP objects hold the group: freed on return, before leaving it
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    leave_group()


def run_on_two_ranks(phases: Phases, config: dict[str, Any]) -> dict[str, Any]:
    """``phases`` on two gloo processes of this machine (one thread each); rank 0's results."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_rank, args=(port, phases, config, out), nprocs=2, join=True)
        return json.loads(Path(out).read_text())
