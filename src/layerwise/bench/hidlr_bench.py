"""``layerwise bench hidlr``: Hi-DLR's cost and the paper's reproductions.

Quick (timing only): the Fashion-MNIST CNN, split into K groups, trains the same seeded batches
with its plain optimizer and wrapped in :class:`HiDLR` (probing every ``phi`` steps), alternating
blocks of steps through the shared loop (:func:`~layerwise.tasks.loop.seeded_loop`);
``relative_speed`` is the ratio of median step times, next to the paper's bound
``1 / (1 + 4K / (3 phi))`` and the prediction from this machine's timed forward pass.
Full: the ellipse and Beale+Rosenbrock functions (App. A.1), NAM synthetic regression
(App. B.3, the ``nam-synthetic`` task through the shared loop) and LoRA fine-tuning of MiniLM on
tweet sentiment (:mod:`.hidlr_lora`), each against the paper's grid of uniform learning rates and
Hi-ULR, with plots of the loss and of each group's LR. These are the paper's HiDLR options (fixed
``phi``, the anchored fit...), which ``layerwise compare``'s ``hidlr`` method does not all take;
its defaults against a baseline are ``layerwise compare --task nam-synthetic --methods baseline,hidlr``.

Examples:
    $ layerwise bench hidlr --quick --json
    $ layerwise bench hidlr --set problems=toys,nam      # default: cost,toys,nam,lora
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from ..compare.methods import HIDLR_PROBING, Setup
from ..compare.runner import train_step
from ..groups import by_depth_buckets
from ..hidlr import HiDLR
from ..plotting import pyplot
from ..tasks import Task, TaskData, get_task, make_optimizer
from ..tasks.base import split_size
from ..tasks.hidlr_problems import TOYS, grid, hidlr_variants, nam_synthetic_data
from ..tasks.loop import Batch, evaluate, loader_options, seeded_batches_of, seeded_loop
from ..tasks.models import ResNetCNN
from ..training import progress_bar, steps_per_epoch
from .hidlr_lora import lora_comparison

__all__ = ["run_hidlr_bench"]

NAM_GRID = (5e-4, 7e-4, 1e-3, 3e-3, 5e-3, 7e-3, 1e-2)
"""The paper's uniform learning rates for NAM synthetic regression (App. B.3)."""


def _batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[..., torch.Tensor]:
    """The batch's loss closure; ``loss(fraction)`` is the loss of its first examples (Hi-DLR's sub-batch probes)."""

    def loss(fraction: float = 1.0) -> torch.Tensor:
        n = math.ceil(len(y) * fraction)
        return nn.functional.cross_entropy(model(x[:n]), y[:n])

    return loss


def _stepper(task: Task, model: nn.Module, opt: torch.optim.Optimizer, closure: bool) -> Callable[[Batch], Any]:
    """The shared loop's step: the runner's step of ``opt`` on the task's loss (``closure``: Hi-DLR's probes)."""
    setup = Setup(opt, wants_closure=closure)
    return lambda batch: train_step(model, setup, task, batch.data)


_MALLINFO2_FIELDS = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
_LIBC.mallinfo2.restype = _MallInfo2


def _allocated() -> int:
    """Bytes glibc's malloc has handed out now (heap and mmapped chunks): torch's CPU tensors included."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


class _PeakAfterEachOp(TorchDispatchMode):
    """Reads the allocated bytes after every aten op, keeping the largest rise above the start."""

    def __enter__(self):
        self.start, self.peak = _allocated(), 0
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, _allocated() - self.start)
        return out


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the CPU memory ``fn`` allocates beyond what was allocated when it started: glibc's
    count of allocated bytes, read after every aten op (CPU tensors on glibc; on a GPU use
    ``torch.cuda.max_memory_allocated``)."""
    with _PeakAfterEachOp():  # the first use of a dispatch mode allocates for itself: not measured
        torch.zeros(1).add_(1)
    with _PeakAfterEachOp() as mode:
        fn()
    return mode.peak


QUICK_VARIANTS = ("plain", "phi", "adaptive")
"""The cost variants ``--quick`` times (the rest are timed by the full run; memory is measured for all)."""


