"""SampleRangedFile: a shard's tokens read in place sample by sample (here ``ram://``): exact
byte ranges, nearby samples coalesced, each sample checked against its CRC32C, cached; and a
remote store opened on its manifests alone."""

from __future__ import annotations

import itertools
import os
import uuid

import google_crc32c
import numpy as np
import pytest

from highnoon.data import StoreError, TokenStore
from highnoon.data.remote_blocks import BlockCache, RangedFile
from highnoon.data.remote_samples import SampleRangedFile
from tests.remote_store_helpers import ram_copy, write_store

tf = pytest.importorskip("tensorflow")

BLOCK = 64
# 8 samples of uint16 ids (EOS included): lengths 10, 3, 40, 5, 5, 60, 2, 20 ids
LENGTHS = np.array([10, 3, 40, 5, 5, 60, 2, 20])


def _write(data: bytes) -> str:
    path = f"ram://remote-samples/{uuid.uuid4().hex}.bin"
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)
    return path


def _ranged(data: bytes, cache: BlockCache) -> RangedFile:
    crcs = [google_crc32c.value(data[i : i + BLOCK]) for i in range(0, len(data), BLOCK)]
    return RangedFile(_write(data), len(data), BLOCK, crcs, label="meta", cache=cache)


@pytest.fixture(scope="module")
def shard():
    """(ids, offsets, tokens bytes, offsets file bytes, sample CRC file bytes) of one shard."""
    offsets = np.concatenate([[0], np.cumsum(LENGTHS)]).astype("<i8")
    ids = np.random.default_rng(4).integers(0, 300, int(offsets[-1])).astype("<u2")
    raw = ids.tobytes()
    crcs = np.array(
        [google_crc32c.value(raw[2 * a : 2 * b]) for a, b in itertools.pairwise(offsets)],
        dtype="<u4",
    )
    return ids, offsets, raw, offsets.tobytes(), crcs.tobytes()


def _file(shard, *, cache_bytes=1 << 20, gap_bytes=0, tokens=None):
    """The shard's tokens file over ``tokens`` (default: its own bytes); the manifests' CRCs are
    always those of the shard's true bytes."""
    _, _, raw, offsets_raw, crcs_raw = shard
    cache = BlockCache(cache_bytes)
    tokens = raw if tokens is None else tokens
    blocks = [google_crc32c.value(raw[i : i + BLOCK]) for i in range(0, len(raw), BLOCK)]
    return SampleRangedFile(
        _write(tokens), len(tokens), BLOCK, blocks, label="store S, shard-00001-of-00002/tokens.bin",
        dtype="<u2", offsets=_ranged(offsets_raw, cache), sample_crc32c=_ranged(crcs_raw, cache),
        first_sample=100, cache=cache, gap_bytes=gap_bytes,
    )  # fmt: skip


def test_take_reads_exactly_the_samples_it_needs(shard):
    ids, offsets = shard[0], shard[1]
    f = _file(shard)
    pos = np.array([[offsets[2] + 3, offsets[2]], [offsets[5] + 59, offsets[2] + 39]])
    np.testing.assert_array_equal(f.take(pos, "<u2"), ids[pos])  # samples 2 and 5
    assert (f.reads, f.bytes_read) == (2, (40 + 60) * 2)
    assert f.samples_verified == 2
    np.testing.assert_array_equal(f.take(pos, "<u2"), ids[pos])  # cached: nothing fetched
    assert (f.reads, f.bytes_read) == (2, 200)
    np.testing.assert_array_equal(f.take(pos[0], "<u2"), ids[pos[0]])
    # samples 3 and 4 touch: one range read of both; 6 is 120 bytes past 4's end
    got = f.take(np.array([offsets[3], offsets[4] + 4, offsets[6] + 1]), "<u2")
    np.testing.assert_array_equal(got, ids[[offsets[3], offsets[4] + 4, offsets[6] + 1]])
    assert (f.reads, f.bytes_read) == (4, 200 + 20 + 4)
    span = np.concatenate([np.arange(offsets[1], offsets[4] + 2), [offsets[4] + 1] * 3, [0]])
    np.testing.assert_array_equal(f.take(span, "<u2"), ids[span])  # runs across samples 1..4
    with pytest.raises(StoreError, match=r"read of bytes \[290, 292\) outside the file"):
        f.take(np.array([145]), "<u2")


