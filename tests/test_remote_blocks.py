"""RangedFile: a store file read by byte range through tf.io.gfile (here ``ram://``), each block
checked against its CRC32C, fetched blocks coalesced, cached and prefetched."""

from __future__ import annotations

import threading
import uuid

import google_crc32c
import numpy as np
import pytest

from highnoon.data.remote_blocks import BlockCache, RangedFile, _runs
from highnoon.data.store_errors import StoreError

BLOCK = 64


def _crcs(data: bytes, block: int) -> list[int]:
    return [google_crc32c.value(data[i : i + block]) for i in range(0, len(data), block)]


def _write(data: bytes) -> str:
    import tensorflow as tf

    path = f"ram://remote-blocks/{uuid.uuid4().hex}.bin"
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture(scope="module")
def payload():
    """1000 bytes (16 blocks of 64, the last short) in ram://, with their checksums."""
    data = np.random.default_rng(7).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    return data, _write(data), _crcs(data, BLOCK)


def _file(payload, cache_bytes=1 << 20, **kw):
    data, path, crcs = payload
    return RangedFile(
        path, len(data), BLOCK, crcs, label="store S, f.bin", cache=BlockCache(cache_bytes), **kw
    )


def test_runs_group_consecutive_blocks():
    assert _runs(np.array([0, 1, 2, 5, 7, 8])) == [(0, 3), (5, 6), (7, 9)]
    assert _runs(np.array([], dtype=np.int64)) == []


def test_read_returns_the_exact_bytes_and_coalesces_missing_blocks(payload):
    data = payload[0]
    f = _file(payload)
    assert f.read(10, 300).tobytes() == data[10:300]  # blocks 0..4: one range read
    assert (f.reads, f.bytes_read) == (1, 5 * BLOCK)
    assert f.read(600, 1000).tobytes() == data[600:1000]  # blocks 9..15 (last one short)
    assert (f.reads, f.bytes_read) == (2, 5 * BLOCK + 6 * BLOCK + 1000 - 15 * BLOCK)
    # blocks 0..15: 5..8 missing are one read; the rest come from the cache
    assert f.read(0, 1000).tobytes() == data
    assert (f.reads, f.bytes_read) == (3, 1000)
    assert f.verified_blocks == 16
    assert f.read(5, 5).size == 0
    with pytest.raises(StoreError, match=r"store S, f\.bin: read of bytes \[990, 1001\) outside"):
        f.read(990, 1001)


@pytest.mark.parametrize("dtype", ["<u2", "<u4", "<i8"])
def test_take_equals_numpy_indexing(payload, dtype):
    data = payload[0]
    f = _file(payload)
    ref = np.frombuffer(
        data[: len(data) // np.dtype(dtype).itemsize * np.dtype(dtype).itemsize], dtype
    )
    pos = np.array([[3, 0, ref.size - 1], [7, 7, 1]])
    out = f.take(pos, dtype)
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3)
    np.testing.assert_array_equal(out, ref[pos])
    assert f.take(np.zeros(0, np.int64), dtype).shape == (0,)
    with pytest.raises(StoreError, match=r"read of bytes .* outside the file \(1000 bytes\)"):
        f.take([ref.size], dtype)


def test_take_reads_only_the_blocks_its_positions_touch(payload):
    f = _file(payload)
    f.take(np.array([0, 1, 130, 131]), "<u2")  # bytes 0..3 and 260..263: blocks 0 and 4
    assert (f.reads, f.bytes_read) == (2, 2 * BLOCK)


def test_take_across_block_boundaries_with_an_odd_block_size(payload):
    data, path, _ = payload
    f = RangedFile(path, len(data), 7, _crcs(data, 7), label="odd", cache=BlockCache(1 << 20))
    ref = np.frombuffer(data, "<u4")
    pos = np.arange(ref.size)[::-3]  # many elements straddle two 7-byte blocks
    np.testing.assert_array_equal(f.take(pos, "<u4"), ref[pos])


def test_cached_blocks_are_not_fetched_again_and_no_cache_refetches(payload):
    f = _file(payload)
    f.read(0, 200)
    before = f.reads
    f.read(0, 200)
    assert f.reads == before
    g = _file(payload, cache_bytes=0)
    g.read(0, 200)
    g.read(0, 200)
    assert (g.reads, g.bytes_read) == (2, 2 * 4 * BLOCK)
    assert len(g.cache) == 0


