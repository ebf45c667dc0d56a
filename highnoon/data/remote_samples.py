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
* checked samples go to the process-wide ``BlockCache`` (``store_cache_bytes``) with their
  first id's offset (a ``Sample`` tuple), keyed by one int (a hash of the file's path, size and
  version above the sample's index): the version hashes the file's block CRCs, so a hit needs
  no read of the sample's CRC nor of its offsets; ``prefetch``/``prefetch_samples`` fetch
  samples ahead on the prefetch threads (``prefetch_samples`` queues only the samples not
  cached);
* a call's missing samples are fetched together (``_fetch_samples``): their range reads, then
  their CRCs, then one cache insert.

Metadata is read the same way, so a host holds O(its rows + the cache bound), never O(shard):
the shard's offsets (8 bytes a sample) and sample CRCs (4) are read through their own
block-checked ``RangedFile`` objects, block by block as samples need them, into the same bounded
cache. A caller that knows which sample each position lies in (the pipeline does:
``sample_bounds`` gave the positions) passes it (``take(..., samples=)``, compact: ``[rows, 1]``
for rows of positions) and the file reads the offsets of the samples it must fetch only (a
cached one carries its offset); without it a position is
found by a binary search over the offsets file (``_locate``: about 13 blocks for a shard of
1e9 samples in 1 MiB blocks, mostly cached). ``verify()`` still checks every block of the file
(the inherited per-block CRCs), so ``highnoon-prepare-data --verify`` is unchanged.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any

import google_crc32c
import numpy as np

from highnoon.data.blocks import BlockCrcs, check_range
from highnoon.data.remote_blocks import BlockCache, RangedFile, _prefetcher
from highnoon.data.store_errors import StoreError
from highnoon.utils.hashing import sha256_hex
from highnoon.utils.validation import check_int

# Samples closer than this are fetched in one range read, the gap's bytes included: a request
# to a bucket costs tens of ms, about what 1 MB of transfer does, but the bytes-read goal
# (<= 1.2x the rows' bytes) bounds what may be read beside them (BENCHMARKS.md).
GAP_BYTES = 256
SMALL_UNIQUE = 4096  # samples= arrays up to this size are sorted whole, larger ones by runs
SAMPLE_BITS = 48  # a shard's samples fit in this many bits of a cache key


def _runs_of(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index, length) of each run of equal consecutive ``values`` (1-D)."""
    heads = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return heads, np.diff(np.append(heads, values.size))


def _sorted_unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for a short 1-D array (a call's rows), with a
    fast path for values all distinct (the common case: one sort, no grouping)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    if ordered.size > 1 and not (ordered[1:] != ordered[:-1]).all():
        return np.unique(values, return_inverse=True)
    inverse = np.empty(values.size, dtype=np.int64)
    inverse[order] = np.arange(values.size)
    return ordered, inverse


def _unique_by_runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)``, sorting one value per run of equal
    consecutive values (a row's positions share their sample: runs of hundreds)."""
    heads, sizes = _runs_of(values)
    wanted, run_inverse = np.unique(values[heads], return_inverse=True)
    return wanted, np.repeat(run_inverse, sizes)


