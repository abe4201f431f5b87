"""Training cases for the checkpoint/resume test: ``python tests/resume_case.py CASE first|second DIR``.

``first`` trains ``HALF`` steps and saves model + optimizer + technique state with ``torch.save``;
``second`` (a new process) builds everything afresh, loads that checkpoint, trains ``HALF`` more
steps and saves the parameters. :func:`straight` trains ``2 * HALF`` steps in one go.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

import layerwise
from layerwise import (
    LISA,
    FreezeOut,
    Freezer,
    GradualUnfreezing,
    HiDLR,
    LayerwiseLR,
    Multirate,
    RandomSubsetMultirate,
    SecantLR,
    TempBalance,
    recipes,
)
from layerwise.tasks.lora import peft_lora

HALF = 7
TOTAL = 2 * HALF
LISA_SEED = 1  # its draws over the run reach all three sampled groups


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.mid = nn.Linear(4 * 16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(torch.relu(self.mid(x.flatten(1))))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def build(case: str, partition: str = "layers"):
    """(model, optimizer, technique objects with state_dict) for ``case``.

    ``partition="coarse"`` groups the same model into ``features`` and ``head`` instead of layers.
    """
    torch.manual_seed(0)
    model = Net()
    if case.startswith("peft-"):  # a PEFT LoRA model (adapters on `mid`, `head` saved), the paper's groups
        case, model = case.removeprefix("peft-"), peft_lora(model, targets=("mid",), r=2, head=("head",))
        part = layerwise.by_lora(model, rest="head")
    elif partition == "coarse":
        part = layerwise.by_patterns(model, {"^(conv|bn|mid)": "features", "^head": "head"})
    else:
        part = layerwise.by_layer(model, sample_input=torch.zeros(2, 1, 4, 4))
    if case == "llr":
        opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
        schedule = recipes.build("llr", len(part), policy=recipes.make_policy("onecycle"))
        return model, opt, {"sched": LayerwiseLR(opt, TOTAL, schedule=schedule)}
    if case == "freezeout":
        opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
        return model, opt, {"freezeout": FreezeOut(model, opt, TOTAL, t0=0.3, strategy="linear")}
    if case == "unfreezing":
        opt = torch.optim.Adam(part.param_groups(lr=0.01))
        return model, opt, {"unfreezing": GradualUnfreezing(Freezer(model, opt), every=3)}
    if case == "multirate":
        opt = Multirate.from_partition(part, fast=["head"], lr=0.3, k=3, momentum=0.9, weight_decay=1e-3)
        return model, opt, {}
    if case == "hidlr":
        opt = HiDLR(torch.optim.AdamW(part.param_groups(lr=0.01)), update_every=2, clip=(0, 0.1), model=model)
        return model, opt, {}
    if case == "random-subsets":
        probabilities = {model.mid.weight: 0.5, model.conv.weight: 0.8}
        opt = RandomSubsetMultirate(model.parameters(), lr=0.05, k=3, probabilities=probabilities, momentum=0.9)
        return model, opt, {}
    if case == "secant":
        opt = SecantLR(torch.optim.SGD(part.param_groups(lr=0.05), momentum=0.9), mode="line", clip=(0, 0.5))
        return model, opt, {}
    if case == "muon":  # Muon (the conv reshaped, the hidden Linear) and AdamW, under FreezeOut
        opt = layerwise.muon_split(part)
        return model, opt, {"freezeout": FreezeOut(model, opt, TOTAL, t0=0.3, strategy="linear")}
    if case == "lisa":  # 1 of the groups before the head trains per period of 3 steps: all three by the end
        opt = torch.optim.AdamW(part.param_groups(lr=0.01))
        return model, opt, {"lisa": LISA(model, opt, gamma=1, period=3, always_on=["head"], seed=LISA_SEED)}
    if case == "tempbalance":  # spectral multipliers (recomputed every 3 steps) on a cosine LayerwiseLR
        opt = torch.optim.SGD(part.param_groups(lr=0.1), momentum=0.9)
        balance = TempBalance(opt, every=3, follow=True, min_eigs=2)
        return model, opt, {"tempbalance": balance, "sched": LayerwiseLR(opt, TOTAL, policy=layerwise.Cosine())}
    raise ValueError(f"case: unknown {case!r}")


PEFT_CASES = ("peft-llr", "peft-freezeout", "peft-unfreezing", "peft-multirate", "peft-hidlr", "peft-secant")
CASES = (
    "llr",
    "freezeout",
    "unfreezing",
    "multirate",
    "hidlr",
    "random-subsets",
    "secant",
    "muon",
    "lisa",
    "tempbalance",
)
ALL_CASES = (*CASES, *PEFT_CASES)


def take_step(model, opt, x: torch.Tensor, y: torch.Tensor) -> None:
    """One standard training step (with the loss closure Hi-DLR probes)."""
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    if isinstance(opt, HiDLR):
        opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    else:
        opt.step()


def train(model, opt, techniques, start: int, count: int) -> None:
    model.train()
    for step in range(start, start + count):
        take_step(model, opt, *_batch(step))
        for technique in techniques.values():
            technique.step()


def straight(case: str) -> list[torch.Tensor]:
    model, opt, techniques = build(case)
    train(model, opt, techniques, 0, TOTAL)
    return [t.detach().clone() for t in model.state_dict().values()]


def main(case: str, phase: str, directory: str) -> None:
    model, opt, techniques = build(case)
    checkpoint = Path(directory) / "checkpoint.pt"
    if phase == "first":
        train(model, opt, techniques, 0, HALF)
        state = {"model": model.state_dict(), "opt": opt.state_dict()}
        state.update({name: t.state_dict() for name, t in techniques.items()})
        torch.save(state, checkpoint)
        return
    state = torch.load(checkpoint)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    for name, technique in techniques.items():
        technique.load_state_dict(state[name])
    train(model, opt, techniques, HALF, HALF)
    torch.save([t.detach().clone() for t in model.state_dict().values()], Path(directory) / "final.pt")


if __name__ == "__main__":  # resume_case.py CASE[,CASE...] PHASE DIR: each case in DIR/CASE
    cases, phase, root = sys.argv[1:4]
    for name in cases.split(","):
        main(name, phase, str(Path(root) / name))