def _cost(
    K: int,
    phi: int,
    cycles: int,
    repeats: int,
    max_interval: int = HIDLR_PROBING["max_interval"],
    *,
    only: tuple[str, ...] | None = None,
    warm_blocks: int = 2,
) -> dict[str, Any]:
    adaptive = {**HIDLR_PROBING, "max_interval": max(max_interval, phi)}
    task = get_task("fashion-mnist")
    train = task.load_data(None, True).train
    batch = task.batch_size
    steps = adaptive["max_interval"] * cycles  # whole intervals of the adaptive variant at its cap
    *_, first = next(seeded_batches_of(train, batch, seed=0, steps=1, **loader_options(task)))
    torch.manual_seed(0)
    variants = {
        "plain": None,
        "phi": {},
        "phi_step": {"direction": "step"},
        "phi_reuse": {"prefix_reuse": "allow"},
        "adaptive": adaptive,
        "adaptive_no_reuse": {**adaptive, "prefix_reuse": False},
        "adaptive_half_batch": {**adaptive, "probe_fraction": 0.5},
    }
    models = {name: ResNetCNN() for name in variants}
    for model in models.values():
        model.load_state_dict(models["plain"].state_dict())
    opts = {}
    for name, options in variants.items():
        part = by_depth_buckets(models[name], K, sample_input=torch.zeros(2, 1, 28, 28))
        base = torch.optim.SGD(part.param_groups(lr=task.lr), momentum=0.9, nesterov=True, weight_decay=5e-4)
        opts[name] = base if options is None else HiDLR(base, update_every=phi, model=models[name], **options)

    def block(name: str) -> float:  # the same seeded batches every block
        step = _stepper(task, models[name], opts[name], closure=name != "plain")
        return seeded_loop(train, batch, step, seed=0, steps=steps, **loader_options(task)) / steps

    timed = [name for name in variants if only is None or name in only]
    times: dict[str, list[float]] = {name: [] for name in timed}
    with progress_bar((warm_blocks + repeats) * len(timed), "hidlr cost blocks", True, unit="block") as bar:
        for name in timed:  # warm-up: the adaptive interval grows toward its cap
            for _ in range(warm_blocks):
                block(name)
                if bar is not None:
                    bar.update(1)
        for _ in range(repeats):  # alternate, so drifts of the machine hit all alike
            for name in timed:
                times[name].append(block(name))
                if bar is not None:
                    bar.update(1)
    x, y = first
    forward = []
    with torch.no_grad():
        for _ in range(repeats * 2):
            start = time.perf_counter()
            nn.functional.cross_entropy(models["phi"](x), y)
            forward.append(time.perf_counter() - start)
    ms = {name: statistics.median(t) for name, t in times.items()}
    fwd = statistics.median(forward)
    base = ms["plain"]
    speeds = {
        "relative_speed": "phi",
        "relative_speed_step_and_restore": "phi_step",
        "relative_speed_adaptive": "adaptive",
        "relative_speed_prefix_reuse": "phi_reuse",
        "relative_speed_adaptive_no_reuse": "adaptive_no_reuse",
        "relative_speed_adaptive_half_batch": "adaptive_half_batch",
    }
    report = {key: base / ms[name] for key, name in speeds.items() if name in ms}
    if "phi_reuse" in ms:
        stats = opts["phi_reuse"].stats
        report["prefix_reused_share"] = round(stats["prefix_reused"] / max(1, stats["forward_passes"]), 3)
    return {
        **report,
        "bound": 1.0 / (1.0 + 4 * K / (3 * phi)),
        "variants": timed,
        "adaptive_options": adaptive,
        "adaptive_interval": opts["adaptive"].interval,
        "adaptive_probe_rounds": opts["adaptive"].stats["probe_rounds"],
        "phi_probe_rounds": opts["phi"].stats["probe_rounds"],
        "K": K,
        "phi": phi,
        "predicted_from_timed_forward": base / (base + 4 * K / phi * fwd),
        "base_step_ms": round(base * 1e3, 2),
        "hidlr_step_ms": round(ms["phi"] * 1e3, 2),
        "adaptive_step_ms": round(ms["adaptive"] * 1e3, 2),
        "probe_forward_ms": round(fwd * 1e3, 2),
        "steps_per_block": steps,
        "repeats": repeats,
        "model": "resnet-cnn",
        "batch_size": batch,
        "accepted": opts["phi"].stats["accepted"],
        "rejected": opts["phi"].stats["rejected"],
        **_memory(models, opts, first),
    }


