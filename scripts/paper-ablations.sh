#!/bin/sh
# Issue 19's ablation benchmarks, one after another on a quiet machine (nothing else running): the
# FreezeOut t0 sweep (timed), Multirate's ablations on the pretrained task, Smith's llr study with the
# triangular and constant policies, per-group min/max and input-first unfreezing, and Hi-DLR's anchored
# against free-intercept fit on the toys, NAM and LoRA. About 75 minutes on 2 cores (measured 2026-12-02: 80). Results:
# runs/ablations/*.json and the compare folders; a finished part is skipped.
set -eu
LW=${LW:-.venv/bin/layerwise}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/ablations}
mkdir -p "$OUT"
. "$(dirname "$0")/once.sh"
once "$OUT/freezeout-t0.json" $LW bench freezeout --json --set models=resnet-cnn --set configs=scaled \
  --set t0s=0.3,0.5,0.7,0.8,0.9 --out "$OUT/freezeout-t0"
once "$OUT/multirate-ablations.md" $PY scripts/multirate-ablations.py "$OUT/multirate-ablations"
once "$OUT/llr.md" $LW study llr --seeds 3 --no-progress --out "$OUT/llr"
once "$OUT/hidlr-fits.json" $LW bench hidlr --json --set problems=toys,nam,lora --out "$OUT/hidlr-fits"
