"""The built wheel installs on its own in a fresh virtual environment (with the pinned torch) and
works: the CLI runs, a schedule prints as JSON, every public name imports. It catches files missing
from the package (about 40 s: the environment is new)."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*command: str | Path) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_wheel_installs_alone_and_its_public_api_works(tmp_path):
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", ROOT)
    (wheel,) = (tmp_path / "dist").glob("layerwise-*.whl")
    venv.create(tmp_path / "env", with_pip=True)
    bin_dir = tmp_path / "env" / "bin"
    _run(bin_dir / "pip", "install", "-q", "-c", ROOT / "constraints.txt", wheel)  # torch from the pin, numpy
    assert "Per-layer learning-rate control" in _run(bin_dir / "layerwise", "--help")
    schedule = json.loads(_run(bin_dir / "layerwise", "schedule", "llr", "--groups", "3", "--steps", "10", "--json"))
    assert len(schedule["groups"]) == 3
    names = _run(
        bin_dir / "python",
        "-c",
        "import layerwise, layerwise.fsdp, layerwise.distributed, layerwise.integrations; n = layerwise.__all__;"
        "print(layerwise.__version__, all(getattr(layerwise, k) is not None for k in n), len(n))",
    ).split()
    import layerwise

    assert names == [layerwise.__version__, "True", str(len(layerwise.__all__))]
