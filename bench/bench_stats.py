"""Statistics shared by the benches: a seeded bootstrap interval of a paired time ratio."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ratio_interval(
    numerator: Sequence[float], denominator: Sequence[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of ``sum(numerator) / sum(denominator)`` when the pairs (rounds or windows
    timed side by side) are resampled with replacement. With seconds of a baseline over
    seconds of a candidate, it is the candidate's speed relative to the baseline."""
    top, bottom = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    picks = np.random.default_rng(seed).integers(0, top.size, (resamples, top.size))
    ratios = top[picks].sum(axis=1) / bottom[picks].sum(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)
