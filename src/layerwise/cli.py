"""The ``layerwise`` command.

Subcommands:
    schedule RECIPE   show a schedule before training (JSON and/or PNG plot)
    bench NAME        run a named benchmark; with --json the last stdout line is its JSON
    train             one training run of a task under a layer-wise schedule
    compare           train with several techniques side by side at equal cost (with no --task: the main job)
    plot RUN_DIR      draw the per-group telemetry of a finished run

Examples:
    $ layerwise schedule llr --groups 3 --steps 100 --start 2,1,0.5 --end 0.5,1,2 \\
          --windows 0-0.1,0-1,0-1 --json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import recipes

__all__ = ["main"]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def _count(minimum: int):
    """An argparse type: an int >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}")
        return value

    return parse


def _number(*, positive: bool):
    """An argparse type: a finite number > 0 (``positive``) or >= 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if positive else '>='} 0, got {text!r}")
        return value

    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _windows(text: str) -> list[tuple[float, float]]:
    windows = []
    for item in text.split(","):
        parts = item.strip().split("-")
        if len(parts) != 2:
            raise argparse.ArgumentTypeError(f"expected windows like 0-0.1,0-1 (start-end), got {item!r}")
        try:
            windows.append((float(parts[0]), float(parts[1])))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected numbers in window {item!r}") from exc
    return windows


def _add_schedule(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schedule", help="show every group's LR over a run (JSON, PNG)")
    p.add_argument("recipe", help="; ".join(f"{name}: {text}" for name, text in recipes.RECIPES.describe()))
    where = p.add_mutually_exclusive_group()
    where.add_argument("--groups", type=int, help="number of anonymous groups (default 4)")
    where.add_argument("--model", help="a built-in model whose layers are the groups (resnet-cnn, transformer, mlp)")
    p.add_argument("--steps", type=int, required=True, help="number of steps in the run")
    p.add_argument("--lr", type=float, default=1.0, help="base learning rate (default 1.0)")
    p.add_argument("--policy", default="constant", help=f"global policy: {', '.join(sorted(recipes.POLICIES))}")
    p.add_argument("--warmup", type=float, default=0.0, help="linear warm-up, fraction of training")
    p.add_argument("--ratio", type=float, help="discriminative: ratio between neighbouring groups (2.6)")
    p.add_argument("--lo", type=float, help="discriminative: first group's multiplier (with --hi)")
    p.add_argument("--hi", type=float, help="discriminative: last group's multiplier (with --lo)")
    p.add_argument("--start", type=_floats, help="llr: per-group start multipliers, e.g. 2,1,0.5")
    p.add_argument("--end", type=_floats, help="llr: per-group end multipliers, e.g. 0.5,1,2")
    p.add_argument("--windows", type=_windows, help="llr: per-group windows, e.g. 0-0.1,0-1,0-1")
    p.add_argument("--first-peak", type=float, help="staggered: first group's 1cycle peak (fraction)")
    p.add_argument("--last-peak", type=float, help="staggered: last group's 1cycle peak (fraction)")
    p.add_argument("--t0", type=float, help="freezeout: first group's freeze point, fraction (default 0.8)")
    p.add_argument("--strategy", help="freezeout: linear or cubic spacing of freeze points (default cubic)")
    p.add_argument(
        "--scale-lr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="freezeout: start group i at lr / t_i (default on)",
    )
    p.add_argument("--depth", type=int, help="with --model: groups are the modules at this depth (default: layers)")
    p.add_argument(
        "--measure",
        action="store_true",
        help="with --model: also time steps with frozen prefixes here and predict the saving from them",
    )
    p.add_argument("--json", action="store_true", help="print the schedule as one JSON object")
    p.add_argument("--plot", type=Path, help="write a PNG plot of every group's LR")


def _recipe_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("ratio", "lo", "hi", "start", "end", "windows", "first_peak", "last_peak", "t0", "strategy", "scale_lr")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _model_partition(args: argparse.Namespace):
    from .groups import by_block, by_layer
    from .tasks.models import build_model

    model, sample = build_model(args.model)
    if args.depth is None:
        return model, sample, by_layer(model, sample_input=sample)
    return model, sample, by_block(model, depth=args.depth, sample_input=sample)


def _savings(args: argparse.Namespace, model, sample, partition, frozen_at: list[int | None]) -> dict[str, Any]:
    """A freezing schedule's predicted savings on the built-in model (:func:`~layerwise.cost.predict_saving`)."""
    from .cost import group_flops, predict_saving, prefix_step_times, train_fractions

    fractions = train_fractions(frozen_at, args.steps)
    batch = torch.randn(64, *sample.shape[1:]) if sample.is_floating_point() else sample[:1].repeat(32, 1)
    flops = group_flops(model, partition, batch[:1])
    strategy = (args.strategy or "cubic") if args.recipe == "freezeout" else None
    if not args.measure:
        return predict_saving(fractions, flops, strategy=strategy)
    if fractions != sorted(fractions):
        raise ValueError("--measure: groups must freeze in data-flow order for a timed prediction")
    with torch.no_grad():
        classes = model(batch[:1]).shape[-1]
    target = torch.randint(0, classes, (len(batch),))
    times = prefix_step_times(model, partition.param_groups(), (batch, target))
    cached = prefix_step_times(model, partition.param_groups(), (batch, target), cached=True)
    return {
        **predict_saving(fractions, flops, strategy=strategy, step_times=times, cached_step_times=cached),
        "prefix_step_ms": [round(t * 1e3, 3) for t in times],
    }