def _memory(models: dict[str, nn.Module], opts: dict[str, Any], batch: tuple) -> dict[str, int]:
    """Peak bytes a probing ``step`` allocates beyond a plain ``step`` plus one forward of the loss
    (what every probe needs anyway), both after the same backward; the gradient pass is outside."""

    def measured(name: str) -> int:
        opt, loss = opts[name], _batch_loss(models[name], *batch)
        opt.zero_grad()
        loss().backward()
        if name == "plain":

            def step() -> None:
                opt.step()
                with torch.no_grad():
                    loss()

            return peak_bytes(step)
        opt.next_probe = opt.step_count  # this step probes
        return peak_bytes(lambda: opt.step(loss))

    floor = measured("plain")
    param_bytes = sum(p.numel() * p.element_size() for p in models["phi"].parameters() if p.requires_grad)
    return {
        "peak_extra_bytes": measured("phi") - floor,
        "peak_extra_bytes_step_and_restore": measured("phi_step") - floor,
        "param_bytes": param_bytes,
    }


def _toy(name: str, iterations: int, start_lr: float) -> dict[str, Any]:
    toy = TOYS[name]

    accepted: dict[bool, int] = {}

    def run(lr: float, groups: int, hidlr: bool, anchored: bool = False) -> tuple[list[float], list[list[float]]]:
        x, y = (nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in toy.start)
        params = [{"params": [x]}, {"params": [y]}] if groups == 2 else [{"params": [x, y]}]
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=lr)
        if hidlr:
            opt = HiDLR(opt, update_every=1, gamma=0.0, anchored=anchored)

        def loss() -> torch.Tensor:
            return toy.loss(x, y)

        losses, lrs = [float(loss().detach())], []
        for _ in range(iterations):
            opt.zero_grad()
            loss().backward()
            opt.step(loss)
            losses.append(float(loss().detach()))
            lrs.append([g["lr"] for g in opt.param_groups])
        if hidlr and groups == 2:
            accepted[anchored] = opt.stats["accepted"]
        return losses, lrs

    uniform = {lr: run(lr, 1, False)[0] for lr in grid(1e-5, 12)}
    best = min(uniform, key=lambda lr: _finite(uniform[lr][-1]))
    hi_ulr, ulr_lrs = run(start_lr, 1, True)
    hi_dlr, dlr_lrs = run(start_lr, 2, True)
    anchored, _ = run(start_lr, 2, True, anchored=True)
    first_below = next((i for i, v in enumerate(hi_dlr) if v < 1e-10), None)
    return {
        "hi_dlr_anchored_final_loss": anchored[-1],
        "hi_dlr_anchored_iterations_to_1e-10": next((i for i, v in enumerate(anchored) if v < 1e-10), None),
        "accepted_fits": {"free intercept": accepted[False], "anchored": accepted[True]},
        "iterations": iterations,
        "best_uniform_lr": best,
        "best_uniform_final_loss": uniform[best][-1],
        "hi_ulr_final_loss": hi_ulr[-1],
        "hi_dlr_final_loss": hi_dlr[-1],
        "hi_dlr_iterations_to_1e-10": first_below,
        "hi_dlr_lrs_final": dlr_lrs[-1],
        "target_met": hi_dlr[-1] <= uniform[best][-1] and first_below is not None and first_below <= 3,
        "_curves": {"uniform": uniform, "hi_ulr": hi_ulr, "hi_dlr": hi_dlr, "dlr_lrs": dlr_lrs, "ulr_lrs": ulr_lrs},
    }


def _finite(value: float) -> float:
    return value if value == value and value != float("inf") else float("inf")


