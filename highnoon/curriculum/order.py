"""The easy-to-hard order: a stable sort of scores on (score, sample index) (numpy only).

Ties go to the lower index, so no platform or sort algorithm can change the order
(docs/design.md, "Determinism").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from highnoon.utils.hashing import new_sha256
from highnoon.utils.validation import InvalidArgumentError

_U = np.uint64


def check_scores(scores: Any) -> np.ndarray:
    array = np.asarray(scores)
    if array.ndim != 1:
        raise InvalidArgumentError(f"scores must be a 1-D array, got shape {array.shape}")
    if array.size == 0:
        raise InvalidArgumentError("scores=[] is empty; the curriculum needs at least one sample")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise InvalidArgumentError(f"scores must be real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype="<f8")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise InvalidArgumentError(
            f"scores[{bad}]={float(array[bad])!r} is not finite; scores must be finite numbers "
            "(no NaN or infinity)"
        )
    return array


class ScoresDigest:
    """``scores_fingerprint`` of scores given chunk by chunk, in order (equal to the fingerprint
    of the whole array; a store's scores are hashed while they are computed, never all held)."""

    def __init__(self) -> None:
        self._digest = new_sha256()
        self._count = 0

    def update(self, scores: np.ndarray) -> None:
        array = np.ascontiguousarray(scores, dtype="<f8").reshape(-1)
        view = array.view(np.uint8)
        step = 1 << 26
        for start in range(0, view.size, step):
            self._digest.update(view[start : start + step])
        self._count += array.size

    def fingerprint(self) -> str:
        return f"sha256:{self._digest.hexdigest()}:{self._count}"


def scores_fingerprint(scores: np.ndarray) -> str:
    """``sha256:<hex of the float64 little-endian bytes>:<length>``."""
    digest = ScoresDigest()
    digest.update(scores)
    return digest.fingerprint()


_SIGN = _U(1 << 63)
_ALL = _U((1 << 64) - 1)
_SORT_CHUNK = 1 << 16  # keys prepared at a time: temporaries of 0.5 MiB, cached and reused
_COMPOSITE_MIN = 1 << 16  # below this a plain stable argsort is as fast


def _sort_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys whose unsigned order is the float order (-0.0 and 0.0 are equal)."""
    bits = (values + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0
    flip = (bits >> _U(63)) * _ALL  # all ones for negatives
    flip |= _SIGN
    return bits ^ flip


def order_from_scores(scores: np.ndarray, composite_min: int = _COMPOSITE_MIN) -> np.ndarray:
    """Easy-to-hard order: indices sorted by (score, index), int64.

    Equal to ``np.argsort(scores, kind="stable")`` but about 5x faster at 100M samples, with one
    uint64 array of extra memory: each score becomes an order-preserving uint64 key, and the keys
    are ordered by ``_packed_order``. ``scores`` must be finite float64 (see ``check_scores``).
    """
    n = scores.size
    if n < composite_min:
        return np.argsort(scores + 0.0, kind="stable").astype(np.int64, copy=False)
    return _packed_order(n, lambda s, e: _sort_keys(scores[s:e]), lambda m: _sort_keys(scores[m]))


def sort_keys(scores: np.ndarray) -> np.ndarray:
    """uint64 keys whose unsigned order is the order of the float ``scores`` (-0.0 == 0.0).
    Scores without a negative one (every built-in strategy's) keep their bits: for
    non-negative floats the bit patterns already ascend with the values."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size and scores.min() >= 0.0:
        return (scores + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0
    return _sort_keys(scores)


def order_from_keys(keys: np.ndarray, composite_min: int = _COMPOSITE_MIN) -> np.ndarray:
    """Positions of uint64 ``keys`` sorted by (key, position), int64: ``order_from_scores`` for
    keys already made (``sort_keys``), as the stored orders' buckets hold them."""
    keys = np.asarray(keys, dtype=np.uint64)
    if keys.size < composite_min:
        return np.argsort(keys, kind="stable").astype(np.int64, copy=False)
    return _packed_order(keys.size, lambda s, e: keys[s:e], lambda m: keys[m])


def _packed_order(
    n: int,
    keys_of: Callable[[int, int], np.ndarray],
    keys_at: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Positions ``0..n-1`` sorted by (key, position), the uint64 keys given chunk by chunk
    (``keys_of(start, stop)``) and at positions (``keys_at``).

    Each key is shifted right by the trailing zero bits all keys share (after subtracting the
    minimum). When what is left fits 16 bits (integer scores of a small range: lengths), a
    stable radix argsort of those ranks is the order. Otherwise each key is packed with the position into one uint64 ``key << b | position`` (``b``
    position bits), which a plain (unstable, vectorised) value sort orders exactly by (key,
    position). When the keys need more than ``64 - b`` bits, the low bits are dropped for the
    packed sort and only the positions whose truncated keys collide are re-sorted exactly with
    ``np.lexsort`` (few, for real scores).
    """
    chunks = range(0, n, _SORT_CHUNK)
    kmin = min(int(keys_of(s, s + _SORT_CHUNK).min()) for s in chunks)
    spread_or, spread_max = 0, 0
    for s in chunks:
        d = keys_of(s, s + _SORT_CHUNK) - _U(kmin)
        spread_or |= int(np.bitwise_or.reduce(d))
        spread_max = max(spread_max, int(d.max()))
    if spread_or == 0:  # all keys equal: the position order
        return np.arange(n, dtype=np.int64)
    zeros = (spread_or & -spread_or).bit_length() - 1
    width = (spread_max >> zeros).bit_length()
    if width <= 16:  # few distinct keys (lengths): numpy's stable radix sort of 16-bit ranks
        ranks = np.empty(n, dtype=np.uint16)
        for s in chunks:
            d = keys_of(s, s + _SORT_CHUNK) - _U(kmin)
            ranks[s : s + d.size] = d >> _U(zeros)
        return np.argsort(ranks, kind="stable").astype(np.int64, copy=False)
    index_bits = (n - 1).bit_length()
    exact = width + index_bits <= 64
    shift = _U(zeros + max(0, width + index_bits - 64))
    packed = np.empty(n, dtype=np.uint64)
    for s in chunks:
        d = keys_of(s, s + _SORT_CHUNK) - _U(kmin)
        d >>= shift
        d <<= _U(index_bits)
        d |= np.arange(s, s + d.size, dtype=np.uint64)
        packed[s : s + d.size] = d
    packed.sort()
    collide = None
    if not exact:  # positions whose truncated key equals a neighbour's
        collide = np.zeros(n, dtype=bool)
        for s in chunks:
            hi = packed[s : s + _SORT_CHUNK + 1] >> _U(index_bits)
            same = hi[1:] == hi[:-1]
            collide[s : s + same.size] |= same
            collide[s + 1 : s + 1 + same.size] |= same
    packed &= _U((1 << index_bits) - 1)
    order = packed.view(np.int64)
    if collide is not None:
        positions = np.flatnonzero(collide)
        if positions.size:
            members = order[positions]  # runs are contiguous and ordered by the truncated key
            order[positions] = members[np.lexsort((members, keys_at(members)))]
    return order
