#!/bin/sh
# The one prepared command for a lent GPU (issue: performance, GPU benchmark suite). On the device
# machine (its own python3 with torch, timm and transformers; nothing to install), from the
# repository root:   sh scripts/gpu-bench.sh "$OUT"
# About 5 minutes on an H200; the timeout leaves room to rerun once inside a 15-minute lease.
set -eu
OUT=${1:-runs/bench-gpu}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
PYTHONPATH=src PYTHONUNBUFFERED=1 timeout 480 python3 -m layerwise.cli bench gpu --out "$OUT" --json