# A checked sample as the cache holds it: ``(its first id's local position, its bytes)``. A
# tuple of an int and bytes, not an object: the garbage collector stops tracking such a tuple
# at its first collection, so a cache of millions of samples adds nothing to a full
# collection's walk (an object per sample did: a pass of 8000 cold samples in a process with
# TensorFlow loaded triggered 0.26 s full collections; BENCHMARKS.md). The start spares a
# cached sample any read of its offsets.
Sample = tuple[int, bytes]


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
        crc32c: BlockCrcs,
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
        self.num_samples = self._crc_file.size // 4
        space = sha256_hex(f"{self.path}\n{self.size}\n{self.version}\nsample", chars=24)
        self._key_base = int(space, 16) << SAMPLE_BITS  # sample s's cache key: base + s
        self.samples_verified = 0  # samples checked against their CRC by this object
        # read-ahead fetches done (``_prefetch_now``): a read that finds it unchanged after
        # taking the fetch lock knows no read-ahead cached its missing samples meanwhile (another
        # object of the same file may have: that sample is fetched twice, never served wrong)
        self._fetched_ahead = 0

    # -- metadata (read by block through the cache, never whole) ------------------------------
    def _check_metadata(self) -> None:
        """The offsets and sample CRC files describe the same samples (sizes only: no read)."""
        if self._offsets_file.size != (self.num_samples + 1) * 8:
            raise self._metadata_error(self._offsets_file.size // 8)

    def _metadata_error(self, entries: int) -> StoreError:
        return StoreError(
            f"{self.label}: offsets.bin ({entries} entries) and sample_crc32c.bin "
            f"({self.num_samples}) do not describe a tokens file of {self.size} bytes; rebuild "
            "the store"
        )

    def _bounds(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first id, end) of the samples ``wanted`` (local indices), from their offsets'
        blocks; a sample ending past the file is the metadata's fault, named as such."""
        self._check_metadata()
        both = self._offsets_file.take(np.concatenate([wanted, wanted + 1]), "<i8")
        starts, ends = both[: wanted.size], both[wanted.size :]
        if ends.size and int(ends.max()) * self.dtype.itemsize > self.size:
            raise self._metadata_error(self._offsets_file.size // 8)
        return starts, ends

    def _locate(self, flat: np.ndarray) -> np.ndarray:
        """The local sample holding each position of ``flat`` (1-D, inside the file): a
        vectorised binary search over the offsets file, one ``take`` a level, so only the
        blocks on the search paths are read (no caller hint: ``read``, byte-span prefetches)."""
        self._check_metadata()
        heads, _ = _runs_of(flat)
        values = np.unique(flat[heads])
        lo = np.zeros(values.size, dtype=np.int64)  # offsets[lo] <= value
        hi = np.full(values.size, self.num_samples, dtype=np.int64)  # offsets[hi] > value
        while True:
            open_ = hi - lo > 1
            if not open_.any():
                break
            mid = (lo + hi) // 2
            at = self._offsets_file.take(mid[open_], "<i8")
            below = np.zeros(values.size, dtype=bool)
            below[open_] = at <= values[open_]
            lo = np.where(open_ & below, mid, lo)
            hi = np.where(open_ & ~below, mid, hi)
        return lo[np.searchsorted(values, flat)]

    # -- reads ------------------------------------------------------------------------------
    def take(self, positions: np.ndarray, dtype: Any, samples: Any = None) -> np.ndarray:
        """Ids at element ``positions`` (any shape), read through the samples holding them;
        ``samples`` (broadcastable to ``positions``): the local sample of each position, when
        the caller knows it (spares the search; checked against the samples' bounds). Pass it
        as compact as it is (``[rows, 1]`` for rows of one sample each): the samples are
        looked up once per entry of ``samples``, not once per position."""
        dtype = np.dtype(dtype)
        if dtype != self.dtype:
            return super().take(positions, dtype)  # not the store's ids: per-block reads
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size == 0:
            return np.zeros(pos.shape, dtype=dtype)
        if samples is None:
            if pos.min() < 0 or pos.max() >= self.size // dtype.itemsize:
                low, high = int(pos.min()) * dtype.itemsize, (int(pos.max()) + 1) * dtype.itemsize
                check_range(self.label, self.size, low, high)
            owner = self._locate(pos.reshape(-1)).reshape(pos.shape)
        else:  # no range check: each position is checked inside its sample, below
            owner = np.asarray(samples, dtype=np.int64)
            np.broadcast_shapes(owner.shape, pos.shape)  # a wrong shape fails here, not later
        if owner.size <= SMALL_UNIQUE:  # a call's rows: a plain sort is cheapest
            wanted, inverse = _sorted_unique(owner.reshape(-1))
        else:  # positions of long runs of one sample
            wanted, inverse = _unique_by_runs(owner.reshape(-1))
        if wanted[0] < 0 or wanted[-1] >= self.num_samples:
            raise StoreError(
                f"{self.label}: samples= holds local samples in [{wanted[0]}, {wanted[-1]}], "
                f"the shard has {self.num_samples}"
            )
        inverse = inverse.reshape(owner.shape)
        data, base, starts, sizes = self._gathered(wanted)
        first, end = starts[inverse], (starts + sizes)[inverse]
        if pos.ndim and owner.shape == (*pos.shape[:-1], 1):  # rows of one sample each
            # each row's extremes against its sample's bounds: two reductions, no temporaries
            outside = (pos.min(axis=-1, keepdims=True) < first).any() or (
                pos.max(axis=-1, keepdims=True) >= end).any()  # fmt: skip
        else:
            outside = ((pos < first) | (pos >= end)).any()
        if outside:
            raise StoreError(
                f"{self.label}: a position read lies outside the sample it was given with "
                "(samples= must be the sample holding each position, as sample_bounds gives)"
            )
        return data[pos + (base - starts)[inverse]]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Bytes ``[start, stop)``, read through the samples they touch (each checked)."""
        start, stop = int(start), int(stop)
        check_range(self.label, self.size, start, stop)
        if start == stop:
            return np.zeros(0, dtype=np.uint8)
        item = self.dtype.itemsize
        first, last = self._locate(np.array([start // item, (stop - 1) // item])).tolist()
        data, _, starts, _ = self._gathered(np.arange(first, last + 1))
        raw = data.view(np.uint8)  # consecutive samples: the bytes from sample `first` on
        lo = start - int(starts[0]) * item
        return raw[lo : lo + stop - start].copy()

    def _gathered(self, wanted: np.ndarray) -> tuple[np.ndarray, ...]:
        """(ids of the samples ``wanted`` (sorted unique local indices) back to back, where
        each one starts in them, its first id's local position, its length in ids)."""
        firsts, chunks = zip(*self._samples(wanted))
        starts = np.array(firsts, dtype=np.int64)
        sizes = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks))
        sizes //= self.dtype.itemsize
        data = np.frombuffer(b"".join(chunks), dtype=self.dtype)
        return data, np.cumsum(sizes) - sizes, starts, sizes

    # -- prefetch ---------------------------------------------------------------------------
    def prefetch_samples(self, samples: np.ndarray) -> None:
        """Fetch the local ``samples`` into the cache on a prefetch thread (a hint, as
        ``prefetch``; what ``TokenStore.prefetch_samples`` uses). Samples already cached are
        left out here, and a request with none missing wakes no thread: a prefetch thread
        that only finds its samples cached costs the reading threads the GIL for nothing.
        Nothing is asked while the file's reads do not wait (``reads_wait``): its samples are
        then fetched by the read that needs them."""
        if not self.reads_ahead_now:
            return
        wanted = np.sort(np.asarray(samples, dtype=np.int64).reshape(-1))
        wanted = wanted[np.append(True, wanted[1:] != wanted[:-1])]  # np.unique, for few values
        missing = self.cache.missing(self._sample_keys(wanted.tolist()))
        if missing and not _prefetcher().submit(self, wanted[missing]):
            self.prefetch_dropped += 1

    def _prefetch_now(self, request: Any) -> None:
        """Fetch the samples of ``request`` (on a prefetch thread): sorted unique local sample
        indices (``prefetch_samples``) or byte spans (``prefetch``); errors kept for the next
        read."""
        try:
            if isinstance(request, np.ndarray):
                wanted = request
            else:
                item = self.dtype.itemsize
                spans = [(a, min(b, self.size)) for a, b in request if 0 <= a < min(b, self.size)]
                if not spans:
                    return
                ends = self._locate(
                    np.array([p for a, b in spans for p in (a // item, (b - 1) // item)])
                ).reshape(-1, 2)
                wanted = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in ends.tolist()]))
            with self._fetch_lock:  # only what is still missing: a read may have fetched some
                missing = self.cache.missing(self._sample_keys(wanted.tolist()))
                if missing:
                    try:
                        self._fetch_samples(wanted[missing])
                    finally:  # after its cache puts, still under the lock: a read that
                        self._fetched_ahead += 1  # looked before them sees the change
        except BaseException as err:  # kept for the next read: never lost
            self._prefetch_error = err

    # -- samples ----------------------------------------------------------------------------
    def _sample_keys(self, wanted: list[int]) -> list[int]:
        """The cache keys of samples ``wanted``: one int each, the file's name space above
        ``SAMPLE_BITS`` bits of sample index (an int hashes and compares faster than a tuple
        and needs no object of its own; block keys are tuples, so the two never meet). The name
        space hashes the file's path, size and version (its block CRCs, which cover every
        byte), so a store rebuilt at the same path never serves an old sample; a cached sample
        is found without reading its CRC (that is read to check a fetched one)."""
        return list(map(self._key_base.__add__, wanted))

    def _samples(self, wanted: np.ndarray, *, raise_pending: bool = True) -> list[Sample]:
        """The checked samples ``wanted`` (sorted unique local indices), in that order: cached,
        or fetched (their bounds read from the offsets, for those only)."""
        if raise_pending and self._prefetch_error is not None:
            err, self._prefetch_error = self._prefetch_error, None
            raise err
        if not self.cache.enabled:
            with self._fetch_lock:
                return self._fetch_samples(wanted)
        ahead = self._fetched_ahead  # read-ahead fetches so far (none since: no second look)
        keys = self._sample_keys(wanted.tolist())
        found = self.cache.get_many(keys)  # one lock for the whole call's samples
        if not any(map(operator.is_, found, itertools.repeat(None))):
            return found  # type: ignore[return-value]
        with self._fetch_lock:
            absent = map(operator.is_, found, itertools.repeat(None))
            missing = list(itertools.compress(range(len(keys)), absent))
            if self._fetched_ahead != ahead:  # a read-ahead fetched meanwhile: look again
                again = self.cache.get_many([keys[i] for i in missing], count=False)
                for i, c in zip(missing, again):
                    found[i] = c
                missing = [i for i, c in zip(missing, again) if c is None]
            if len(missing) == len(keys):  # a cold call: fetched whole, no step a sample
                return self._fetch_samples(wanted, keys)
            if missing:
                fetched = self._fetch_samples(wanted[missing], [keys[i] for i in missing])
                for i, c in zip(missing, fetched):
                    found[i] = c
        return found  # type: ignore[return-value]

    def _groups(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
        """For sorted samples of these bounds, the index of the range read fetching each: a
        sample starting at most ``gap_bytes`` after the previous one's end joins its read.
        None when no two samples join (scattered rows: one read a sample)."""
        joins = (starts[1:] - ends[:-1]) * self.dtype.itemsize <= self.gap_bytes
        if not joins.any():
            return None
        return np.concatenate([[0], np.cumsum(~joins)]).astype(np.int64)

    def _fetch_samples(self, samples: np.ndarray, keys: list[int] | None = None) -> list[Sample]:
        """Fetch ``samples`` (sorted unique; ``keys``: their cache keys, when the caller has
        them): their bounds and CRCs read by block, one range read per group of near samples
        (``_groups``), all issued together, then every sample checked against its CRC32C; the
        good ones are cached, and a bad one raises. Caller holds the fetch lock."""
        if samples.size == 0:
            return []
        starts, ends = self._bounds(samples)
        expected = self._crc_file.take(samples, "<u4").tolist()
        item = self.dtype.itemsize
        group = self._groups(starts, ends)
        if group is None:  # no two samples share a read: each read is a sample
            chunks = self._fetch_many((starts * item).tolist(), (ends * item).tolist())
        else:
            first = np.flatnonzero(np.diff(group, prepend=-1))  # each group's first sample
            last = np.append(first[1:], samples.size) - 1
            begin = starts[first] * item
            datas = self._fetch_many(begin.tolist(), (ends[last] * item).tolist())
            los = (starts * item - begin[group]).tolist()
            his = (ends * item - begin[group]).tolist()
            chunks = [datas[g][lo:hi] for g, lo, hi in zip(group.tolist(), los, his)]
        actual = list(map(google_crc32c.value, chunks))
        out = list(zip(starts.tolist(), chunks))
        if actual == expected:  # one comparison of the lists in the common case
            if self.cache.enabled:
                if keys is None:
                    keys = self._sample_keys(samples.tolist())
                self.cache.put_many(keys, out, sizes=list(map(len, chunks)))
            self.samples_verified += len(out)
            return out
        keep = list(map(operator.eq, actual, expected))  # the good ones are kept
        if self.cache.enabled:
            keys = self._sample_keys(samples[keep].tolist())
            self.cache.put_many(keys, list(itertools.compress(out, keep)))
        self.samples_verified += sum(keep)
        i = keep.index(False)
        s, offset = int(samples[i]), int(starts[i]) * item
        raise StoreError(
            f"{self.label}: sample {self.first_sample + s} (sample {s} of the shard, byte "
            f"offset {offset}, bytes [{offset}, {int(ends[i]) * item})) has CRC32C "
            f"{actual[i]:#010x}, sample_crc32c.bin records {expected[i]:#010x}; the store "
            "is corrupt, rebuild it"
        )

    def __repr__(self) -> str:
        return f"SampleRangedFile({self.path!r}, size={self.size})"
