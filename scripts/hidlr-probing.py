"""Hi-DLR's probing options at equal steps (issue: performance): fixed Phi = 8 (the paper) against an
adaptive interval (cap 64), probes on half the batch, and both; the default task, 3 seeds.

Run: .venv/bin/python scripts/hidlr-probing.py [OUT]   (about 15 minutes on 2 cores; resumes)
"""

import sys

from layerwise.compare.session import CompareConfig, compare_variants

out = sys.argv[1] if len(sys.argv) > 1 else "runs/hidlr-probing"
fixed = {"update_every": 8}
variants = [
    ("baseline", "baseline", {}),
    ("hidlr phi=8", "hidlr", fixed),
    ("hidlr adaptive", "hidlr", {**fixed, "max_interval": 64}),
    ("hidlr half-batch", "hidlr", {**fixed, "probe_fraction": 0.5}),
    ("hidlr adaptive+half", "hidlr", {**fixed, "max_interval": 64, "probe_fraction": 0.5}),
]
result = compare_variants(
    "fashion-mnist", variants, config=CompareConfig(budget="steps"), seeds=3, out=out, progress=False
)
for row in result["rows"]:
    print(row["method"], row.get("metric"), row.get("metric_std"), row.get("verdict"))
