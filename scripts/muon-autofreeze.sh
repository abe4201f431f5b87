#!/bin/sh
# Issue 36's measurements (BENCHMARKS.md, "Muon and AutoFreeze at equal wall-clock"), 3 seeds each,
# on an otherwise idle machine (about 60 minutes on 2 cores); resumes where it stopped.
#   1. Muon at equal time in both regimes of the main job, beside the baseline, Schedule-Free and FreezeOut.
#   2. AutoFreeze fine-tuning MiniLM-L6 on tweets (3 epochs of 384 tweets, so examples come back for the
#      cache) and EfficientNet-Lite0 (the main job's 2 epochs), beside FreezeOut (+cache) and Composer's
#      layer freezing.
set -eu
LW=${LW:-.venv/bin/layerwise}
OUT=${OUT:-runs/muon-autofreeze}
$LW compare --task fashion-mnist --methods baseline,muon,schedulefree,freezeout --seeds 3 \
    --train-size 12800 --test-size 2000 --eval-points 6 --out "$OUT/muon-scratch" --no-progress
$LW compare --task effnet-finetune --methods baseline,muon,schedulefree,freezeout --seeds 3 \
    --train-size 2400 --test-size 1000 --eval-points 4 --out "$OUT/muon-finetune" --no-progress
FREEZING=baseline,freezeout,freezeout+cache,layer-freezing,autofreeze,autofreeze+cache
$LW compare --task effnet-finetune --methods $FREEZING --seeds 3 \
    --train-size 2400 --test-size 1000 --eval-points 4 --out "$OUT/autofreeze-effnet" --no-progress
# minilm-finetune trims padding per batch, so a frozen prefix's rows change shape and cannot be cached:
# the padded task (64 tokens always) is the one every method of this comparison shares.
$LW compare --task minilm-finetune-padded --methods $FREEZING --seeds 3 --epochs 3 \
    --train-size 384 --test-size 400 --eval-points 3 --out "$OUT/autofreeze-minilm-padded" --no-progress
