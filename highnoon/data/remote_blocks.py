"""Store files read in place through ``tf.io.gfile``: byte ranges, verified per block, cached.

A store on a bucket (``gs://...``) or any other ``tf.io.gfile`` filesystem (``ram://``,
``file://``, ``s3://`` with tensorflow-io) is never copied whole: ``RangedFile`` fetches the
blocks a read needs with ``seek`` + ``read`` range reads, adjacent missing blocks coalesced into
one read, and checks each fetched block against the CRC32C the shard's manifest records before
any byte of it is used. A mismatch is a ``StoreError`` naming the file, the block and its byte
offset.

Fetched blocks go to one process-wide LRU ``BlockCache`` (``block_cache()``; its size is the
``store_cache_bytes`` setting, 0 = no cache), keyed by (file, size, a hash of its block CRCs,
block), so a store rebuilt at the same path never serves a stale block; a cache hit needs no
CRC (block CRCs kept in a side file are read by page, through the same cache, only for the
blocks fetched). ``RangedFile.prefetch(ranges)`` queues the
byte ranges of the next steps for the process' prefetch threads (``PREFETCH_THREADS``, one
bounded queue for every file), which fill the cache ahead of the reads; a prefetch's error is
kept and raised by the next ``read``/``take`` of that file. Requests are taken only while the
file's reads wait (``reads_wait``, from timing each fetch's first reads): a store served from
memory is read on demand, where a read-ahead thread would only cost the reading threads CPU.

On ``gs://``, TensorFlow's client reads 64 MiB ahead of every read position unless
``GCS_READ_CACHE_BLOCK_SIZE_MB`` is set before TensorFlow starts (docs/design.md, "Reading a
store in place"); a warning says so once.

TensorFlow is imported on first fetch only (``data`` imports no TensorFlow at module level).
"""

from __future__ import annotations

import collections
import functools
import itertools
import operator
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import google_crc32c
import numpy as np
from absl import logging

from highnoon.data.blocks import (
    BlockCrcs,
    SidecarCrcs,
    check_range,
    crc_array,
    crc_mismatch,
    crc_version,
)
from highnoon.data.store_errors import StoreError
from highnoon.utils.hashing import sha256_hex
from highnoon.utils.validation import check_int

DEFAULT_CACHE_BYTES = 2 << 30  # 2 GiB: the `store_cache_bytes` setting's default
PREFETCH_QUEUE = 64  # prefetch requests pending in the process; more are dropped (hints)
PREFETCH_THREADS = 2  # fetch for several files at once (one file's fetches are serial)
# Read ahead only from a file whose range reads wait: the fastest of a fetch's first
# TIMED_READS reads took at least this long (a bucket: milliseconds; a cold disk: 0.1 ms and
# more). A read served from memory (a `file://` store in the page cache: 1-3 us) leaves
# nothing for a read-ahead thread to hide, and the thread's GIL hand-offs cost the reading
# threads CPU (BENCHMARKS.md, "In-place reads", reading ahead only where reads wait).
READ_AHEAD_WAIT_S = 50e-6
TIMED_READS = 8
_clock = time.perf_counter  # the reads' clock (tests replace it)


def entry_bytes(entry: Any) -> int:
    """The bytes a cache entry holds: a block's (a uint8 array) or a sample's (a
    ``(start, bytes)`` tuple, ``remote_samples.Sample``)."""
    return entry.nbytes if isinstance(entry, np.ndarray) else len(entry[1])


