#!/bin/sh
# Make sure Fashion-MNIST (Debian package dataset-fashion-mnist) is on this machine.
# Installs it when missing and we may (root + apt-get); otherwise says what to run.
set -eu
dir="${LAYERWISE_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
if [ -e "$dir/train-images-idx3-ubyte.gz" ] || [ -e "$dir/train-images-idx3-ubyte" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null
  exit 0
fi
echo "Fashion-MNIST is missing from $dir. Install it with:" >&2
echo "    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist" >&2
echo "or set LAYERWISE_FASHION_MNIST to a directory holding the four IDX files." >&2
exit 1