def _check_writable_file(flag: str, path: Path) -> None:
    """Refuse, before any work, a file path under a file or whose name is a directory."""
    if path.is_dir():
        raise ValueError(f"{flag}: {path} is a directory; give a file name like {path / 'schedule.png'}")
    for folder in path.parents:
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{flag}: {folder} is a file, not a directory")


def _schedule(args: argparse.Namespace) -> int:
    if args.plot:
        _check_writable_file("--plot", Path(args.plot))
    if args.steps < 1:
        raise ValueError(f"--steps: must be >= 1, got {args.steps}")
    if not args.lr >= 0 or args.lr == float("inf"):
        raise ValueError(f"--lr: must be finite and >= 0, got {args.lr}")
    if not 0 <= args.warmup < 1:
        raise ValueError(f"--warmup: must be a fraction of training in [0, 1) (some must follow it), got {args.warmup}")
    if args.model:
        model, sample, partition = _model_partition(args)
        names = list(partition.names)
    else:
        if args.depth is not None or args.measure:
            raise ValueError("--depth and --measure need --model")
        count = 4 if args.groups is None else args.groups
        if count < 1:
            raise ValueError(f"--groups: must be >= 1, got {count}")
        names = [f"group{g}" for g in range(count)]
    policy = recipes.make_policy(args.policy, args.warmup) if args.policy != "constant" or args.warmup else None
    schedule = recipes.build(args.recipe, len(names), policy=policy, **_recipe_options(args))
    table = args.lr * schedule.table(args.steps, len(names))
    frozen_at = schedule.zero_from(args.steps, len(names))
    report: dict[str, Any] = {"groups": names, "steps": args.steps, "lr": table.tolist(), "frozen_at": frozen_at}
    if args.model and any(at is not None for at in frozen_at):
        report.update(_savings(args, model, sample, partition, frozen_at))
    if args.plot:
        from .plotting import plot_schedule

        plot_schedule(table, names, args.plot, frozen_at=frozen_at, title=f"{args.recipe} ({args.policy})")
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report))
        return 0
    if not args.plot:
        for name, row, at in zip(names, table, frozen_at):
            frozen = "" if at is None else f"  frozen from step {at}"
            print(
                f"{name:>24}  start {row[0]:.4g}  min {row.min():.4g}  max {row.max():.4g}  end {row[-1]:.4g}{frozen}"
            )
    labels = {
        "predicted_saving_paper": "the paper's eq. (2)-(3)",
        "predicted_saving_authors": "the authors' code (x 1.3 for linear)",
        "predicted_saving_paper_cached": "the paper's, with a FrozenPrefixCache serving every frozen forward",
        "predicted_saving_timed": "timed frozen prefixes",
        "predicted_saving_timed_cached": "timed, with a warm FrozenPrefixCache",
    }
    for key, label in labels.items():
        if key in report:
            print(f"predicted saving, {label}: {100 * report[key]:.1f} % of training wall-clock")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from .bench.suite import BENCHES

    p = sub.add_parser("bench", help="run a benchmark and print its results")
    p.add_argument("name", help=f"one of: {', '.join(sorted(BENCHES))}")
    p.add_argument("--quick", action="store_true", help="a smaller, faster version")
    p.add_argument("--json", action="store_true", help="end stdout with one JSON line of the results")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a bench option (repeatable)")
    p.add_argument("--out", type=Path, help="where a bench that writes files puts them (its option out=)")


def _bench(args: argparse.Namespace) -> int:
    from .bench.suite import run_bench

    options = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    if args.out is not None:
        options["out"] = str(args.out)
    result = run_bench(args.name, quick=args.quick, **options)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a task once under a layer-wise schedule")
    p.add_argument("--task", default="fashion-mnist", help="a registered task or PATH.py:FACTORY (fashion-mnist)")
    p.add_argument("--recipe", default="llr", help=f"one of: {', '.join(sorted(recipes.RECIPES))}")
    p.add_argument("--policy", default="onecycle", help=f"one of: {', '.join(sorted(recipes.POLICIES))}")
    p.add_argument("--epochs", type=int, help="epochs (default: the task's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a slice of the data and one epoch")
    p.add_argument("--data", help="directory with the task's data files")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="where result.json and lr.png go")


