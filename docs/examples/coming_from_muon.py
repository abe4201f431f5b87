"""Coming from torch.optim.Muon: Muon on the hidden matrices, AdamW on the embedding, the head, biases and norms."""

import torch
from torch import nn

import layerwise

torch.manual_seed(0)
model = nn.Sequential(
    nn.Embedding(100, 16),
    nn.Flatten(),
    nn.Linear(16 * 8, 32),
    nn.LayerNorm(32),
    nn.ReLU(),
    nn.Linear(32, 32),
    nn.ReLU(),
    nn.Linear(32, 2),
)
tokens, y = torch.randint(0, 100, (16, 8)), torch.randint(0, 2, (16,))
steps = 4

# torch.optim.Muon(model.parameters()) raises on the biases and norms, and would orthogonalise the embedding and head
opt = layerwise.muon_split(model, sample_input=tokens)  # the head found by a traced forward
sched = layerwise.LayerwiseLR(opt, steps, policy=layerwise.Cosine())  # one schedule over both parts, by layer
for _ in range(steps):
    loss = nn.functional.cross_entropy(model(tokens), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
print([(g["name"], type(part).__name__) for part in opt.optimizers for g in part.param_groups])
