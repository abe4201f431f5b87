"""``layerwise bench freezeout``: FreezeOut's wall-clock saving and accuracy cost, measured.

Quick (timing only, the default setting): the foundation CNN trains the same steps on the
same seeded batches as a uniform-cosine baseline and as FreezeOut in lockstep (one step of each in
turn, every step timed), both built by ``layerwise compare``'s methods and stepped by its runner's
step (:func:`~layerwise.compare.runner.train_step`), and the measured saving sits beside the
paper's FLOP prediction and the prediction from step times timed here with frozen prefixes
(round-robin over the prefixes), both from :func:`layerwise.cost.predict_saving`.

Full: runs of ``layerwise compare``'s runner (:func:`~layerwise.compare.runner.run`), ``baseline``
vs ``freezeout`` at the four strategies (linear/cubic x scaled/unscaled) x t0 on the CNN and a
DenseNet-BC, seed by seed; each setting's accuracy difference and saving are paired by seed
(:func:`~layerwise.compare.stats.compare_seeds`), next to the predicted savings. One setting on a
registered task is ``layerwise compare --task fashion-mnist --methods baseline,freezeout``.

Examples:
    $ layerwise bench freezeout --quick --json
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from itertools import product
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compare.runner import RunSpec, new_run, run, train_step
from ..compare.stats import compare_seeds
from ..cost import group_flops, predict_saving, prefix_step_times, train_fractions
from ..freezeout import FreezeOut
from ..groups import Partition, by_block
from ..plotting import pyplot
from ..tasks import Task, TaskData, get_task
from ..tasks.loop import Batch, loader_options, ordered_batches, seeded_loop
from ..tasks.models import build_model, dense_layer_groups
from .train import optimizer_state_mb

__all__ = ["DEPTHS", "Predictor", "run_freezeout_bench"]

DEPTHS = {"resnet-cnn": 1, "densenet-bc": 2}
"""Partition depth per model: the CNN's stages, the DenseNet's dense layers and transitions."""


def freezeout_groups(model_name: str, model: nn.Module, sample: torch.Tensor) -> Partition:
    """FreezeOut's groups: the ResNet's blocks; DenseNet-BC's layers with its final BN in ``fc`` (the authors')."""
    if model_name == "densenet-bc":
        return dense_layer_groups(model, sample)
    return by_block(model, DEPTHS[model_name], sample_input=sample)


DEFAULT = {"t0": 0.8, "strategy": "cubic", "scale_lr": True}


class Predictor:
    """Predicts a setting's saving on a model: FLOPs (paper) and frozen-prefix step times (timed).

    The FLOP counts and step times are measured once per model and reused for every setting.
    """

    def __init__(self, model_name: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        model, sample = build_model(model_name)
        partition = freezeout_groups(model_name, model, sample)
        self.model, self.groups = model, partition.param_groups(lr=0.1)
        self.flops = group_flops(model, partition, sample[:1])
        self.step_times = prefix_step_times(model, self.groups, batch)

    def __call__(self, steps: int, **settings: Any) -> dict[str, Any]:
        optimizer = torch.optim.SGD([dict(g) for g in self.groups], lr=0.1)
        frozen_at = FreezeOut(self.model, optimizer, steps, **settings).frozen_at  # nothing steps
        fractions = train_fractions(frozen_at, steps)
        strategy = settings.get("strategy", "cubic")
        return {
            **predict_saving(fractions, self.flops, strategy=strategy, step_times=self.step_times),
            "prefix_step_ms": [round(t * 1e3, 2) for t in self.step_times],
        }


def _task_of(model_name: str) -> Task:
    """Fashion-MNIST on the built-in ``model_name``, partitioned into FreezeOut's groups (:func:`freezeout_groups`)."""
    return dataclasses.replace(
        get_task("fashion-mnist"),
        make_model=lambda: build_model(model_name)[0],
        partition=lambda model, sample: freezeout_groups(model_name, model, sample),
    )


def _run(task: Task, data: TaskData, method: str, settings: dict, seed: int, epochs: int, train_size: int) -> dict:
    """One seeded run of ``layerwise compare``'s runner, evaluated once at its end (cosine for the baseline)."""
    spec = RunSpec(method, settings, seed=seed, epochs=epochs, train_size=train_size, policy="cosine", eval_points=1)
    return run(task, spec, data=data)