def _nam_run(task: Task, data: TaskData, epochs: int, lr: float, mode: str, seed: int, **options: Any) -> dict:
    """One NAM run through the shared loop: ``mode`` is uniform, hi-ulr or hi-dlr; ``options`` go to :class:`HiDLR`.

    Hi-DLR's groups are the task's partition (the bias, then one per feature network); the others train
    one group. After every epoch: the training MSE on the whole train split, and each group's LR.
    """
    torch.manual_seed(seed)
    model = task.make_model()
    if mode.startswith("hi-dlr"):
        groups = task.partition_of(model).param_groups(lr=lr)
    else:
        groups = [{"params": list(model.parameters()), "lr": lr}]
    opt: torch.optim.Optimizer = make_optimizer(task, groups)
    if mode != "uniform":
        opt = HiDLR(opt, **options)
    per_epoch = steps_per_epoch(split_size(data.train), task.batch_size)
    curve: list[float] = []
    lrs: list[list[float]] = []

    def after(batch: Batch, loss: torch.Tensor, seconds: float) -> None:
        if (batch.step + 1) % per_epoch == 0:
            curve.append(evaluate(model, data.train, task)["loss"])
            lrs.append([g["lr"] for g in opt.param_groups])

    step = _stepper(task, model, opt, closure=mode != "uniform")
    model.train()
    seconds = seeded_loop(
        data.train, task.batch_size, step, seed=seed, steps=epochs * per_epoch, after=after, **loader_options(task)
    )
    return {
        "final_train_loss": curve[-1],
        "test_loss": evaluate(model, data.test, task)["loss"],
        "seconds": seconds,
        "stats": opt.stats if isinstance(opt, HiDLR) else None,
        "_curve": curve,
        "_lrs": lrs,
    }


def _nam(epochs: int, phi: int, gamma: float, start_lr: float, seed: int) -> dict[str, Any]:
    """The paper's grid; Hi-ULR and Hi-DLR as published; clipped to the grid's top LR; and Hi-DLR
    with this library's ``joint_scale`` and ``per_group`` on top of the clip."""
    task = get_task("nam-synthetic")
    data = TaskData(nam_synthetic_data(3000, seed=seed), nam_synthetic_data(1000, seed=seed + 100))
    runs = {f"uniform {lr:g}": _nam_run(task, data, epochs, lr, "uniform", seed) for lr in NAM_GRID}
    best = min(runs, key=lambda k: _finite(runs[k]["final_train_loss"]))
    variants = hidlr_variants(phi, gamma, max(NAM_GRID))
    for name, (mode, options) in variants.items():
        runs[name] = _nam_run(task, data, epochs, start_lr, mode, seed, **options)
    best_loss = runs[best]["final_train_loss"]
    return {
        "epochs": epochs,
        "phi": phi,
        "gamma": gamma,
        "start_lr": start_lr,
        "clip": [0.0, max(NAM_GRID)],
        "best_uniform": best,
        "best_uniform_final_train_loss": best_loss,
        "runs": runs,
        "target_met": {k: _finite(runs[k]["final_train_loss"]) <= best_loss for k in runs if k.startswith("hi-")},
    }


def _strip(report: Any) -> Any:
    """Drop the private curve entries (kept for plots) from a report."""
    if isinstance(report, dict):
        return {k: _strip(v) for k, v in report.items() if not k.startswith("_")}
    return report


