"""Coming from fastai: fine_tune's freeze-then-unfreeze in any loop, in steps; or unfreeze one group at a time."""

import torch
from torch import nn

from layerwise.compare import setup

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))  # pretrained
x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
steps = 12

# "fine-tune": fastai's fine_tune (the head alone for a third of the run, then every group, LRs spread by layer)
# "gradual-unfreezing": ULMFiT's, one more group every few steps, the head first
run = setup(
    model,
    "gradual-unfreezing",
    optimizer="adamw",
    lr=1e-3,
    total_steps=steps,
    sample_input=x,
    regime="fine-tuning",
    until=0.5,
)
for step in range(steps):
    loss = nn.functional.cross_entropy(model(x), y)
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
    print(step, "frozen:", run.freezer.frozen)
