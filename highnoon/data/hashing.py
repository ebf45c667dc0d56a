"""Stateless keyed hashing for deterministic choices (no RNG state anywhere).

``mix64`` is the SplitMix64 finaliser on uint64 arrays: the same (key, index) gives the same
value on every machine and run, which is what per-sample choices (overflow windows, mixing
subsamples) need.
"""

from __future__ import annotations

import numpy as np

from highnoon.utils.hashing import splitmix64_finalise_

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 (golden-ratio increment, then the shared finaliser) on a copy of ``values``."""
    z = np.array(values, dtype=np.uint64, ndmin=1)
    with np.errstate(over="ignore"):  # wrap-around is the point
        z += _GOLDEN
    return splitmix64_finalise_(z)


def keyed_hash(indices: np.ndarray, *keys: int) -> np.ndarray:
    """A uint64 hash of every index under the integer ``keys`` (e.g. seed, epoch)."""
    state = np.zeros(1, dtype=np.uint64)
    for key in keys:
        state = mix64(state ^ np.uint64(int(key) & 0xFFFFFFFFFFFFFFFF))
    return mix64(np.asarray(indices, dtype=np.int64).astype(np.uint64) ^ state[0])


def keyed_permutation(n: int, *keys: int) -> np.ndarray:
    """A permutation of ``range(n)`` determined by ``keys``: indices sorted by their keyed hash
    (stable, index tie-break)."""
    return np.argsort(keyed_hash(np.arange(n), *keys), kind="stable")
