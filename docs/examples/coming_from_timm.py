"""Coming from timm: its layer-decay groups as a partition; the decay in every group's lr, so any loop applies it."""

import timm
import torch
from timm.optim import param_groups_layer_decay

import layerwise
from layerwise.compare import setup

torch.manual_seed(0)
model = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=2)
x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
steps, decay = 4, 0.75

part = layerwise.partition_from_timm_groups(model, param_groups_layer_decay(model, layer_decay=decay))
# timm's layer decay is discriminative LRs with ratio 1/decay: layer_0 (the embeddings) .. the head at the full lr
run = setup(
    model,
    "discriminative",
    optimizer="adamw",
    lr=1e-3,
    total_steps=steps,
    partition=part,
    policy="cosine",
    ratio=1 / decay,
)
first = {g["name"]: g["lr"] for g in run.optimizer.param_groups}  # the first step's LRs
print({name: f"{lr:.2e}" for name, lr in first.items()})
for _ in range(steps):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()
    run.scheduler.step()