def _first_batch(task: Task, data: TaskData) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split's first batch (tensors, or the task's collate of a Dataset's examples)."""
    return next(ordered_batches(data.train, task, task.batch_size))


def _lockstep(model_name: str, data: TaskData, steps: int, seed: int) -> dict[str, Any]:
    """Baseline and FreezeOut side by side on the same seeded batches, one step each in turn, every step timed.

    Both are ``layerwise compare``'s methods (:func:`~layerwise.compare.runner.new_run`) stepped by its
    runner's step. Who goes first alternates, so a drift of the machine's speed hits both runs alike.
    """
    task = _task_of(model_name)
    runs = {
        "baseline": new_run(task, "baseline", {}, steps, "cosine", seed),
        "freezeout": new_run(task, "freezeout", DEFAULT, steps, "cosine", seed),
    }
    times: dict[str, list[float]] = {"baseline": [], "freezeout": []}
    for model, _ in runs.values():
        model.train()

    def step(batch: Batch) -> torch.Tensor:
        losses = {}
        for name in ("baseline", "freezeout") if batch.step % 2 == 0 else ("freezeout", "baseline"):
            model, setup = runs[name]
            start = time.perf_counter()
            losses[name] = train_step(model, setup, task, batch.data)
            times[name].append(time.perf_counter() - start)
        return losses["freezeout"]

    seeded_loop(data.train, task.batch_size, step, seed=seed, steps=steps, **loader_options(task))
    state_mb = {name: round(optimizer_state_mb(setup.optimizer), 4) for name, (_, setup) in runs.items()}
    freezeout = runs["freezeout"][1].scheduler
    assert isinstance(freezeout, FreezeOut)
    return {"times": times, "optimizer_state_mb_at_end": state_mb, "frozen": list(freezeout.frozen)}


def _quick(data: TaskData, model_name: str, steps: int, repeats: int) -> dict[str, Any]:
    pred = Predictor(model_name, _first_batch(_task_of(model_name), data))(steps, **DEFAULT)  # warms up too
    runs = [_lockstep(model_name, data, steps, seed) for seed in range(repeats)]
    base = [sum(r["times"]["baseline"]) for r in runs]
    fo = [sum(r["times"]["freezeout"]) for r in runs]
    savings = [1.0 - f / b for f, b in zip(fo, base)]
    measured = statistics.median(savings)
    return {
        "model": model_name,
        "setting": DEFAULT,
        "steps": steps,
        "method": "lockstep: baseline and FreezeOut alternate step by step on the same batches",
        "baseline_train_s": [round(t, 3) for t in base],
        "freezeout_train_s": [round(t, 3) for t in fo],
        "measured_savings": [round(v, 4) for v in savings],
        "measured_saving": measured,
        "optimizer_state_mb_at_end": runs[-1]["optimizer_state_mb_at_end"],
        **pred,
        "measured_vs_timed_relative_gap": abs(measured - pred["predicted_saving_timed"])
        / pred["predicted_saving_timed"],
    }


def _summary(runs: list[dict], baseline: list[dict]) -> dict[str, Any]:
    """A setting's runs against the baseline's, paired by seed: accuracy, its difference, the saving."""
    accuracy = [r["test_metric"] for r in runs]
    errors = [1 - a for a in accuracy]
    base_errors = [1 - r["test_metric"] for r in baseline]
    savings = [1 - r["wall_clock_s"] / b["wall_clock_s"] for r, b in zip(runs, baseline)]
    difference = compare_seeds(
        {r["seed"]: r["test_metric"] for r in runs}, {b["seed"]: b["test_metric"] for b in baseline}
    )
    return {
        "test_accuracy_mean": statistics.mean(accuracy),
        "test_accuracy_std": statistics.stdev(accuracy) if len(runs) > 1 else 0.0,
        "test_accuracy_diff": dataclasses.asdict(difference),
        "test_error_relative_to_baseline": statistics.mean(errors) / statistics.mean(base_errors) - 1,
        "measured_saving_mean": statistics.mean(savings),
        "measured_saving_std": statistics.stdev(savings) if len(savings) > 1 else 0.0,
        "train_seconds_mean": statistics.mean(r["wall_clock_s"] for r in runs),
    }