def test_samples_within_the_gap_are_one_read_and_the_gap_is_counted(shard):
    ids, offsets = shard[0], shard[1]
    f = _file(shard, gap_bytes=2 * 60)  # sample 5 (60 ids) lies between 4 and 6; 7 touches 6
    pos = np.array([offsets[7] + 3, offsets[4], offsets[6] + 1])
    np.testing.assert_array_equal(f.take(pos, "<u2"), ids[pos])
    # samples 4..7 in one read: 10 + 120 (the gap) + 4 + 40 bytes
    assert (f.reads, f.bytes_read) == (1, 10 + 120 + 4 + 40)
    assert f.samples_verified == 3  # the gap's sample is neither checked nor cached
    f = _file(shard, gap_bytes=2 * 60 - 1)
    np.testing.assert_array_equal(f.take(pos, "<u2"), ids[pos])
    assert (f.reads, f.bytes_read) == (2, 10 + 4 + 40)


def test_read_returns_bytes_through_their_samples(shard):
    raw, offsets = shard[2], shard[1]
    f = _file(shard, cache_bytes=0)
    start, stop = int(offsets[1]) * 2 + 3, int(offsets[3]) * 2 + 1  # inside 1 .. inside 3
    assert f.read(start, stop).tobytes() == raw[start:stop]
    assert f.bytes_read == (3 + 40 + 5) * 2  # samples 1, 2 and 3, whole
    assert f.read(7, 7).size == 0


def test_a_flipped_byte_names_the_sample_and_is_never_returned(shard):
    ids, offsets, raw = shard[0], shard[1], shard[2]
    bad = bytearray(raw)
    bad[int(offsets[5]) * 2 + 7] ^= 0x10  # inside sample 5
    f = _file(shard, tokens=bytes(bad))
    np.testing.assert_array_equal(f.take(np.arange(offsets[4], offsets[5]), "<u2"),
                                  ids[offsets[4] : offsets[5]])  # fmt: skip
    lo, hi = int(offsets[5]) * 2, int(offsets[6]) * 2
    with pytest.raises(
        StoreError,
        match=rf"store S, shard-00001-of-00002/tokens\.bin: sample 105 \(sample 5 of the shard, "
        rf"byte offset {lo}, bytes \[{lo}, {hi}\)\) has CRC32C 0x[0-9a-f]{{8}}, "
        r"sample_crc32c\.bin records 0x[0-9a-f]{8}; the store is corrupt, rebuild it",
    ):
        f.take(np.array([offsets[4], offsets[5] + 50]), "<u2")
    with pytest.raises(StoreError, match="sample 105"):  # nothing of it was cached
        f.take(np.array([offsets[5] + 50]), "<u2")
    with pytest.raises(StoreError, match=r"block \d+ \(byte offset"):
        f.verify()  # the per-block CRCs still cover the whole file


def test_prefetch_fills_the_cache_and_keeps_its_error_for_the_next_read(shard):
    ids, offsets, raw = shard[0], shard[1], shard[2]
    f = _file(shard)
    f.prefetch([(int(offsets[2]) * 2, int(offsets[2]) * 2 + 4), (int(offsets[7]) * 2, len(raw))])
    f.wait_prefetch()
    assert (f.reads, f.bytes_read) == (2, (40 + 20) * 2)
    pos = np.array([offsets[7] + 19, offsets[2]])
    np.testing.assert_array_equal(f.take(pos, "<u2"), ids[pos])
    assert f.reads == 2
    bad = bytearray(raw)
    bad[int(offsets[1]) * 2] ^= 1
    f = _file(shard, tokens=bytes(bad))
    f.prefetch([(int(offsets[1]) * 2, int(offsets[1]) * 2 + 2)])
    f.wait_prefetch()
    with pytest.raises(StoreError, match="sample 101 "):
        f.take(np.array([0]), "<u2")  # sample 0 is fine, but the prefetch's error comes first


def test_metadata_that_does_not_match_the_tokens_is_refused(shard):
    _, _, raw, offsets_raw, crcs_raw = shard
    cache = BlockCache(0)
    f = SampleRangedFile(
        _write(raw), len(raw), BLOCK,
        [google_crc32c.value(raw[i : i + BLOCK]) for i in range(0, len(raw), BLOCK)],
        label="t", dtype="<u2", offsets=_ranged(offsets_raw, cache),
        sample_crc32c=_ranged(crcs_raw[:-4], cache), cache=cache,
    )  # fmt: skip
    with pytest.raises(StoreError, match=r"t: offsets\.bin \(9 entries\) and sample_crc32c\.bin "
                                         r"\(7\) do not describe a tokens file of 290 bytes"):  # fmt: skip
        f.take(np.array([0]), "<u2")