class BlockCache:
    """A bounded, thread-safe LRU of verified blocks (uint8 arrays) and samples
    (``entry_bytes``), shared by every file.

    ``max_bytes=0`` caches nothing. Entries larger than the whole cache are never kept.
    Counters: ``hits``, ``misses``, ``evictions``; ``bytes_held`` is the current size.
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = check_int("store_cache_bytes", max_bytes, minimum=0)
        self._blocks: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.bytes_held = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def get(self, key: tuple[Any, ...], *, count: bool = True) -> np.ndarray | None:
        """The block under ``key`` (now the most recently used), or None; ``count=False`` for a
        second look that should not count as another hit or miss."""
        return self.get_many([key], count=count)[0]

    def get_many(self, keys: Sequence[tuple[Any, ...]], *, count: bool = True) -> list[Any | None]:
        """``get`` of several keys under one lock (a call's samples); the loops run in C (a
        call of 256 cached samples is about 1 us a sample otherwise)."""
        with self._lock:
            blocks = self._blocks
            out = list(map(blocks.get, keys))
            # `is None` one by one: arrays compare by value, so not `out.count(None)`
            misses = sum(map(operator.is_, out, itertools.repeat(None)))
            hits = keys if not misses else itertools.compress(
                keys, map(operator.is_not, out, itertools.repeat(None)))  # fmt: skip
            collections.deque(map(blocks.move_to_end, hits), maxlen=0)  # now most recent
            if count:
                self.hits += len(out) - misses
                self.misses += misses
            return out

    def missing(self, keys: Sequence[tuple[Any, ...]]) -> list[int]:
        """The indices of ``keys`` not in the cache (a read-ahead's filter: no hit or miss
        counted, no entry made recent)."""
        with self._lock:
            blocks = self._blocks
            return [i for i, key in enumerate(keys) if key not in blocks]

    def put_many(
        self, keys: Sequence[Any], entries: Sequence[Any], sizes: Sequence[int] | None = None
    ) -> None:
        """``put`` of several entries (distinct keys) under one lock; ``sizes``: their
        ``entry_bytes`` when the caller has them (a fetch's samples). Entries new to the cache
        (the common case) go in by one ``update``, no Python step per entry."""
        if not keys:
            return
        if sizes is None:
            sizes = list(map(entry_bytes, entries))
        if max(sizes) > self.max_bytes:  # entries larger than the cache are never kept
            kept = [i for i, n in enumerate(sizes) if n <= self.max_bytes]
            keys, entries, sizes = ([seq[i] for i in kept] for seq in (keys, entries, sizes))
        with self._lock:
            blocks = self._blocks
            if any(map(blocks.__contains__, keys)):  # fetched again by a racing read: replaced
                old = list(map(blocks.pop, keys, itertools.repeat(None)))
                self.bytes_held -= sum(entry_bytes(b) for b in old if b is not None)
            blocks.update(zip(keys, entries))
            self.bytes_held += sum(sizes)
            self._evict()

    def put(self, key: tuple[Any, ...], block: np.ndarray) -> None:
        self.put_many([key], [block])

    def resize(self, max_bytes: int) -> None:
        """A new bound (evicting the least recently used blocks past it)."""
        max_bytes = check_int("store_cache_bytes", max_bytes, minimum=0)
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self.bytes_held = 0

    def _evict(self) -> None:
        while self.bytes_held > self.max_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self.bytes_held -= entry_bytes(block)
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._blocks)


_CACHE = BlockCache(DEFAULT_CACHE_BYTES)


class _Prefetcher:
    """The process' prefetch threads: one bounded queue of (file, byte spans) requests shared by
    every ``RangedFile``, so a store of many shards starts ``PREFETCH_THREADS`` threads, not one
    per file. Started on first use."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[RangedFile, Any]] = queue.Queue(maxsize=PREFETCH_QUEUE)
        self._lock = threading.Lock()
        self._started = False

    def submit(self, file: RangedFile, request: Any) -> bool:
        """Queue a request (what the file's ``_prefetch_now`` takes: byte spans, or a
        ``SampleRangedFile``'s samples); False (dropped) when the queue is full."""
        with self._lock:
            if not self._started:
                for i in range(PREFETCH_THREADS):
                    threading.Thread(target=self._loop, name=f"store prefetch {i}",
                                     daemon=True).start()  # fmt: skip
                self._started = True
        with file._pending_done:
            file._pending += 1
        try:
            self._queue.put_nowait((file, request))
        except queue.Full:
            file._finish_pending()
            return False
        return True

    def _loop(self) -> None:
        while True:
            file, request = self._queue.get()
            try:
                file._prefetch_now(request)
            finally:
                file._finish_pending()


_PREFETCHER = _Prefetcher()


def _prefetcher() -> _Prefetcher:
    """The process' prefetch queue and threads (``SampleRangedFile.prefetch_samples``)."""
    return _PREFETCHER


def block_cache() -> BlockCache:
    """The process-wide cache every ``RangedFile`` uses unless given its own."""
    return _CACHE


def configure_block_cache(max_bytes: int) -> BlockCache:
    """Set the process-wide cache's bound (the ``store_cache_bytes`` setting); returns it."""
    _CACHE.resize(max_bytes)
    return _CACHE


_FILE_SCHEME = "file://"
_READAHEAD_ENV = "GCS_READ_CACHE_BLOCK_SIZE_MB"
_warned_readahead = False


def _warn_gcs_readahead(path: str) -> None:
    """TensorFlow's ``gs://`` client reads 64 MiB ahead of every read that misses its buffer
    unless ``GCS_READ_CACHE_BLOCK_SIZE_MB`` was set before TensorFlow started (measured against
    a fake GCS: docs/design.md, "Reading in place"); say so once per process."""
    global _warned_readahead
    if _warned_readahead or not path.startswith("gs://") or _READAHEAD_ENV in os.environ:
        return
    _warned_readahead = True
    logging.warning(
        "reading the store %s in place: TensorFlow's gs:// client fetches 64 MiB from each read "
        "position unless %s is set before TensorFlow starts; set %s=0 (exact ranges) or =1 in "
        "the job's environment so scattered blocks do not fetch 64 MiB each",
        path, _READAHEAD_ENV, _READAHEAD_ENV,
    )  # fmt: skip


def _range_stream(path: str, size: int) -> Any:
    """A TensorFlow input stream over ``path`` whose buffer is ``size`` bytes (``seek`` +
    ``read``). TensorFlow's own stream class (what ``GFile`` wraps with a fixed 512 KiB buffer);
    ``GFile`` where that private class is missing."""
    import tensorflow as tf

    try:
        from tensorflow.python.lib.io import _pywrap_file_io

        return _pywrap_file_io.BufferedInputStream(path, max(1, size))
    except (ImportError, AttributeError):  # pragma: no cover (another TensorFlow layout)
        return tf.io.gfile.GFile(path, "rb")


def _runs(blocks: np.ndarray) -> list[tuple[int, int]]:
    """Sorted unique block indices as ``[first, last + 1)`` runs of consecutive blocks."""
    if blocks.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(blocks) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [blocks.size]])
    return [(int(blocks[s]), int(blocks[e - 1]) + 1) for s, e in zip(starts, ends)]