def _full(
    data: TaskData, models: list[str], seeds: int, epochs: int, train_size: int, configs: list[dict], out: Path
) -> dict:
    report: dict[str, Any] = {"epochs": epochs, "seeds": seeds, "models": {}}
    for model_name in models:
        task = _task_of(model_name)
        baseline, runs = [], [[] for _ in configs]
        for seed in range(seeds):  # seed by seed, so a drift of the machine's speed hits every setting alike
            baseline.append(_run(task, data, "baseline", {}, seed, epochs, train_size))
            for config, config_runs in zip(configs, runs):
                config_runs.append(_run(task, data, "freezeout", config, seed, epochs, train_size))
        steps = baseline[0]["steps"]
        report["train_size"] = baseline[0]["train_size"]
        predict = Predictor(model_name, _first_batch(task, data))
        report["models"][model_name] = {
            "steps": steps,
            "baseline": _summary(baseline, baseline),
            "freezeout": [
                {**config, **_summary(config_runs, baseline), **predict(steps, **config)}
                for config, config_runs in zip(configs, runs)
            ],
        }
    _plot(report, out / "freezeout_saving_vs_error.png")
    report["plot"] = str(out / "freezeout_saving_vs_error.png")
    return report


def _plot(report: dict, path: Path) -> None:
    plt = pyplot()
    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), dpi=110, squeeze=False)
    markers = {("linear", True): "o", ("linear", False): "s", ("cubic", True): "^", ("cubic", False): "D"}
    for ax, (name, entry) in zip(axes[0], models.items()):
        base_err = 100 * (1 - entry["baseline"]["test_accuracy_mean"])
        ax.axhline(base_err, color="grey", ls="--", lw=1, label="baseline")
        ax.axhline(base_err * 1.03, color="grey", ls=":", lw=1, label="baseline + 3 % relative")
        for row in entry["freezeout"]:
            key = (row["strategy"], row["scale_lr"])
            label = f"{row['strategy']} {'scaled' if row['scale_lr'] else 'unscaled'} t0={row['t0']}"
            ax.errorbar(
                100 * row["measured_saving_mean"],
                100 * (1 - row["test_accuracy_mean"]),
                xerr=100 * row["measured_saving_std"],
                yerr=100 * row["test_accuracy_std"],
                fmt=markers[key],
                ms=6,
                capsize=2,
                label=label,
                alpha=0.85 if row["t0"] == 0.8 else 0.5,
            )
        ax.set_xlabel("measured wall-clock saving (%)")
        ax.set_ylabel("test error (%)")
        ax.set_title(f"FreezeOut on Fashion-MNIST: {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run_freezeout_bench(
    quick: bool,
    *,
    models: str = "resnet-cnn,densenet-bc",
    seeds: int = 3,
    epochs: int = 3,
    train_size: int = 6000,
    t0s: str = "0.5,0.8",
    configs: str = "all",
    steps: int = 48,
    repeats: int = 2,
    out: str = "runs/bench-freezeout",
) -> dict[str, Any]:
    """The benchmark entry point; options come from ``layerwise bench freezeout --set key=value``."""
    task = get_task("fashion-mnist")
    data = task.load_data(None, False)
    names = [m for m in models.split(",") if m]
    unknown = [m for m in names if m not in DEPTHS]
    if unknown or not names:
        raise ValueError(f"models: unknown {unknown}; choose from {sorted(DEPTHS)}")
    if quick:  # the first model only (the CNN by default)
        return _quick(data, names[0], steps, repeats)
    if configs == "default":
        settings = [dict(DEFAULT)]
    elif configs == "all":
        settings = [
            {"t0": float(t0), "strategy": strategy, "scale_lr": scale}
            for strategy, scale, t0 in product(("linear", "cubic"), (True, False), str(t0s).split(","))
        ]
    elif configs == "scaled":  # the t0 sweep: both spacings with the paper's scaled LRs
        settings = [
            {"t0": float(t0), "strategy": strategy, "scale_lr": True}
            for strategy, t0 in product(("linear", "cubic"), str(t0s).split(","))
        ]
    else:
        raise ValueError(f"configs: 'all' (4 strategies x t0s), 'scaled' (2 x t0s) or 'default', got {configs!r}")
    return _full(data, names, seeds, epochs, train_size, settings, Path(out))