def test_opening_a_remote_store_reads_its_manifest_only(tmp_path, monkeypatch):
    """A remote store opens on ``manifest.json`` alone (it summarises every shard): no shard
    manifest, stat or data read, whatever the shard count. A shard's ``shard.json`` is read at
    its first use and checked then: a missing one is an error naming the shard at that read."""
    from highnoon.data import store as store_module

    local = write_store(str(tmp_path / "s"), np.arange(40) % 7 + 3, num_shards=8)
    url = ram_copy(local)
    calls: list[str] = []
    real_stat, real_read = tf.io.gfile.stat, store_module._read_file_op
    monkeypatch.setattr(tf.io.gfile, "stat", lambda p: calls.append(p) or real_stat(p))
    monkeypatch.setattr(store_module, "_read_file_op", lambda p: calls.append(p) or real_read(p))
    store = TokenStore.open(url, verify=True)
    assert calls == [] and store.bytes_read == 0
    assert store.fingerprint == TokenStore.open(local).fingerprint
    np.testing.assert_array_equal(store.samples([39])[0], TokenStore.open(local).samples([39])[0])
    # shard 7's manifest, then a stat before each file's first read, the side files of block
    # CRCs included (not the tokens': a sample is checked against its own CRC)
    assert sorted(p[len(url) + 1 :] for p in calls) == [
        f"shard-00007-of-00008/{name}" for name in (
            "offsets.bin", "offsets.crc32c", "sample_crc32c.bin", "sample_crc32c.crc32c",
            "shard.json", "tokens.bin")
    ]  # fmt: skip
    assert [s.files.loaded for s in store._shards] == [False] * 7 + [True]
    tf.io.gfile.remove(f"{url}/shard-00005-of-00008/shard.json")
    store = TokenStore.open(url)
    store.samples([0])
    with pytest.raises(StoreError, match=r"shard-00005-of-00008: the shard is missing"):
        store.samples([store._shards[5].first_sample])


def test_a_store_written_before_sample_crcs_is_refused_with_rebuild(tmp_path):
    import json

    from highnoon.data import shards
    from highnoon.data.tokenizers import load_tokenizer

    local = write_store(str(tmp_path / "s"), np.arange(6) + 3, num_shards=1)
    name = shards.shard_name(0, 1)
    meta = json.loads((tmp_path / "s" / name / "shard.json").read_bytes())
    del meta["files"]["sample_crc32c.bin"]
    (tmp_path / "s" / name / "shard.json").write_bytes(shards.canonical_json(meta))
    os.remove(tmp_path / "s" / name / "sample_crc32c.bin")
    manifest = shards.store_manifest(
        [meta], [name], load_tokenizer("byte"), sources=[], skipped=None, top_files={}
    )
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    for url in (local, ram_copy(local)):
        with pytest.raises(
            StoreError,
            match=rf"{name}/sample_crc32c\.bin: (shard|manifest)\.json lists no such file \(a store written "
            r"before per-sample checksums\); rebuild the store",
        ):
            TokenStore.open(url)


def test_metadata_is_read_by_block_for_the_samples_read_only(shard):
    """Given each position's sample, the file reads the offsets and CRC blocks of those samples
    and nothing else (no whole offsets array); a search without the hint reads the blocks on
    its binary search's path, and a wrong hint is refused."""
    ids, offsets = shard[0], shard[1]
    f = _file(shard)
    pos = np.arange(offsets[5], offsets[6])  # sample 5: offsets entries 5, 6 (bytes 40..55)
    np.testing.assert_array_equal(f.take(pos, "<u2", samples=5), ids[pos])
    assert f._offsets_file.bytes_read == BLOCK  # block 0 of 72 bytes: entries 0..7
    assert f._crc_file.bytes_read == 32  # the whole 32-byte CRC file is one block
    assert f.cache.bytes_held == BLOCK + 32 + 60 * 2  # two metadata blocks and the sample
    np.testing.assert_array_equal(f.take(pos[:3], "<u2", samples=[5, 5, 5]), ids[pos[:3]])
    assert (f._offsets_file.reads, f._crc_file.reads, f.reads) == (1, 1, 1)  # all cached
    with pytest.raises(StoreError, match=r"a position read lies outside the sample it was given"):
        f.take(pos, "<u2", samples=4)
    g = _file(shard)  # no hint: the search reads entries 4, 6, 7 (block 0), the bounds 8 (block 1)
    np.testing.assert_array_equal(g.take(np.array([offsets[7] + 1]), "<u2"), ids[[offsets[7] + 1]])
    assert (g._offsets_file.reads, g._offsets_file.bytes_read) == (2, 72)