def test_lru_evicts_least_recently_used_blocks_within_its_bound():
    cache = BlockCache(3 * 10)
    for key in "abc":
        cache.put((key,), np.zeros(10, np.uint8))
    assert cache.get(("a",)) is not None  # a becomes most recent: b is evicted next
    cache.put(("d",), np.zeros(10, np.uint8))
    assert cache.get(("b",)) is None
    assert [cache.get((k,)) is not None for k in "acd"] == [True, True, True]
    assert (cache.bytes_held, cache.evictions) == (30, 1)
    assert (cache.hits, cache.misses) == (4, 1)
    cache.resize(10)
    assert cache.bytes_held == 10 and cache.get(("d",)) is not None  # only the newest kept
    cache.put(("big",), np.zeros(11, np.uint8))  # larger than the whole cache: not kept
    assert cache.get(("big",)) is None and cache.bytes_held == 10


def test_put_many_counts_new_entries_and_replaces_ones_already_held():
    """New entries go in together; an entry a racing read put first is replaced, counted once
    and made the most recent."""
    cache = BlockCache(100)
    cache.put_many([1, 2], [(0, b"x" * 10), (5, b"y" * 20)])
    assert (len(cache), cache.bytes_held) == (2, 30)
    cache.put_many([3, 1], [(9, b"z" * 5), (0, b"w" * 40)])  # 1 again: replaced, not added
    assert (len(cache), cache.bytes_held) == (3, 65)
    assert cache.get(1, count=False) == (0, b"w" * 40)
    cache.resize(40)  # evicts the least recent first: 2, then 3; 1 was put last
    assert [cache.get(k, count=False) is not None for k in (1, 2, 3)] == [True, False, False]
    assert cache.bytes_held == 40


def test_a_flipped_byte_is_an_error_naming_the_block_and_its_offset(payload):
    data, _, crcs = payload
    bad = bytearray(data)
    bad[200] ^= 0x10  # block 3: bytes [192, 256)
    path = _write(bytes(bad))
    f = RangedFile(
        path,
        len(data),
        BLOCK,
        crcs,
        label="store S, shard-00000-of-00001/tokens.bin",
        cache=BlockCache(1 << 20),
    )
    assert f.read(0, 192).tobytes() == data[:192]  # blocks before it are fine
    expected = (
        r"store S, shard-00000-of-00001/tokens\.bin: block 3 \(byte offset 192, bytes \[192, 256\)\) "
        r"has CRC32C 0x[0-9a-f]{8}, the shard manifest records 0x[0-9a-f]{8}; the store is corrupt, "
        r"rebuild it"
    )
    with pytest.raises(StoreError, match=expected):
        f.read(150, 210)
    with pytest.raises(StoreError, match="block 3"):
        f.take(np.array([100]), "<u2")  # byte 200 again: still refused, never cached
    assert f.cache.get(f._key(3)) is None


def test_a_truncated_or_missing_file_is_a_store_error(payload):
    """The size is checked by one stat before the first range read (not at open): even a
    range the short file still holds is refused; a file cut after that check is caught by the
    short read."""
    import tensorflow as tf

    data, _, crcs = payload
    short = _write(data[:900])
    f = RangedFile(short, len(data), BLOCK, crcs, label="store S, t.bin", cache=BlockCache(0))
    with pytest.raises(
        StoreError,
        match=r"store S, t\.bin: file has size 900, the shard manifest records 1000; the shard "
        "is truncated or was modified, rebuild the store",
    ):
        f.read(0, 10)
    assert (f.reads, f.bytes_read) == (0, 0)
    cut = _write(data)
    f = RangedFile(cut, len(data), BLOCK, crcs, label="store S, t.bin", cache=BlockCache(0))
    assert f.read(0, 10).tobytes() == data[:10] and f.stats == 1
    tf.io.gfile.remove(cut)
    with tf.io.gfile.GFile(cut, "wb") as handle:
        handle.write(data[:900])
    with pytest.raises(
        StoreError,
        match=r"store S, t\.bin: reading bytes \[896, 960\) returned 4 bytes; .*truncated",
    ):
        f.read(950, 960)
    assert f.stats == 1
    gone = RangedFile(
        "ram://remote-blocks/absent.bin",
        len(data),
        BLOCK,
        crcs,
        label="store S, a.bin",
        cache=BlockCache(0),
    )
    with pytest.raises(
        StoreError,
        match=r"store S, a\.bin: the file is missing; the store is incomplete, rebuild it",
    ):
        gone.read(0, 1)
    with pytest.raises(StoreError, match="records 3 block checksums, but a file of 1000 bytes"):
        RangedFile(short, len(data), BLOCK, crcs[:3], label="store S, t.bin")


