"""A shard's ``tokens.bin`` read in place sample by sample: exact byte ranges, CRC32C per sample.

``RangedFile`` (``remote_blocks.py``) reads and checks whole blocks (1 MiB by default), so a
host whose rows are scattered samples of a few KB fetches tens of times its rows' bytes.
``SampleRangedFile`` makes the *sample* the unit of reading and checking for the tokens file:

* a read needs the samples its positions fall in (found in the shard's offsets) and fetches
  exactly their byte ranges, samples that touch or nearly touch (gap <= ``gap_bytes``, counted
  in ``bytes_read``) coalesced into one range read;
* each fetched sample is checked against its CRC32C in the shard's ``sample_crc32c.bin``
  before any of its ids is returned: a mismatch is a ``StoreError`` naming the store, shard,
  sample index and byte offset;
* checked samples go to the process-wide ``BlockCache`` (``store_cache_bytes``), keyed by
  (file, size, sample, CRC), and ``prefetch`` fetches samples ahead on the prefetch threads.

The shard's offsets (8 bytes a sample) are read whole, through their own block-checked
``RangedFile``, on the first read of its tokens (positions are mapped to samples by a binary
search in them), and its sample CRCs by block as samples need them: metadata of the same kind
as the features the curriculum already loads for every sample; issue 21 (an O(rows) data path)
removes both. ``verify()`` still checks every block of the file (the inherited
per-block CRCs), so ``highnoon-prepare-data --verify`` is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import google_crc32c
import numpy as np

from highnoon.data.blocks import check_range
from highnoon.data.remote_blocks import BlockCache, RangedFile
from highnoon.data.store_errors import StoreError
from highnoon.utils.validation import check_int

# Samples closer than this are fetched in one range read, the gap's bytes included: a request
# to a bucket costs tens of ms, about what 1 MB of transfer does, but the bytes-read goal
# (<= 1.2x the rows' bytes) bounds what may be read beside them (BENCHMARKS.md).
GAP_BYTES = 256


def _samples_of(flat: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted samples holding positions ``flat``, each position's index into them).

    A row's positions rise by 0 or 1 inside one sample, so the samples are looked up once per
    such run (its first and last position), not per position; if some run spans two samples
    (two adjacent samples read back to back), per position."""
    step = np.diff(flat)
    heads = np.flatnonzero(np.concatenate([[True], (step != 0) & (step != 1)]))
    tails = np.append(heads[1:], flat.size) - 1
    first = np.searchsorted(offsets, flat[heads], side="right") - 1
    if not np.array_equal(first, np.searchsorted(offsets, flat[tails], side="right") - 1):
        heads, tails = np.arange(flat.size), np.arange(flat.size)
        first = np.searchsorted(offsets, flat, side="right") - 1
    wanted, run_inverse = np.unique(first, return_inverse=True)
    return wanted, np.repeat(run_inverse, tails - heads + 1)


