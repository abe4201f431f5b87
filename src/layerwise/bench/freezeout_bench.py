"""``layerwise bench freezeout``: FreezeOut's wall-clock saving and accuracy cost, measured.

Quick (timing only, the default setting): the foundation CNN trains the same steps on the
same batches as a uniform-cosine baseline and as FreezeOut in lockstep (one step of each in
turn, every step timed), and the measured saving sits beside the paper's FLOP prediction and
the prediction from step times timed here with frozen prefixes (round-robin over the prefixes).
Full: baseline vs the four strategies (linear/cubic x
scaled/unscaled) x t0 on the CNN and a DenseNet-BC, over several seeds, with test accuracy.

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

from ..cost import group_flops, predict_saving, prefix_step_times, train_fractions
from ..freezeout import FreezeOut
from ..groups import Partition, by_block
from ..plotting import pyplot
from ..scheduler import LayerwiseLR
from ..schedules import Cosine
from ..tasks import Task, TaskData, get_task, make_optimizer
from ..tasks.models import build_model, dense_layer_groups
from .train import optimizer_state_mb, train

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


def _run(model_name: str, data: TaskData, recipe: str, options: dict, seed: int, epochs: int) -> dict:
    policy = "constant" if recipe == "freezeout" else "cosine"
    result = train(
        _task_of(model_name),
        recipe=recipe,
        policy=policy,
        recipe_options=options,
        epochs=epochs,
        seed=seed,
        data=data,
        progress=False,
    )
    result.pop("lr_by_group")
    return result


def _lockstep(model_name: str, data: TaskData, steps: int, seed: int) -> dict[str, Any]:
    """Baseline and FreezeOut side by side on the same batches, one step each in turn, every step timed.

    Who goes first alternates, so a drift of the machine's speed hits both runs alike.
    """
    task = get_task("fashion-mnist")
    runs = {}
    for name in ("baseline", "freezeout"):
        torch.manual_seed(seed)
        model, sample = build_model(model_name)
        part = freezeout_groups(model_name, model, sample)
        groups = part.param_groups(lr=task.lr, weight_decay=task.weight_decay, no_decay=("bias", "norm"))
        opt = make_optimizer(task, groups)
        stepper = (
            LayerwiseLR(opt, steps, policy=Cosine()) if name == "baseline" else FreezeOut(model, opt, steps, **DEFAULT)
        )
        runs[name] = (model.train(), opt, stepper)
    x, y = data.train
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    batch = task.batch_size
    times: dict[str, list[float]] = {"baseline": [], "freezeout": []}
    for i in range(steps):
        index = order[(i * batch) % len(x) :][:batch]
        xb, yb = x[index], y[index]
        for name in ("baseline", "freezeout") if i % 2 == 0 else ("freezeout", "baseline"):
            model, opt, stepper = runs[name]
            start = time.perf_counter()
            loss = task.loss(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            stepper.step()
            times[name].append(time.perf_counter() - start)
    state_mb = {name: round(optimizer_state_mb(opt), 4) for name, (_, opt, _) in runs.items()}
    return {"times": times, "optimizer_state_mb_at_end": state_mb, "frozen": list(runs["freezeout"][2].frozen)}


def _quick(data: TaskData, model_name: str, steps: int, repeats: int) -> dict[str, Any]:
    batch = get_task("fashion-mnist").batch_size
    pred = Predictor(model_name, (data.train[0][:batch], data.train[1][:batch]))(steps, **DEFAULT)  # warms up too
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
    errors = [1 - r["test_accuracy"] for r in runs]
    base_errors = [1 - r["test_accuracy"] for r in baseline]
    savings = [1 - r["train_seconds"] / b["train_seconds"] for r, b in zip(runs, baseline)]
    return {
        "test_accuracy_mean": statistics.mean(r["test_accuracy"] for r in runs),
        "test_accuracy_std": statistics.stdev(r["test_accuracy"] for r in runs) if len(runs) > 1 else 0.0,
        "test_error_relative_to_baseline": statistics.mean(errors) / statistics.mean(base_errors) - 1,
        "measured_saving_mean": statistics.mean(savings),
        "measured_saving_std": statistics.stdev(savings) if len(savings) > 1 else 0.0,
        "train_seconds_mean": statistics.mean(r["train_seconds"] for r in runs),
    }


def _full(data: TaskData, models: list[str], seeds: int, epochs: int, configs: list[dict], out: Path) -> dict:
    report: dict[str, Any] = {"epochs": epochs, "train_size": len(data.train[0]), "seeds": seeds, "models": {}}
    for model_name in models:
        baseline, runs = [], [[] for _ in configs]
        for seed in range(seeds):  # seed by seed, so a drift of the machine's speed hits every setting alike
            baseline.append(_run(model_name, data, "constant", {}, seed, epochs))
            for config, config_runs in zip(configs, runs):
                config_runs.append(_run(model_name, data, "freezeout", config, seed, epochs))
        steps = baseline[0]["steps"]
        predict = Predictor(model_name, (data.train[0][:128], data.train[1][:128]))
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
    subset = TaskData((data.train[0][:train_size], data.train[1][:train_size]), data.test)
    return _full(subset, names, seeds, epochs, settings, Path(out))
