#!/bin/sh
# The verdict reruns (BENCHMARKS.md, "Verdicts that decide"): seeds added until decided (--seeds auto,
# at most 10) with the baseline run twice (--aa, the noise floor), on an otherwise idle machine.
#   1. The peers from scratch: Schedule-Free and Muon beside the baseline and FreezeOut, at the main job's
#      from-scratch sizes (OUT/peers-scratch; it reuses the 3 seeds of scripts/muon-autofreeze.sh's
#      muon-scratch when that folder is there, since the store is keyed by the settings, not the commit).
#   2. The main job, both regimes (OUT/main).
# MINUTES caps each comparison's seed rounds (--max-minutes); the report says what more seeds would decide.
set -eu
LW=${LW:-.venv/bin/layerwise}
OUT=${OUT:-runs/verdicts}
MINUTES=${MINUTES:-25}
mkdir -p "$OUT"
if [ -f runs/muon-autofreeze/muon-scratch/runs.sqlite ] && [ ! -e "$OUT/peers-scratch" ]; then
    mkdir -p "$OUT/peers-scratch" && cp runs/muon-autofreeze/muon-scratch/runs.sqlite "$OUT/peers-scratch/"
fi
$LW compare --task fashion-mnist --methods baseline,schedulefree,muon,freezeout --seeds auto:10 --aa \
    --max-minutes "$MINUTES" --train-size 12800 --test-size 2000 --eval-points 6 --out "$OUT/peers-scratch" --no-progress
$LW compare --seeds auto:10 --aa --max-minutes "$MINUTES" --out "$OUT/main" --no-progress
