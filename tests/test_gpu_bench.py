"""``layerwise bench gpu``: its tiny mode runs every part on the CPU; without CUDA the real one is refused."""

import json
import math

import pytest
import torch

from layerwise.bench.gpu_bench import run_gpu_bench


def test_tiny_mode_runs_every_part_and_writes_one_json(tmp_path):
    report = run_gpu_bench(tiny=True, out=str(tmp_path))
    assert json.loads((tmp_path / "gpu.json").read_text()) == report
    assert set(report["freezeout"]) == {"densenet-bc", "resnet-cnn"} and set(report["multirate"]) == {
        "efficientnet-lite0",
        "minilm",
    }
    for entry in report["freezeout"].values():
        # toy sizes, one repeat: the timed saving is only a number here (a loaded machine makes it anything)
        assert math.isfinite(entry["timed_saving"]) and 0 < entry["paper_saving"] < 1 and entry["groups"] > 2
    for entry in report["multirate"].values():
        assert entry["speedup"] > 0 and entry["limit"] > 0 and entry["k"] == 4
    assert report["hidlr"]["relative_speed"] > 0 and report["hidlr"]["bound"] == pytest.approx(0.75)
    assert report["scheduler"]["groups"] == 100 and report["tiny"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine the real bench runs")
def test_without_cuda_the_real_bench_is_refused_with_the_way_out():
    with pytest.raises(ValueError, match=r"bench gpu: no CUDA device here.*--set tiny=true"):
        run_gpu_bench()
