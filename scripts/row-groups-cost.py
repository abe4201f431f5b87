"""What splitting a layer into row groups costs (`layerwise.by_rows`): training-step time of the
Fashion-MNIST ResNet with its 10-way head split into 10 row groups against the plain model, and of a
wide 1000 x 512 head, steps interleaved, median of repeats after warm-up. Prints one JSON line.

Run: .venv/bin/python scripts/row-groups-cost.py   (about 30 seconds)
"""

import json
import statistics
import time

import torch
from torch import nn

import layerwise
from layerwise.tasks.models import ResNetCNN


def step_time(model, opt, x, y, loss_fn):
    start = time.perf_counter()
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
    return time.perf_counter() - start


def compare(make, x, y, loss_fn, head, repeats=30):
    torch.manual_seed(0)
    plain, split = make(), make()
    split.load_state_dict(plain.state_dict())
    part = layerwise.by_rows(split, head)
    opts = {
        "plain": torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.01),
        "split": torch.optim.AdamW(part.param_groups(lr=1e-3), weight_decay=0.01),
    }
    models = {"plain": plain, "split": split}
    times = {name: [] for name in models}
    for i in range(repeats + 5):
        for name in ("plain", "split") if i % 2 else ("split", "plain"):
            t = step_time(models[name], opts[name], x, y, loss_fn)
            if i >= 5:
                times[name].append(t)
    plain_ms, split_ms = (statistics.median(times[n]) * 1e3 for n in ("plain", "split"))
    return {
        "plain_step_ms": round(plain_ms, 3),
        "split_step_ms": round(split_ms, 3),
        "ratio": round(split_ms / plain_ms, 4),
        "groups": len(part),
    }


x = torch.randn(128, 1, 28, 28)
y = torch.randint(0, 10, (128,))
report = {"resnet_10_rows": compare(ResNetCNN, x, y, nn.functional.cross_entropy, "fc")}
wide_x, wide_y = torch.randn(256, 512), torch.randint(0, 1000, (256,))
report["linear_1000_rows"] = compare(
    lambda: nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 1000)),
    wide_x,
    wide_y,
    nn.functional.cross_entropy,
    "2",
)
report["torch"] = torch.__version__
print(json.dumps(report))
