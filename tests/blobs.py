"""Three Gaussian blobs and a 3-layer MLP: the tiny task the comparison tests train; the helpers several
test files share (a split as a ``Dataset``, a task file in a folder)."""

from pathlib import Path

import torch
from torch import nn

from layerwise.tasks import Task, TaskData


def blobs(data_dir, quick):
    """320 points in 20 dimensions around three centres: 256 to train, 64 to test."""
    del data_dir, quick
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 20, generator=g) * 2
    labels = torch.randint(0, 3, (320,), generator=g)
    x = centers[labels] + torch.randn(320, 20, generator=g)
    return TaskData((x[:256], labels[:256]), (x[256:], labels[256:]))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def blobs_task(name: str, **overrides) -> Task:
    """The blobs task under ``name`` (2 epochs of batch 32 at LR 0.05), with ``overrides``."""
    fields = {
        "description": "three Gaussian blobs, a 3-layer MLP",
        "make_model": mlp,
        "sample_input": lambda: torch.zeros(2, 20),
        "load_data": blobs,
        "epochs": 2,
        "quick_epochs": 2,
        "batch_size": 32,
        "lr": 0.05,
        "weight_decay": 0.0,
    }
    return Task(name=name, **{**fields, **overrides})


class Examples(torch.utils.data.Dataset):
    """A split of tensors as a map-style ``Dataset`` of ``(x, y)`` examples."""

    def __init__(self, split):
        self.x, self.y = split

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def blobs_task_file(tmp_path: Path) -> Path:
    """A task file (``PATH:make``) building the ``proc-blobs`` task, as a user's own job is given."""
    path = tmp_path / "task.py"
    path.write_text(
        "from blobs import blobs_task\n\n"
        "def make():\n    return blobs_task('proc-blobs', batch_size=27, train_size=244)\n"
    )
    return path
