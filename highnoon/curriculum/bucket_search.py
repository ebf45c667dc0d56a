"""The bucket of each uint64 key among sorted splitters, by a table of the keys' high bits
(numpy only; the stored orders' external sort, docs/design.md "Stored orders").

``BucketSearch(splitters).of(keys)`` equals ``np.searchsorted(splitters, keys, side="left")``
(the number of splitters below each key) exactly, at a fraction of its cost: a binary search
of ~1 000 splitters is ten mispredicted branches per key (about 50 ns here), where this is a
handful of vectorised passes.

The splitters' range ``[splitters[1], splitters[-1]]`` (the smallest one is left out: a lone
low key would stretch the range) is cut into at most ``2**CELL_BITS`` cells of ``2**shift``
key values each; a key's cell is ``(clip(key) - base) >> shift``, and ``table[cell]`` the
number of splitters below the cell's first value (0 for the first cell, which also takes every
key below the range). The splitters inside a cell, at most ``steps`` of them, are then counted
by ``steps`` vectorised compares of the key with the next splitter. When some cell holds more
than ``MAX_STEPS`` splitters (keys crowded into a narrow range of values), the binary search is
used instead: the result is the same either way.
"""

from __future__ import annotations

import numpy as np

CELL_BITS = 16  # cells of the table: 2**16 entries of uint16, 128 KiB (second-level cache)
MAX_STEPS = 4  # splitters per cell counted by compares; more: the binary search


class BucketSearch:
    """``of(keys)``: the bucket of each key (``searchsorted(splitters, keys, "left")``) as
    ``uint8`` when there are at most 256 buckets, else ``uint16`` (or int64 past 65 536)."""

    def __init__(self, splitters: np.ndarray) -> None:
        self.splitters = np.asarray(splitters, dtype=np.uint64)
        self.num_buckets = self.splitters.size + 1
        self.dtype = np.dtype(
            np.uint8 if self.num_buckets <= 256
            else np.uint16 if self.num_buckets <= 1 << 16 else np.int64
        )  # fmt: skip
        self.table: np.ndarray | None = None
        if self.splitters.size >= 2 and self.num_buckets <= 1 << 16:
            self._build()

    def _build(self) -> None:
        s = self.splitters
        base, top = int(s[1]), int(s[-1])
        shift = max(0, (top - base).bit_length() - CELL_BITS)
        cells = ((top - base) >> shift) + 1
        starts = np.uint64(base) + (np.arange(cells, dtype=np.uint64) << np.uint64(shift))
        table = np.searchsorted(s, starts, side="left")
        table[0] = 0  # the first cell takes every key below the range too
        counts = np.diff(np.append(table, s.size))  # splitters from a cell's start to the next
        steps = int(counts.max())
        if steps > MAX_STEPS:
            return
        self.base, self.top, self.shift = np.uint64(base), np.uint64(top), np.uint64(shift)
        self.steps = steps
        self.table = table.astype(self.dtype)
        # the splitters, then one above every key, so a compare past the last is false
        self._next = np.append(s, np.uint64((1 << 64) - 1))

    def of(self, keys: np.ndarray) -> np.ndarray:
        """The bucket of each of ``keys`` (uint64): the number of splitters below it."""
        keys = np.asarray(keys, dtype=np.uint64)
        if self.table is None:
            return np.searchsorted(self.splitters, keys, side="left").astype(self.dtype)
        cell = np.clip(keys, self.base, self.top)
        cell -= self.base
        cell >>= self.shift
        out = self.table[cell.view(np.int64)]  # cells < 2**16: an index as it is, no cast
        for _ in range(self.steps):  # count the splitters of the key's cell below it
            out += self._next[out] < keys
        return out
