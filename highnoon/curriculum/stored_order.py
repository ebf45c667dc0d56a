"""The easy-to-hard order as data: computed once at preparation, stored with the store, read by
range (numpy only; docs/design.md, "Stored orders").

A store's scores are a property of the store alone (normalised by the whole store's maxima, a
``ScoreScale``), so its order under a strategy is too: ``order_from_scores(scores_from_features(
store.features, strategy))``. Computing that in memory on every host costs O(N) time and memory
per host, every start; here it is computed once, in bounded memory, and written beside the
shards:

* ``orders/<strategy>.bin``: raw little-endian sample indices, easy to hard, ties to the lower
  index (``<u4`` when N <= 2**32, else ``<u8``);
* ``orders/<strategy>.crc32c``: the CRC32C of every ``block_bytes`` block of the ``.bin``
  (``<u4``, the last block short), checked on first read as a shard's files are. Blocks are a
  4 KiB page (``ORDER_BLOCK_BYTES``): a host takes a few positions at random, and a first read
  checks the block around each; the list is binary, 1/1024 of the order (4 MiB at 1e9 samples),
  read by 4 KiB page as blocks are checked, each page against its CRC32C in the json
  (``block_crc32c_pages``, as a store shard's side files are), so a start reads the pages of
  the blocks it reads, not the list (an order written without the page CRCs reads the list whole
  and checks it against its sha256);
* ``orders/<strategy>.lengths.bin`` (format 3): the lengths column, the stored length of the
  sample at each order position (``<u4``), carried through the sort beside the indices (read
  back from the sorted keys for ``size_based``, whose key is the length), and
  ``orders/<strategy>.lengths.crc32c``, its 4 KiB block CRCs: a packed host reads the lengths
  of runs of order positions ("Blocked epoch order" in docs/design.md), not one page of the
  store's ``lengths.bin`` per sample;
* ``orders/<strategy>.json``, written last and atomically: ``format`` (``highnoon.order/3``),
  ``strategy``, ``num_samples``, ``dtype``, ``store_fingerprint`` (the store it was computed
  from), ``scores_fingerprint`` (``order.scores_fingerprint`` of the whole store's scores),
  ``scale`` (the maxima the scores were normalised by), ``block_bytes``,
  ``block_crc32c_sha256`` (of the ``.crc32c`` file), ``lengths_dtype``,
  ``lengths_crc32c_sha256``, and ``block_crc32c_pages`` / ``lengths_crc32c_pages`` (the CRC32C
  of each 4 KiB page of the two ``.crc32c`` files; optional: orders written before them read
  their ``.crc32c`` whole). Orders of format 2 (no lengths column) and 1 (1 MiB blocks,
  their CRCs a JSON list ``block_crc32c`` in the ``.json``) are still read; their
  ``StoredOrder.lengths`` is None, and ``--orders_only`` (``only_missing``) rewrites them.

A ``.bin`` without its ``.json`` is an interrupted write: the order is absent. The store's own
manifest and fingerprint do not change (orders are derived data). ``random`` is never stored:
its order depends on the stage's seed.

``write_orders`` is an external sort: the store's features are read chunk by chunk, each
chunk's scores turned into order-preserving uint64 keys (``order.sort_keys``) and scattered into
bucket files by key range (splitters from the keys of evenly spaced samples, so equal keys share
a bucket and buckets come out in key order; each key's bucket found by ``BucketSearch``); each
bucket is then sorted by (key, index) in memory (``order.order_from_keys``; a bucket's records
are in index order) and appended to the output. A bucket larger than the memory budget is split
again the same way (always separating its smallest key, so every split makes progress); a bucket
of one key is already in order.

For the three built-in orders the features are read three times (``_passes``): once for the scale
and the splitters' samples, once for every strategy scaled by it (``difficulty_based`` and
``mixed`` scored and scattered together, each into its own buckets, when the process may keep
both sets of bucket files open; else one pass each), and once more, ``lengths.bin`` alone, for
``size_based`` (its key is the length), last, so its bucket files never sit beside the others'.
At 1e9 samples the features are 16 GB, more than the page cache keeps beside the orders being
written, so every pass reads them from disk (docs/design.md, "Stored orders").
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from highnoon.curriculum.bucket_search import BucketSearch
from highnoon.curriculum.order import ScoresDigest, order_from_keys, sort_keys
from highnoon.curriculum.scoring import STRATEGIES, ScoreScale, score_scale, scores_from_features
from highnoon.data.blocks import BlockFile, MappedFile, SidecarCrcs
from highnoon.data.features import SampleFeatures
from highnoon.data.shards import (
    SAMPLE_BLOCK_BYTES,
    SIDECAR_PAGE_BYTES,
    crc32c_blocks,
    sidecar_name,
    write_file_checksums,
)
from highnoon.data.store import StoreError, TokenStore, file_size
from highnoon.data.store_build import _temp_name, remove_stale_build_dirs
from highnoon.utils.files import atomic_write_text, is_remote, isfile, read_bytes, read_text
from highnoon.utils.hashing import sha256_file, sha256_hex
from highnoon.utils.open_files import can_open_files, ensure_open_files
from highnoon.utils.validation import InvalidArgumentError, check_choice, check_positive_int

FORMAT = "highnoon.order/3"
FORMAT_2 = "highnoon.order/2"  # no lengths column; still read (packing reads lengths.bin)
FORMAT_1 = "highnoon.order/1"  # block CRCs as a JSON list in the .json; still read
LENGTHS_DTYPE = np.dtype("<u4")  # the lengths column's element
KEY_IS_LENGTH = ("size_based",)  # strategies whose score is the stored length itself
ORDER_BLOCK_BYTES = SAMPLE_BLOCK_BYTES  # read at random positions, as a shard's lengths are
ORDERS_DIR = "orders"
BUILT_IN = ("size_based", "difficulty_based", "mixed")  # the strategies preparation stores
STORABLE = tuple(s for s in STRATEGIES if s != "random")
# Samples scored at a time; a bucket sorted in memory is at most this. 2**21: a chunk's arrays
# (16 MiB of int64) stay under glibc's largest dynamic mmap threshold (32 MiB), so the memory a
# chunk frees is reused by the next instead of mapped afresh and zeroed by the kernel, which
# took a quarter of the CPU at 2**22 (BENCHMARKS.md, "Stored orders").
DEFAULT_CHUNK = 1 << 21
# Samples scored at a time inside a chunk: the arithmetic's temporaries (0.5 MiB each) stay in
# the cache and in memory the allocator keeps, where whole-chunk ones were mapped and zeroed
SCORE_BLOCK = 1 << 16
SPLITTER_SAMPLES = 1 << 16  # evenly spaced samples whose keys choose the bucket splitters
FIX = "re-run highnoon-prepare-data --orders_only={path} to write the orders again"


def order_dtype(num_samples: int) -> np.dtype:
    """``<u4`` when every index fits (N <= 2**32), else ``<u8``."""
    return np.dtype("<u4") if num_samples <= 1 << 32 else np.dtype("<u8")


def order_paths(store_path: str, strategy: str) -> tuple[str, str]:
    """(``.bin``, ``.json``) of ``strategy``'s stored order in the store at ``store_path``."""
    root = _join(store_path, ORDERS_DIR)
    return _join(root, f"{strategy}.bin"), _join(root, f"{strategy}.json")


