"""Multirate's ablations (the paper's Tables 1, 2, A4, Fig. A10 and Fig. 5) on the main job's pretrained
fine-tuning task `effnet-finetune` (EfficientNet-Lite0 on Fashion-MNIST 32x32, AdamW), 3 seeds, equal
steps (the paper's ablations are at equal epochs): drift against no drift (Algorithm 1 vs 2), the same
LR for both parts (h_S = h_F) against k x it, k in {2, 3, 4, 5, 10}, weight decay off (Algorithm A3's
term), and, under linear LR decay, Multirate against full fine-tuning.

Run: .venv/bin/python scripts/multirate-ablations.py [OUT]   (about 15 minutes on 2 cores; resumes)
"""

import sys

from layerwise.compare.session import CompareConfig, compare_variants

TASK = "effnet-finetune"
out = sys.argv[1] if len(sys.argv) > 1 else "runs/multirate-ablations"
variants = [("full fine-tuning", "baseline", {}), ("multirate k=4", "multirate", {})]
variants += [
    ("no drift (Algorithm 2)", "multirate", {"drift": False}),
    ("same LR (h_S = h_F)", "multirate", {"same_lr": True}),
    ("no weight decay", "multirate", {"weight_decay": 0.0}),
]
variants += [(f"multirate k={k}", "multirate", {"k": k}) for k in (2, 3, 5, 10)]
for policy in ("cosine", "linear"):
    chosen = variants if policy == "cosine" else variants[:2]
    config = CompareConfig(budget="steps", policy=policy, test_size=2000)
    result = compare_variants(TASK, chosen, config=config, seeds=3, out=f"{out}/{policy}", progress=False)
    print(f"## {policy}\n\n{result['table']}\n")
