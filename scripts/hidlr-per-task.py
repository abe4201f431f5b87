"""Hi-DLR per task (the paper's CelebA setting, §4.3 / App. B.2, at our scale) on `fashion-mnist-tasks`:
Fashion-MNIST as 10 one-vs-rest binary tasks sharing the small ResNet's last layer, one learning-rate
group per task (a row of the output layer, `layerwise.by_rows`) plus the body. Compared at equal steps
(250), 3 seeds, mean task accuracy: Hi-DLR per task (11 groups), Hi-ULR (one group) and the uniform LR
at the task's LR x 0.3 / 1 / 3 (x1 is the baseline).

Run: .venv/bin/python scripts/hidlr-per-task.py [OUT]   (about 10 minutes on 2 cores; resumes)
"""

import sys

from layerwise.compare.session import CompareConfig, compare_variants
from layerwise.compare.sweep import lr_sweep

TASK = "fashion-mnist-tasks"
out = sys.argv[1] if len(sys.argv) > 1 else "runs/hidlr-per-task"
sweep = lr_sweep(TASK, ["baseline"], [0.3, 3.0], out=f"{out}/uniform", seeds=3, budget="steps", progress=False)
print(sweep["table"])
variants = [("baseline", "baseline", {}), ("hidlr per task", "hidlr", {}), ("hi-ulr", "hidlr", {"groups": 1})]
result = compare_variants(
    TASK, variants, config=CompareConfig(budget="steps"), seeds=3, out=f"{out}/steps", progress=False
)
print(result["table"])
