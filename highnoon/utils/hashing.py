"""The one 64-bit mixing function behind every stateless keyed choice (numpy only).

SplitMix64's finaliser: the same input gives the same uint64 on every machine and run, so
curriculum shuffles, overflow windows, mixture subsamples and eval splits need no RNG state.
"""

from __future__ import annotations

import numpy as np

_U = np.uint64


def splitmix64_finalise_(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser applied in place to a uint64 array (wrapping arithmetic); returns it.

    In place because the curriculum applies it to arrays of up to 10^8 elements.
    """
    with np.errstate(over="ignore"):  # wrap-around is the point
        z ^= z >> _U(30)
        z *= _U(0xBF58476D1CE4E5B9)
        z ^= z >> _U(27)
        z *= _U(0x94D049BB133111EB)
        z ^= z >> _U(31)
    return z
