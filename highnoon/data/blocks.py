"""How a store file is read and verified: by byte range, each block checked once.

Every ``.bin`` file of a store shard carries the CRC32C of each ``block_bytes`` block, in a
binary side file beside it read by page (``SidecarCrcs``; format 3), or as a list in its
``shard.json`` (format 2; ``shards.py``). A ``BlockFile`` returns bytes or elements of such a file and
checks every block a read touches against its CRC the first time this process reads it, so a
flipped byte is a ``StoreError`` naming the store, shard, file, block and byte offset before
any byte of that block reaches a batch, and a store's start-up costs no pass over its data.

* ``MappedFile`` (here): a local file through ``np.memmap``; which blocks are checked is a bitmap
  shared by every ``MappedFile`` of the same file version in the process (path, inode, size,
  mtime, ctime: a file changed in place is a new version and is checked again). A file changed
  less than ``RACY_SECONDS`` before it was opened gets a bitmap of its own: file times tick
  coarsely, so a later change could keep the same times (git's "racy" rule).
* ``RangedFile`` (``remote_blocks.py``): any ``tf.io.gfile`` path, by range reads.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from highnoon.data.store_errors import StoreError

RACY_SECONDS = 2.0
RELEASE_BYTES = 16 << 20  # reads (and takes) spanning this much unmap their pages afterwards
PREAD_GAP = 64  # bytes between two elements read by one pread (a sample's tokens: one read)
SPARSE_RATIO = 16  # a take that wide asking under 1/16 of its span's bytes is pread, not mapped

# file version -> bitmap of verified blocks, shared by the MappedFiles of one process
_BITMAPS: dict[tuple[Any, ...], np.ndarray] = {}
_BITMAPS_LOCK = threading.Lock()


def forget_verified_blocks() -> None:
    """This process forgets which blocks of local store files it has checked, so the next
    read of each block checks it again: a first pass as a fresh process makes it (a
    benchmark's cold pass, which would otherwise time memory-mapped reads whose checks an
    earlier pass did). Objects already reading keep their own record until they are closed."""
    with _BITMAPS_LOCK:
        _BITMAPS.clear()


class BlockFile(Protocol):
    """One store file, read by byte range, verified per block on first read."""

    label: str  # "store S, shard-00001-of-00004/tokens.bin", for error messages
    size: int  # bytes
    bytes_read: int  # bytes fetched from storage so far (a counter for benches and tests)

    def read(self, start: int, stop: int) -> np.ndarray:
        """uint8 bytes ``[start, stop)``. Every block the range touches is checked against its
        CRC32C the first time this process reads it; a mismatch raises ``StoreError`` naming
        the store, shard, file, block index and byte offset, before any byte is returned."""
        ...

    def take(self, positions: np.ndarray, dtype: np.dtype, samples: Any = None) -> np.ndarray:
        """The elements (of ``dtype``) at element ``positions``, blocks checked as ``read``.
        ``samples``: for a tokens file, the shard-local sample holding each position (a hint
        that spares a file read by sample its search; others ignore it)."""
        ...


class SidecarCrcs:
    """A file's block CRC32Cs read from its side file (``<file>.crc32c``, ``<u4``) by page.

    ``file`` is the side file as a ``BlockFile`` whose blocks are its pages, each checked
    against the CRC32C ``shard.json`` records for it (``crc32c_pages``) the first time it is
    read: a corrupt side file is a ``StoreError`` naming it, the page and its byte offset, and
    no block of data is checked against an unchecked CRC. A local side file is a
    ``MappedFile`` (pages checked once per process), a remote one a ``RangedFile`` (pages in
    the bounded block cache). Indexed like the ``uint32`` array it replaces: ``len`` and
    ``crcs[blocks]``, reading only the pages those blocks' CRCs are in.
    """

    def __init__(self, file: BlockFile, num_blocks: int, pages: Sequence[int]) -> None:
        self.file = file
        self.num_blocks = int(num_blocks)
        self.pages = np.asarray(pages, dtype="<u4").reshape(-1)
        if file.size != 4 * self.num_blocks:
            raise StoreError(
                f"{file.label}: the shard manifest records {file.size} bytes for the CRCs of "
                f"{self.num_blocks} blocks (4 bytes each); the manifest is corrupt, rebuild "
                "the store"
            )

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, blocks: Any) -> Any:
        idx = np.asarray(blocks, dtype=np.int64)
        if idx.ndim == 0:
            return self.file.take(idx.reshape(1), "<u4")[0]
        return self.file.take(idx, "<u4")

    @property
    def bytes_read(self) -> int:
        return self.file.bytes_read

    def verify(self) -> None:
        """Check every page of the side file (``TokenStore.verify``)."""
        self.file.verify()  # type: ignore[attr-defined]


BlockCrcs = Sequence[int] | SidecarCrcs  # a file's block CRCs: a list (format 2) or a side file


def crc_array(crc32c: BlockCrcs) -> Any:
    """A file's block CRC32Cs as a ``uint32`` array (4 bytes a block, where a list of Python
    ints costs about 36), or its ``SidecarCrcs`` as they are (read by page)."""
    if isinstance(crc32c, SidecarCrcs):
        return crc32c
    return np.asarray(crc32c, dtype=np.uint32).reshape(-1)


def crc_version(crcs: np.ndarray | SidecarCrcs) -> bytes:
    """Bytes that change with any of a file's block CRCs (a cache key's file version): the
    CRCs themselves, or for a side file the CRCs of its pages (which cover every CRC)."""
    if isinstance(crcs, SidecarCrcs):
        return np.int64(crcs.num_blocks).tobytes() + crcs.pages.tobytes()
    return np.asarray(crcs, dtype="<u4").tobytes()


def crc_mismatch(label: str, block: int, block_bytes: int, size: int, actual: int,
                 expected: int) -> StoreError:  # fmt: skip
    """The error for block ``block`` of a file whose CRC32C is not the recorded one."""
    start = block * block_bytes
    stop = min(start + block_bytes, size)
    return StoreError(
        f"{label}: block {block} (byte offset {start}, bytes [{start}, {stop})) has CRC32C "
        f"{actual:#010x}, the shard manifest records {expected:#010x}; the store is corrupt, "
        "rebuild it"
    )


def check_range(label: str, size: int, start: int, stop: int) -> None:
    """``StoreError`` unless ``0 <= start <= stop <= size`` (a read outside the file)."""
    if not 0 <= start <= stop <= size:
        raise StoreError(
            f"{label}: read of bytes [{start}, {stop}) outside the file ({size} bytes)"
        )


def _read_ahead(fd: int, spans: Sequence[tuple[int, int]]) -> None:
    """Ask the kernel for every byte span a loop of ``pread`` calls is about to read
    (``POSIX_FADV_WILLNEED``: queued at once, not waited for), so scattered runs of a cold
    file arrive in parallel, not one disk latency after another (a packed host's first stream
    windows: thousands of single pages of a 4 GB order; BENCHMARKS.md, "Cold start"). A
    no-op for one span, or where the call is missing."""
    if len(spans) < 2 or not hasattr(os, "posix_fadvise"):
        return
    for start, stop in spans:
        os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_WILLNEED)


def _file_version(path: str) -> tuple[Any, ...]:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            st.st_ctime_ns)  # fmt: skip


class MappedFile:
    """A local store file through a memory map (``BlockFile``); blocks verified on first touch."""

    def __init__(
        self, path: str, size: int, block_bytes: int, crc32c: BlockCrcs, *, label: str
    ) -> None:
        self.path = path
        self.size = int(size)
        self.block_bytes = int(block_bytes)
        self.crc32c = crc_array(crc32c)
        self.label = label
        self.bytes_read = 0
        num_blocks = -(-self.size // self.block_bytes)
        if len(self.crc32c) != num_blocks:
            raise StoreError(
                f"{label}: the shard manifest records {len(self.crc32c)} block checksums for "
                f"{self.size} bytes ({num_blocks} blocks of {self.block_bytes}); rebuild the store"
            )
        self._lock = threading.Lock()
        self._map: np.ndarray | None = None
        self._views: dict[str, np.ndarray] = {}
        self._verified: np.ndarray | None = None
        self._unverified = num_blocks

    def _data(self) -> np.ndarray:
        """The uint8 memory map, opened on first use (opening a store maps nothing)."""
        if self._map is None:
            with self._lock:
                if self._map is None:
                    self._verified = self._bitmap()
                    self._unverified = int((~self._verified).sum())
                    self._map = (
                        np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.size,))
                        if self.size
                        else np.zeros(0, dtype=np.uint8)
                    )
        return self._map

    def _bitmap(self) -> np.ndarray:
        num_blocks = len(self.crc32c)
        try:
            version = (*_file_version(self.path), self.block_bytes)
        except OSError as err:
            raise StoreError(f"{self.label}: cannot be read ({err}); rebuild the store") from err
        if version[3] != self.size:
            raise StoreError(
                f"{self.label}: file has size {version[3]}, the shard manifest records "
                f"{self.size}; the store is truncated or was modified, rebuild it"
            )
        if time.time() - max(version[4], version[5]) / 1e9 <= RACY_SECONDS:
            return np.zeros(num_blocks, dtype=bool)  # too fresh to remember across objects
        with _BITMAPS_LOCK:
            return _BITMAPS.setdefault(version, np.zeros(num_blocks, dtype=bool))

    def _verify_blocks(self, blocks: np.ndarray) -> None:
        """Check the not yet verified ``blocks`` (sorted block indices) against their CRCs."""
        import google_crc32c

        self._data()
        assert self._verified is not None
        size, step = self.size, self.block_bytes
        with self._lock, open(self.path, "rb") as handle:
            todo = blocks[~self._verified[blocks]]
            # consecutive blocks (a run of order positions spans a few pages) share one read
            breaks = np.flatnonzero(np.diff(todo) != 1) + 1
            starts, ends = [0, *breaks.tolist()], [*breaks.tolist(), todo.size]
            most = max(RELEASE_BYTES // step, 1)  # blocks one read holds at most
            parts = [todo[lo : min(b, lo + most)] for a, b in zip(starts, ends) if b > a
                     for lo in range(a, b, most)]  # fmt: skip
            _read_ahead(handle.fileno(), [(int(p[0]) * step, int(p[-1] + 1) * step)
                                          for p in parts])  # fmt: skip
            # every CRC at once: from a side file, one take (its pages read once), not one a run
            wanted = iter(np.asarray(self.crc32c[todo]).tolist())
            value = google_crc32c.value
            for part in parts:
                first = int(part[0]) * step
                # read, not through the map: checking a block maps none of its pages into this
                # process (a spread of small takes over a big file stays small in RSS)
                data = os.pread(handle.fileno(), min(int(part[-1] + 1) * step, size) - first,
                                first)  # fmt: skip
                self.bytes_read += len(data)
                actual = [value(data[k : k + step]) for k in range(0, len(data), step)]
                for block, got, want in zip(part.tolist(), actual, wanted):
                    if got != want:
                        raise crc_mismatch(self.label, block, step, size, got, want)
                self._verified[part] = True
                self._unverified -= part.size

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = int(start), int(stop)
        check_range(self.label, self.size, start, stop)
        data = self._data()
        if stop > start and self._unverified:
            first, last = start // self.block_bytes, (stop - 1) // self.block_bytes
            self._verify_blocks(np.arange(first, last + 1))
        self.bytes_read += stop - start
        out = np.array(data[start:stop])
        if stop - start >= RELEASE_BYTES:
            self._release(start, stop)
        return out

    def _release(self, start: int, stop: int) -> None:
        """Unmap the pages of ``[start, stop)`` a large read just copied (the kernel keeps them
        in its page cache), so a scan of a big file through ``read`` (a stored order's features
        pass) keeps O(read) resident memory, not O(file)."""
        mapped = getattr(self._map, "_mmap", None)
        if mapped is None or not hasattr(mapped, "madvise"):
            return
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, stop // page * page
        if last > first:
            mapped.madvise(mmap.MADV_DONTNEED, first, last - first)

    def take(self, positions: np.ndarray, dtype: np.dtype, samples: Any = None) -> np.ndarray:
        dtype = np.dtype(dtype)
        positions = np.asarray(positions, dtype=np.int64)
        view = self._view(dtype)
        if positions.size == 0:
            return np.zeros(positions.shape, dtype=dtype)
        low, high = int(positions.min()), int(positions.max())
        if self._unverified or low < 0:  # np.take itself refuses positions >= size
            self._check_take(positions, view.size, dtype)
        span = (high - low) * dtype.itemsize
        sparse = positions.size * dtype.itemsize * SPARSE_RATIO <= span
        if span >= RELEASE_BYTES and sparse and high < view.size:
            values = self._pread_take(positions, dtype)
            self.bytes_read += positions.size * dtype.itemsize
            return values
        try:
            values = np.take(view, positions)
        except IndexError:
            self._check_take(positions, view.size, dtype)
            raise
        self.bytes_read += positions.size * dtype.itemsize
        if span >= RELEASE_BYTES:
            # spread positions (a packed step's lengths, random rows): a fault on a file map
            # maps the page-cache folio around the page (~500 KiB each here), so the pages
            # stayed in RSS and grew with every new page a run touched; unmapped after each
            # take, RSS is bounded by one take's span (unmapping per chunk cost 7x the take)
            self._release(low * dtype.itemsize, (high + 1) * dtype.itemsize)
        return values

    def _pread_take(self, positions: np.ndarray, dtype: np.dtype) -> np.ndarray:
        """The elements at sparse ``positions`` by ``pread``. A fault on the map would map (and
        on a cold page cache read from disk) the whole page-cache folio around each element,
        ~500 KiB here: a packed host's start at 1e9 samples held 3.8 GiB of them.

        The positions are cut into segments, stretches that ascend by at most ``PREAD_GAP``
        bytes a step (a batch row's tokens, a run of an order); the segments, sorted by their
        first byte, are read by one ``pread`` per group of them that overlap or lie at most
        ``PREAD_GAP`` apart. Sorting the segments, not the elements, keeps a batch of rows at
        a sort of its row count."""
        size = dtype.itemsize
        flat = positions.reshape(-1)
        steps = np.diff(flat)
        cut = np.flatnonzero((steps < 0) | (steps > PREAD_GAP // size)) + 1
        first = np.concatenate([[0], cut])  # each segment's first element in ``flat``
        count = np.diff(np.concatenate([first, [flat.size]]))
        seg_lo = flat[first] * size
        seg_hi = (flat[first + count - 1] + 1) * size
        order = np.argsort(seg_lo, kind="stable")
        lo, hi = seg_lo[order], seg_hi[order]
        reach = np.maximum.accumulate(hi)  # the furthest byte of the segments so far
        opens = np.concatenate([[True], lo[1:] - reach[:-1] > PREAD_GAP])  # a new read
        read_of = np.cumsum(opens) - 1  # each sorted segment's read
        read_lo = lo[opens]
        read_hi = np.maximum.reduceat(hi, np.flatnonzero(opens))
        read_bytes = read_hi - read_lo
        read_base = np.cumsum(read_bytes) - read_bytes  # where each read starts in ``raw``
        with open(self.path, "rb") as handle:
            fd = handle.fileno()
            if hasattr(os, "posix_fadvise"):  # no read-ahead around each small read
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            pread = os.pread
            raw = b"".join(
                [pread(fd, b - a, a) for a, b in zip(read_lo.tolist(), read_hi.tolist())]
            )
        # reads start and end on element boundaries, so ``raw`` is whole elements and a
        # segment's first element sits at its read's base plus its distance from the read
        seg_at = np.empty_like(seg_lo)
        seg_at[order] = (read_base[read_of] + lo - read_lo[read_of]) // size
        at = flat + np.repeat(seg_at - seg_lo // size, count)
        return np.frombuffer(raw, dtype=dtype)[at].reshape(positions.shape)

    def _check_take(self, positions: np.ndarray, count: int, dtype: np.dtype) -> None:
        """Positions inside the file, and their blocks checked (the slow path of ``take``)."""
        low, high = int(positions.min()), int(positions.max())
        if low < 0 or high >= count:
            check_range(self.label, self.size, low * dtype.itemsize, (high + 1) * dtype.itemsize)
        if self._unverified:
            blocks = positions.reshape(-1) * dtype.itemsize // self.block_bytes
            assert self._verified is not None
            if not self._verified[blocks].all():
                steps = np.diff(blocks)
                if (steps >= 0).all():  # ascending (runs of an order): unique without a sort
                    blocks = blocks[np.concatenate([[True], steps > 0])]
                else:
                    blocks = np.unique(blocks)
                self._verify_blocks(blocks)

    def _view(self, dtype: np.dtype) -> np.ndarray:
        """The file as a plain ndarray of ``dtype`` (fancy indexing skips np.memmap's overhead)."""
        view = self._views.get(dtype.str)
        if view is None:
            data = self._data()
            usable = self.size - self.size % dtype.itemsize
            view = np.frombuffer(data, dtype=np.uint8, count=usable).view(dtype) if usable else (
                np.zeros(0, dtype=dtype))  # fmt: skip
            self._views[dtype.str] = view
        return view

    def verify(self) -> None:
        """Check every block not yet checked (``TokenStore.verify``), and every page of a
        side file holding the CRCs."""
        if isinstance(self.crc32c, SidecarCrcs):
            self.crc32c.verify()
        self._data()
        if self._unverified:
            self._verify_blocks(np.arange(len(self.crc32c)))

    def __repr__(self) -> str:
        return f"MappedFile({self.label!r}, size={self.size})"