def _train(args: argparse.Namespace) -> int:
    from .bench.train import train
    from .plotting import plot_schedule

    result = train(
        _train_task(args.task),
        recipe=args.recipe,
        policy=args.policy,
        epochs=args.epochs,
        seed=args.seed,
        quick=args.quick,
        data_dir=args.data,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    plot = plot_schedule(
        result.pop("lr_by_group"),
        result["groups"],
        args.out / "lr.png",
        title=f"{result['task']}: {args.recipe} x {args.policy}",
    )
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(
        f"{result['task']} | {args.recipe} x {args.policy} | {result['epochs']} epoch(s), {result['steps']} steps, "
        f"{len(result['groups'])} groups\n"
        + ("" if result["test_accuracy"] is None else f"  test accuracy {result['test_accuracy']:.4f} ")
        + f"  test loss {result['test_loss']:.4f}   "
        f"final train loss {result['final_train_loss']:.4f}\n"
        f"  wall-clock {result['wall_clock_s']:.1f} s   median step {result['step_time']['median_ms']:.1f} ms\n"
        f"  wrote {args.out / 'result.json'} and {plot}"
    )
    return 0


def _train_task(spec: str) -> Any:
    """``--task`` resolved as compare resolves it (an unknown name: one error naming both forms)."""
    from .tasks import resolve_task

    try:
        return resolve_task(spec)
    except ValueError as err:
        raise ValueError(f"--{err}" if str(err).startswith("task: ") else str(err)) from None


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train a task with several techniques side by side at equal cost (the main job)")
    _add_comparison_flags(p, "default: the main job, both regimes (from scratch and fine-tuning)")
    p.add_argument("--study", help="deprecated: `layerwise study NAME` (runs until the next release)")
    p.add_argument(
        "--lr-sweep", type=_floats, metavar="F,F,...", help="deprecated: `layerwise sweep --factors F,F,...`"
    )
    p.add_argument(
        "--tune-baseline", type=_floats, metavar="F,F,...", help="deprecated: `layerwise tune --factors F,F,...`"
    )
    p.add_argument(
        "--tasks",
        metavar="A,B,...",
        help="one comparison per task (each its own baseline, budget and target), then AlgoPerf's summary over them",
    )
    p.add_argument(
        "--list", action="store_true", help="list the tasks and methods (with --task: also its partition) and exit"
    )


_FACTOR_COMMANDS = {
    "sweep": (
        "lr_sweep",
        "train every method at the task's LR times each factor, the metric against it",
        "LR factors (e.g. 0.01,0.1,1,10): every method trains at the task's LR times each",
        "required: a sweep runs one task",
    ),
    "tune": (
        "tune_baseline",
        "tune the baseline's LR first, then compare every method at the best one's LR",
        "the baseline alone at the task's LR times each factor (e.g. 0.3,1,3), with this comparison's seeds "
        "and budget; every method then at the best one's LR (the tuning runs and their cost in OUT/tune)",
        "required: it tunes one comparison's baseline",
    ),
}
"""The commands that run one comparison over LR factors: each one's ``compare`` mode (the old flag's
destination), help, ``--factors`` help and ``--task`` note."""


def _add_factor_commands(sub: argparse._SubParsersAction) -> None:
    """``layerwise sweep`` and ``layerwise tune``: ``compare``'s one-comparison flags and ``--factors``."""
    for name, (mode, about, factors, task_note) in _FACTOR_COMMANDS.items():
        p = sub.add_parser(name, help=about)
        p.add_argument("--factors", type=_floats, required=True, metavar="F,F,...", help=factors)
        _add_comparison_flags(p, task_note)
        modes = {"study": None, "lr_sweep": None, "tune_baseline": None, "tasks": None, "list": False}
        p.set_defaults(**{**modes, "factors_mode": mode})


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="a built-in study: a fixed set of variants on fixed tasks, judged paired")
    p.add_argument("name", choices=("llr",), help="llr: Smith's layer-LR experiment (docs: verdicts)")
    p.add_argument("--seeds", type=_count(2), default=3, help="seeds per variant (default 3)")
    p.add_argument("--epochs", type=_count(1), help="epochs per run (default 2)")
    p.add_argument("--train-size", type=_count(1), help="train on the first N examples (default 10000)")
    p.add_argument("--test-size", type=_count(0), help="evaluate on the first N test examples (0: all; default 2000)")
    p.add_argument(
        "--margin",
        type=float,
        metavar="M",
        help="equivalent: within +-M accuracy points of the reference (default 0.5)",
    )
    p.add_argument("--quick", action="store_true", help="a slice of the data and a short budget")
    p.add_argument("--out", type=Path, help="output directory (default runs/study-NAME)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_comparison_flags(p: argparse.ArgumentParser, task_default: str) -> None:
    """The flags of one comparison (``compare``, ``sweep``, ``tune``); ``task_default`` ends ``--task``'s help."""
    p.add_argument(
        "--task",
        help="a registered task (see compare --list), PATH.py:FACTORY (a function returning a layerwise.tasks.Task) "
        f"or hf:DIR (a Hugging Face sequence classifier saved in DIR, fine-tuned on --data); {task_default}",
    )
    p.add_argument("--data", type=Path, help="with --task hf:DIR: the labelled texts, a .csv, .jsonl or .parquet file")
    p.add_argument("--text-column", help="with --data: the column holding the texts (default text)")
    p.add_argument("--label-column", help="with --data: the column holding the labels (default label)")
    p.add_argument(
        "--test-fraction",
        type=float,
        help="with --data: the share of every class held out for evaluation (default 0.2; a fixed split)",
    )
    p.add_argument("--max-length", type=int, help="with --data: tokens per text, longer ones truncated (default 128)")
    p.add_argument("--methods", help="comma-separated methods (default: every one that fits the task's regime)")
    p.add_argument(
        "--seeds",
        metavar="N|auto[:MAX]",
        help="seeds per method (default 1; the main job: each regime's own; the llr study: 3), or auto: 3, then "
        "one more to every undecided method (and the baseline) until decided or MAX (default 10)",
    )
    p.add_argument(
        "--max-minutes", type=float, metavar="M", help="with --seeds auto: start no seed round after M minutes"
    )
    p.add_argument(
        "--max-runs",
        type=int,
        metavar="N",
        help="with --seeds auto: at most N runs in all (at least the first round: 3 seeds of every method); "
        "the seeds go to the methods nearest a decision",
    )
    p.add_argument("--epochs", type=_count(1), help="the baseline's epochs (default: the task's)")
    p.add_argument("--train-size", type=_count(1), help="train on the first N examples (default: the task's budget)")
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        help="every method's forwards (training, Hi-DLR's probes, evaluation) in float32 or under bfloat16 autocast "
        "(default: the task's, fp32); needs --task",
    )
    p.add_argument(
        "--clip-grad-norm",
        type=_number(positive=True),
        metavar="N",
        help="clip every method's gradients to this total norm before its optimizer steps; needs --task",
    )
    p.add_argument(
        "--accumulate",
        type=_count(1),
        metavar="K",
        help="every method's batches in K micro-batches, their gradients accumulated before one step; needs --task",
    )
    p.add_argument("--test-size", type=_count(0), help="evaluate on the first N test examples (0: all; default 5000)")
    p.add_argument(
        "--policy", default="cosine", choices=sorted(recipes.POLICIES), help="global LR policy (default cosine)"
    )
    p.add_argument(
        "--budget",
        default="time",
        choices=("time", "steps"),
        help="time (default): every method trains for the baseline's wall-clock; steps: for the task's epochs",
    )
    p.add_argument(
        "--budget-seconds", type=_number(positive=True), help="with --budget time: the training budget in seconds"
    )
    p.add_argument(
        "--clock",
        metavar="wall|process",
        help="what times the runs and the budget: wall (default, elapsed seconds) or process (the training process's "
        "CPU seconds; CUDA events on a GPU), which other processes do not move; see docs/verdicts.md",
    )
    p.add_argument(
        "--eval-points", type=_count(1), default=None, help="test evaluations per run (default 10; 3 with --quick)"
    )
    p.add_argument("--target", type=_finite, help="time-to-target value (accuracy as a fraction, e.g. 0.85)")
    p.add_argument(
        "--target-tolerance",
        type=_number(positive=False),
        help="default target = baseline's final mean minus this (accuracy points, default 0.5; loss: percent, 1)",
    )
    p.add_argument(
        "--margin",
        type=float,
        metavar="M",
        help="equivalence margin: a method within +-M of the baseline is judged equivalent (accuracy points, "
        "default 0.5; a loss: its own units, no default)",
    )
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE", help="a method setting")
    p.add_argument("--quick", action="store_true", help="a slice of the data and a short budget")
    p.add_argument("--out", type=Path, help="output directory (default runs/compare or runs/study-NAME)")
    p.add_argument("--telemetry", type=_count(1), metavar="N", help="record per-group telemetry every N steps")
    p.add_argument(
        "--retime",
        action="store_true",
        help="rerun the finished runs an earlier invocation timed, so every time in the report is from this one",
    )
    p.add_argument(
        "--aa",
        action="store_true",
        help="also run the baseline a second time: its verdict against the baseline is the noise floor",
    )
    p.add_argument(
        "--no-correction",
        action="store_true",
        help="test each method against the baseline at 5 %% alone (default: Holm's correction over the methods)",
    )
    p.add_argument("--tensorboard", action="store_true", help="with --telemetry: also log it to OUT/tensorboard")
    p.add_argument(
        "--nproc",
        type=_count(1),
        metavar="N",
        help="train each run data-parallel on N local processes (gloo; DDP through layerwise.distributed.wrap), "
        "each on 1/N of every batch; under torchrun: its world size",
    )
    p.add_argument("--fsdp", action="store_true", help="with --nproc N or torchrun: shard with FSDP2 instead of DDP")
    _add_executor_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_executor_flags(p: argparse.ArgumentParser) -> None:
    """Where a comparison's runs train (docs/cluster.md)."""
    p.add_argument(
        "--executor",
        choices=("local", "ray", "slurm"),
        help="where the runs train: local (default: this process, one after another), ray or slurm (each run a "
        "job, a round's runs at once; needs layerwise[cluster]); see docs/cluster.md",
    )
    p.add_argument(
        "--cpus-per-run",
        type=_count(1),
        metavar="N",
        help="with --executor ray|slurm: CPUs (torch threads) per run (default 1)",
    )
    p.add_argument(
        "--gpus-per-run", type=_count(0), metavar="N", help="with --executor ray|slurm: GPUs per run (default 0)"
    )
    p.add_argument(
        "--ray-address",
        metavar="HOST:PORT|auto",
        help="with --executor ray: the cluster to run on (default: start Ray on this machine)",
    )
    p.add_argument("--slurm-partition", metavar="NAME", help="with --executor slurm: the partition of every job")
    p.add_argument(
        "--slurm-minutes", type=_count(1), metavar="M", help="with --executor slurm: each job's time limit (default 60)"
    )


