"""``layerwise bench gpu``: the speed claims at realistic sizes on one CUDA GPU, in one command.

Written to run the few minutes a GPU is lent for (about 5 minutes on an H200), it measures, with
``torch.backends.cudnn.benchmark`` on, bf16 autocast and every clock reading after a
``torch.cuda.synchronize``:

* ``freezeout``: FreezeOut's timed saving (step times with each frozen prefix, weighted by the
  default schedule's freeze points) next to the paper's FLOP prediction, on DenseNet-BC and a
  ResNet at batch 256, 3 x 32 x 32 inputs;
* ``multirate``: Multirate's speed-up (k = 4, the head fast) against eq. (6)'s limit on
  EfficientNet-Lite0 (timm's architecture) and MiniLM-L6 (its configuration), batch 128;
* ``hidlr``: Hi-DLR's relative speed at K = 2, phi = 8 (the paper's setting) and with the adaptive
  interval, on the ResNet;
* ``scheduler``: ``LayerwiseLR.step()``'s cost with 100 groups (a CPU cost, measured beside);
* the peak CUDA memory of each part.

Inputs are random tensors and the networks randomly initialised: timings need no data or
pretrained weights, so nothing has to travel to the GPU machine but this repository. ``tiny=True``
runs every part at toy sizes on the CPU (the test suite runs it, so the script cannot rot); without
it a machine with no CUDA is refused. Writes ``gpu.json`` into ``out``.

Examples:
    $ PYTHONPATH=src python3 -m layerwise.cli bench gpu --set out=$OUT      # on the GPU machine
    $ layerwise bench gpu --set tiny=true --json                            # anywhere, seconds
"""

from __future__ import annotations

import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cost import group_flops, predict_saving, prefix_step_times
from ..freezeout import freeze_times
from ..groups import by_depth_buckets, by_head
from ..hidlr import HiDLR
from ..multirate import Multirate
from ..tasks.models import DenseNetBC, ResNetCNN
from ..tasks.pretrained import TextClassifier
from .freezeout_bench import freezeout_groups
from .suite import scheduler_overhead

__all__ = ["run_gpu_bench"]


class _Autocast(nn.Module):
    """``module`` with its forward under bf16 autocast on CUDA (parameters and their names unchanged)."""

    def __init__(self, module: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.module, self.enabled = module, device.type == "cuda"

    def forward(self, *args: Any) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.enabled):
            return self.module(*args).float()


