"""Named benchmarks (`layerwise bench NAME`): timing, the papers' experiments, their reports."""