def _executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """``executor`` when one other than local is asked for (each of its flags checked against it)."""
    from .compare.executors import executor_of

    executor = executor_of(
        args.executor,
        cpus_per_run=args.cpus_per_run,
        gpus_per_run=args.gpus_per_run,
        ray_address=args.ray_address,
        slurm_partition=args.slurm_partition,
        slurm_minutes=args.slurm_minutes,
    )
    return {} if executor is None else {"executor": executor}


def _print_list(chosen: Any = None) -> None:
    """The tasks and methods; with ``chosen`` (the ``--task``) also its partition."""
    from .compare import METHODS
    from .compare.methods import OPTIMIZER_USES
    from .tasks import REGIMES, TASKS

    print("tasks:")
    for name, task in TASKS.items():
        print(f"  {name:18} [{task.regime}] {task.description}")
    print("methods (default set per regime; a method left out still runs when named):")
    for name, method in METHODS.items():
        print(f"  {name:18} {method.description}; settings {dict(method.defaults)}")
        for regime in REGIMES:
            reason = method.not_default.get(regime)
            print(f"  {'':18}   {regime}: " + ("default" if reason is None else f"not default, {reason}"))
        if method.optimizer_use != "task":
            print(f"  {'':18}   optimizer: {OPTIMIZER_USES[method.optimizer_use]}")
        for engine, reason in method.not_parallel.items():
            print(f"  {'':18}   not with {'--fsdp' if engine == 'fsdp' else '--nproc'}: {reason}")
    if chosen is not None:
        _print_partition(chosen)