def order_crc_path(store_path: str, strategy: str) -> str:
    """The ``.crc32c`` (block CRCs, ``<u4``) of ``strategy``'s stored order (format 2)."""
    return _join(_join(store_path, ORDERS_DIR), f"{strategy}.crc32c")


def lengths_paths(store_path: str, strategy: str) -> tuple[str, str]:
    """(``.lengths.bin``, ``.lengths.crc32c``) of ``strategy``'s lengths column (format 3):
    the stored length of the sample at each order position, and its block CRCs."""
    root = _join(store_path, ORDERS_DIR)
    return _join(root, f"{strategy}.lengths.bin"), _join(root, f"{strategy}.lengths.crc32c")


def _join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}" if is_remote(root) else os.path.join(root, name)


def check_strategies(strategies: Sequence[str]) -> list[str]:
    """The strategies to store, each once (a comma-separated string is accepted); refuses
    ``random`` and unknown names."""
    if isinstance(strategies, str):
        strategies = [s for s in strategies.split(",") if s]
    out: list[str] = []
    for strategy in strategies:
        if strategy == "random":
            raise InvalidArgumentError(
                "strategy='random' cannot be stored: its order depends on the stage's seed "
                f"(computed on the fly); store one of {STORABLE}"
            )
        check_choice("strategies", strategy, STORABLE)
        if strategy not in out:
            out.append(strategy)
    return out


def _open(store_or_path: TokenStore | str) -> TokenStore:
    store = store_or_path if isinstance(store_or_path, TokenStore) else TokenStore.open(
        str(store_or_path))  # fmt: skip
    if "head" in store.manifest:
        raise InvalidArgumentError(
            f"store {store.path!r} is a view of the first {store.manifest['head']['count']} "
            "samples of a store; orders are stored for whole prepared stores only"
        )
    return store


# --- writing ----------------------------------------------------------------------------------