class _Clock:
    """Step timing and peak memory on one device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def median_step(self, step: Callable[[], object], count: int) -> float:
        times = []
        for _ in range(count):
            self.sync()
            start = time.perf_counter()
            step()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    @contextlib.contextmanager
    def peak_memory(self, into: dict[str, Any]) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        into["peak_cuda_mb"] = (
            round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1) if self.device.type == "cuda" else None
        )


def _images(batch: int, side: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, side, side, generator=g).to(device), torch.randint(0, 10, (batch,), generator=g).to(
        device
    )


def _freezeout(clock: _Clock, tiny: bool) -> dict[str, Any]:
    batch, side, repeats = (4, 16, 1) if tiny else (256, 32, 7)
    models = {  # FreezeOut's groups as in `bench freezeout`: DenseNet-BC's final BN trains with the classifier
        "densenet-bc": DenseNetBC(growth=4 if tiny else 12, layers_per_block=2 if tiny else 16, in_channels=3),
        "resnet-cnn": ResNetCNN(width=4 if tiny else 64, in_channels=3),
    }
    results = {}
    for name, net in models.items():
        x, y = _images(batch, side, clock.device)
        part = freezeout_groups(name, net, x[:2].cpu())
        flops = group_flops(net, part, x[:2].cpu())
        model = _Autocast(net.to(clock.device), clock.device)
        groups = part.param_groups()
        fractions = freeze_times(len(part))  # the default schedule: group i trains for t_i of the run
        entry: dict[str, Any] = {"groups": len(part), "batch_size": batch}
        with clock.peak_memory(entry):
            times = prefix_step_times(model, groups, (x, y), warmup=2, repeats=repeats, sync=clock.sync)
        saving = predict_saving(fractions, flops, step_times=times)
        entry.update(
            timed_saving=saving["predicted_saving_timed"],
            paper_saving=saving["predicted_saving_paper"],
            full_step_ms=round(times[0] * 1e3, 2),
            head_only_step_ms=round(times[-1] * 1e3, 2),
        )
        results[name] = entry
    return results


def _efficientnet(tiny: bool) -> nn.Module:
    if tiny:
        return ResNetCNN(width=4, in_channels=3)  # a stand-in: timm needs torchvision, absent here
    import timm  # on the GPU machine; the architecture only, randomly initialised

    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=10)


def _minilm(tiny: bool) -> tuple[nn.Module, int]:
    import transformers

    size = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if not tiny:  # all-MiniLM-L6-v2's configuration
        size = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
    config = transformers.BertConfig(vocab_size=30522, num_labels=3, **size)
    return TextClassifier(transformers.BertForSequenceClassification(config), trim=False), 3


def _multirate_speedup(clock: _Clock, model: nn.Module, x: Any, y: torch.Tensor, k: int, cycles: int) -> dict[str, Any]:
    full_model = copy.deepcopy(model)
    full = torch.optim.SGD(full_model.parameters(), lr=1e-3, momentum=0.9)
    part = by_head(model, sample_input=x[:2])
    multirate = Multirate.from_partition(part, fast=["head"], lr=1e-3 * k, k=k, momentum=0.9, model=model)

    def step(net: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(k):  # warm-up: one cycle each
        step(full_model, full)
        step(model, multirate)
    t_full = clock.median_step(lambda: step(full_model, full), k * cycles)
    cycle = [clock.median_step(lambda: step(model, multirate), 1) for _ in range(k * cycles)]
    refresh = [t for i, t in enumerate(cycle) if i % k == 0]
    fast = [t for i, t in enumerate(cycle) if i % k != 0]
    t_fast, t_slow = statistics.median(fast), statistics.median(refresh)
    return {
        "speedup": k * t_full / (t_slow + (k - 1) * t_fast),
        "limit": k * t_full / (t_full + (k - 1) * t_fast),
        "k": k,
        "full_step_ms": round(t_full * 1e3, 2),
        "fast_step_ms": round(t_fast * 1e3, 2),
        "refresh_step_ms": round(t_slow * 1e3, 2),
    }


def _multirate(clock: _Clock, tiny: bool) -> dict[str, Any]:
    batch, cycles = (4, 1) if tiny else (128, 6)
    results = {}
    x, y = _images(batch, 16 if tiny else 224, clock.device)
    entry: dict[str, Any] = {"batch_size": batch}
    with clock.peak_memory(entry):
        entry.update(
            _multirate_speedup(clock, _Autocast(_efficientnet(tiny).to(clock.device), clock.device), x, y, 4, cycles)
        )
    results["efficientnet-lite0"] = entry
    model, labels = _minilm(tiny)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30522, (batch, 16 if tiny else 128), generator=g).to(clock.device)
    y = torch.randint(0, labels, (batch,), generator=g).to(clock.device)
    entry = {"batch_size": batch, "sequence_length": ids.shape[1]}
    with clock.peak_memory(entry):
        entry.update(_multirate_speedup(clock, _Autocast(model.to(clock.device), clock.device), ids, y, 4, cycles))
    results["minilm"] = entry
    return results


def _hidlr(clock: _Clock, tiny: bool) -> dict[str, Any]:
    batch, steps, repeats = (4, 8, 1) if tiny else (256, 64, 5)
    x, y = _images(batch, 16 if tiny else 32, clock.device)
    torch.manual_seed(0)
    nets = {"plain": ResNetCNN(width=4 if tiny else 64, in_channels=3)}
    nets["phi8"], nets["adaptive"] = copy.deepcopy(nets["plain"]), copy.deepcopy(nets["plain"])
    opts: dict[str, torch.optim.Optimizer] = {}
    for name, net in nets.items():
        part = by_depth_buckets(net, 2, sample_input=x[:2].cpu())
        net.to(clock.device)
        base = torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9, nesterov=True, weight_decay=5e-4)
        options = {"max_interval": steps, "prefix_reuse": "allow"} if name == "adaptive" else {}
        opts[name] = base if name == "plain" else HiDLR(base, update_every=8, model=net, **options)
    models = {name: _Autocast(net, clock.device) for name, net in nets.items()}

    def block(name: str) -> None:
        model, opt = models[name], opts[name]

        def loss() -> torch.Tensor:
            return nn.functional.cross_entropy(model(x), y)

        for _ in range(steps):
            opt.zero_grad()
            loss().backward()
            opt.step(loss) if name != "plain" else opt.step()

    entry: dict[str, Any] = {"K": 2, "phi": 8, "batch_size": batch, "steps_per_block": steps}
    with clock.peak_memory(entry):
        for name in models:
            block(name)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(repeats):
            for name in models:
                times[name].append(clock.median_step(lambda name=name: block(name), 1))
    base = statistics.median(times["plain"])
    entry.update(
        relative_speed=base / statistics.median(times["phi8"]),
        relative_speed_adaptive=base / statistics.median(times["adaptive"]),
        bound=1.0 / (1.0 + 4 * 2 / (3 * 8)),
        base_step_ms=round(base / steps * 1e3, 3),
    )
    return entry


def run_gpu_bench(quick: bool = False, *, tiny: bool = False, out: str = "runs/bench-gpu") -> dict[str, Any]:
    """Every part on CUDA (or at toy sizes on the CPU with ``tiny``); writes ``out/gpu.json``."""
    if not tiny and not torch.cuda.is_available():
        raise ValueError(  # the CLI prints it as one line
            "bench gpu: no CUDA device here; it measures GPU speed (run it on a GPU machine), "
            "or pass --set tiny=true for the CPU smoke test"
        )
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    torch.backends.cudnn.benchmark = True
    clock = _Clock(device)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "bench": "gpu",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tiny": tiny,
        "amp": "bf16" if device.type == "cuda" else None,
    }
    for part, run in (("freezeout", _freezeout), ("multirate", _multirate), ("hidlr", _hidlr)):
        begun = time.perf_counter()
        report[part] = run(clock, tiny)
        report[part + "_seconds"] = round(time.perf_counter() - begun, 1)
    report["scheduler"] = scheduler_overhead(quick=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gpu.json").write_text(json.dumps(report, indent=2))
    return report
