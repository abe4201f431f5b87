import json
import subprocess
import sys

import pytest

from layerwise.bench.suite import run_bench


def test_bench_multirate_quick_json_last_line():
    cmd = [sys.executable, "-m", "layerwise.cli", "bench", "multirate", "--quick", "--json"]
    cmd += ["--set", "k=2", "--set", "cycles=1", "--set", "repeats=2", "--set", "batch_size=8"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["k"] == 2 and result["task"] == "effnet-fashion"
    assert 1.0 <= result["limit"] <= 2.0  # k T_full / (T_full + (k-1) T_fast) with T_fast <= T_full
    assert result["multirate_fast_step_ms"] < result["full_step_ms"]
    assert 0.5 < result["speedup"] < 2.5


def test_bench_multirate_full_run_says_it_is_not_built():
    with pytest.raises(ValueError, match="not implemented"):
        run_bench("multirate", quick=False)
