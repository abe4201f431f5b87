"""How often the verdict's two intervals of a mean paired difference hold the true mean, at 6 to 10 pairs.

The paired t interval and scipy's paired BCa bootstrap interval (2000 resamples), both computed by
``layerwise.compare.stats.paired`` exactly as a verdict computes them, on simulated seed pairs whose
differences are normal (the accuracy differences of one training set-up) or skewed (centred
exponential). docs/verdicts.md quotes its output.

    .venv/bin/python scripts/bootstrap_coverage.py            # 1000 comparisons per row
    .venv/bin/python scripts/bootstrap_coverage.py --reps 200  # quicker, coarser
"""

from __future__ import annotations

import argparse

import numpy as np

from layerwise.compare.stats import paired

NOISES = {
    "normal": lambda rng, size: rng.standard_normal(size),
    "skewed": lambda rng, size: rng.exponential(1.0, size) - 1.0,  # mean 0, sd 1, skewness 2
}


def coverage(pairs: int, reps: int, noise: str, seed: int = 0) -> tuple[float, float]:
    """Shares of ``reps`` simulated comparisons (true mean difference 0) whose t and BCa intervals hold 0."""
    rng = np.random.default_rng(seed)
    held_t = held_bca = 0
    for _ in range(reps):
        result = paired(NOISES[noise](rng, pairs).tolist(), [0.0] * pairs)
        held_t += result.low <= 0.0 <= result.high
        held_bca += result.bootstrap[0] <= 0.0 <= result.bootstrap[1]
    return held_t / reps, held_bca / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1000, help="simulated comparisons per row (default 1000)")
    args = parser.parse_args()
    print(f"{args.reps} simulated comparisons per row, true mean difference 0: the share of intervals holding it")
    print("\n| differences | pairs | paired t 95 % interval | BCa bootstrap 95 % interval |")
    print("|---|---:|---:|---:|")
    for noise in NOISES:
        for pairs in range(6, 11):
            held_t, held_bca = coverage(pairs, args.reps, noise)
            print(f"| {noise} | {pairs} | {100 * held_t:.1f} % | {100 * held_bca:.1f} % |")


if __name__ == "__main__":
    main()