def test_a_cached_sample_is_read_without_its_offsets_and_rows_take_compact_samples(shard):
    """A cached sample carries where it starts: reading it again (the pipeline's second look,
    after ``sample_bounds`` or a read-ahead) asks the offsets file nothing. Rows of positions
    ``[R, W]`` take their samples as ``[R, 1]``; a position outside its row's sample, or a
    sample outside the shard, is refused naming the file."""
    ids, offsets = shard[0], shard[1]
    f = _file(shard)
    rows = np.array([[offsets[2] + 1, offsets[2] + 7, offsets[2] + 39],
                     [offsets[5], offsets[5] + 30, offsets[5] + 59],
                     [offsets[2], offsets[2], offsets[2] + 2]])  # fmt: skip
    owners = np.array([[2], [5], [2]])
    np.testing.assert_array_equal(f.take(rows, "<u2", samples=owners), ids[rows])
    looks = []
    f._offsets_file.take = lambda *args, **kwargs: looks.append(args) or pytest.fail("offsets")
    for _ in range(2):
        np.testing.assert_array_equal(f.take(rows, "<u2", samples=owners), ids[rows])
        np.testing.assert_array_equal(f.take(rows[1], "<u2", samples=5), ids[rows[1]])
    assert looks == [] and (f.reads, f.samples_verified) == (2, 2)
    bad = rows.copy()
    bad[2, 2] = offsets[3]  # the first id of sample 3, given as sample 2's
    with pytest.raises(StoreError, match=r"shard-00001-of-00002/tokens\.bin: a position read lies"):
        f.take(bad, "<u2", samples=owners)
    bad = rows.copy()
    bad[1, 0] = offsets[5] - 1  # the last id of sample 4, given as sample 5's
    with pytest.raises(StoreError, match=r"a position read lies outside the sample it was given"):
        f.take(bad, "<u2", samples=owners)
    with pytest.raises(StoreError, match=r"samples= holds local samples in \[2, 8\], the shard "
                       r"has 8"):  # fmt: skip
        f.take(rows, "<u2", samples=np.array([[2], [5], [8]]))


def test_a_read_ahead_asks_a_thread_for_the_uncached_samples_only(shard, monkeypatch):
    """``prefetch_samples`` leaves out cached samples (and repeats) before it queues anything:
    samples all cached wake no prefetch thread."""
    from highnoon.data import remote_blocks, remote_samples

    monkeypatch.setattr(remote_blocks, "READ_AHEAD_WAIT_S", 0.0)  # every read "waits"
    ids, offsets = shard[0], shard[1]
    f = _file(shard)
    f.take(np.arange(offsets[2], offsets[4]), "<u2", samples=np.repeat([2, 3], [40, 5]))
    queued = []
    monkeypatch.setattr(remote_samples._prefetcher(), "submit",
                        lambda file, request: queued.append(request.tolist()) or True)  # fmt: skip
    f.prefetch_samples(np.array([3, 2, 3]))
    assert queued == []
    f.prefetch_samples(np.array([6, 3, 1, 6, 2]))
    assert queued == [[1, 6]]
    monkeypatch.undo()
    f.prefetch_samples(np.array([6, 3, 1, 6, 2]))
    f.wait_prefetch()
    assert (f.reads, f.samples_verified) == (3, 4)  # samples 2, 3 read by take; 1, 6 ahead
    np.testing.assert_array_equal(
        f.take(np.array([offsets[6]]), "<u2", samples=6), ids[[offsets[6]]]
    )
    assert f.reads == 3


def test_samples_a_read_ahead_fetches_while_a_read_waits_for_the_lock_are_not_fetched_again(
    shard, monkeypatch
):
    """A read that misses samples, then finds a read-ahead fetched them before it took the
    fetch lock, serves them from the cache; a read with no read-ahead since its look fetches
    what it missed without a second look."""
    ids, offsets = shard[0], shard[1]
    f = _file(shard)
    real = f.cache.get_many
    looks = []

    def racing(keys, *, count=True):
        out = real(keys, count=count)
        if isinstance(keys[0], int):  # a look at samples (blocks of metadata have tuple keys)
            looks.append(count)
            if len(looks) == 1:  # between the read's look and its lock: a read-ahead of 2, 5
                f._prefetch_now(np.array([2, 5]))
        return out

    monkeypatch.setattr(f.cache, "get_many", racing)
    pos = np.array([offsets[2] + 1, offsets[5], offsets[7]])
    np.testing.assert_array_equal(f.take(pos, "<u2", samples=[2, 5, 7]), ids[pos])
    assert looks == [True, False] and (f.reads, f.samples_verified) == (3, 3)  # 7 read once
    pos = np.array([offsets[0], offsets[1]])
    np.testing.assert_array_equal(f.take(pos, "<u2", samples=[0, 1]), ids[pos])
    assert looks == [True, False, True] and (f.reads, f.samples_verified) == (4, 5)  # 0, 1 touch


