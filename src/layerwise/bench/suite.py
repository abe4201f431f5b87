"""Named benchmarks run by ``layerwise bench NAME``; each returns a JSON-ready dict.

Examples:
    >>> from layerwise.bench.suite import run_bench
    >>> run_bench("scheduler", quick=True)["step_overhead_ms"] < 1.0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import datetime
import inspect
import platform
from collections.abc import Callable
from typing import Any

import torch

from .. import recipes
from .._registry import Registry
from ..scheduler import LayerwiseLR
from .timing import measure
from .train import train

__all__ = ["BENCHES", "machine_info", "register_defaults", "run_bench"]

Bench = Callable[..., dict[str, Any]]
BENCHES: Registry[Bench] = Registry("bench")
"""Name -> ``fn(quick, **options) -> results`` (the big benchmarks are imported when first run)."""


def machine_info() -> dict[str, Any]:
    return {
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def run_bench(name: str, *, quick: bool = False, **options: Any) -> dict[str, Any]:
    """Run benchmark ``name``; an option it does not have is a ValueError naming the ones it has."""
    bench = BENCHES.get(name)
    known = [p for p in inspect.signature(bench).parameters if p != "quick"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"--set: bench {name!r} has no such option {unknown[0]!r}; it has {known or 'none'}")
    results = bench(quick, **options)
    return {**results, "bench": name, "quick": quick, "options": options, "machine": machine_info()}


def _optimizer(num_groups: int) -> torch.optim.Optimizer:
    params = [{"params": [torch.nn.Parameter(torch.zeros(1))]} for _ in range(num_groups)]
    return torch.optim.SGD(params, lr=0.1)


def scheduler_overhead(quick: bool) -> dict[str, Any]:
    """Cost of one ``LayerwiseLR.step()`` with 100 groups, per recipe, next to torch's LambdaLR."""
    groups, total = 100, 10_000
    repeats, number = (5, 200) if quick else (15, 1000)
    per_recipe = {}
    for name in ("constant", "discriminative", "llr", "staggered"):
        policy = None if name == "staggered" else recipes.make_policy("onecycle")
        schedule = recipes.build(name, groups, policy=policy)
        scheduler = LayerwiseLR(_optimizer(groups), total, schedule=schedule)
        per_recipe[name] = measure(scheduler.step, warmup=100, repeats=repeats, number=number)
    baseline_sched = torch.optim.lr_scheduler.LambdaLR(_optimizer(groups), lambda s: 1.0 - s / total)
    baseline = measure(baseline_sched.step, warmup=100, repeats=repeats, number=number)
    worst = max(r["median_ms"] for r in per_recipe.values())
    return {
        "groups": groups,
        "step_overhead_ms": round(worst, 5),
        "target_ms": 0.1,
        "per_recipe_ms": {k: round(v["median_ms"], 5) for k, v in per_recipe.items()},
        "torch_lambdalr_ms": round(baseline["median_ms"], 5),
        "ratio_to_lambdalr": round(worst / baseline["median_ms"], 2),
        "repeats": repeats,
        "calls_per_repeat": number,
    }


def fashion_mnist_run(quick: bool) -> dict[str, Any]:
    """One training run of the default task with Smith's reversing depth ramp under 1cycle."""
    result = train("fashion-mnist", recipe="llr", policy="onecycle", quick=quick, progress=True)
    result.pop("lr_by_group")
    return result


def register_defaults() -> None:
    """Register the built-in benchmarks (the heavy ones by import string, loaded when run)."""
    BENCHES.register("scheduler", scheduler_overhead, description="LayerwiseLR.step() with 100 groups vs LambdaLR")
    BENCHES.register("fashion-mnist", fashion_mnist_run, description="one training run of the default task")
    for name, target, description in (
        ("ddp", "ddp_bench:run_ddp_bench", "distributed.wrap vs DDP(find_unused_parameters=True), 2 gloo processes"),
        ("gpu", "gpu_bench:run_gpu_bench", "the speed claims at realistic sizes on one CUDA GPU"),
        (
            "fsdp",
            "fsdp_bench:run_fsdp_bench",
            "what freezing saves under FSDP2: bytes, memory, step time, 2 gloo processes",
        ),
        ("freezeout", "freezeout_bench:run_freezeout_bench", "FreezeOut's saving and accuracy cost"),
        ("cache", "cache_bench:run_cache_bench", "what a FrozenPrefixCache saves, measured and predicted"),
        ("hidlr", "hidlr_bench:run_hidlr_bench", "Hi-DLR's cost and the paper's problems"),
        ("multirate", "multirate_bench:run_multirate_bench", "Multirate's speed-up and fine-tuning accuracy"),
        ("telemetry", "telemetry_bench:run_telemetry_bench", "LayerMonitor's overhead and per-layer readings"),
        ("clock", "clock_bench:run_clock_bench", "how far the process clock and the wall clock agree on training"),
        ("executor", "executor_bench:run_executor_bench", "a comparison's wall-clock on 1 and 2 Ray workers"),
    ):
        BENCHES.register_lazy(name, f"layerwise.bench.{target}", description=description)


register_defaults()
