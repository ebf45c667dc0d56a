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

The maxima the normalised strategies divide by are a ``ScoreScale``. Given the scale of a whole
store (``score_scale(store.features)``, or the maximum of the chunks' scales,
``ScoreScale.combine``), ``scores_from_features(chunk, strategy, scale=...)`` of any chunk of its
samples equals the same slice of the whole array's scores bit for bit: every score is an
element-wise function of the sample's features and the two maxima. That is what lets a store's
order be computed chunk by chunk at preparation (``stored_order.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from highnoon.data.features import SampleFeatures
from highnoon.utils.hashing import keyed_hash
from highnoon.utils.validation import InvalidArgumentError

STRATEGIES = ("size_based", "difficulty_based", "mixed", "random")
DIFFICULTY_RARITY_WEIGHT = 0.7
MIXED_SIZE_WEIGHT = 0.5


@dataclass(frozen=True)
class ScoreScale:
    """The maxima scores are normalised by: the largest length and the largest mean surprisal
    (``rarity``) of every sample scored together (a whole store)."""

    max_length: int
    max_rarity: float

    def combine(self, other: ScoreScale) -> ScoreScale:
        """The scale of the union of two sets of samples (the larger of each maximum)."""
        return ScoreScale(max(self.max_length, other.max_length),
                          max(self.max_rarity, other.max_rarity))  # fmt: skip

    def to_json(self) -> dict[str, int | float]:
        """``{"max_length": int, "max_rarity": float}`` (a float64 round-trips through JSON)."""
        return {"max_length": int(self.max_length), "max_rarity": float(self.max_rarity)}

    @classmethod
    def from_json(cls, value: dict) -> ScoreScale:
        return cls(int(value["max_length"]), float(value["max_rarity"]))


def score_scale(features: SampleFeatures) -> ScoreScale:
    """The ``ScoreScale`` of ``features`` (zeros for no samples)."""
    return ScoreScale(
        int(features.lengths.max(initial=0)), float(features.mean_surprisal.max(initial=0.0))
    )


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
    scale: ScoreScale | None = None,
) -> np.ndarray:
    """Curriculum scores (float64, higher = harder) from stored features; see the module docstring.

    ``seed`` and ``indices`` (the samples' indices in their store, default ``0..n-1``) only
    matter for ``random``. ``scale`` (default: ``score_scale(features)``) gives the maxima of
    the whole set the samples belong to, so a chunk scores as it would in the whole array."""
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
    if scale is None:
        scale = score_scale(features)
    max_length = max(float(scale.max_length), 1.0)
    max_rarity = float(scale.max_rarity)
    # In place, in the order of the formula (IEEE: the same values as the plain expression):
    # difficulty = 0.7 * rarity / max_rarity + 0.3 * sqrt(length / max_length)
    scaled = lengths
    scaled /= max_length
    difficulty = features.mean_surprisal
    if max_rarity > 0:
        difficulty /= max_rarity
    else:
        difficulty.fill(0.0)
    difficulty *= DIFFICULTY_RARITY_WEIGHT
    # difficulty_based needs ``scaled`` no more: its root takes its place
    root = np.sqrt(scaled, out=scaled if strategy == "difficulty_based" else None)
    root *= 1.0 - DIFFICULTY_RARITY_WEIGHT
    difficulty += root
    if strategy == "difficulty_based":
        return difficulty
    scaled *= MIXED_SIZE_WEIGHT  # mixed = 0.5 * length / max_length + 0.5 * difficulty
    difficulty *= 1.0 - MIXED_SIZE_WEIGHT
    scaled += difficulty
    return scaled