class _Clock:
    """A fake ``remote_blocks._clock``: each read (two calls) takes ``read_s``."""

    def __init__(self, read_s: float) -> None:
        self.read_s, self.now, self.calls = read_s, 0.0, 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:
            self.now += self.read_s
        return self.now


def test_a_file_whose_reads_do_not_wait_reads_on_demand_until_they_wait(shard, monkeypatch):
    """Read-ahead is taken only while the file's last fetch waited on its reads (the fastest
    of its first reads at least ``READ_AHEAD_WAIT_S``): reads served from memory leave nothing
    to hide, and a thread reading ahead would only cost CPU. A slow fetch turns it back on."""
    from highnoon.data import remote_blocks, remote_samples

    ids, offsets = shard[0], shard[1]
    clock = _Clock(remote_blocks.READ_AHEAD_WAIT_S / 10)
    monkeypatch.setattr(remote_blocks, "_clock", clock)
    queued = []
    monkeypatch.setattr(remote_samples._prefetcher(), "submit",
                        lambda file, request: queued.append(request.tolist()) or True)  # fmt: skip
    f = _file(shard)
    assert f.reads_wait  # unknown yet: a store starts reading ahead
    f.prefetch_samples(np.array([1]))
    assert queued == [[1]]
    f.take(np.array([offsets[2]]), "<u2", samples=2)
    assert not f.reads_wait and f.reads == 1
    f.prefetch_samples(np.array([5, 6]))
    f.prefetch([(0, 4)])
    assert queued == [[1]]  # nothing asked: the reads do not wait
    pos = np.array([offsets[5], offsets[6]])
    np.testing.assert_array_equal(f.take(pos, "<u2", samples=[5, 6]), ids[pos])  # on demand
    clock.read_s = remote_blocks.READ_AHEAD_WAIT_S * 2  # the store slows down
    f.take(np.array([offsets[7]]), "<u2", samples=7)
    assert f.reads_wait
    f.prefetch_samples(np.array([0, 7]))
    assert queued == [[1], [0]]  # sample 7 is cached


def test_reads_that_wait_are_read_ahead_by_the_threads(shard, monkeypatch):
    """A store whose reads wait (each read sleeps, as a bucket's request does) keeps reading
    ahead: the samples asked for are fetched by a prefetch thread, and the read that needs
    them then fetches nothing."""
    import time

    ids, offsets = shard[0], shard[1]
    real = RangedFile._read_range

    def slow(self, start, stop):
        time.sleep(0.002)  # 40x READ_AHEAD_WAIT_S: always counted as waiting
        return real(self, start, stop)

    monkeypatch.setattr(RangedFile, "_read_range", slow)
    f = _file(shard)
    f.take(np.array([offsets[0]]), "<u2", samples=0)
    assert f.reads_wait
    f.prefetch_samples(np.array([3, 4]))
    f.wait_prefetch()
    assert (f.reads, f.samples_verified) == (2, 3)  # samples 3 and 4 touch: one read
    pos = np.array([offsets[3] + 1, offsets[4]])
    np.testing.assert_array_equal(f.take(pos, "<u2", samples=[3, 4]), ids[pos])
    assert f.reads == 2


def test_cached_samples_add_nothing_to_the_collector(shard):
    """A cached sample is a tuple of an int and bytes, which the garbage collector stops
    tracking at its first collection: a cache of millions of samples adds nothing to a full
    collection (objects did: 0.26 s pauses in a process with TensorFlow loaded)."""
    import gc

    f = _file(shard)
    f.take(np.arange(offsets_end := int(shard[1][-1])), "<u2")
    assert f.samples_verified == len(LENGTHS) and offsets_end > 0
    gc.collect()
    entries = [f.cache.get(key) for key in f._sample_keys(list(range(len(LENGTHS))))]
    assert all(e is not None and not gc.is_tracked(e) for e in entries)
