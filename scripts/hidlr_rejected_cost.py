"""What Hi-DLR costs when its fits are rejected: a small dropout CNN, as a newcomer would add it.

The network is pytorch/examples' MNIST CNN at a quarter of its width (two convolutions, dropout 0.25
and 0.5, Adadelta at lr 1.0), trained on Fashion-MNIST (``--data random`` when the IDX files are
missing). Four runs of the same batches: the plain optimizer, Hi-DLR with its defaults (a fixed
interval of 8 steps, the paper), the same with ``max_interval=128``, and Hi-DLR with ``layerwise
compare``'s ``hidlr`` settings (3 depth buckets, Phi 16 adapting up to 128, ``per_group``, ``clip``
10x the LR, ``prefix_reuse="allow"``). Prints, per run: probe rounds, forward passes of the probes,
accepted fits, rejections by reason, the final interval, Hi-DLR's warnings, and the time per step
(process CPU time on one thread, so other processes on a shared machine count less; wall time too)
relative to the plain optimizer.

    .venv/bin/python scripts/hidlr_rejected_cost.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import layerwise
from layerwise.tasks.fashion_mnist import load_fashion_mnist


def _model(dropout: bool) -> nn.Sequential:
    p1, p2 = (0.25, 0.5) if dropout else (0.0, 0.0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(p1),
        nn.Flatten(), nn.Linear(16 * 12 * 12, 32), nn.ReLU(), nn.Dropout(p2), nn.Linear(32, 10),
    )  # fmt: skip


def _data(kind: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "fashion":
        (x, y), _ = load_fashion_mnist()
        return x[:count], y[:count]
    g = torch.Generator().manual_seed(0)
    return torch.randn(count, 1, 28, 28, generator=g), torch.randint(0, 10, (count,), generator=g)


def _optimizer(name: str, model: nn.Module, sample: torch.Tensor) -> torch.optim.Optimizer:
    if name == "plain":
        return torch.optim.Adadelta(model.parameters(), lr=1.0)
    if name in ("hidlr-defaults", "hidlr-adaptive"):
        part = layerwise.by_layer(model, sample_input=sample)
        cap = 128 if name == "hidlr-adaptive" else None
        return layerwise.HiDLR(torch.optim.Adadelta(part.param_groups(lr=1.0)), max_interval=cap, model=model)
    part = layerwise.by_depth_buckets(model, 3, sample_input=sample)
    return layerwise.HiDLR(
        torch.optim.Adadelta(part.param_groups(lr=1.0)),
        update_every=16, max_interval=128, interval_tolerance=1.0, per_group=True, clip=(0.0, 10.0),
        prefix_reuse="allow", model=model,
    )  # fmt: skip


def _run(name: str, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, dropout: bool) -> dict:
    torch.manual_seed(0)
    model = _model(dropout)
    opt = _optimizer(name, model, x[:2])
    caught: list[str] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for step in range(steps):
            i = (step * batch) % (len(x) - batch)
            xb, yb = x[i : i + batch], y[i : i + batch]

            def loss_fn(xb=xb, yb=yb) -> torch.Tensor:
                return F.cross_entropy(model(xb), yb)

            opt.zero_grad()
            loss_fn().backward()
            if isinstance(opt, layerwise.HiDLR):
                opt.step(loss_fn)
            else:
                opt.step()  # a torch optimizer would run a closure again, forward and all
        caught = [str(w.message) for w in seen if "Hi-DLR" in str(w.message)]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    with torch.no_grad():
        out = {
            "method": name,
            "seconds_per_step": seconds / steps,
            "cpu_seconds_per_step": cpu_seconds / steps,
            "final_loss": float(loss_fn()),
        }
    if isinstance(opt, layerwise.HiDLR):
        stats = opt.stats
        out |= {
            "probe_rounds": stats["probe_rounds"],
            "forward_passes": stats["forward_passes"],
            "accepted": stats["accepted"],
            "rejections": {k: v for k, v in stats["rejections"].items() if v},
            "interval": stats["interval"],
            "warnings": caught,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--data", choices=("fashion", "random"), default="fashion")
    parser.add_argument("--no-dropout", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = _data(args.data, args.steps * args.batch + args.batch)
    _run("plain", x, y, 10, args.batch, True)  # warm-up
    runs = [
        _run(name, x, y, args.steps, args.batch, not args.no_dropout)
        for name in ("plain", "hidlr-defaults", "hidlr-adaptive", "hidlr-compare")
    ]
    plain, plain_cpu = runs[0]["seconds_per_step"], runs[0]["cpu_seconds_per_step"]
    for run in runs:
        run["relative_wall_per_step"] = round(run["seconds_per_step"] / plain, 3)
        run["relative_cpu_per_step"] = round(run["cpu_seconds_per_step"] / plain_cpu, 3)
    print(json.dumps({"steps": args.steps, "batch": args.batch, "data": args.data, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