def _pread(fd: int, start: int, stop: int) -> bytes:
    return os.pread(fd, stop - start, start)


def _timed_reads(
    read: Callable[[int, int], bytes], starts: Sequence[int], stops: Sequence[int]
) -> tuple[list[bytes], bool]:
    """``read(start, stop)`` of each span, and whether the reads wait: the fastest of the first
    ``TIMED_READS`` took at least ``READ_AHEAD_WAIT_S`` (no reads: True, nothing is known)."""
    clock, fastest, out = _clock, float("inf"), []
    for a, b in zip(starts[:TIMED_READS], stops[:TIMED_READS]):
        began = clock()
        out.append(read(a, b))
        fastest = min(fastest, clock() - began)
    out.extend(map(read, starts[TIMED_READS:], stops[TIMED_READS:]))
    return out, fastest >= READ_AHEAD_WAIT_S


class RangedFile:
    """One store file read by byte range through ``tf.io.gfile`` (the ``BlockFile`` protocol).

    Args:
      path: the file (any ``tf.io.gfile`` path: ``gs://``, ``ram://``, ``file://``, local).
      size: its size in bytes, from the shard's manifest.
      block_bytes: the block size its checksums cover.
      crc32c: one CRC32C per block (the last block short), from the shard's manifest, or the
        ``SidecarCrcs`` of its side file.
      label: names the file in errors (``"store S, shard-00001-of-00004/tokens.bin"``).
      cache: the block cache (default: the process-wide ``block_cache()``).
    """

    def __init__(
        self,
        path: str,
        size: int,
        block_bytes: int,
        crc32c: BlockCrcs,
        *,
        label: str,
        cache: BlockCache | None = None,
    ) -> None:
        self.path = str(path)
        self.size = check_int("size", size, minimum=0)
        self.block_bytes = check_int("block_bytes", block_bytes, minimum=1)
        self.num_blocks = -(-self.size // self.block_bytes)
        self.crc32c = crc_array(crc32c)
        self.label = label
        if len(self.crc32c) != self.num_blocks:
            raise StoreError(
                f"{label}: the manifest records {len(self.crc32c)} block checksums, but a file "
                f"of {self.size} bytes in blocks of {self.block_bytes} has {self.num_blocks}; "
                "the manifest is corrupt, rebuild the store"
            )
        self.cache = cache if cache is not None else block_cache()
        self.version = sha256_hex(crc_version(self.crc32c), chars=16)  # the CRCs' identity
        self.bytes_read = 0  # bytes fetched from storage
        self.reads = 0  # range reads issued
        self.stats = 0  # size checks issued (one per object, before its first range read)
        self._size_checked = False
        self._verified = np.zeros(self.num_blocks, dtype=bool)  # checked by this process
        self._fetch_lock = threading.Lock()  # one fetch at a time: no block fetched twice
        self._prefetch_error: BaseException | None = None
        self._pending = 0  # prefetch requests queued or running
        self._pending_done = threading.Condition()
        self.prefetch_dropped = 0  # requests dropped because the queue was full
        self._fd: int | None = None  # a file:// path's descriptor (``_local_fd``)
        # whether this file's reads wait (``READ_AHEAD_WAIT_S``), from its last fetch; True
        # until a fetch shows otherwise, so a store starts reading ahead
        self.reads_wait = True
        self._fd_lock = threading.Lock()

    # -- reads ------------------------------------------------------------------------------
    def read(self, start: int, stop: int) -> np.ndarray:
        """Bytes ``[start, stop)`` as a uint8 array; every block they touch is verified."""
        start, stop = int(start), int(stop)
        check_range(self.label, self.size, start, stop)
        if start == stop:
            return np.zeros(0, dtype=np.uint8)
        first, last = start // self.block_bytes, (stop - 1) // self.block_bytes
        blocks = self._blocks(np.arange(first, last + 1))
        data = np.concatenate([blocks[b] for b in range(first, last + 1)])
        offset = first * self.block_bytes
        return data[start - offset : stop - offset]

    def take(self, positions: np.ndarray, dtype: Any, samples: Any = None) -> np.ndarray:
        """Elements of ``dtype`` at element ``positions`` (any shape; same shape out).
        ``samples`` (a tokens file's hint, ``SampleRangedFile``) is not needed here."""
        dtype = np.dtype(dtype)
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size == 0:
            return np.empty(pos.shape, dtype=dtype)
        low, high = int(pos.min()), int(pos.max())
        if low < 0 or high >= self.size // dtype.itemsize:
            check_range(self.label, self.size, low * dtype.itemsize, (high + 1) * dtype.itemsize)
        flat = pos.reshape(-1)
        out = np.empty(flat.size, dtype=dtype)
        if self.block_bytes % dtype.itemsize:  # elements may straddle blocks: byte reads
            for i, p in enumerate(flat.tolist()):
                out[i] = self.read(p * dtype.itemsize, (p + 1) * dtype.itemsize).view(dtype)[0]
            return out.reshape(pos.shape)
        per_block = self.block_bytes // dtype.itemsize
        first = low // per_block
        if high // per_block == first:  # one block: a call's offsets or CRCs, mostly
            block = self._blocks(np.array([first]))[first]
            return self._view(block, dtype)[pos - first * per_block if first else pos]
        block = flat // per_block
        local = flat - block * per_block
        present = np.zeros(self.num_blocks, dtype=bool)  # O(n), cheaper than np.unique
        present[block] = True
        wanted = np.flatnonzero(present)
        blocks = self._blocks(wanted)
        if wanted.size == 1:
            out[:] = self._view(blocks[int(wanted[0])], dtype)[local]
            return out.reshape(pos.shape)
        # group positions by block: a stable sort of small ranks (radix sort when they fit 16 bits)
        rank = (np.cumsum(present) - 1)[block]
        rank = rank.astype(np.uint16 if wanted.size <= 1 << 16 else np.int64)
        order = np.argsort(rank, kind="stable")
        bounds = np.cumsum(np.bincount(rank, minlength=wanted.size))
        begin = 0
        for b, stop in zip(wanted.tolist(), bounds.tolist()):
            group = order[begin:stop]
            begin = stop
            out[group] = self._view(blocks[b], dtype)[local[group]]
        return out.reshape(pos.shape)

    @staticmethod
    def _view(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return block[: block.size - block.size % dtype.itemsize].view(dtype)

    # -- prefetch ---------------------------------------------------------------------------
    @property
    def prefetches(self) -> bool:
        """Whether ``prefetch`` may do anything (it needs the cache to keep what it fetches)."""
        return self.cache.enabled

    @property
    def reads_ahead_now(self) -> bool:
        """Whether a read-ahead request is taken now: the cache is on and the file's last
        fetch waited on its reads (``reads_wait``)."""
        return self.reads_wait and self.cache.enabled

    def prefetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Fetch the blocks of these byte ranges into the cache on a background thread.

        A hint: with the cache off, with the file's reads not waiting (``reads_wait``: it is
        read on demand then), or with ``PREFETCH_QUEUE`` requests of the process already
        pending, it does nothing. An error it meets (a checksum mismatch, a failed read) is
        raised by the next ``read``/``take`` of this file.
        """
        if not self.reads_ahead_now:
            return
        spans = [(int(a), int(b)) for a, b in ranges if int(b) > int(a)]
        if spans and not _PREFETCHER.submit(self, spans):
            self.prefetch_dropped += 1

    def _prefetch_now(self, spans: list[tuple[int, int]]) -> None:
        """Fetch the blocks of ``spans`` (on a prefetch thread); errors kept for the next read."""
        try:
            parts = [
                np.arange(a // self.block_bytes, (min(b, self.size) - 1) // self.block_bytes + 1)
                for a, b in spans
                if 0 <= a < min(b, self.size)
            ]
            if parts:
                self._blocks(np.unique(np.concatenate(parts)), raise_pending=False)
        except BaseException as err:  # kept for the next read: never lost
            self._prefetch_error = err

    def wait_prefetch(self) -> None:
        """Block until this file's queued prefetches finished (tests and benches)."""
        with self._pending_done:
            self._pending_done.wait_for(lambda: self._pending == 0)

    def _finish_pending(self) -> None:
        with self._pending_done:
            self._pending -= 1
            self._pending_done.notify_all()

    # -- blocks -----------------------------------------------------------------------------
    def _key(self, b: int) -> tuple[Any, ...]:
        return (self.path, self.size, self.block_bytes, self.version, b)

    def _blocks(self, wanted: np.ndarray, *, raise_pending: bool = True) -> dict[int, np.ndarray]:
        """The verified blocks ``wanted`` (sorted unique indices): cached, or fetched."""
        if raise_pending and self._prefetch_error is not None:
            err, self._prefetch_error = self._prefetch_error, None
            raise err
        found: dict[int, np.ndarray] = {}
        missing = []
        for b in wanted.tolist():
            block = self.cache.get(self._key(b)) if self.cache.enabled else None
            if block is None:
                missing.append(b)
            else:
                found[b] = block
        if not missing:
            return found
        with self._fetch_lock:
            still = []
            for b in missing:  # another thread (a prefetch) may have fetched it meanwhile
                block = self.cache.get(self._key(b), count=False) if self.cache.enabled else None
                if block is None:
                    still.append(b)
                else:
                    found[b] = block
            for first, end in _runs(np.asarray(still, dtype=np.int64)):
                found.update(self._fetch(first, end))
        return found

    def _fetch(self, first: int, end: int) -> dict[int, np.ndarray]:
        """One range read of blocks ``[first, end)``, each verified; caller holds the lock."""
        start = first * self.block_bytes
        data = self._fetch_range(start, min(end * self.block_bytes, self.size))
        crcs = np.asarray(self.crc32c[np.arange(first, end)]).tolist()  # side-file pages once
        blocks = {}
        for b, expected in zip(range(first, end), crcs):
            lo = (b - first) * self.block_bytes
            block = data[lo : lo + self.block_bytes]
            actual = google_crc32c.value(block)
            if actual != expected:
                raise crc_mismatch(self.label, b, self.block_bytes, self.size, actual, expected)
            self._verified[b] = True
            if self.cache.enabled:
                block = block.copy()  # own its memory: the range read may be far larger
                self.cache.put(self._key(b), block)
            blocks[b] = block
        return blocks

    def _fetch_range(self, start: int, stop: int) -> np.ndarray:
        """Bytes ``[start, stop)`` fetched in one range read, not yet verified (the caller
        checks them); the file's size is checked first (once). Counted in ``bytes_read``."""
        return np.frombuffer(self._fetch_bytes(start, stop), dtype=np.uint8)

    def _fetch_bytes(self, start: int, stop: int) -> bytes:
        """``_fetch_range`` as ``bytes``."""
        return self._fetch_many([start], [stop])[0]

    def _fetch_many(self, starts: Sequence[int], stops: Sequence[int]) -> list[bytes]:
        """The bytes of each span ``[starts[i], stops[i])``, one range read each (a call's
        scattered samples: the per-read Python work done once for all of them); size checked
        first. The first ``TIMED_READS`` reads are timed to set ``reads_wait``."""
        if not starts:
            return []
        _warn_gcs_readahead(self.path)
        self._check_size()
        if self.path.startswith(_FILE_SCHEME):
            out = self._pread_spans(starts, stops)
        else:
            out, self.reads_wait = _timed_reads(self._read_range, starts, stops)
        self.reads += len(out)
        got = sum(map(len, out))
        self.bytes_read += got
        if got == sum(stops) - sum(starts):  # no read returns more than asked
            return out
        for start, stop, raw in zip(starts, stops, out):
            if len(raw) != stop - start:
                raise StoreError(
                    f"{self.label}: reading bytes [{start}, {stop}) returned {len(raw)} bytes; "
                    f"the file is shorter than the {self.size} bytes its manifest records "
                    "(truncated), rebuild the store"
                )
        return out

    def _pread_spans(self, starts: Sequence[int], stops: Sequence[int]) -> list[bytes]:
        """``_fetch_many``'s reads of a ``file://`` path: ``os.pread`` on a descriptor kept
        open (positional, so threads share it), the syscall TensorFlow's local filesystem
        makes without a stream object opened per read (which cost more than the read); the
        first ``TIMED_READS`` timed, the rest with no Python frame a read."""
        fd = self._local_fd()
        try:
            out, self.reads_wait = _timed_reads(functools.partial(_pread, fd),
                                                starts[:TIMED_READS], stops[:TIMED_READS])  # fmt: skip
            pread = os.pread
            out += [pread(fd, b - a, a) for a, b in zip(starts[TIMED_READS:], stops[TIMED_READS:])]
            return out
        except OSError as err:
            raise self._read_error(err) from err

    def _check_size(self) -> None:
        """The file exists with the size its manifest records: checked by one ``stat`` before
        the first range read, not at open (opening a store of many shards on a bucket costs no
        request per file). A truncated or missing file is a ``StoreError`` naming it before any
        of its bytes is used."""
        if self._size_checked:
            return
        import tensorflow as tf

        try:
            actual = int(tf.io.gfile.stat(self.path).length)
        except tf.errors.NotFoundError:
            raise StoreError(
                f"{self.label}: the file is missing; the store is incomplete, rebuild it"
            ) from None
        except tf.errors.OpError as err:
            raise StoreError(
                f"{self.label}: cannot stat {self.path!r} ({type(err).__name__}: {err.message}); "
                "check the path and access, or rebuild the store"
            ) from err
        self.stats += 1
        if actual != self.size:
            raise StoreError(
                f"{self.label}: file has size {actual}, the shard manifest records {self.size}; "
                "the shard is truncated or was modified, rebuild the store"
            )
        self._size_checked = True

    def _read_range(self, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` in one read through a stream buffered to exactly that size.

        ``tf.io.gfile.GFile`` buffers 512 KiB, so a smaller range would fetch 512 KiB; a
        stream sized to the range fetches the range (plus the one-byte probe ``seek`` makes).
        A ``file://`` path is read by ``os.pread`` instead (``_pread_spans``).
        """
        import tensorflow as tf

        try:
            stream = _range_stream(self.path, stop - start)
            stream.seek(start)
            return stream.read(stop - start)
        except tf.errors.OpError as err:
            raise StoreError(
                f"{self.label}: reading bytes [{start}, {stop}) of {self.path!r} failed "
                f"({type(err).__name__}: {err.message}); check the path and access, or rebuild "
                "the store"
            ) from err

    def _local_fd(self) -> int:
        """The descriptor of a ``file://`` path, opened on first use and kept open."""
        if self._fd is None:
            with self._fd_lock:
                if self._fd is None:
                    try:
                        self._fd = os.open(self.path[len(_FILE_SCHEME) :], os.O_RDONLY)
                    except OSError as err:
                        raise self._read_error(err) from err
        return self._fd

    def _read_error(self, err: OSError) -> StoreError:
        return StoreError(
            f"{self.label}: reading {self.path!r} failed ({err}); check the path and access, "
            "or rebuild the store"
        )

    def __del__(self, _close: Any = os.close) -> None:  # bound now: at exit `os` may be gone
        fd = getattr(self, "_fd", None)
        if fd is not None:
            _close(fd)

    def verify(self) -> None:
        """Fetch and check every block (``TokenStore.verify``), a few blocks per range read,
        and every page of a side file holding the CRCs."""
        if isinstance(self.crc32c, SidecarCrcs):
            self.crc32c.verify()
        step = max(1, (64 << 20) // self.block_bytes)  # about 64 MB per read
        for first in range(0, self.num_blocks, step):
            self._blocks(np.arange(first, min(first + step, self.num_blocks)))

    @property
    def verified_blocks(self) -> int:
        """How many of the file's blocks this object has checked so far."""
        return int(self._verified.sum())

    def __repr__(self) -> str:
        return f"RangedFile({self.path!r}, size={self.size}, block_bytes={self.block_bytes})"
