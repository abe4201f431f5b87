"""Soft against hard freezing at equal time (Smith's thread): FreezeOut's per-group LRs with every
group left in the backward pass (`freezeout-soft`, the baseline's cost) against FreezeOut proper
(`freezeout`, frozen groups leave the backward pass), on the default task, 3 seeds.

Run: .venv/bin/python scripts/soft-vs-hard-freezing.py [OUT]   (about 6 minutes on 2 cores; resumes)
"""

import sys

from layerwise.compare.session import CompareConfig, compare_variants

out = sys.argv[1] if len(sys.argv) > 1 else "runs/soft-vs-hard"
variants = [
    ("baseline", "baseline", {}),
    ("freezeout (hard)", "freezeout", {}),
    ("freezeout-soft", "freezeout-soft", {}),
]
result = compare_variants(
    "fashion-mnist", variants, config=CompareConfig(budget="time", test_size=2000), seeds=3, out=out, progress=False
)
print(result["table"])