def test_a_rebuilt_file_at_the_same_path_never_gets_stale_blocks(payload):
    data, _, crcs = payload
    cache = BlockCache(1 << 20)
    path = _write(data)
    RangedFile(path, len(data), BLOCK, crcs, label="v1", cache=cache).read(0, 1000)
    new = bytes(255 - b for b in data)
    import tensorflow as tf

    tf.io.gfile.remove(path)  # ram:// appends on "wb" to an existing file
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(new)
    g = RangedFile(path, len(new), BLOCK, _crcs(new, BLOCK), label="v2", cache=cache)
    assert g.read(0, 1000).tobytes() == new
    assert g.reads == 1  # nothing served from v1's cached blocks


def test_prefetch_fills_the_cache_so_the_read_issues_no_fetch(payload):
    data = payload[0]
    f = _file(payload)
    f.prefetch([(0, 100), (640, 700)])
    f.wait_prefetch()
    assert (f.reads, f.bytes_read) == (2, 3 * BLOCK)  # blocks 0-1 and 10 in two reads
    assert f.read(0, 100).tobytes() == data[:100]
    assert f.read(640, 700).tobytes() == data[640:700]
    assert f.reads == 2
    g = _file(payload, cache_bytes=0)
    g.prefetch([(0, 100)])  # nowhere to keep it: nothing fetched
    assert g.reads == 0


def test_a_prefetch_error_surfaces_at_the_next_read(payload):
    data, _, crcs = payload
    bad = bytearray(data)
    bad[700] ^= 1  # block 10
    f = RangedFile(
        _write(bytes(bad)), len(data), BLOCK, crcs, label="pf", cache=BlockCache(1 << 20)
    )
    f.prefetch([(640, 704)])
    f.wait_prefetch()
    with pytest.raises(StoreError, match=r"pf: block 10 \(byte offset 640, bytes \[640, 704\)\)"):
        f.read(0, 10)  # any read of the file: the error is not lost
    assert f.read(0, 10).tobytes() == data[:10]  # reported once, then reads go on


def test_concurrent_readers_get_the_right_bytes(payload):
    data = payload[0]
    f = _file(payload)
    rng = np.random.default_rng(0)
    spans = [tuple(sorted(rng.integers(0, 1001, 2))) for _ in range(200)]
    errors = []

    def work(part):
        for a, b in part:
            if f.read(a, b).tobytes() != data[a:b]:
                errors.append((a, b))

    threads = [threading.Thread(target=work, args=(spans[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert f.bytes_read == 1000  # each block fetched once


def test_verify_checks_every_block_in_few_reads(payload):
    data, _, crcs = payload
    f = _file(payload)
    f.verify()
    assert (f.verified_blocks, f.reads, f.bytes_read) == (16, 1, 1000)
    bad = bytearray(data)
    bad[999] ^= 4  # the short last block
    g = RangedFile(_write(bytes(bad)), len(data), BLOCK, crcs, label="v", cache=BlockCache(0))
    with pytest.raises(StoreError, match=r"v: block 15 \(byte offset 960, bytes \[960, 1000\)\)"):
        g.verify()


def test_prefetches_of_many_files_share_the_process_threads(payload):
    from highnoon.data.remote_blocks import PREFETCH_THREADS

    files = [_file(payload) for _ in range(6)]
    for f in files:
        f.prefetch([(0, 1000)])
    for f in files:
        f.wait_prefetch()
        assert (f.reads, f.bytes_read, f.prefetch_dropped) == (1, 1000, 0)
    names = [t.name for t in threading.enumerate() if t.name.startswith("store prefetch")]
    assert len(names) == PREFETCH_THREADS


def test_reading_gs_without_the_read_ahead_setting_warns_once(monkeypatch, caplog):
    from highnoon.data import remote_blocks

    monkeypatch.setattr(remote_blocks, "_warned_readahead", False)
    monkeypatch.delenv("GCS_READ_CACHE_BLOCK_SIZE_MB", raising=False)
    with caplog.at_level("WARNING"):
        remote_blocks._warn_gcs_readahead("ram://not-gcs")
        assert caplog.records == []
        remote_blocks._warn_gcs_readahead("gs://b/s/shard-00000-of-00001/tokens.bin")
        remote_blocks._warn_gcs_readahead("gs://b/s/shard-00000-of-00001/offsets.bin")
    (record,) = caplog.records
    assert "fetches 64 MiB from each read position unless GCS_READ_CACHE_BLOCK_SIZE_MB" in (
        record.getMessage()
    )
    monkeypatch.setattr(remote_blocks, "_warned_readahead", False)
    monkeypatch.setenv("GCS_READ_CACHE_BLOCK_SIZE_MB", "0")
    caplog.clear()
    remote_blocks._warn_gcs_readahead("gs://b/s/x")
    assert caplog.records == []