def _print_partition(task: Any) -> None:
    """The groups the task's partition makes of its model, in data-flow order, with their sizes."""
    from .tasks import resolve_task

    task = resolve_task(task)
    partition = task.partition_of(task.make_model())
    print(f"partition of {task.name} ({len(partition)} groups, input to output):")
    for group in partition:
        print(f"  {group.name:18} {len(group.params):4} tensors {group.numel:>12,} parameters")


_DEPRECATED_MODES = {
    "study": "layerwise study NAME",
    "lr_sweep": "layerwise sweep --factors F,F,... --task ...",
    "tune_baseline": "layerwise tune --factors F,F,... --task ...",
}
"""``compare``'s old mode flags and the commands that replace them (the flags run until the next release)."""


def _factors(args: argparse.Namespace) -> int:
    """``layerwise sweep`` / ``tune``: ``compare``'s one-task comparison in the mode the command names."""
    setattr(args, args.factors_mode, args.factors)
    return _compare(args)


def _study_command(args: argparse.Namespace) -> int:
    """``layerwise study NAME``."""
    from .compare.study import run_study

    sizes = {k: v for k, v in (("epochs", args.epochs), ("train_size", args.train_size)) if v is not None}
    if args.test_size is not None:
        sizes["test_size"] = args.test_size
    result = run_study(
        args.name,
        seeds=args.seeds,
        out=args.out,
        margin=args.margin,
        quick=args.quick,
        progress=not args.no_progress,
        **sizes,
    )
    print(result["text"])
    return 0


def _factors_flag(args: argparse.Namespace, old: str) -> str:
    """How this command names its LR factors: ``--factors`` (``sweep``, ``tune``) or the old ``compare`` flag."""
    return "--factors" if args.command in ("sweep", "tune") else old