def write_orders(
    store_or_path: TokenStore | str,
    strategies: Sequence[str] = BUILT_IN,
    *,
    chunk_samples: int = DEFAULT_CHUNK,
    block_bytes: int = ORDER_BLOCK_BYTES,
    only_missing: bool = False,
    work_dir: str | None = None,
    threads: int = 2,
) -> dict[str, str]:
    """Write ``orders/<strategy>.bin`` and ``.json`` of each strategy into the store; returns
    ``{strategy: path of the .bin}``.

    Memory is bounded by ``chunk_samples`` (about 80 bytes per sample of it per thread and
    strategy of a pass), whatever the store's size; the bucket files (16 bytes per sample and
    strategy of a pass, 12 for ``size_based``, 4 more beyond 2**32 samples) go to a temporary
    directory named after this process inside ``orders/`` (local store; a killed write's is
    removed by the next) or in ``work_dir`` (default the system's; a remote store, whose files
    are copied up when complete). The features are read once for the scale, once for every
    strategy scaled by it together (``_passes``) and once more, ``lengths.bin`` alone, for
    ``size_based``. ``only_missing``: keep orders already present and fresh. ``threads``:
    chunks scored and buckets sorted at once (the output is the same for any number). An
    existing order is replaced: its ``.json`` is removed first, so a write killed half way
    leaves the order absent, never stale.
    """
    wanted = check_strategies(strategies)
    chunk_samples = check_positive_int("chunk_samples", chunk_samples)
    block_bytes = check_positive_int("block_bytes", block_bytes)
    threads = check_positive_int("threads", threads)
    store = _open(store_or_path)
    if only_missing:  # an order without its lengths column (format 1 or 2) is rewritten
        wanted = [s for s in wanted if not _complete(store, s)]
    if not wanted:
        return {}
    # the most buckets a scatter makes (_splitters), each with up to three files: refused now,
    # before the scan, when the process may not open that many for one strategy
    num_buckets = -(-2 * store.num_samples // chunk_samples) + 1
    _fit_open_files(num_buckets, 3)
    passes = _passes(wanted, num_buckets)
    scale, probes = _scan(store, chunk_samples, threads)
    remote = is_remote(store.path)
    tmp_root = (work_dir or tempfile.gettempdir()) if remote else _join(store.path, ORDERS_DIR)
    os.makedirs(tmp_root, exist_ok=True)
    remove_stale_build_dirs(tmp_root)  # the bucket files of killed writes
    written: dict[str, str] = {}
    for group in passes:
        tmps: dict[str, str] = {}
        try:
            for strategy in group:  # each directory names its owner process
                tmps[strategy] = _temp_name(os.path.join(tmp_root, strategy), "tmp")
                os.makedirs(tmps[strategy])
            jobs = [_Job(store, s, scale, probes, chunk_samples, tmps[s]) for s in group]
            written.update(_write_pass(store, jobs, chunk_samples, block_bytes, threads))
        finally:
            for tmp in tmps.values():
                shutil.rmtree(tmp, ignore_errors=True)
    return {strategy: written[strategy] for strategy in wanted}


def _passes(strategies: list[str], num_buckets: int) -> list[list[str]]:
    """The strategies grouped into passes over the features, in the order they run: those
    scaled by the store's maxima together (one read of both feature files scores and scatters
    them all), as many at once as the process may keep the bucket files of (``num_buckets``,
    three files each) open, then each ``KEY_IS_LENGTH`` one alone, reading ``lengths.bin``
    only, last: its bucket files are written once the scaled passes' are gone (a pass's
    temporary disk is 16 bytes per sample and strategy)."""
    scaled = [s for s in strategies if s not in KEY_IS_LENGTH]
    size = len(scaled)
    while size > 1 and not can_open_files(num_buckets * 3 * size):
        size -= 1  # too few files for them all: fewer strategies a pass
    groups = [scaled[i : i + size] for i in range(0, len(scaled), max(size, 1))]
    return groups + [[s] for s in strategies if s in KEY_IS_LENGTH]


def _store_scale(store: TokenStore, chunk_samples: int) -> ScoreScale:
    """The whole store's ``ScoreScale``, read chunk by chunk."""
    return _scan(store, chunk_samples)[0]


def _scan(
    store: TokenStore, chunk_samples: int, threads: int = 1
) -> tuple[ScoreScale, SampleFeatures]:
    """One pass over the features, ``threads`` chunks at a time: the store's ``ScoreScale``
    and the features of about ``SPLITTER_SAMPLES`` evenly spaced samples (for the splitters;
    taken on the way, so no random reads)."""
    n = store.num_samples
    stride = max(n // SPLITTER_SAMPLES, 1)

    def chunk_task(start: int) -> tuple[ScoreScale, np.ndarray, np.ndarray]:
        part = store.features_range(start, min(start + chunk_samples, n))
        first = -start % stride  # the next multiple of stride at or after start
        scale = functools.reduce(ScoreScale.combine, map(score_scale, _blocks(part)))
        return (scale, part.lengths[first::stride].copy(),
                part.surprisal_sum[first::stride].copy())  # fmt: skip

    scale, lengths, sums = ScoreScale(0, 0.0), [], []
    for part_scale, part_lengths, part_sums in _ordered(
        chunk_task, range(0, n, chunk_samples), threads
    ):
        scale = scale.combine(part_scale)
        lengths.append(part_lengths)
        sums.append(part_sums)
    empty = np.zeros(0, dtype=np.int64)
    return scale, SampleFeatures(
        np.concatenate(lengths or [empty]), np.concatenate(sums or [empty])
    )


class _Job:
    """One strategy's order in a pass: its splitters and bucket search (from the probes' keys),
    its bucket files' layout, the digest of its scores and its temporary directory. Its json is
    removed when the job is made: from then on the order is absent until the json is back."""

    def __init__(self, store: TokenStore, strategy: str, scale: ScoreScale,
                 probes: SampleFeatures, chunk: int, tmp: str) -> None:  # fmt: skip
        self.strategy = strategy
        self.scale = scale
        self.tmp = tmp
        _remove(order_paths(store.path, strategy)[1])
        probe_keys = sort_keys(scores_from_features(probes, strategy, scale=scale))
        self.splitters = _splitters(probe_keys, -(-2 * store.num_samples // chunk))
        self.search = BucketSearch(self.splitters)
        self.layout = _Layout(order_dtype(store.num_samples),
                              carries_lengths=strategy not in KEY_IS_LENGTH)  # fmt: skip
        self.digest = ScoresDigest()

    def bucketed(
        self, features: SampleFeatures, start: int, column: np.ndarray | None
    ) -> tuple[np.ndarray, Bucketed]:
        """A chunk's scores and its records grouped by bucket (``column``: the chunk's lengths
        column, carried unless the key is the length)."""
        scores, keys, bucket = _scored(features, self.strategy, self.scale, self.search)
        lengths = column if self.layout.carries_lengths else None
        return scores, _bucketize(keys, bucket, self.search.num_buckets, start, lengths,
                                  self.layout.dtype)  # fmt: skip


def _write_pass(
    store: TokenStore, jobs: list[_Job], chunk: int, block_bytes: int, threads: int
) -> dict[str, str]:
    """One pass over the features scoring every chunk for each of ``jobs`` and scattering it
    into each one's bucket files, then each order emitted in turn; ``{strategy: .bin}``.
    A pass whose strategies all key on the length reads ``lengths.bin`` alone."""
    n = store.num_samples
    lengths_only = all(job.strategy in KEY_IS_LENGTH for job in jobs)
    carried = any(job.layout.carries_lengths for job in jobs)

    turns = _Turns()
    scatters = [_Scatter(job.layout, job.search.num_buckets, job.tmp) for job in jobs]

    def chunk_task(start: int) -> None:
        scored: list[tuple[np.ndarray, Bucketed]] = []

        def consume() -> None:  # in chunk order: the whole array's fingerprint, buckets in order
            for job, scatter, (scores, bucketed) in zip(jobs, scatters, scored):
                job.digest.update(scores)
                scatter.add(bucketed)

        try:
            stop = min(start + chunk, n)
            if lengths_only:  # the score is the length: surprisal never read (zeros, no memory)
                lengths = store.lengths_range(start, stop)
                features = SampleFeatures(lengths, np.broadcast_to(np.int64(0), lengths.shape))
            else:
                features = store.features_range(start, stop)
            column = _column(features.lengths, store.path, convert=carried)
            scored = [job.bucketed(features, start, column) for job in jobs]
        finally:  # on this thread: nothing of the chunk is held once it returns
            turns.take(start // chunk, consume)

    try:
        for _ in _ordered(chunk_task, range(0, n, chunk), threads):
            pass  # each chunk was hashed and scattered at its turn
    finally:
        buckets = [scatter.close() for scatter in scatters]
    return {job.strategy: _emit_order(store, job, part, chunk, block_bytes, threads)
            for job, part in zip(jobs, buckets)}  # fmt: skip


class _Turns:
    """Work done in item order from any thread: ``take(k, fn)`` runs ``fn`` once items
    ``0 .. k-1`` have taken theirs. Every item must take its turn (a failed one with nothing to
    do), or those after it wait forever; ``_ordered`` starts items in order, so the item a
    turn waits for is running or done."""

    def __init__(self) -> None:
        self._next = 0
        self._cond = threading.Condition()

    def take(self, k: int, fn: Callable[[], None]) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._next == k)
        try:
            fn()
        finally:
            with self._cond:
                self._next += 1
                self._cond.notify_all()


def _emit_order(
    store: TokenStore,
    job: _Job,
    buckets: list[tuple[str, int]],
    chunk: int,
    block_bytes: int,
    threads: int,
) -> str:
    """``job``'s scattered buckets sorted into its order and lengths column, their CRCs, the
    files put in place and the json written last; the ``.bin``'s path."""
    strategy, tmp = job.strategy, job.tmp
    bin_path, json_path = order_paths(store.path, strategy)
    local_bin = os.path.join(tmp, "order.bin")
    local_len = os.path.join(tmp, "order.lengths")
    with open(local_bin, "wb") as out, open(local_len, "wb") as out_len:
        _emit_all(buckets, job.layout, chunk, (out, out_len), tmp, threads)
        for handle in (out, out_len):
            handle.flush()
            os.fsync(handle.fileno())
    local_crc, crc_sha256, crc_pages = write_block_crcs(local_bin, block_bytes)
    local_len_crc, len_crc_sha256, len_crc_pages = write_block_crcs(local_len, block_bytes)
    meta = {
        "format": FORMAT,
        "strategy": strategy,
        "num_samples": store.num_samples,
        "dtype": job.layout.dtype.str,
        "store_fingerprint": store.fingerprint,
        "scores_fingerprint": job.digest.fingerprint(),
        "scale": job.scale.to_json(),
        "block_bytes": block_bytes,
        "block_crc32c_sha256": crc_sha256,
        "lengths_dtype": LENGTHS_DTYPE.str,
        "lengths_crc32c_sha256": len_crc_sha256,
        "block_crc32c_pages": crc_pages,
        "lengths_crc32c_pages": len_crc_pages,
    }
    _publish(local_bin, bin_path)
    _publish(local_crc, order_crc_path(store.path, strategy))
    lengths_bin, lengths_crc = lengths_paths(store.path, strategy)
    _publish(local_len, lengths_bin)
    _publish(local_len_crc, lengths_crc)
    atomic_write_text(json_path, json.dumps(meta, sort_keys=True))
    return bin_path


def restamp_orders(store_path: str, old_fingerprint: str, new_fingerprint: str) -> list[str]:
    """Stamp the orders of a store whose manifests were rewritten without a change of data
    (``data.store_upgrade``) with its new fingerprint: each ``orders/<strategy>.json`` that
    records ``old_fingerprint`` is written again (beside, then renamed) with
    ``new_fingerprint``, and with the page CRCs of its ``.crc32c`` files when it has none yet
    (those files checked against their sha256 first); any other is left stale
    (``--orders_only`` writes it again). Returns the strategies stamped."""
    root = _join(store_path, ORDERS_DIR)
    if not os.path.isdir(root):
        return []
    stamped = []
    for name in sorted(os.listdir(root)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(root, name)
        meta = json.loads(read_text(path))
        if isinstance(meta, dict) and meta.get("store_fingerprint") == old_fingerprint:
            meta["store_fingerprint"] = new_fingerprint
            _add_pages(store_path, name[: -len(".json")], meta)
            atomic_write_text(path, json.dumps(meta, sort_keys=True))
            stamped.append(name[: -len(".json")])
    return stamped


def _add_pages(store_path: str, strategy: str, meta: dict[str, Any]) -> None:
    """The page CRCs of a format-3 order's two ``.crc32c`` files into ``meta`` when missing,
    each file checked against the sha256 ``meta`` records (a ``StoreError`` naming the fix)."""
    if meta.get("format") != FORMAT or "block_crc32c_pages" in meta:
        return
    files = (("block", order_crc_path(store_path, strategy)),
             ("lengths", lengths_paths(store_path, strategy)[1]))  # fmt: skip
    for key, crc_path in files:
        raw = read_bytes(crc_path) if isfile(crc_path) else None
        if raw is None or sha256_hex(raw) != meta[f"{key}_crc32c_sha256"]:
            raise StoreError(
                f"{crc_path}: missing or not the file the order's json records; "
                + FIX.format(path=store_path)
            )
        meta[f"{key}_crc32c_pages"] = crc32c_blocks(raw, SIDECAR_PAGE_BYTES)


def write_block_crcs(bin_path: str, block_bytes: int) -> tuple[str, str, list[int]]:
    """Write the CRC32C of every ``block_bytes`` block of the local ``bin_path`` to its side
    file (``shards.write_file_checksums``: ``order.bin`` -> ``order.crc32c``, ``<u4``,
    synced); returns the side file's path, its sha256 (the json's ``*_crc32c_sha256``) and the
    CRC32C of each of its pages (``*_crc32c_pages``)."""
    entry = write_file_checksums(bin_path, block_bytes)
    crc_path = os.path.join(os.path.dirname(bin_path), sidecar_name(os.path.basename(bin_path)))
    return crc_path, sha256_file(crc_path), entry["crc32c_pages"]


def _splitters(sample_keys: np.ndarray, num_buckets: int) -> np.ndarray:
    """Bucket splitters: the smallest key (so a bucket of more than one key always splits) and
    quantiles of ``sample_keys``; key ``k`` goes to bucket ``searchsorted(splitters, k, "left")``
    (keys in ``(s[i-1], s[i]]``), so equal keys share a bucket and buckets ascend."""
    ordered = np.sort(sample_keys)
    quantiles = ordered[(np.arange(1, max(num_buckets, 1)) * ordered.size) // max(num_buckets, 1)]
    return np.unique(np.concatenate([ordered[:1], quantiles]))


# keys, indices, lengths or None (all grouped by bucket), bucket sizes
Bucketed = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]


class _Layout:
    """A bucket's files: ``.key`` (``<u8`` sort keys), ``.idx`` (the order's dtype) and, unless
    the key is the length itself (``KEY_IS_LENGTH``), ``.len`` (``<u4`` stored lengths). A
    ``size_based`` key is the float64 bits of the length, so its lengths column is read back
    from the sorted keys (``lengths_of``) and nothing is carried for it."""

    def __init__(self, dtype: np.dtype, *, carries_lengths: bool) -> None:
        self.dtype = dtype
        self.carries_lengths = carries_lengths
        columns = [(".key", np.dtype("<u8")), (".idx", dtype)]
        if carries_lengths:
            columns.append((".len", LENGTHS_DTYPE))
        self.suffixes = tuple(suffix for suffix, _ in columns)
        self.dtypes = tuple(d for _, d in columns)

    def lengths_of(
        self, keys: np.ndarray, lengths: np.ndarray | None, order: np.ndarray | None = None
    ) -> np.ndarray:
        """The lengths column of records whose keys are ``keys``, taken at ``order`` (None:
        as they are): the carried ``lengths``, or the lengths the keys are (float64 bits of
        integers below 2**32, checked by ``_column`` when the chunk was read). Only the
        column it comes from is gathered."""
        if lengths is not None:
            return lengths if order is None else np.take(lengths, order)
        keys = keys if order is None else np.take(keys, order)
        return keys.view(np.float64).astype(LENGTHS_DTYPE)


def _column(lengths: np.ndarray, store_path: str, *, convert: bool = True) -> np.ndarray | None:
    """A chunk's stored lengths as the lengths column's dtype (``<u4``; None unless
    ``convert``: checked only, not carried), refusing any that does not fit (no real sample
    holds 2**32 tokens)."""
    lengths = np.asarray(lengths)
    if lengths.size and (int(lengths.min()) < 0 or int(lengths.max()) >= 1 << 32):
        raise StoreError(
            f"store {store_path!r}: a stored length of {int(lengths.max())} tokens does not fit "
            "the order's lengths column (<u4); the store is corrupt, rebuild it"
        )
    return lengths.astype(LENGTHS_DTYPE) if convert else None


def _blocks(features: SampleFeatures) -> Iterator[SampleFeatures]:
    """``features`` in blocks of ``SCORE_BLOCK`` samples (views)."""
    for start in range(0, features.lengths.size, SCORE_BLOCK):
        stop = start + SCORE_BLOCK
        yield SampleFeatures(features.lengths[start:stop], features.surprisal_sum[start:stop])


def _scored(
    features: SampleFeatures, strategy: str, scale: ScoreScale, search: BucketSearch
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A chunk's scores, sort keys and buckets (``search.of``), computed ``SCORE_BLOCK``
    samples at a time into three arrays, so the temporaries of the arithmetic stay small."""
    m = features.lengths.size
    scores = np.empty(m, dtype=np.float64)
    keys = np.empty(m, dtype=np.uint64)
    bucket = np.empty(m, dtype=search.dtype)
    for start, block in zip(range(0, m, SCORE_BLOCK), _blocks(features)):
        stop = start + block.lengths.size
        scores[start:stop] = scores_from_features(block, strategy, scale=scale)
        keys[start:stop] = sort_keys(scores[start:stop])
        bucket[start:stop] = search.of(keys[start:stop])
    return scores, keys, bucket


def _bucketize(
    keys: np.ndarray,
    bucket: np.ndarray,
    num: int,
    indices: np.ndarray | int,
    lengths: np.ndarray | None,
    dtype: np.dtype,
) -> Bucketed:
    """A chunk's keys, indices (an int: ``indices + arange``) and lengths (None: not carried)
    grouped by ``bucket`` (each key's, of ``num``), in index order within each, and the bucket
    sizes."""
    perm = np.argsort(bucket, kind="stable")  # a radix sort of small ints
    sizes = np.bincount(bucket, minlength=num)
    if isinstance(indices, int):  # in the order's dtype (every index fits it)
        perm_indices = perm.astype(dtype)
        perm_indices += dtype.type(indices)
    else:
        perm_indices = np.take(indices, perm).astype(dtype, copy=False)
    lengths = None if lengths is None else np.take(lengths, perm)
    return np.take(keys, perm), perm_indices, lengths, sizes


def _fit_open_files(num: int, files: int) -> None:
    """Let the scatter hold ``files`` files of each of ``num`` buckets open at once (the
    process's limit raised to fit, or refused with the fix)."""
    ensure_open_files(
        num * files,
        f"write_orders' scatter into {num} buckets",
        "pass a larger chunk_samples (fewer, larger buckets)",
    )


def _scatter(
    chunks: Iterable[Bucketed], layout: _Layout, num: int, directory: str
) -> list[tuple[str, int]]:
    """Append each bucketed chunk to the bucket files (``layout``), in chunk order, so every
    bucket stays in index order; the buckets' (path without suffix, count), ascending."""
    _fit_open_files(num, len(layout.suffixes))
    scatter = _Scatter(layout, num, directory)
    try:
        for bucketed in chunks:
            scatter.add(bucketed)
    finally:
        buckets = scatter.close()
    return buckets


class _Scatter:
    """``num`` bucket files (``layout``) in a new directory inside ``directory``, appended to
    chunk by chunk (``add``), each bucket's files opened at its first record and kept open
    until ``close``, which returns the buckets' (path without suffix, count), ascending."""

    def __init__(self, layout: _Layout, num: int, directory: str) -> None:
        self.layout = layout
        self.counts = np.zeros(num, dtype=np.int64)
        self.handles: dict[int, list[Any]] = {}
        directory = tempfile.mkdtemp(prefix="buckets-", dir=directory)
        self.paths = [os.path.join(directory, f"bucket-{b}") for b in range(num)]

    def add(self, bucketed: Bucketed) -> None:
        """Append one chunk's records, grouped by bucket, to their buckets' files."""
        *columns, sizes = bucketed
        columns = [c for c in columns if c is not None]
        edges = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        for b in np.flatnonzero(sizes).tolist():
            if b not in self.handles:
                self.handles[b] = [open(self.paths[b] + suffix, "ab")  # noqa: SIM115
                                   for suffix in self.layout.suffixes]  # fmt: skip
            for handle, column in zip(self.handles[b], columns):
                handle.write(column[edges[b] : edges[b + 1]].data)
        self.counts += sizes

    def close(self) -> list[tuple[str, int]]:
        """Close every file; the non-empty buckets' (path without suffix, count)."""
        for files in self.handles.values():
            for handle in files:
                handle.close()
        self.handles.clear()
        return [(self.paths[b], int(c)) for b, c in enumerate(self.counts.tolist()) if c]


def _parts(
    path: str, count: int, layout: _Layout, budget: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """A bucket's (keys, indices, lengths or None), ``budget`` at a time, by plain file reads
    (no memory map: resident memory stays O(budget))."""
    for start in range(0, count, budget):
        size = min(budget, count - start)
        columns = [
            np.fromfile(path + suffix, dtype=d, count=size, offset=start * d.itemsize)
            for suffix, d in zip(layout.suffixes, layout.dtypes)
        ]
        yield columns[0], columns[1], columns[2] if layout.carries_lengths else None


def _sorted_bucket(path: str, count: int, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """The indices and lengths column of a bucket that fits in memory, sorted by (key,
    index); its files removed."""
    ((keys, indices, lengths),) = _parts(path, count, layout, count)
    _remove_bucket(path, layout)
    if keys.min() == keys.max():  # one key: already in index order
        return indices, layout.lengths_of(keys, lengths)
    order = order_from_keys(keys)
    return np.take(indices, order), layout.lengths_of(keys, lengths, order)


def _emit_all(
    buckets: list[tuple[str, int]],
    layout: _Layout,
    budget: int,
    outs: tuple[Any, Any],
    tmp: str,
    threads: int,
) -> None:
    """Append the buckets' indices to ``outs[0]`` and their lengths to ``outs[1]``, bucket
    after bucket, each sorted by (key, index): those of at most ``budget`` sorted by
    ``threads`` threads, the larger ones split again."""
    run: list[tuple[str, int]] = []
    out, out_len = outs

    def flush() -> None:
        for indices, lengths in _ordered(
            lambda b: _sorted_bucket(b[0], b[1], layout), run, threads
        ):
            out.write(indices.data)
            out_len.write(lengths.data)
        run.clear()

    for path, count in buckets:
        if count <= budget:
            run.append((path, count))
            continue
        flush()
        low = min(int(k.min()) for k, _, _ in _parts(path, count, layout, budget))
        high = max(int(k.max()) for k, _, _ in _parts(path, count, layout, budget))
        if low == high:  # one key: already in index order
            for keys, indices, lengths in _parts(path, count, layout, budget):
                out.write(indices.data)
                out_len.write(layout.lengths_of(keys, lengths).data)
        else:
            stride = max(count // SPLITTER_SAMPLES, 1)
            sample = np.concatenate([k[(-i * budget) % stride :: stride]
                                     for i, (k, _, _) in enumerate(_parts(path, count, layout, budget))])  # fmt: skip
            splitters = _splitters(sample, -(-2 * count // budget))
            search = BucketSearch(splitters)
            parts = (
                _bucketize(k, search.of(k), search.num_buckets, i, n, layout.dtype)
                for k, i, n in _parts(path, count, layout, budget)
            )
            _emit_all(
                _scatter(parts, layout, splitters.size + 1, tmp), layout, budget, outs, tmp, threads
            )
        _remove_bucket(path, layout)
    flush()


def _remove_bucket(path: str, layout: _Layout) -> None:
    for suffix in layout.suffixes:
        os.remove(path + suffix)


def _ordered(fn: Callable[[Any], Any], items: Iterable[Any], threads: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, with up to ``threads`` calls running at once (numpy's sorts,
    ufuncs and file reads release the GIL); at most ``threads`` results are held."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        window: collections.deque = collections.deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= threads:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def _publish(local: str, target: str) -> None:
    """Put the complete local file at ``target`` (local: a rename; remote: a copy then a rename
    on the target's filesystem)."""
    if not is_remote(target):
        os.replace(local, target)
        return
    import tensorflow as tf

    tmp = f"{target}.tmp-{os.getpid()}"
    tf.io.gfile.copy(local, tmp, overwrite=True)
    tf.io.gfile.rename(tmp, target, overwrite=True)


def _remove(path: str) -> None:
    if not is_remote(path):
        if os.path.exists(path):
            os.remove(path)
        return
    import tensorflow as tf

    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


# --- reading ----------------------------------------------------------------------------------


class StoredColumn:
    """One stored array read by range: ``take(positions)`` (any shape) and ``[slice]`` return
    int64 values; memory O(positions asked). Every block read is checked against its CRC32C
    the first time (``MappedFile`` locally, ``RangedFile`` on any ``tf.io.gfile`` path). A
    numpy int64 array is the same duck type (``len``, ``arr[positions]``)."""

    def __init__(self, path: str, num_samples: int, dtype: np.dtype, file: BlockFile) -> None:
        self.path = path
        self.num_samples = int(num_samples)
        self.dtype = np.dtype(dtype)
        self._file = file

    def __len__(self) -> int:
        return self.num_samples

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The values at ``positions`` (int64, same shape)."""
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= self.num_samples):
            raise IndexError(
                f"order positions must be in [0, {self.num_samples}), got values in "
                f"[{pos.min()}, {pos.max()}]"
            )
        with self._fix_hint():
            return self._file.take(pos, self.dtype).astype(np.int64)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(self.num_samples)
            if step == 1:  # one range read
                size = self.dtype.itemsize
                with self._fix_hint():
                    raw = self._file.read(start * size, max(stop, start) * size)
                return raw.view(self.dtype).astype(np.int64)
            return self.take(np.arange(start, stop, step, dtype=np.int64))
        return self.take(key)

    @contextlib.contextmanager
    def _fix_hint(self) -> Iterator[None]:
        """A corrupt block's ``StoreError`` says how to write the order again."""
        try:
            yield
        except StoreError as err:
            store = os.path.dirname(os.path.dirname(self.path.rstrip("/")))
            raise StoreError(f"{err}; or {FIX.format(path=store)}") from err

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, num_samples={len(self)})"


class StoredOrder(StoredColumn):
    """A stored order (sample indices, easy to hard) read by range, with its json's facts and,
    from format 3 on, its lengths column (``lengths``: the stored length of the sample at each
    order position, a ``StoredColumn`` opened at first use, so an unpacked stage never reads
    its checksums; None for an order of format 1 or 2)."""

    def __init__(
        self,
        bin_path: str,
        meta: dict[str, Any],
        file: BlockFile,
        lengths: Callable[[], StoredColumn] | None = None,
    ) -> None:
        super().__init__(bin_path, int(meta["num_samples"]), np.dtype(meta["dtype"]), file)
        self.strategy = str(meta["strategy"])
        self.scores_fingerprint = str(meta["scores_fingerprint"])
        self.scale = ScoreScale.from_json(meta["scale"])
        self.format = str(meta["format"])
        self._open_lengths = lengths

    @property
    def has_lengths(self) -> bool:
        """Whether the order carries its lengths column (format 3)."""
        return self._open_lengths is not None

    @functools.cached_property
    def lengths(self) -> StoredColumn | None:
        """The lengths column (its block checksums read and checked now), or None."""
        return None if self._open_lengths is None else self._open_lengths()

    def lengths_view(self) -> Any:
        """The lengths column as an order view (``len``, ``[positions]``) that opens the column
        at its first read, or None without one: a stage hands it to its scheduler whether or
        not it packs, and only a packed one reads it."""
        return _LazyLengths(self) if self.has_lengths else None


class _LazyLengths:
    """``order.lengths[positions]``, the column opened at the first read."""

    def __init__(self, order: StoredOrder) -> None:
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.order.lengths[key]

    def __repr__(self) -> str:
        return f"StoredOrder({self.path!r}, strategy={self.strategy!r}, num_samples={len(self)})"


def open_stored_order(store: TokenStore, strategy: str) -> StoredOrder | None:
    """The stored order of ``strategy`` in ``store``; None when it is not stored (no ``.json``:
    never written or interrupted; ``random``; a ``head`` view of a store). A ``StoreError``
    naming the fix when it is stale (another store fingerprint or sample count) or corrupt."""
    check_choice("strategy", strategy, STRATEGIES)
    if strategy == "random" or "head" in store.manifest:
        return None
    return _fresh(store, strategy, raise_errors=True)


def _complete(store: TokenStore, strategy: str) -> bool:
    """Whether the order is present, fresh and has a sound lengths column (its checksums
    read): what ``only_missing`` keeps."""
    order = _fresh(store, strategy)
    try:
        return order is not None and order.lengths is not None
    except StoreError:
        return False


def _fresh(store: TokenStore, strategy: str, *, raise_errors: bool = False) -> StoredOrder | None:
    """The order when present and valid for ``store``; else None, or (``raise_errors``) a
    ``StoreError`` for one present but stale or corrupt."""
    bin_path, json_path = order_paths(store.path, strategy)
    if not isfile(json_path):
        return None
    try:
        meta = _check_meta(store, strategy, read_text(json_path), json_path)
        size = file_size(bin_path)
        expected = int(meta["num_samples"]) * np.dtype(meta["dtype"]).itemsize
        if size != expected:
            state = "is missing" if size is None else f"has {size} bytes"
            raise StoreError(
                f"{bin_path}: the order {state}, its json records {expected} bytes; "
                + FIX.format(path=store.path)
            )
        block = int(meta["block_bytes"])
        if meta["format"] == FORMAT_1:
            crcs = meta["block_crc32c"]
        else:
            crcs = _block_crcs(store, order_crc_path(store.path, strategy), meta, "block",
                               -(-expected // block), f"{ORDERS_DIR}/{strategy}.crc32c")  # fmt: skip
        file = _block_file(bin_path, expected, block, crcs, f"{ORDERS_DIR}/{strategy}.bin", store)
        lengths = None
        if meta["format"] == FORMAT:
            lengths = _lengths_column(store, strategy, meta)
    except StoreError:
        if raise_errors:
            raise
        return None
    return StoredOrder(bin_path, meta, file, lengths)


def _block_file(
    path: str, size: int, block_bytes: int, crcs: Any, name: str, store: TokenStore
) -> BlockFile:
    """A reader of one of the order's files, checking each block on first read."""
    label = f"store {store.path!r}, {name}"
    if is_remote(path):
        from highnoon.data.remote_blocks import RangedFile

        return RangedFile(path, size, block_bytes, crcs, label=label)
    return MappedFile(path, size, block_bytes, crcs, label=label)


def _lengths_column(
    store: TokenStore, strategy: str, meta: dict[str, Any]
) -> Callable[[], StoredColumn]:
    """The lengths column of a format-3 order, its size checked now; opened (its block CRCs
    read and checked against the json's sha256) when first used."""
    path, crc_path = lengths_paths(store.path, strategy)
    dtype = np.dtype(meta["lengths_dtype"])
    expected = int(meta["num_samples"]) * dtype.itemsize
    size = file_size(path)
    if size != expected:
        state = "is missing" if size is None else f"has {size} bytes"
        raise StoreError(
            f"{path}: the order's lengths column {state}, its json records {expected} bytes; "
            + FIX.format(path=store.path)
        )

    def column() -> StoredColumn:
        block = int(meta["block_bytes"])
        crcs = _block_crcs(store, crc_path, meta, "lengths", -(-expected // block),
                           f"{ORDERS_DIR}/{strategy}.lengths.crc32c")  # fmt: skip
        name = f"{ORDERS_DIR}/{strategy}.lengths.bin"
        file = _block_file(path, expected, block, crcs, name, store)
        return StoredColumn(path, int(meta["num_samples"]), dtype, file)

    return column


def _block_crcs(store: TokenStore, path: str, meta: dict[str, Any], key: str, blocks: int,
                name: str) -> np.ndarray | SidecarCrcs:  # fmt: skip
    """A ``.crc32c`` file (``<u4``, one per block): read by checked page (``SidecarCrcs``) when
    the json records its page CRCs (``<key>_crc32c_pages``), its size checked now; else read
    whole and checked against the sha256 the json records."""
    fix = FIX.format(path=store.path)
    if not isfile(path):
        raise StoreError(f"{path}: the order's block checksums are missing; {fix}")
    pages = meta.get(f"{key}_crc32c_pages")
    if pages is not None:
        size = file_size(path)
        if size != 4 * blocks or len(pages) != -(-4 * blocks // SIDECAR_PAGE_BYTES):
            raise StoreError(
                f"{path}: {size} bytes and {len(pages)} page CRCs, the order's {blocks} blocks "
                f"need {4 * blocks}; the checksums are corrupt or of another write, {fix}"
            )
        return SidecarCrcs(_block_file(path, 4 * blocks, SIDECAR_PAGE_BYTES, pages, name, store),
                           blocks, pages)  # fmt: skip
    sha256 = meta[f"{key}_crc32c_sha256"]
    raw = read_bytes(path)
    if sha256_hex(raw) != sha256:
        raise StoreError(
            f"{path}: sha256 {sha256_hex(raw)}, the order's json records "
            f"{sha256}; the checksums are corrupt or of another write, {fix}"
        )
    return np.frombuffer(raw, dtype="<u4")


def _check_meta(store: TokenStore, strategy: str, text: str, path: str) -> dict[str, Any]:
    fix = FIX.format(path=store.path)
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise StoreError(f"{path}: not valid JSON ({err}); {fix}") from err
    version = meta.get("format") if isinstance(meta, dict) else None
    crc_key = "block_crc32c" if version == FORMAT_1 else "block_crc32c_sha256"
    column = ("lengths_dtype", "lengths_crc32c_sha256") if version == FORMAT else ()
    keys = ("format", "strategy", "num_samples", "dtype", "store_fingerprint",
            "scores_fingerprint", "scale", "block_bytes", crc_key, *column)  # fmt: skip
    missing = [k for k in keys if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise StoreError(f"{path}: missing keys {missing}; {fix}")
    if meta["format"] not in (FORMAT, FORMAT_2, FORMAT_1) or meta["strategy"] != strategy:
        raise StoreError(
            f"{path}: format {meta['format']!r} of strategy {meta['strategy']!r}, expected "
            f"{FORMAT!r} (or {FORMAT_2!r}, {FORMAT_1!r}) of {strategy!r}; {fix}"
        )
    if meta["store_fingerprint"] != store.fingerprint or meta["num_samples"] != store.num_samples:
        raise StoreError(
            f"{path}: the order is stale: computed from store fingerprint "
            f"{meta['store_fingerprint']} ({meta['num_samples']} samples), the store is now "
            f"{store.fingerprint} ({store.num_samples} samples); {fix}"
        )
    if meta["dtype"] != order_dtype(store.num_samples).str:
        raise StoreError(f"{path}: dtype {meta['dtype']!r} is not this format's; {fix}")
    return meta


def store_score_scale(store: TokenStore, *, chunk_samples: int = DEFAULT_CHUNK) -> ScoreScale:
    """The maxima the store's scores are normalised by: from a fresh stored order's json when
    there is one (no feature is read), else computed from the features chunk by chunk."""
    if "head" not in store.manifest:
        for strategy in BUILT_IN:
            order = _fresh(store, strategy)
            if order is not None:
                return order.scale
    return _store_scale(store, check_positive_int("chunk_samples", chunk_samples))
