"""``layerwise bench telemetry``: the monitor's overhead, and what the layers of a CNN and a ResNet do.

Quick: the per-step overhead of a :class:`LayerMonitor` on the Fashion-MNIST ResNet (batch 128),
interleaved blocks of steps with and without the monitor, median of the blocks' per-step times;
``overhead`` = with / without - 1 (target < 0.02 at the default ``every``).

Full: telemetry of the plain CNN and the ResNet trained with a uniform LR (SGD), Smith's reversing
layer ramp (llr) and uniform AdamW, all under 1cycle. Per group it reports when rotation from
the initial weights settles (the first record at 90 % of its final value, as a fraction of
training) and how relative updates fall (mean over the last quarter / the first quarter), with
the Spearman correlation of each against depth; for AdamW the median effective step per group
at the start, middle and end. Plots (heatmaps and lines per quantity) in ``runs/bench-telemetry``.

Examples:
    $ layerwise bench telemetry --quick --json
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..compare import CompareConfig, compare_variants
from ..plotting import plot_telemetry
from ..tasks import get_task, make_optimizer
from ..telemetry import LayerMonitor

__all__ = ["run_telemetry_bench"]

OUT = Path("runs/bench-telemetry")


def _overhead(every: int, blocks: int, block_steps: int) -> dict[str, Any]:
    task = get_task("fashion-mnist")
    x, y = task.load_data(None, True).train
    torch.manual_seed(0)
    model = task.make_model()
    part = task.partition_of(model)
    opt = make_optimizer(task, part.param_groups(lr=0.01))
    batches = [(x[i * 128 : (i + 1) * 128], y[i * 128 : (i + 1) * 128]) for i in range(block_steps)]

    def block() -> float:
        start = time.perf_counter()
        for xb, yb in batches:
            opt.zero_grad()
            task.loss(model(xb), yb).backward()
            opt.step()
        return (time.perf_counter() - start) / len(batches)

    block()  # warm-up
    plain, monitored = [], []
    for _ in range(blocks):
        plain.append(block())
        monitor = LayerMonitor(opt, every=every)
        monitored.append(block())
        monitor.remove()
    base, with_monitor = statistics.median(plain), statistics.median(monitored)
    return {
        "overhead": with_monitor / base - 1.0,
        "target": 0.02,
        "every": every,
        "step_ms": base * 1e3,
        "step_ms_monitored": with_monitor * 1e3,
        "groups": len(part),
        "blocks": blocks,
        "steps_per_block": block_steps,
    }


def _spearman(values: list[float]) -> float | None:
    """Rank correlation of ``values`` with their position (depth); None if undefined."""
    finite = [(i, v) for i, v in enumerate(values) if v is not None and np.isfinite(v)]
    if len(finite) < 3:
        return None
    ranks = [np.argsort(np.argsort([p[k] for p in finite])) for k in (0, 1)]
    if np.std(ranks[1]) == 0:
        return None
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def summarize_telemetry(data: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """Per group: rotation settle point, late/early relative update ratio, Adam steps; and their depth trends."""
    steps = np.asarray(data["steps"], dtype=float)
    history, groups = data["history"], data["groups"]
    settle, ratio = [], []
    for name in groups:
        rotation = np.asarray(history["rotation"][name], dtype=float)
        final = rotation[-1]
        settle.append(float(steps[np.argmax(rotation >= 0.9 * final)] / total_steps) if final > 0 else None)
        updates = np.asarray(history["relative_update"][name], dtype=float)
        quarter = max(1, len(updates) // 4)
        early = float(np.mean(updates[:quarter]))
        ratio.append(float(np.mean(updates[-quarter:])) / early if early > 0 else None)
    result: dict[str, Any] = {
        "groups": groups,
        "rotation_settles_at": settle,
        "rotation_settle_vs_depth_spearman": _spearman(settle),
        "final_rotation": [history["rotation"][name][-1] for name in groups],
        "relative_update_late_over_early": ratio,
        "relative_update_ratio_vs_depth_spearman": _spearman(ratio),
    }
    adam = history.get("adam_step", {})
    if adam and any(v is not None for name in groups for v in adam[name]):
        middle = len(data["quantiles"]) // 2
        picks = (0, len(steps) // 2, len(steps) - 1)
        result["adam_median_step"] = {
            name: [adam[name][i][middle] if adam[name][i] else None for i in picks] for name in groups
        }
        result["adam_median_step_at"] = [int(steps[i]) for i in picks]
    return result


def _layers() -> dict[str, Any]:
    variants = [
        ("uniform SGD", "baseline", {"policy": "onecycle"}),
        ("llr SGD", "llr", {"policy": "onecycle"}),
        ("uniform AdamW", "adamw", {}),
    ]
    results: dict[str, Any] = {}
    for task_name in ("fashion-mnist-plain", "fashion-mnist"):
        report = compare_variants(
            task_name,
            variants,
            config=CompareConfig(policy="onecycle", telemetry_every=5, eval_points=4, budget="steps"),
            out=OUT / task_name,
            progress=True,
        )
        for label, outcome in report["outcomes"].items():
            if not outcome["records"]:
                results[f"{task_name} / {label}"] = {"error": outcome["errors"][-1][-400:]}
                continue
            record = outcome["records"][0]
            plot_telemetry(record["telemetry"], OUT / task_name / "telemetry" / label.replace(" ", "-"), title=label)
            summary = summarize_telemetry(record["telemetry"], record["steps"])
            summary["test_accuracy"] = record["test_metric"]
            results[f"{task_name} / {label}"] = summary
    return results


def run_telemetry_bench(quick: bool, every: int = 10, blocks: int | None = None) -> dict[str, Any]:
    """Quick: the monitor's overhead. Full: also the per-layer telemetry study."""
    result = {"overhead": _overhead(every, blocks or (7 if quick else 15), 20)}
    if not quick:
        result["layers"] = _layers()
    return result