def _compare(args: argparse.Namespace) -> int:
    if args.command == "compare":
        for dest, command in _DEPRECATED_MODES.items():
            if getattr(args, dest):
                flag = "--" + dest.replace("_", "-")
                print(
                    f"layerwise compare: {flag} is deprecated, use `{command}` (the flag works until the next release)",
                    file=sys.stderr,
                )
    _check_data_flags(args)
    if args.list:
        _print_list(None if args.task is None else _task_of(args, _out_of(args)))
        return 0
    _check_compare_flags(args)
    if args.study:
        return _study(args)
    options = _compare_options(args)
    methods = _methods_of(args)
    if args.lr_sweep is not None:
        return _lr_sweep(args, methods, options)
    if args.tasks is not None:
        return _main_job(args, methods, options, tasks=args.tasks.split(","))
    if args.task is None:
        return _main_job(args, methods, options)
    return _one_comparison(args, methods, options)


_DATA_FLAGS = ("data", "text_column", "label_column", "test_fraction", "max_length")
"""The flags of ``--task hf:DIR`` (read with ``--data``)."""


def _check_data_flags(args: argparse.Namespace) -> None:
    """``--task hf:DIR`` and ``--data`` (with its flags) go together."""
    from .tasks.hf_checkpoint import is_hf_task

    given = [name for name in _DATA_FLAGS if getattr(args, name) is not None]
    if is_hf_task(args.task) and args.data is None:
        raise ValueError(f"--task: {args.task} needs --data FILE (.csv, .jsonl or .parquet) to fine-tune on")
    if given and not is_hf_task(args.task):
        flag = "--" + given[0].replace("_", "-")
        raise ValueError(f"{flag}: reads a data file for --task hf:DIR only, got --task {args.task}")


def _out_of(args: argparse.Namespace) -> Path:
    """Where the comparison writes (the default per kind of comparison)."""
    return args.out or Path("runs/lr-sweep" if args.lr_sweep is not None else "runs/compare")


def _task_of(args: argparse.Namespace, out: Path) -> Any:
    """``--task`` as ``check_request`` takes it: the name or file spec, or the built ``hf:DIR`` task (its token
    ids cached in ``OUT/tokenized``; a note on stderr when its head is replaced)."""
    from .tasks import resolve_task
    from .tasks.hf_checkpoint import PREFIX, HFSpec, hf_task, is_hf_task

    task: Any = args.task
    if is_hf_task(args.task):
        given = {name: getattr(args, name) for name in _DATA_FLAGS[1:] if getattr(args, name) is not None}
        spec = HFSpec(Path(args.task[len(PREFIX) :]), args.data, out / "tokenized", **given)
        task, note = hf_task(spec)
        if note:
            print(f"layerwise compare: {args.task}: {note}", file=sys.stderr)
    stepping = {name: getattr(args, name) for name in _STEP_FLAGS if getattr(args, name) is not None}
    return dataclasses.replace(resolve_task(task), **stepping) if stepping else task


_STEP_FLAGS = ("precision", "clip_grad_norm", "accumulate")
"""The flags that set how every method steps (``Task`` fields of the same names)."""


def _check_compare_flags(args: argparse.Namespace) -> None:
    """The rules on how ``compare``'s flags combine that hold whatever it runs."""
    if args.tasks is not None:
        if args.task is not None or args.study or args.lr_sweep is not None:
            raise ValueError("--tasks: one comparison per task and a summary; drop --task, --study and --lr-sweep")
        from .compare.main_job import check_tasks

        check_tasks(args.tasks.split(","))
    stepping = [f"--{name.replace('_', '-')}" for name in _STEP_FLAGS if getattr(args, name) is not None]
    if stepping and args.task is None:
        raise ValueError(f"{stepping[0]}: set for one comparison's task; needs --task")
    if args.tune_baseline is not None:
        from .compare.sweep import check_factors

        check_factors(args.tune_baseline, _factors_flag(args, "--tune-baseline"))
        if args.task is None or args.study or args.lr_sweep is not None:
            raise ValueError(
                f"{_factors_flag(args, '--tune-baseline')}: tunes one comparison's baseline; needs --task, "
                "without --study or --lr-sweep"
            )
    if _launched() and args.tasks is not None:
        raise ValueError("torchrun: launch one comparison (--task) per torchrun; --tasks runs them in turn")
    if _launched() and (args.study or args.lr_sweep is not None or args.task is None):
        raise ValueError(
            "torchrun: launch one comparison (--task) per torchrun; the main job, --study and --lr-sweep "
            "run data-parallel with --nproc N instead"
        )


def _parallel_options(args: argparse.Namespace) -> dict[str, Any]:
    """``nproc`` and ``fsdp`` when either is given."""
    return {"nproc": args.nproc, "fsdp": args.fsdp} if args.nproc is not None or args.fsdp else {}


def _common_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options every kind of comparison takes: the data's size, ``quick`` and progress bars."""
    given = {"epochs": args.epochs, "train_size": args.train_size}
    return {**{k: v for k, v in given.items() if v is not None}, "quick": args.quick, "progress": not args.no_progress}


