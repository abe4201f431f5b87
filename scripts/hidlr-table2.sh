#!/bin/sh
# Hi-DLR's own comparison (the paper's Table 2) at our scale, on a pretrained fine-tuning task with AdamW
# (TASK_NAME, default the main job's effnet-finetune; minilm-finetune is the transformer one, ~25x slower):
# Hi-DLR with two groups (head | rest, bias | rest, norm | rest), Hi-ULR (one group), Prodigy, D-Adaptation,
# SecantLR, and the uniform LR under constant, linear and cosine decay, each at its best LR of a small grid.
# 3 seeds, at equal time; extra arguments go to every compare (e.g. --budget steps for equal steps, as the paper
# compares). Resumes where it stopped; about 70 minutes on 2 cores for effnet-finetune. UNIFORM=0 skips the
# uniform sweeps and the splits' baselines: at equal steps they are the equal-time runs (a baseline's budget is
# its own steps), so an equal-steps pass after an equal-time one needs only the timed methods (about 15 minutes).
set -eu
LW=${LW:-.venv/bin/layerwise}
TASK_NAME=${TASK_NAME:-effnet-finetune}
OUT=${OUT:-runs/hidlr-table2-$TASK_NAME}
TASK="--task $TASK_NAME --seeds 3 --no-progress $*"
SPLIT_METHODS=baseline,hidlr
if [ "${UNIFORM:-1}" = 1 ]; then
  for policy in constant linear cosine; do  # the uniform baselines, each at the best factor of the grid
    $LW sweep $TASK --methods baseline --policy $policy --factors 0.3,1,3 --out "$OUT/uniform-$policy"
  done
else
  SPLIT_METHODS=hidlr
fi
for split in head bias norm; do
  $LW compare $TASK --methods $SPLIT_METHODS --set hidlr.split=$split --out "$OUT/hidlr-$split"
done
$LW compare $TASK --methods baseline,hidlr,prodigy,dadapt,secant --set hidlr.groups=1 --out "$OUT/hi-ulr-and-peers"
