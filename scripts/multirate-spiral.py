"""Multirate with slow biases on spiral data (the paper's App. D.2, Figs. A11-A13), 3 seeds.

The data: a 4-turn, 2-class spiral (adapted from Leimkuhler et al. 2019, as the paper says): for
class c, t ~ U(0, 1), angle 4 * 2 pi * t + c pi, radius t, plus Gaussian noise of std 0.02 on each
coordinate; 1,000 training and 1,000 test points. The paper gives the turns, the 5 % subsampling
(batches of 50), the single hidden layer perceptron, k = 5, h = 1 for Multirate and h = 0.2 for SGD;
the rest is our choice and said here: 500 ReLU units, momentum 0.9 for every method (Algorithm 1's
mu), 2,000 epochs (40,000 steps). (100 units or 400 epochs do not learn this spiral at all: about
55 % test accuracy for every method.)

Two step sizes: the paper's (SGD h = 0.2; Multirate h = 1, i.e. the weights' step h/k = 0.2) and
a quarter of it (0.05 and 0.25), where SGD learns this spiral. Compared at each: SGD; Multirate
with every bias slow (the weights step h/k every step, the biases h every k steps with linear
drift); only the input layer's biases slow; only the output biases slow; every bias slow with the
weights' step (h_S = h_F, Fig. A12's "freezing for k steps with the same step").

Run: .venv/bin/python scripts/multirate-spiral.py   (about 8 minutes on one core); prints a table and one JSON line.
"""

import json
import math
import statistics

import torch
from torch import nn

from layerwise import Multirate

EPOCHS, BATCH, HIDDEN, K = 2000, 50, 500, 5
STEPS = (0.2, 0.05)
"""The weights' step h/k (SGD's h); Multirate's h is K times it."""


def spiral(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    t = torch.rand(n, generator=g)
    angle = 4 * 2 * math.pi * t + math.pi * labels
    points = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], 1)
    return points + 0.02 * torch.randn(n, 2, generator=g), labels


def run(method: str, seed: int, train, test, step: float) -> float:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2))
    biases = [net[0].bias, net[2].bias]
    if method == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=step, momentum=0.9)
    else:
        slow = {"biases slow": biases, "input biases slow": [net[0].bias], "output biases slow": [net[2].bias]}
        slow["biases slow, same step"] = biases
        chosen = slow[method]
        fast = [p for p in net.parameters() if all(p is not q for q in chosen)]
        same = {"slow_lr": step} if method.endswith("same step") else {}
        opt = Multirate(fast, chosen, lr=K * step, k=K, momentum=0.9, **same)
    order = torch.Generator().manual_seed(1000 + seed)
    x, y = train
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), BATCH):
            index = perm[i : i + BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[index]), y[index]).backward()
            opt.step()
    with torch.no_grad():
        return float((net(test[0]).argmax(1) == test[1]).float().mean())


def main() -> None:
    torch.set_num_threads(1)
    train, test = spiral(1000, 0), spiral(1000, 1)
    methods = ["sgd", "biases slow", "input biases slow", "output biases slow", "biases slow, same step"]
    results = {
        f"{m} (h/k = {step})": [run(m, seed, train, test, step) for seed in range(3)] for step in STEPS for m in methods
    }
    print("| method | test accuracy (mean ± std, 3 seeds) |\n| --- | ---: |")
    for m, values in results.items():
        print(f"| {m} | {100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f} % |")
    print(json.dumps({"results": results, "epochs": EPOCHS, "batch": BATCH, "hidden": HIDDEN, "k": K}))


if __name__ == "__main__":
    main()