def _compare_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`~layerwise.compare.compare`'s options from the flags (those not given left to its defaults)."""
    optional = {
        "budget_seconds": args.budget_seconds,
        "target": args.target,
        "target_tolerance": args.target_tolerance,
        "telemetry_every": args.telemetry,
        "margin": args.margin,
        "clock": args.clock,
    }
    options = {
        **_common_options(args),
        **{k: v for k, v in optional.items() if v is not None},
        **({} if args.seeds is None else {"seeds": args.seeds}),
        **({} if args.max_minutes is None else {"max_minutes": args.max_minutes}),
        **({} if args.max_runs is None else {"max_runs": args.max_runs}),
        "policy": args.policy,
        "retime": args.retime,
        "correction": not args.no_correction,
        "aa": args.aa,
        "budget": args.budget,
        **({} if args.eval_points is None else {"eval_points": args.eval_points}),  # else each regime's own
        "tensorboard": args.tensorboard,
        **_parallel_options(args),
        **_executor_options(args),
    }
    if args.test_size is not None:
        options["test_size"] = args.test_size or None
    return options


def _methods_of(args: argparse.Namespace) -> list[str] | None:
    """``--methods`` as a list (None: not given)."""
    if args.methods is None:
        return None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods:
        raise ValueError(f"--methods: names no method, got {args.methods!r}; see `layerwise compare --list`")
    return methods


_STUDY_FLAGS = ("--seeds", "--epochs", "--train-size", "--test-size", "--margin", "--quick", "--out", "--no-progress")
_STUDY_TAKES = frozenset({"command", "study", *(flag[2:].replace("-", "_") for flag in _STUDY_FLAGS)})
_COMPARE_DEFAULTS = {"policy": "cosine", "budget": "time"}


def _flags_given(args: argparse.Namespace, takes: frozenset[str]) -> list[str]:
    """The compare flags given on the command line (not at their default) outside ``takes``, as typed."""
    given = [
        dest
        for dest, value in vars(args).items()
        if dest not in takes and value not in (None, False, []) and _COMPARE_DEFAULTS.get(dest) != value
    ]
    return [f"--{dest.replace('_', '-')}" for dest in given]


def _study(args: argparse.Namespace) -> int:
    from .compare.request import parse_seeds
    from .compare.study import run_study

    if args.methods or args.set or args.telemetry or args.task:
        raise ValueError("--study: runs its own tasks and variants; drop --task, --methods, --set and --telemetry")
    if _parallel_options(args):
        raise ValueError("--study: runs in one process; drop --nproc and --fsdp")
    ignored = _flags_given(args, _STUDY_TAKES)
    if ignored:
        raise ValueError(f"--study: does not take {', '.join(ignored)} (it takes {', '.join(_STUDY_FLAGS)}); drop them")
    seeds, most = parse_seeds(args.seeds or 3)
    if most is not None:
        raise ValueError("--seeds: the llr study runs a fixed number of seeds; give a count")
    sizes = {} if args.test_size is None else {"test_size": args.test_size}
    result = run_study(args.study, seeds=seeds, out=args.out, margin=args.margin, **sizes, **_common_options(args))
    print(result["text"])
    return 0


def _lr_sweep(args: argparse.Namespace, methods: list[str] | None, options: dict[str, Any]) -> int:
    from .compare import parse_overrides
    from .compare.sweep import check_factors, lr_sweep

    check_factors(args.lr_sweep, _factors_flag(args, "--lr-sweep"))
    if args.task is None:
        raise ValueError(f"{_factors_flag(args, '--lr-sweep')}: needs --task (a sweep runs one task)")
    out = _out_of(args)
    result = lr_sweep(
        _task_of(args, out),
        methods,
        args.lr_sweep,
        settings=parse_overrides(args.set),
        out=out,
        **options,
    )
    print(f"\n{result['table']}\n\nwrote {result['paths']['markdown']} and {result['paths']['plot']}")
    return _failures(result["results"])


def _main_job(
    args: argparse.Namespace, methods: list[str] | None, options: dict[str, Any], tasks: list[str] | None = None
) -> int:
    """The main job's two regimes, or (``tasks``: ``--tasks``) one comparison per task; the summary over them."""
    from .compare import parse_overrides
    from .compare.main_job import run_main, run_tasks

    settings = parse_overrides(args.set)
    if tasks is None:
        result = run_main(out=args.out or Path("runs/compare"), methods=methods, settings=settings, **options)
    else:
        out = args.out or Path("runs/compare-tasks")
        result = run_tasks(tasks, out=out, methods=methods, settings=settings, **options)
    for section in result["sections"]:
        print(f"\n## {section['heading']}\n\n{section['answer']}\n\n{section['setting']}\n\n{section['table']}")
    print(f"\n## Over the tasks (AlgoPerf's summary)\n\n{result['summary']['table']}")
    print(f"\nwrote {result['paths']['markdown']} and {result['paths']['html']} ({result['minutes']:.1f} minutes)")
    return _failures(result["sections"])


