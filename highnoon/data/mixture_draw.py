"""A mixed epoch evaluated at positions: shares, the interleave and each source's samples
(numpy only; the rule is ``stage_data``'s "Mixing rule").

A mixed epoch is the merge of ``K`` sources' chosen samples: source ``i`` contributes ``c_i``
items, its ``j``-th at the key ``(2j + 1) / (2 c_i)`` (the middle of its ``j``-th share of the
epoch), and the epoch is the items sorted by (key, source). Nothing of it is materialised:

* ``interleave_rank(counts, source, j)``: an item's position, a sum of ``K`` closed forms (how
  many items of source ``l`` have a smaller key is a count of odd numbers below a bound);
* ``interleave_at(counts, positions)``: the inverse, a binary search per source on ``j`` (the
  rank grows with ``j``), so a range of ``R`` positions costs ``O(R K log c)``;
* ``interleave_prefix(counts, n)``: items of each source among the first ``n`` positions.

``MixtureDraw`` is one epoch as an order view: position -> the chosen sample's position in the
sources' training orders laid end to end (``offsets``). Source ``i``'s ``j``-th item is pool
position ``j mod P_i`` for its ``c_i // P_i`` whole passes (easy to hard), then
``KeyedPermutation(P_i, "mixture", seed, i)`` at ``(start_i + j') mod P_i`` for the window.
Keys are compared as integers (``(2j + 1) c_l`` against ``(2k + 1) c_i``), exact on every
machine while ``2 c_i c_l < 2**63``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from highnoon.utils.hashing import KeyedPermutation
from highnoon.utils.validation import InvalidArgumentError

_MAX_COUNT = 2_000_000_000  # 2 * c_i * c_l stays below 2**63


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` cut into shares ``w_i / sum(w)`` by largest remainder (ties to the earlier
    entry): integers summing to ``total``, each within one of its share."""
    total = int(total)
    weight_sum = float(sum(float(w) for w in weights))
    if weight_sum <= 0:
        raise InvalidArgumentError(f"weights={list(weights)!r} must sum to more than 0")
    targets = [float(w) / weight_sum * total for w in weights]
    counts = [int(t) for t in targets]
    by_remainder = sorted(range(len(targets)), key=lambda i: (-(targets[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _counts(counts: Sequence[int]) -> np.ndarray:
    c = np.asarray(counts, dtype=np.int64).reshape(-1)
    if c.size and (int(c.min()) < 0 or int(c.sum()) > _MAX_COUNT):
        raise InvalidArgumentError(
            f"counts={c.tolist()!r} must be >= 0 and sum to at most {_MAX_COUNT} (exact integer "
            "keys in int64)"
        )
    return c


def _before(c: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Items of every source that precede item ``j`` of source ``i`` (arrays of one shape)."""
    rank = j.copy()
    ci = c[i]
    for source, cl in enumerate(c.tolist()):
        if cl == 0:
            continue
        bound = (2 * j + 1) * cl  # item k of source l precedes when (2k+1) * c_i < bound
        limit = np.where(source < i, bound, bound - 1) // np.maximum(ci, 1)  # ties: lower first
        count = np.minimum((limit + 1) // 2, cl)  # odd numbers in [1, limit]
        rank += np.where(source == i, 0, count)
    return rank


def interleave_rank(counts: Sequence[int], source: Any, j: Any) -> np.ndarray:
    """Epoch positions of the items ``j`` of sources ``source`` (int64, their shape)."""
    c = _counts(counts)
    i = np.asarray(source, dtype=np.int64)
    jj = np.asarray(j, dtype=np.int64)
    i, jj = np.broadcast_arrays(i, jj)
    return _before(c, i.reshape(-1), jj.reshape(-1)).reshape(i.shape)


def _last_at_most(c: np.ndarray, source: int, q: np.ndarray) -> np.ndarray:
    """Per position ``q``: the largest ``j`` of ``source`` whose rank is ``<= q`` (-1 if none).

    An item's rank is within ``2K`` of ``(j + 0.5) * C / c_i`` (each other source is off by at
    most 1.5 items), so the search starts from a bracket of ``4K + 5`` around the estimate
    ``(q + 0.5) * c_i / C`` (widened to the whole range where it would miss, so it is exact
    whatever the bound): ``O(log K)`` steps, not ``O(log c_i)``."""
    count, k = int(c[source]), int(np.count_nonzero(c))
    i = np.full(q.shape, source, dtype=np.int64)
    guess = (2 * q + 1) * count // (2 * int(c.sum()))
    lo = np.maximum(guess - 2 * k - 2, -1)
    hi = np.minimum(guess + 2 * k + 3, count)
    lo[(lo >= 0) & (_before(c, i, np.maximum(lo, 0)) > q)] = -1
    hi[(hi < count) & (_before(c, i, np.minimum(hi, count - 1)) <= q)] = count
    for _ in range(count.bit_length() + 1):
        mid = (lo + hi) // 2
        live = hi - lo > 1
        if not live.any():
            break
        below = _before(c, i, np.maximum(mid, 0)) <= q
        lo = np.where(live & below, mid, lo)
        hi = np.where(live & ~below, mid, hi)
    return lo


def interleave_at(counts: Sequence[int], positions: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(source, j)`` of the items at epoch ``positions`` (each in ``[0, sum(counts))``)."""
    c = _counts(counts)
    q = np.asarray(positions, dtype=np.int64)
    flat = q.reshape(-1)
    total = int(c.sum())
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= total):
        raise InvalidArgumentError(
            f"positions must lie in [0, {total}); got values in [{int(flat.min())}, "
            f"{int(flat.max())}]"
        )
    source = np.full(flat.shape, -1, dtype=np.int64)
    index = np.zeros(flat.shape, dtype=np.int64)
    for i in np.flatnonzero(c).tolist():
        j = _last_at_most(c, i, flat)
        hit = (j >= 0) & (_before(c, np.full(flat.shape, i), np.maximum(j, 0)) == flat)
        source[hit], index[hit] = i, j[hit]
    return source.reshape(q.shape), index.reshape(q.shape)


def interleave_prefix(counts: Sequence[int], n: int) -> list[int]:
    """Items of each source among the epoch's first ``n`` positions (``0 <= n <= sum``)."""
    c = _counts(counts)
    q = np.array([int(n) - 1], dtype=np.int64)
    return [int(_last_at_most(c, i, q)[0]) + 1 if cl else 0 for i, cl in enumerate(c.tolist())]


class MixtureDraw:
    """One mixed epoch as an order view (module docstring): ``len`` is ``sum(counts)``, and
    ``draw[positions]`` is ``offsets[i] + `` the pool position of each item chosen there.

    Args:
      pools: ``P_i``, source ``i``'s pool (its easiest training samples) this epoch.
      counts: ``c_i``, its items this epoch (``c_i > 0`` needs ``P_i > 0``).
      starts: where its window of the keyed permutation of its pool begins.
      offsets: where its training order begins in the sources' orders laid end to end.
      seed: the stage's seed (keys each source's permutation with the source's index).
    """

    def __init__(
        self,
        pools: Sequence[int],
        counts: Sequence[int],
        starts: Sequence[int],
        offsets: Sequence[int],
        seed: int,
    ) -> None:
        self.pools = [int(p) for p in pools]
        self.counts = _counts(counts)
        self.starts = [int(s) for s in starts]
        self.offsets = [int(o) for o in offsets]
        self.seed = int(seed)
        self._permutations: dict[int, KeyedPermutation] = {}
        for i, (pool, count) in enumerate(zip(self.pools, self.counts.tolist())):
            if count and pool <= 0:
                raise InvalidArgumentError(
                    f"source {i} of the mixture has an empty pool but a share of {count}"
                )

    def __len__(self) -> int:
        return int(self.counts.sum())

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            key = np.arange(*key.indices(len(self)), dtype=np.int64)
        source, j = interleave_at(self.counts, key)
        out = np.empty(source.shape, dtype=np.int64)
        for i in np.unique(source).tolist():
            hit = source == i
            out[hit] = self.offsets[i] + self.pool_positions(i, j[hit])
        return out

    def pool_positions(self, source: int, j: np.ndarray) -> np.ndarray:
        """Pool positions of items ``j`` of ``source``: whole passes in pool order, then the
        window of the source's keyed permutation."""
        pool, count = self.pools[source], int(self.counts[source])
        passes = count // pool * pool
        j = np.asarray(j, dtype=np.int64)
        window = (self.starts[source] + j - passes) % pool
        if source not in self._permutations:
            self._permutations[source] = KeyedPermutation(pool, "mixture", self.seed, source)
        permuted = self._permutations[source](window)
        return np.where(j < passes, j % pool, permuted)
