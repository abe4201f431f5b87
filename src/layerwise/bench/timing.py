"""Timing and memory measurement: warm-up, then the median of repeats.

Examples:
    >>> from layerwise.bench.timing import measure
    >>> stats = measure(lambda: sum(range(100)), warmup=10, repeats=5, number=100)
    >>> sorted(stats)
    ['max_ms', 'median_ms', 'min_ms', 'number', 'repeats']
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

__all__ = ["measure", "peak_memory_mb", "summarize_ms"]


def summarize_ms(samples_s: list[float]) -> dict[str, float]:
    """Median, min and max of durations given in seconds, in milliseconds."""
    ms = [s * 1e3 for s in samples_s]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms)}


def measure(fn: Callable[[], object], *, warmup: int = 10, repeats: int = 7, number: int = 100) -> dict[str, float]:
    """Time ``fn``: ``warmup`` untimed calls, then ``repeats`` batches of ``number`` calls.

    Returns per-call milliseconds (median/min/max over the repeats).
    """
    if warmup < 0 or repeats < 1 or number < 1:
        raise ValueError("warmup >= 0, repeats >= 1 and number >= 1 are required")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) / number)
    return {**summarize_ms(samples), "repeats": repeats, "number": number}


def peak_memory_mb() -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory when a GPU is used)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / 2**20 if sys.platform == "darwin" else rss / 2**10
    result = {"peak_rss_mb": round(rss_mb, 1)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result
