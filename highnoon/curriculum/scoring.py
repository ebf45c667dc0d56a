"""Curriculum scores from per-sample features (numpy only).

Scores (float64, higher = harder), from the features the token store records
(``highnoon.data.features``):

  * ``size_based``:       ``length``.
  * ``difficulty_based``: ``0.7 * rarity / max(rarity) + 0.3 * sqrt(length / max(length))`` where
    ``rarity`` is the mean surprisal per token. Rarity dominates; length breaks near-ties.
  * ``mixed``:            ``0.5 * length / max(length) + 0.5 * difficulty_based``.
  * ``random``:           a keyed random number per sample (``random_scores``): the pool grows
    on the same pacing, but its members are a random order, not an easy-to-hard one. This is the
    control of Wu, Dyer and Neyshabur (ICLR 2021), which separates what the pool's growth does
    from what the order does.

The combination uses only IEEE-exact operations (+, -, *, /, sqrt) on integer-valued features, so
scores are bit-identical on every machine.
"""

from __future__ import annotations

import numpy as np

from highnoon.data.features import SampleFeatures
from highnoon.utils.hashing import keyed_hash
from highnoon.utils.validation import InvalidArgumentError

STRATEGIES = ("size_based", "difficulty_based", "mixed", "random")
DIFFICULTY_RARITY_WEIGHT = 0.7
MIXED_SIZE_WEIGHT = 0.5


def random_scores(indices: np.ndarray, seed: int) -> np.ndarray:
    """``random`` scores: 53 bits of a keyed hash of each sample's index (exact in float64).

    A function of (index, seed) alone, so every host, host count and run draws the same order;
    ties (practically none) go to the lower index like every other score.
    """
    hashed = keyed_hash(np.asarray(indices, dtype=np.int64), "random_order", int(seed))
    return (hashed >> np.uint64(11)).astype(np.float64)


def scores_from_features(
    features: SampleFeatures,
    strategy: str,
    *,
    seed: int = 0,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """Curriculum scores (float64, higher = harder) from stored features; see the module docstring.

    ``seed`` and ``indices`` (the samples' indices in their store, default ``0..n-1``) only
    matter for ``random``."""
    if strategy not in STRATEGIES:
        raise InvalidArgumentError(
            f"strategy={strategy!r} is not a known scoring strategy; use one of {STRATEGIES} or a callable"
        )
    if strategy == "random":
        n = features.lengths.shape[0]
        return random_scores(np.arange(n) if indices is None else indices, seed)
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
