"""Fashion-MNIST from its IDX files (Debian package ``dataset-fashion-mnist``).

Examples:
    >>> from layerwise.tasks.fashion_mnist import load_fashion_mnist
    >>> (x_train, y_train), (x_test, y_test) = load_fashion_mnist()  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["DEFAULT_DIR", "INSTALL_HINT", "data_dir", "load_fashion_mnist", "read_idx"]

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = (
    "Fashion-MNIST not found. Install it with:\n"
    "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
    "(it puts the IDX files under /usr/share/datasets/fashion-mnist), or point "
    "LAYERWISE_FASHION_MNIST / --data at a directory holding train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]."
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but holds {len(data) - offset}")
    return np.frombuffer(data, dtype, offset=offset).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{directory / stem}[.gz] is missing.\n{INSTALL_HINT}")


def data_dir(directory: str | Path | None = None) -> Path:
    """The directory to read: the argument, else ``$LAYERWISE_FASHION_MNIST``, else the Debian path."""
    return Path(directory or os.environ.get("LAYERWISE_FASHION_MNIST") or DEFAULT_DIR)


def load_fashion_mnist(
    directory: str | Path | None = None,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Train and test splits as float images (N, 1, 28, 28), standardized, and int64 labels."""
    root = data_dir(directory)
    splits = []
    for split in ("train", "test"):
        images_file, labels_file = (_find(root, stem) for stem in _FILES[split])
        images = read_idx(images_file)
        labels = read_idx(labels_file)
        if images.ndim != 3 or labels.shape != (images.shape[0],):
            raise ValueError(f"{root}: {split} images {images.shape} and labels {labels.shape} disagree")
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        splits.append((x, torch.from_numpy(labels.astype(np.int64))))
    mean, std = splits[0][0].mean(), splits[0][0].std()
    return tuple((x.sub_(mean).div_(std), y) for x, y in splits)  # type: ignore[return-value]
