import gzip
import struct

import numpy as np
import pytest
import torch
from torch import nn

from layerwise.bench.timing import measure, peak_memory_mb
from layerwise.bench.train import train
from layerwise.tasks import TASKS, Task, TaskData, fashion_mnist, get_task, register_task


def write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_read_idx_round_trip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", images)
    write_idx(tmp_path / "b.gz", images, gz=True)
    assert np.array_equal(fashion_mnist.read_idx(tmp_path / "a"), images)
    assert np.array_equal(fashion_mnist.read_idx(tmp_path / "b.gz"), images)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        fashion_mnist.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes((tmp_path / "a").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        fashion_mnist.read_idx(tmp_path / "short")


def test_user_directory_and_missing_data_message(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)), gz=True)
    (x, y), (_xt, yt) = fashion_mnist.load_fashion_mnist(tmp_path)
    assert x.shape == (20, 1, 28, 28) and yt.shape == (10,) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-5  # standardized with the train statistics
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist.load_fashion_mnist(tmp_path / "empty")


def test_real_fashion_mnist_is_installed_and_loads():
    (x, y), (xt, _yt) = fashion_mnist.load_fashion_mnist()
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert sorted(torch.bincount(y).tolist()) == [6000] * 10


def tiny_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return Task(
        name="tiny",
        make_model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        sample_input=lambda: torch.zeros(1, 8),
        load_data=lambda data_dir, quick: TaskData((x, y), (x[:64], y[:64])),
        batch_size=32,
        epochs=3,
    )


def test_train_run_is_seeded_and_reports_everything():
    register_task(tiny_task())
    try:
        first = train("tiny", recipe="discriminative", policy="cosine", progress=False)
        second = train("tiny", recipe="discriminative", policy="cosine", progress=False)
    finally:
        TASKS.unregister("tiny")
    assert first["steps"] == 3 * 8 and first["groups"] == ["0", "2"]
    assert first["final_train_loss"] == second["final_train_loss"]  # same seed, same run
    assert first["test_accuracy"] > 0.8
    assert len(first["history"]) == 3
    lr = np.array(first["lr_by_group"])
    assert lr.shape == (2, 24)
    assert lr[0, 0] == pytest.approx(0.1 / 2.6) and lr[1, 0] == pytest.approx(0.1)
    assert first["memory"]["peak_rss_mb"] > 0


def test_train_with_freezeout_freezes_for_real():
    register_task(tiny_task())
    try:
        result = train(
            "tiny",
            recipe="freezeout",
            policy="constant",
            recipe_options={"t0": 0.5, "strategy": "linear"},
            progress=False,
        )
    finally:
        TASKS.unregister("tiny")
    # per param group (weights and biases split for weight decay); 24 steps, linear t0 = 0.5
    assert result["frozen_at"] == [12, 12, None, None]
    lr = np.array(result["lr_by_group"])
    assert lr[0, 12:].max() == 0.0 and lr[1, -1] > 0
    assert result["train_seconds"] <= result["wall_clock_s"]


def test_registry_rejects_unknowns():
    assert get_task("fashion-mnist").name == "fashion-mnist"
    with pytest.raises(ValueError, match="task"):
        get_task("imagenet")
    with pytest.raises(TypeError, match="task"):
        register_task({"name": "x"})


def test_measure_and_memory():
    calls = []
    stats = measure(lambda: calls.append(1), warmup=3, repeats=4, number=5)
    assert len(calls) == 3 + 4 * 5
    assert stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]
    with pytest.raises(ValueError):
        measure(lambda: None, repeats=0)
    assert peak_memory_mb()["peak_rss_mb"] > 10
