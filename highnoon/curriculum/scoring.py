"""Curriculum scores from per-sample features (numpy only).

Scores (float64, higher = harder), from the features the token store records
(``highnoon.data.features``):

  * ``size_based``:       ``length``.
  * ``difficulty_based``: ``0.7 * rarity / max(rarity) + 0.3 * sqrt(length / max(length))`` where
    ``rarity`` is the mean surprisal per token. Rarity dominates; length breaks near-ties.
  * ``mixed``:            ``0.5 * length / max(length) + 0.5 * difficulty_based``.

The combination uses only IEEE-exact operations (+, -, *, /, sqrt) on integer-valued features, so
scores are bit-identical on every machine.
"""

from __future__ import annotations

import numpy as np

from highnoon.data.features import SampleFeatures

STRATEGIES = ("size_based", "difficulty_based", "mixed")
DIFFICULTY_RARITY_WEIGHT = 0.7
MIXED_SIZE_WEIGHT = 0.5


def scores_from_features(features: SampleFeatures, strategy: str) -> np.ndarray:
    """Curriculum scores (float64, higher = harder) from stored features; see the module docstring."""
    if strategy not in STRATEGIES:
        raise ValueError(
            f"strategy={strategy!r} is not a known scoring strategy; use one of {STRATEGIES} or a callable"
        )
    lengths = features.lengths.astype(np.float64)
    if strategy == "size_based":
        return lengths
    max_length = max(float(lengths.max(initial=0.0)), 1.0)
    rarity = features.mean_surprisal
    max_rarity = float(rarity.max(initial=0.0))
    rarity_norm = rarity / max_rarity if max_rarity > 0 else np.zeros_like(rarity)
    difficulty = DIFFICULTY_RARITY_WEIGHT * rarity_norm + (
        1.0 - DIFFICULTY_RARITY_WEIGHT
    ) * np.sqrt(lengths / max_length)
    if strategy == "difficulty_based":
        return difficulty
    return MIXED_SIZE_WEIGHT * (lengths / max_length) + (1.0 - MIXED_SIZE_WEIGHT) * difficulty
