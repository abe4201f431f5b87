"""A training job shaped like a user's (BENCHMARKS.md, "A user-shaped job"): a map-style ``Dataset`` of
Fashion-MNIST images with random-crop augmentation (pad 2, crop 28, seeded per example), the small ResNet,
SGD, every forward under bfloat16 autocast.

    .venv/bin/layerwise compare --task scripts/user_shaped_task.py:make_task --seeds 3 --out runs/user-shaped
"""

import torch

from layerwise.tasks import Task, TaskData
from layerwise.tasks.fashion_mnist import load_fashion_mnist
from layerwise.tasks.models import ResNetCNN


class Images(torch.utils.data.Dataset):
    """The first ``n`` images of a Fashion-MNIST split, as ``(image, label)`` examples."""

    def __init__(self, split: int, n: int) -> None:
        images, labels = load_fashion_mnist()[split]
        self.images, self.labels = images[:n], labels[:n]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def random_crop(example: tuple[torch.Tensor, int], generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """Pad by 2 pixels, then crop 28x28 at a random offset drawn from ``generator``."""
    image, label = example
    dy, dx = torch.randint(0, 5, (2,), generator=generator).tolist()
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    return padded[:, dy : dy + 28, dx : dx + 28], label


def make_task() -> Task:
    return Task(
        name="user-shaped",
        description="Fashion-MNIST as a user holds it: a Dataset with random-crop augmentation, the small ResNet "
        "from scratch, SGD, bfloat16 autocast",
        make_model=ResNetCNN,
        sample_input=lambda: torch.zeros(2, 1, 28, 28),
        load_data=lambda data_dir, quick: TaskData(Images(0, 1280 if quick else 12800), Images(1, 2000)),
        train_transform=random_crop,
        precision="bf16",
        epochs=2,
        quick_epochs=1,
    )
