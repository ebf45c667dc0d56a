"""A packed epoch's order: the pool in blocked keyed order, read a shuffle window at a time
(numpy only; docs/design.md, "Blocked epoch order").

A packed host packs the *global* stream, so it reads the sample and the stored length of every
position of every step. ``BlockedPermutation`` keeps a shuffle window's positions inside
``WINDOW_CHUNKS`` runs of ``CHUNK_SAMPLES`` consecutive pool ranks; ``PackedOrder`` reads a
window's samples and lengths once, run by run (the order view and the lengths view at the
window's ranks), and answers every position of that window from memory. A few windows are
kept (``KEEP_WINDOWS``, in a ``WindowCache`` a scheduler shares between its epochs: the horizon
estimate's window of the first epoch is still there when that epoch starts), so a host holds
O(window), whatever the pool.

Constants (measured in BENCHMARKS.md, "Blocked epoch order"): a chunk of 1 024 ranks is one
4 KiB page of a ``<u4`` stored order and of its lengths column; a window of 256 chunks holds
262 144 samples, about 70 global steps of 1 024 rows of 2 048 tokens. A pool of at most one
window (``CHUNK_SAMPLES x WINDOW_CHUNKS``) is permuted exactly as before
(``KeyedPermutation(n, "epoch", seed, epoch)``), so small data keeps its streams.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from highnoon.curriculum.order_views import OrderView, take
from highnoon.utils.blocked_permutation import BlockedPermutation

CHUNK_SAMPLES = 1024
WINDOW_CHUNKS = 256
KEEP_WINDOWS = 4  # shuffle windows held (16 bytes a sample: 16 MiB at the default sizes)


def packed_permutation(n: int, seed: int, epoch: int) -> BlockedPermutation:
    """The packed epoch order of a pool of ``n``: ranks at stream positions, keyed by (seed,
    epoch), blocked by the module's constants (read when called, so tests can shrink them)."""
    return BlockedPermutation(n, CHUNK_SAMPLES, WINDOW_CHUNKS, "epoch", seed, epoch)


class Identity:
    """An object as a dictionary key by identity (order views such as numpy arrays are not
    hashable, and equal values would not make them the same view). It holds the object, so
    its ``id`` cannot be reused by another while the key lives."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.obj is self.obj


class WindowCache:
    """The ``KEEP_WINDOWS`` shuffle windows read last, by key (an epoch's identity and the
    window), least recently used first out; thread-safe."""

    def __init__(self) -> None:
        self._windows: OrderedDict[Any, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[np.ndarray, np.ndarray | None] | None:
        with self._lock:
            hit = self._windows.get(key)
            if hit is not None:
                self._windows.move_to_end(key)
            return hit

    def put(self, key: Any, entry: tuple[np.ndarray, np.ndarray | None]) -> None:
        with self._lock:
            self._windows[key] = entry
            while len(self._windows) > KEEP_WINDOWS:
                self._windows.popitem(last=False)

    def retain(self, keep: Callable[[Any], bool]) -> None:
        """Drop every window whose key ``keep`` refuses."""
        with self._lock:
            for key in [k for k in self._windows if not keep(k)]:
                del self._windows[key]


class PackedOrder:
    """One packed epoch's stream read by position: ``items(first, last)`` -> (sample indices,
    stored lengths or None) at stream positions ``[first, last)``.

    Args:
      permutation: the epoch's ``BlockedPermutation`` of the pool (None: no shuffle, the
        pool in order).
      order: the pool's order view (rank -> store index).
      lengths: its lengths view (rank -> stored length), or None (the caller reads lengths
        through the store).
      cache, key: where its windows are kept (under ``(key, window)``): a cache shared by a
        scheduler's epochs, or its own.
    """

    def __init__(
        self,
        permutation: BlockedPermutation | None,
        order: OrderView,
        lengths: OrderView | None,
        *,
        cache: WindowCache | None = None,
        key: Any = None,
    ) -> None:
        self.permutation, self.order, self.lengths = permutation, order, lengths
        self._cache = WindowCache() if cache is None else cache
        self._key = key

    def _window(self, w: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Window ``w``'s samples and lengths in its index order, read once (runs of ranks)."""
        hit = self._cache.get((self._key, w))
        if hit is not None:
            return hit
        assert self.permutation is not None
        ranks = self.permutation.window_values(w)
        lengths = None if self.lengths is None else take(self.lengths, ranks)
        entry = (take(self.order, ranks), lengths)
        self._cache.put((self._key, w), entry)
        return entry

    def items(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Samples (int64) and their stored lengths (int64, or None without a lengths view) at
        stream positions ``[first, last)``."""
        positions = np.arange(first, last, dtype=np.int64)
        if self.permutation is None:  # no shuffle: the pool's ranks in order
            lengths = None if self.lengths is None else take(self.lengths, positions)
            return take(self.order, positions), lengths
        window, index = self.permutation.locate(positions)
        samples = np.empty(positions.shape, dtype=np.int64)
        lengths_out = None if self.lengths is None else np.empty(positions.shape, np.int64)
        for w in np.unique(window).tolist():
            hit = window == w
            window_samples, window_lengths = self._window(w)
            samples[hit] = window_samples[index[hit]]
            if lengths_out is not None and window_lengths is not None:
                lengths_out[hit] = window_lengths[index[hit]]
        return samples, lengths_out
