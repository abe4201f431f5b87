#!/bin/sh
# The timed benchmarks of this release, run one after another on a quiet machine (nothing else running):
# the frozen-prefix cache (bench cache; the equal-time comparison in both regimes of the main job with the
# +cache methods), Hi-DLR's probing options with prefix reuse (bench hidlr --quick), and Multirate's
# refresh cost on MiniLM with the base optimizer's kernels (bench multirate --quick, impl default/foreach/fused).
# About 45 minutes on 2 cores. Results: runs/quiet/*.json and the compare folders; a finished part is skipped.
set -eu
LW=${LW:-.venv/bin/layerwise}
OUT=${OUT:-runs/quiet}
mkdir -p "$OUT"
. "$(dirname "$0")/once.sh"
for case in freezeout fine-tune head-only; do
  once "$OUT/cache-$case.json" $LW bench cache --json --set cases=$case
done
$LW compare --task fashion-mnist --methods baseline,freezeout,freezeout+cache --seeds 3 --test-size 2000 \
  --no-progress --out "$OUT/compare-scratch"
$LW compare --task effnet-finetune --methods baseline,head-only,head-only+cache,freezeout,freezeout+cache,fine-tune,fine-tune+cache \
  --seeds 3 --test-size 1000 --no-progress --out "$OUT/compare-finetune"
once "$OUT/hidlr.json" $LW bench hidlr --quick --json
for impl in default foreach fused; do
  once "$OUT/multirate-$impl.json" $LW bench multirate --quick --json --set task=minilm-sentiment --set k=4 \
    --set timing_base=adamw --set impl=$impl
done
