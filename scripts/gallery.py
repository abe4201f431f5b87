"""The documentation gallery's images, made from real (quick) runs: `python scripts/gallery.py`.

Writes docs/gallery/{schedule,compare,freeze_timeline,telemetry}.png: Smith's layer LRs as
`layerwise schedule` plots them; from a quick `layerwise compare` of the baseline and FreezeOut on
the default task, its test accuracy against wall-clock, its freeze timeline and FreezeOut's
gradient-norm telemetry heatmap (`layerwise plot`). About two minutes on 2 cores.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GALLERY = ROOT / "docs" / "gallery"
CLI = [sys.executable, "-m", "layerwise.cli"]


def main() -> None:
    GALLERY.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*CLI, "schedule", "llr", "--groups", "5", "--steps", "100", "--plot", GALLERY / "schedule.png"], check=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compare"
        compare = [
            "compare",
            "--task",
            "fashion-mnist",
            "--quick",
            "--methods",
            "baseline,freezeout",
            "--budget",
            "steps",
        ]
        subprocess.run([*CLI, *compare, "--telemetry", "5", "--no-progress", "--out", out], check=True)
        shutil.copy(out / "metric_vs_wallclock.png", GALLERY / "compare.png")
        shutil.copy(out / "freeze_timeline.png", GALLERY / "freeze_timeline.png")
        subprocess.run([*CLI, "plot", out], check=True)
        shutil.copy(out / "telemetry" / "freezeout-seed0" / "grad_norm.png", GALLERY / "telemetry.png")
    print(f"wrote {sorted(p.name for p in GALLERY.glob('*.png'))}")


if __name__ == "__main__":
    main()
