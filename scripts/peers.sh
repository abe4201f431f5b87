#!/bin/sh
# The peers beside layerwise's techniques in both regimes of the main job, at equal wall-clock, 3 seeds
# (BENCHMARKS.md, "Peers"). Resumes where it stopped; run on an otherwise idle machine (about 30 minutes on 2 cores).
set -eu
LW=${LW:-.venv/bin/layerwise}
OUT=${OUT:-runs/peers}
PEERS=prodigy,dadapt,dog,schedulefree,lars,lamb,layer-decay,layer-freezing
$LW compare --task fashion-mnist --methods baseline,freezeout,hidlr,secant,$PEERS --seeds 3 --test-size 2000 --out "$OUT/scratch" --no-progress
$LW compare --task effnet-finetune --methods baseline,multirate,freezeout,hidlr,$PEERS,fine-tune,lp-ft --seeds 3 --test-size 1000 --out "$OUT/finetune" --no-progress
