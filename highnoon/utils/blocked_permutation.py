"""A keyed bijection of ``[0, n)`` that keeps its values in blocks: locality for packed epochs
(numpy only; docs/design.md, "Blocked epoch order").

A packed host reads the stored length of every sample of every global step. Under a plain
``KeyedPermutation`` of the pool those samples sit at random ranks, so at 1e9 samples each one
costs a fresh page of the stored order and of the lengths. ``BlockedPermutation`` trades a little
randomness for locality, the way Megatron's, MosaicML streaming's and Grain's shuffles do:

* the values ``[0, n)`` are cut into ``K = ceil(n / C)`` chunks of ``C`` consecutive values
  (the last one ``L = n - (K - 1) C`` long);
* a keyed permutation of the chunks (``KeyedPermutation(K, *parts, "chunks")``) lays them out
  one after the other; the short chunk takes whatever place that permutation gives it, so no
  part of the range is favoured;
* the laid-out chunks are cut into shuffle windows of ``S`` chunks; window ``w``'s values are
  its chunks' values in ascending order (a reader fetches them in file order), and its
  positions take them in the order of ``KeyedPermutation(size_w, *parts, "window", w)``.

Position ``q`` -> its window, its offset there -> the window's permutation -> the chunk and the
value: vectorised, O(positions), nothing of size ``n`` is built. A window touches ``S`` chunks,
so a run of positions reads ``S`` runs of ``C`` consecutive values, whatever ``n``. When
``n <= C S`` (one window) the permutation is exactly ``KeyedPermutation(n, *parts)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from highnoon.utils.hashing import KeyedPermutation
from highnoon.utils.validation import InvalidArgumentError, check_positive_int

_KEEP_WINDOWS = 64  # window permutations kept (a derive_key each); a call touches a few


class BlockedPermutation:
    """A bijection of ``[0, n)`` keyed by ``parts``: chunks of ``chunk`` values permuted, then
    shuffled inside windows of ``window_chunks`` chunks (module docstring).

    ``perm(positions)`` gives the values; ``locate(positions)`` the (window, index in the
    window's values) of each; ``window_values(w)`` the values of window ``w`` in index order
    (its chunks' values, ascending), so ``perm(q) == window_values(w)[i]`` for ``(w, i) = locate(q)``.
    """

    def __init__(self, n: int, chunk: int, window_chunks: int, *parts: Any) -> None:
        self.n = check_positive_int("n", n)
        self.chunk = check_positive_int("chunk", chunk)
        self.window_chunks = check_positive_int("window_chunks", window_chunks)
        self.parts = parts
        self.num_chunks = -(-self.n // self.chunk)
        self.single = self.num_chunks <= self.window_chunks
        self._windows: dict[int, KeyedPermutation] = {}
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.single:  # one window: exactly the plain keyed permutation
            self.whole = KeyedPermutation(self.n, *parts)
            self.num_windows = 1
            return
        c, s = self.chunk, self.window_chunks
        self.chunks = KeyedPermutation(self.num_chunks, *parts, "chunks")
        self.last = self.n - (self.num_chunks - 1) * c  # the short chunk's length, in [1, C]
        self.short = c - self.last  # values it lacks against a whole chunk
        # where the permutation laid the short chunk (one inverse evaluation)
        self.short_at = int(self.chunks.inverse(np.array([self.num_chunks - 1]))[0])
        self.num_windows = -(-self.num_chunks // s)
        first_chunks = np.arange(self.num_windows + 1, dtype=np.int64) * s
        first_chunks[-1] = self.num_chunks
        self.starts = first_chunks * c - self.short * (first_chunks > self.short_at)

    def __len__(self) -> int:
        return self.n

    def window_size(self, w: int) -> int:
        """Positions (and values) of window ``w``."""
        if self.single:
            return self.n
        return int(self.starts[w + 1] - self.starts[w])

    def window_start(self, w: int) -> int:
        """The first position of window ``w``."""
        return 0 if self.single else int(self.starts[w])

    def _window_perm(self, w: int) -> KeyedPermutation:
        if self.single:
            return self.whole
        perm = self._windows.get(w)
        if perm is None:
            if len(self._windows) >= _KEEP_WINDOWS:
                self._windows.clear()
            perm = KeyedPermutation(self.window_size(w), *self.parts, "window", w)
            self._windows[w] = perm
        return perm

    def _check(self, positions: Any) -> np.ndarray:
        q = np.asarray(positions, dtype=np.int64)
        if q.size and (int(q.min()) < 0 or int(q.max()) >= self.n):
            raise InvalidArgumentError(
                f"positions must lie in [0, {self.n}); got values in [{int(q.min())}, "
                f"{int(q.max())}]"
            )
        return q

    def locate(self, positions: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(window, index)`` of each position (int64, the positions' shape): the position's
        window and the index of its value among ``window_values(window)``."""
        q = self._check(positions)
        flat = q.reshape(-1)
        index = np.empty(flat.shape, dtype=np.int64)
        if self.single:
            index[:] = self.whole(flat)
            return np.zeros(q.shape, dtype=np.int64), index.reshape(q.shape)
        c, s = self.chunk, self.window_chunks
        # as if the short chunk were whole: position -> laid-out chunk -> window
        padded = flat + self.short * (flat >= self.short_at * c + self.last)
        window = padded // (s * c)
        for w in np.unique(window).tolist():
            hit = window == w
            index[hit] = self._window_perm(w)(flat[hit] - self.starts[w])
        return window.reshape(q.shape), index.reshape(q.shape)

    def _layout(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``w``'s chunks in ascending order and where each begins among the window's
        values (its indices): the values are its chunks' values, ascending."""
        layout = self._layouts.get(w)
        if layout is None:
            c, s = self.chunk, self.window_chunks
            ids = np.sort(self.chunks(np.arange(w * s, min((w + 1) * s, self.num_chunks))))
            sizes = np.where(ids == self.num_chunks - 1, self.last, c)
            layout = (ids, np.cumsum(sizes) - sizes)
            if len(self._layouts) >= _KEEP_WINDOWS:
                self._layouts.clear()
            self._layouts[w] = layout
        return layout

    def values(self, window: np.ndarray, index: np.ndarray) -> np.ndarray:
        """The values at ``index`` of windows ``window`` (arrays of one shape): a window's
        values are its chunks' values in ascending order (``window_values``)."""
        w = np.asarray(window, dtype=np.int64)
        i = np.asarray(index, dtype=np.int64)
        if self.single:
            return i.copy()
        out = np.empty(i.shape, dtype=np.int64)
        for k in np.unique(w).tolist():
            hit = w == k
            ids, firsts = self._layout(k)
            at = np.searchsorted(firsts, i[hit], side="right") - 1
            out[hit] = ids[at] * self.chunk + (i[hit] - firsts[at])
        return out

    def __call__(self, positions: Any) -> np.ndarray:
        """The values at ``positions`` (int64, same shape)."""
        window, index = self.locate(positions)
        return self.values(window, index)

    def window_values(self, w: int) -> np.ndarray:
        """Window ``w``'s values in index order: its chunks' values, ascending (a few runs of
        consecutive values, in file order: what a reader of the window fetches)."""
        if not 0 <= int(w) < self.num_windows:
            raise InvalidArgumentError(f"window={w!r} must lie in [0, {self.num_windows})")
        if self.single:
            return np.arange(self.n, dtype=np.int64)
        ids, firsts = self._layout(int(w))
        sizes = np.diff(np.append(firsts, self.window_size(int(w))))
        offsets = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(firsts, sizes)
        return np.repeat(ids * self.chunk, sizes) + offsets
