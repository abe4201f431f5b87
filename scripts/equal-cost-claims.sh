#!/bin/sh
# The papers' claims at equal wall-clock (BENCHMARKS.md, "Equal-cost reproductions"): 3 seeds each.
# Every command resumes where it stopped; run it on an otherwise idle machine (about 75 minutes on 2 cores).
set -eu
LW=${LW:-.venv/bin/layerwise}
OUT=${OUT:-runs/claims}
# FreezeOut, from scratch: the ResNet and DenseNet-BC, accuracy at equal time and time to target
$LW compare --task fashion-mnist --methods baseline,freezeout --seeds 3 --test-size 2000 --out "$OUT/freezeout-resnet" --no-progress
$LW compare --task fashion-densenet --methods baseline,freezeout --seeds 3 --test-size 2000 --out "$OUT/freezeout-densenet" --no-progress
# Multirate, fine-tuning: both pretrained networks, time to full fine-tuning's final accuracy minus 0.5 points
$LW compare --task effnet-fashion --train-size 6000 --methods baseline,multirate,multirate-block --seeds 3 --test-size 1000 --out "$OUT/multirate-effnet" --no-progress
$LW compare --task minilm-finetune --methods baseline,multirate,multirate-block --seeds 3 --test-size 500 --out "$OUT/multirate-minilm" --no-progress
