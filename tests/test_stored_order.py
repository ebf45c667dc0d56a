"""Orders computed once and stored with the store: chunked scores equal whole-array scores bit
for bit; the stored order equals ``order_from_scores`` of the whole store's scores."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.curriculum.scoring import ScoreScale, score_scale, scores_from_features
from highnoon.data.features import SampleFeatures

NORMALISED = ("size_based", "difficulty_based", "mixed")


def _features(n: int, seed: int, *, distinct: int = 7) -> SampleFeatures:
    """``n`` samples with few distinct lengths and surprisals (many exact ties)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, distinct + 1, size=n).astype(np.int64)
    per_token = rng.integers(0, 3, size=n).astype(np.int64) << 22
    return SampleFeatures(lengths=lengths, surprisal_sum=lengths * per_token)


@pytest.mark.parametrize("strategy", NORMALISED)
@pytest.mark.parametrize("n,chunk", [(1, 1), (2, 1), (97, 10), (1000, 333), (257, 256)])
def test_chunked_scores_are_bit_identical_to_whole_array_scores(strategy, n, chunk):
    features = _features(n, seed=n)
    whole = scores_from_features(features, strategy)
    scale = None
    for start in range(0, n, chunk):  # the scale as preparation combines it, chunk by chunk
        part = score_scale(_slice(features, start, start + chunk))
        scale = part if scale is None else scale.combine(part)
    assert scale == score_scale(features)
    chunks = [
        scores_from_features(_slice(features, s, s + chunk), strategy, scale=scale)
        for s in range(0, n, chunk)
    ]
    assert np.concatenate(chunks).tobytes() == whole.tobytes()


def test_score_scale_round_trips_through_json_and_handles_empty_and_zero_surprisal():
    features = _features(50, seed=1)
    scale = score_scale(features)
    assert ScoreScale.from_json(scale.to_json()) == scale
    empty = SampleFeatures(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert score_scale(empty) == ScoreScale(0, 0.0)
    flat = SampleFeatures(np.array([3, 1, 2]), np.zeros(3, np.int64))
    scores = scores_from_features(flat, "difficulty_based", scale=score_scale(flat))
    np.testing.assert_array_equal(scores, scores_from_features(flat, "difficulty_based"))
    assert np.argsort(scores, kind="stable").tolist() == [1, 2, 0]
    # a chunk scored without the store's scale normalises by its own maxima: other scores
    chunk = SampleFeatures(np.array([2, 1]), np.array([2 << 24, 0]))
    wider = ScoreScale(max_length=8, max_rarity=4.0)
    assert (
        scores_from_features(chunk, "mixed").tolist()
        != scores_from_features(chunk, "mixed", scale=wider).tolist()
    )


def _slice(features: SampleFeatures, start: int, stop: int) -> SampleFeatures:
    return SampleFeatures(features.lengths[start:stop], features.surprisal_sum[start:stop])