def _one_comparison(args: argparse.Namespace, methods: list[str] | None, options: dict[str, Any]) -> int:
    from .compare import parse_overrides
    from .compare.session import check_request, run_request
    from .tasks import is_task_file

    if _launched():
        options["progress"] = options["progress"] and _rank() == 0
    out = _out_of(args)
    request = check_request(_task_of(args, out), methods, settings=parse_overrides(args.set), out=out, **options)
    if is_task_file(args.task):  # its data, loaded once, label-checked before anything is written
        request.task.load_data(None, request.config.quick)
    with _holding(out):
        if args.tune_baseline is not None:
            request = _tuned(request, args.tune_baseline, options)
        result = run_request(request)
    if result.get("follower"):  # a torchrun rank other than 0: rank 0 reports
        return 0
    paths = result["paths"]
    print(f"\n{result['answer']}\n\n{result['setting']}\n\n{result['table']}\n")
    print(f"wrote {paths['markdown']}, {paths['html']}, {len(paths['plots'])} plots, run records in {paths['runs']}")
    return _failures([result])


def _tuned(request: Any, factors: list[float], options: dict[str, Any]) -> Any:
    """The checked ``request`` (a :class:`~layerwise.compare.request.Request`) with the task at the LR
    ``--tune-baseline`` found best, and a note on the tuning."""
    from .compare.sweep import tune_baseline

    judging = ("aa", "target", "target_tolerance", "max_minutes", "max_runs", "correction", "tensorboard", "margin")
    kept = {k: v for k, v in options.items() if k not in judging}
    tuned = tune_baseline(request.task, factors, out=request.out, **kept)
    print(f"--tune-baseline: x{tuned.factor:g} kept (LR {tuned.task.lr:g})\n\n{tuned.table}\n")
    note = dataclasses.replace(request.options, note=tuned.note())
    return dataclasses.replace(request, task=tuned.task, options=note)


def _holding(out: Path):
    """The lock on ``out`` for this comparison (a torchrun follower writes nothing and takes none)."""
    from .compare.store import locked

    return nullcontext() if _launched() and _rank() != 0 else locked(out)


def _launched() -> bool:
    from .compare.parallel import launched_world

    return (launched_world() or 1) > 1


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def _failures(results: Sequence[dict[str, Any]]) -> int:
    """1 (with a line on stderr) when a run failed or a finished run could not be stored; else 0."""
    failed = sum(len(o["errors"]) for r in results for o in r["outcomes"].values())
    unsaved = sum(len(r.get("unsaved", ())) for r in results)
    if failed:
        print(f"layerwise compare: {failed} run(s) failed (see the table); rerun to retry them", file=sys.stderr)
    if unsaved:
        print(
            f"layerwise compare: {unsaved} finished run(s) could not be stored (they are in this report only)",
            file=sys.stderr,
        )
    return 1 if failed or unsaved else 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw the per-group telemetry of a finished run (heatmaps, lines)")
    p.add_argument("run_dir", type=Path, help="a directory with telemetry.json, or a compare --telemetry output")


def _plot(args: argparse.Namespace) -> int:
    from .plotting import plot_telemetry

    if not args.run_dir.is_dir():
        raise ValueError(f"run_dir: {args.run_dir} is not a directory")
    sources = []
    if (args.run_dir / "telemetry.json").is_file():
        path = args.run_dir / "telemetry.json"
        sources.append(("", path, _read_json(path)))
    for path in sorted((args.run_dir / "runs").glob("*.json")):
        record = _read_json(path)
        if isinstance(record, dict) and record.get("telemetry"):
            sources.append((path.stem, path, record["telemetry"]))
    if not sources:
        raise ValueError(
            f"run_dir: no telemetry in {args.run_dir}; record some with `layerwise compare --telemetry N --out DIR` "
            "or LayerMonitor(...).save(DIR / 'telemetry.json')"
        )
    for name, path, data in sources:
        try:
            paths = plot_telemetry(data, args.run_dir / "telemetry" / name, title=name)
        except (KeyError, TypeError, IndexError, AttributeError) as err:
            raise ValueError(
                f"run_dir: {path} is not LayerMonitor telemetry ({type(err).__name__}: {err}); "
                "expected the output of LayerMonitor.save or compare --telemetry"
            ) from None
        print(f"wrote {len(paths)} plots to {args.run_dir / 'telemetry' / name}")
    return 0


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"run_dir: {path} is not valid JSON ({err})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layerwise", description="Per-layer learning-rate control for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_schedule(sub)
    _add_bench(sub)
    _add_train(sub)
    _add_compare(sub)
    _add_factor_commands(sub)
    _add_study(sub)
    _add_plot(sub)
    args = parser.parse_args(argv)
    handlers = {
        "schedule": _schedule,
        "bench": _bench,
        "train": _train,
        "compare": _compare,
        "sweep": _factors,
        "tune": _factors,
        "study": _study_command,
        "plot": _plot,
    }
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"layerwise {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"layerwise {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"layerwise {args.command}: interrupted; finished runs are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
