"""``BucketSearch.of`` is ``np.searchsorted(splitters, keys, "left")`` exactly, table or not,
for splitters and keys of awkward shapes (the stored orders' bucket of each key)."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.curriculum import bucket_search
from highnoon.curriculum.bucket_search import BucketSearch
from highnoon.curriculum.stored_order import _splitters

U64_MAX = (1 << 64) - 1


def _keys(kind: str, rng: np.random.Generator, n: int = 20_000) -> np.ndarray:
    if kind == "uniform":
        return rng.random(n).view(np.uint64)
    if kind == "lengths":  # few distinct integer scores: many equal keys
        return rng.integers(1, 6, n).astype(np.float64).view(np.uint64)
    if kind == "spike":  # most keys one value, a spread around it
        values = np.where(rng.random(n) < 0.9, 0.5, rng.random(n))
        return values.view(np.uint64)
    if kind == "outliers":  # the extremes of the key space beside a narrow bulk
        keys = (0.3 + rng.random(n) * 1e-9).view(np.uint64)
        keys[:3] = [0, 1, U64_MAX]
        return keys
    if kind == "raw":  # any uint64
        return rng.integers(0, U64_MAX, n, dtype=np.uint64, endpoint=True)
    raise ValueError(kind)


def _check(splitters: np.ndarray, keys: np.ndarray) -> BucketSearch:
    search = BucketSearch(splitters)
    want = np.searchsorted(splitters, keys, side="left")
    got = search.of(keys)
    assert got.dtype == search.dtype
    np.testing.assert_array_equal(got.astype(np.int64), want)
    # every splitter, its neighbours and the extremes
    one, extremes = np.uint64(1), np.array([0, U64_MAX], dtype=np.uint64)
    edges = np.unique(np.concatenate([splitters, splitters - one, splitters + one, extremes]))
    np.testing.assert_array_equal(
        search.of(edges).astype(np.int64), np.searchsorted(splitters, edges, side="left")
    )
    return search


@pytest.mark.parametrize("kind", ["uniform", "lengths", "spike", "outliers", "raw"])
@pytest.mark.parametrize("num_buckets", [1, 2, 3, 17, 255, 256, 257, 1000])
def test_the_table_gives_the_binary_searchs_buckets(kind, num_buckets):
    rng = np.random.default_rng(num_buckets)
    keys = _keys(kind, rng)
    splitters = _splitters(keys[::7].copy(), num_buckets)
    search = _check(splitters, keys)
    assert search.dtype == (np.uint8 if splitters.size < 256 else np.uint16)


def test_spread_splitters_use_the_table_and_crowded_ones_the_binary_search(monkeypatch):
    rng = np.random.default_rng(0)
    spread = _splitters(_keys("uniform", rng), 1000)
    assert _check(spread, _keys("uniform", rng)).table is not None
    # a thousand splitters among 8 values of the key space: cells of one value each, crowded
    crowded = np.sort(rng.choice(1 << 20, 1000, replace=False)).astype(np.uint64) << np.uint64(3)
    keys = rng.integers(0, 1 << 24, 5000).astype(np.uint64)
    monkeypatch.setattr(bucket_search, "CELL_BITS", 3)
    assert _check(crowded, keys).table is None
    # one splitter, two, equal neighbours of the u64 range
    for splitters in ([7], [0, U64_MAX], [U64_MAX - 1, U64_MAX], [0, 1]):
        _check(np.array(splitters, dtype=np.uint64), _keys("raw", rng, 100))