class SampleRangedFile(RangedFile):
    """A shard's ``tokens.bin`` at any ``tf.io.gfile`` path, read and checked per sample.

    Args:
      path, size, block_bytes, crc32c, label, cache: as ``RangedFile`` (the block CRCs serve
        ``verify()``).
      dtype: the store's token dtype.
      offsets: the shard's ``offsets.bin`` (a ``BlockFile``), local sample offsets in ids.
      sample_crc32c: the shard's ``sample_crc32c.bin`` (a ``BlockFile``), one ``<u4`` a sample.
      first_sample: the store's index of the shard's first sample (for error messages).
      gap_bytes: samples at most this far apart are fetched in one range read.
    """

    def __init__(
        self,
        path: str,
        size: int,
        block_bytes: int,
        crc32c: Sequence[int],
        *,
        label: str,
        dtype: Any,
        offsets: Any,
        sample_crc32c: Any,
        first_sample: int = 0,
        cache: BlockCache | None = None,
        gap_bytes: int = GAP_BYTES,
    ) -> None:
        super().__init__(path, size, block_bytes, crc32c, label=label, cache=cache)
        self.dtype = np.dtype(dtype)
        self.first_sample = check_int("first_sample", first_sample, minimum=0)
        self.gap_bytes = check_int("gap_bytes", gap_bytes, minimum=0)
        self._offsets_file = offsets
        self._crc_file = sample_crc32c
        self._offsets: np.ndarray | None = None
        self.samples_verified = 0  # samples checked against their CRC by this object

    # -- metadata ---------------------------------------------------------------------------
    def _metadata(self) -> np.ndarray:
        """The shard's offsets (ids, ``<i8``), read whole on first use; the sample CRCs are
        read by block as samples need them (``_samples``)."""
        if self._offsets is None:
            with self._fetch_lock:
                if self._offsets is None:
                    offsets = self._offsets_file.read(0, self._offsets_file.size).view("<i8")
                    num_crcs = self._crc_file.size // 4
                    if offsets.size != num_crcs + 1 or int(offsets[-1]) * self.dtype.itemsize != (
                        self.size
                    ):
                        raise StoreError(
                            f"{self.label}: offsets.bin ({offsets.size} entries) and "
                            f"sample_crc32c.bin ({num_crcs}) do not describe a tokens file of "
                            f"{self.size} bytes; rebuild the store"
                        )
                    self._offsets = offsets
        return self._offsets

    # -- reads ------------------------------------------------------------------------------
    def take(self, positions: np.ndarray, dtype: Any) -> np.ndarray:
        """Ids at element ``positions`` (any shape), read through the samples holding them."""
        dtype = np.dtype(dtype)
        if dtype != self.dtype:
            return super().take(positions, dtype)  # not the store's ids: per-block reads
        pos = np.asarray(positions, dtype=np.int64)
        count = self.size // dtype.itemsize
        if pos.size == 0:
            return np.zeros(pos.shape, dtype=dtype)
        if pos.min() < 0 or pos.max() >= count:
            low, high = int(pos.min()), int(pos.max())
            check_range(self.label, self.size, low * dtype.itemsize, (high + 1) * dtype.itemsize)
        offsets = self._metadata()
        flat = pos.reshape(-1)
        wanted, inverse = _samples_of(flat, offsets)
        data, base = self._gathered(wanted)
        out = data[(base - offsets[wanted])[inverse] + flat]
        return out.reshape(pos.shape)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Bytes ``[start, stop)``, read through the samples they touch (each checked)."""
        start, stop = int(start), int(stop)
        check_range(self.label, self.size, start, stop)
        if start == stop:
            return np.zeros(0, dtype=np.uint8)
        offsets = self._metadata()
        item = self.dtype.itemsize
        first = int(np.searchsorted(offsets, start // item, side="right")) - 1
        last = int(np.searchsorted(offsets, (stop - 1) // item, side="right")) - 1
        data, _ = self._gathered(np.arange(first, last + 1))
        raw = data.view(np.uint8)  # consecutive samples: the bytes from sample `first` on
        lo = start - int(offsets[first]) * item
        return raw[lo : lo + stop - start].copy()

    def _gathered(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids of the samples ``wanted`` (sorted unique local indices), back to back, and
        where each one starts in them."""
        samples = self._samples(wanted)
        parts = [samples[s] for s in wanted.tolist()]
        sizes = np.fromiter((p.size for p in parts), dtype=np.int64, count=len(parts))
        base = np.cumsum(sizes) - sizes
        data = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return data, base

    # -- prefetch (``RangedFile.prefetch`` queues byte ranges; they are fetched here) --------
    def _prefetch_now(self, spans: list[tuple[int, int]]) -> None:
        """Fetch the samples of ``spans`` (on a prefetch thread); errors kept for the next read."""
        try:
            offsets = self._metadata()
            item = self.dtype.itemsize
            spans = [(a, min(b, self.size)) for a, b in spans if 0 <= a < min(b, self.size)]
            if not spans:
                return
            lo = np.array([a for a, _ in spans], dtype=np.int64) // item
            hi = (np.array([b for _, b in spans], dtype=np.int64) - 1) // item
            first = np.searchsorted(offsets, lo, side="right") - 1
            last = np.searchsorted(offsets, hi, side="right") - 1
            wanted = np.unique(
                np.concatenate([np.arange(a, b + 1) for a, b in zip(first.tolist(), last.tolist())])
            )
            self._samples(wanted, raise_pending=False)
        except BaseException as err:  # kept for the next read: never lost
            self._prefetch_error = err

    # -- samples ----------------------------------------------------------------------------
    def _sample_key(self, s: int, crc: int) -> tuple[Any, ...]:
        return (self.path, self.size, "sample", s, crc)

    def _samples(self, wanted: np.ndarray, *, raise_pending: bool = True) -> dict[int, np.ndarray]:
        """The verified ids of the samples ``wanted`` (sorted unique): cached, or fetched."""
        if raise_pending and self._prefetch_error is not None:
            err, self._prefetch_error = self._prefetch_error, None
            raise err
        offsets = self._metadata()
        wanted_list = wanted.tolist()
        crcs = dict(zip(wanted_list, self._crc_file.take(wanted, "<u4").tolist()))
        use_cache = self.cache.enabled
        found: dict[int, np.ndarray] = {}
        missing = []
        for s in wanted_list:
            ids = self.cache.get(self._sample_key(s, crcs[s])) if use_cache else None
            if ids is None:
                missing.append(s)
            else:
                found[s] = ids
        if not missing:
            return found
        with self._fetch_lock:
            still = []
            for s in missing:  # a prefetch may have fetched it meanwhile
                key = self._sample_key(s, crcs[s])
                ids = self.cache.get(key, count=False) if use_cache else None
                if ids is None:
                    still.append(s)
                else:
                    found[s] = ids
            for group in self._ranges(np.asarray(still, dtype=np.int64), offsets):
                found.update(self._fetch_samples(group, offsets, crcs))
        return found

    def _ranges(self, samples: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
        """``samples`` (sorted) split into groups fetched by one range read each: a sample
        starting at most ``gap_bytes`` after the previous one's end joins its group."""
        if samples.size == 0:
            return []
        item = self.dtype.itemsize
        gaps = (offsets[samples[1:]] - offsets[samples[:-1] + 1]) * item
        return np.split(samples, np.flatnonzero(gaps > self.gap_bytes) + 1)

    def _fetch_samples(
        self, group: np.ndarray, offsets: np.ndarray, crcs: dict[int, int]
    ) -> dict[int, np.ndarray]:
        """One range read from the first sample of ``group`` to the end of its last, each
        sample checked against its CRC32C; caller holds the fetch lock."""
        item = self.dtype.itemsize
        start = int(offsets[group[0]]) * item
        data = self._fetch_range(start, int(offsets[group[-1] + 1]) * item)
        out = {}
        for s in group.tolist():
            lo, hi = int(offsets[s]) * item - start, int(offsets[s + 1]) * item - start
            raw = data[lo:hi]
            actual = google_crc32c.value(raw)
            if actual != crcs[s]:
                raise StoreError(
                    f"{self.label}: sample {self.first_sample + s} (sample {s} of the shard, byte "
                    f"offset {start + lo}, bytes [{start + lo}, {start + hi})) has CRC32C "
                    f"{actual:#010x}, sample_crc32c.bin records {crcs[s]:#010x}; the store "
                    "is corrupt, rebuild it"
                )
            ids = raw.view(self.dtype)
            if self.cache.enabled:
                ids = ids.copy()  # own its memory: the range read may hold other samples
                self.cache.put(self._sample_key(s, crcs[s]), ids)
            out[s] = ids
        self.samples_verified += len(out)
        return out

    def __repr__(self) -> str:
        return f"SampleRangedFile({self.path!r}, size={self.size})"
