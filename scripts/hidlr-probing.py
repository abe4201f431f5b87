"""Hi-DLR's probing options at equal steps (issue: performance), the default task, 3 seeds: fixed
Phi = 8 (the paper) against an adaptive interval (Phi 8 up to 64) and against `layerwise compare`'s
defaults (Phi 16 up to 128, whole-batch probes, prefix reuse). Half-batch probes were measured
before (BENCHMARKS.md: 1.5 points worse) and are not rerun.

Run: .venv/bin/python scripts/hidlr-probing.py [OUT]   (about 10 minutes on 2 cores; resumes)
"""

import sys

from layerwise.compare.session import CompareConfig, compare_variants

out = sys.argv[1] if len(sys.argv) > 1 else "runs/hidlr-probing-defaults"
fixed = {"update_every": 8, "max_interval": None, "prefix_reuse": False}
variants = [
    ("baseline", "baseline", {}),
    ("hidlr phi=8", "hidlr", fixed),
    ("hidlr adaptive 8-64", "hidlr", {**fixed, "max_interval": 64}),
    ("hidlr defaults", "hidlr", {}),
]
result = compare_variants(
    "fashion-mnist", variants, config=CompareConfig(budget="steps"), seeds=3, out=out, progress=False
)
for row in result["rows"]:
    print(row["method"], row.get("metric"), row.get("metric_std"), row.get("final_train_loss"), row.get("verdict"))
