"""The frozen-prefix cache's half-precision storage against float32, for accuracy: head-only
fine-tuning of EfficientNet-Lite0 (`effnet-finetune`, 250 steps, 2 epochs: the second is served from
the cache), 3 seeds, equal steps; the cache stores float32, float16 or bfloat16.

Run: .venv/bin/python scripts/cache-dtype.py [OUT]   (about 4 minutes on 2 cores; resumes)
"""

import sys

from layerwise.compare.session import CompareConfig, compare_variants

out = sys.argv[1] if len(sys.argv) > 1 else "runs/cache-dtype"
variants = [("head-only", "head-only", {})]
variants += [
    (f"head-only+cache {d}", "head-only+cache", {"cache_dtype": None if d == "float32" else d})
    for d in ("float32", "float16", "bfloat16")
]
result = compare_variants(
    "effnet-finetune", variants, config=CompareConfig(budget="steps", test_size=2000), seeds=3, out=out, progress=False
)
print(result["table"])