def _plot_toys(toys: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(2, len(toys), figsize=(6 * len(toys), 8), dpi=110, squeeze=False)
    for col, (name, result) in enumerate(toys.items()):
        curves = result["_curves"]
        ax = axes[0][col]
        top = 10 * curves["hi_dlr"][0]

        def shown(losses: list[float], top: float = top) -> list[float]:  # diverged runs leave the plot
            return [min(max(v, 1e-16), 10 * top) if v == v else 10 * top for v in losses]

        for lr, losses in curves["uniform"].items():
            ax.plot(shown(losses), color="0.75", lw=0.8, label="uniform LR grid" if lr == 1e-5 else None)
        ax.plot(shown(curves["hi_ulr"]), color="tab:blue", label="Hi-ULR")
        ax.plot(shown(curves["hi_dlr"]), color="tab:red", label="Hi-DLR")
        ax.set_ylim(1e-16, top)
        ax.set(yscale="log", xlabel="iteration", ylabel="loss", title=f"{name}: loss")
        ax.legend()
        ax = axes[1][col]
        lrs = curves["dlr_lrs"]
        for g, label in enumerate(("x", "y")):
            ax.plot([row[g] for row in lrs], label=f"Hi-DLR lr_{label}")
        ax.plot([row[0] for row in curves["ulr_lrs"]], ls="--", color="black", lw=0.8, label="Hi-ULR lr")
        ax.axhline(result["best_uniform_lr"], color="0.5", ls=":", label="best uniform LR")
        ax.set(yscale="log", xlabel="iteration", ylabel="learning rate", title=f"{name}: learning rates")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_runs(report: dict[str, Any], path: Path, title: str, lr_run: str, names: list[str] | None = None) -> None:
    plt = pyplot()
    fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(13, 4.5), dpi=110)
    colors = {"hi-ulr": "tab:blue", "hi-dlr": "tab:red"}
    for name, run in report["runs"].items():
        method, _, variant = name.partition(" ")
        if method in colors:
            style = {"color": colors[method], "lw": 1.6, "ls": {"": "-", "clip": "--"}.get(variant, ":")}
        else:
            style = {"color": "0.7", "lw": 0.8}
        ax_loss.plot(run["_curve"], label=name, **style)
    start = min(run["_curve"][0] for run in report["runs"].values())
    ax_loss.set_ylim(top=3 * start)  # a diverged run leaves the plot instead of squashing it
    ax_loss.set(yscale="log", xlabel="epoch" if "epochs" in report else "step", ylabel="training loss", title=title)
    ax_loss.legend(fontsize=7, ncol=2)
    lrs = report["runs"][lr_run]["_lrs"]
    labels = names or [f"group {g}" for g in range(len(lrs[0]))]
    for g, label in enumerate(labels):
        ax_lr.plot([row[g] for row in lrs], label=label, lw=1)
    ax_lr.set(
        yscale="log",
        xlabel="epoch" if "epochs" in report else "step",
        ylabel="learning rate",
        title=f"{lr_run}: LR per group",
    )
    ax_lr.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_hidlr_bench(
    quick: bool = False,
    K: int = 2,
    phi: int = 8,
    cycles: int | None = None,
    repeats: int | None = None,
    problems: str = "cost,toys,nam,lora",
    nam_epochs: int = 100,
    nam_phi: int = 2,
    gamma: float = 0.9,
    lora_steps: int = 150,
    max_interval: int = HIDLR_PROBING["max_interval"],
    out: str = "runs/bench-hidlr",
) -> dict[str, Any]:
    """The benchmark entry point; options come from ``layerwise bench hidlr --set key=value``."""
    logging.getLogger("layerwise.hidlr").setLevel(logging.ERROR)  # rejections are counted in the report
    if quick:
        return _cost(K, phi, cycles or 1, repeats or 1, max_interval, only=QUICK_VARIANTS, warm_blocks=1)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = [p.strip() for p in problems.split(",") if p.strip()]
    unknown = sorted(set(wanted) - {"cost", "toys", "nam", "lora"})
    if unknown:
        raise ValueError(f"problems: unknown {unknown}; choose from cost, toys, nam, lora")
    report: dict[str, Any] = _cost(K, phi, cycles or 2, repeats or 11, max_interval) if "cost" in wanted else {}
    if "toys" in wanted:
        toys = {name: _toy(name, 100, 1e-3) for name in TOYS}
        _plot_toys(toys, out_dir / "hidlr_toys.png")
        report["toys"] = _strip(toys)
    if "nam" in wanted:
        nam = _nam(nam_epochs, nam_phi, gamma, 1e-3, 0)
        names = ["beta", *(f"f{k + 1}" for k in range(10))]
        _plot_runs(nam, out_dir / "hidlr_nam.png", "NAM synthetic: training MSE", "hi-dlr clip+joint+per-group", names)
        report["nam"] = _strip(nam)
    if "lora" in wanted:
        lora = lora_comparison(lora_steps, gamma=gamma)
        _plot_runs(
            lora,
            out_dir / "hidlr_lora.png",
            "MiniLM LoRA, tweets: training loss",
            "hi-dlr",
            ["lora_A", "lora_B", "head"],
        )
        report["lora"] = _strip(lora)
    report["plots"] = sorted(str(p) for p in out_dir.glob("hidlr_*.png"))
    return report
