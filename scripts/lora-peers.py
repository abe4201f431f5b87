"""LoRA+ beside Hi-DLR (the Hi-DLR paper's Fig. 1 / App. A.2 discussion) on `minilm-sentiment-lora`:
PEFT LoRA on MiniLM-L6, AdamW, 3 seeds, the task's quick slice (4,000 tweets, one epoch of 125 steps,
1,000 test tweets, 4 evaluations per run). Compared: a tuned uniform LR (the task's LR x 0.3 / 1 / 3 / 10;
x1 is the baseline), LoRA+ at ratios 2, 4 and 16 (PEFT's create_loraplus_optimizer; the Hi-DLR paper
quotes 2^1-2^2 as best for LLaMA, 2^4 for RoBERTa), Hi-DLR on lora_A | lora_B | head, and SecantLR.

Run: .venv/bin/python scripts/lora-peers.py steps [OUT]   equal steps (about 40 minutes on 2 cores)
     .venv/bin/python scripts/lora-peers.py time [OUT]    equal time: every method trains for the
                                                          baseline's measured time on its seed
Both resume where they stopped.
"""

import sys

from layerwise.compare.session import CompareConfig, compare_variants
from layerwise.compare.sweep import lr_sweep

TASK = "minilm-sentiment-lora"
budget = sys.argv[1] if len(sys.argv) > 1 else "steps"
out = sys.argv[2] if len(sys.argv) > 2 else "runs/lora-peers"
config = CompareConfig(quick=True, budget=budget, eval_points=4)
if budget == "steps":
    sweep = lr_sweep(
        TASK,
        ["baseline"],
        [0.3, 3.0, 10.0],
        out=f"{out}/uniform",
        seeds=3,
        quick=True,
        budget="steps",
        eval_points=4,
        progress=False,
    )
    print(sweep["table"])
    variants = [("baseline", "baseline", {})]
    variants += [(f"loraplus x{r}", "loraplus", {"ratio": float(r)}) for r in (2, 4, 16)]
    variants += [("hidlr", "hidlr", {}), ("secant", "secant", {})]
else:
    variants = [("baseline", "baseline", {}), ("hidlr", "hidlr", {}), ("secant", "secant", {})]
result = compare_variants(TASK, variants, config=config, seeds=3, out=f"{out}/{budget}", progress=False)
print(result["table"])
