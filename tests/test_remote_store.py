"""A store read in place from a tf.io.gfile path (``ram://``, ``file://``, ``gs://`` through a
fake GCS): the same batches as the memory-mapped store, only the rows' byte ranges fetched, no
copy, corruption caught at the read, and several processes reading one store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from highnoon.data import (
    StoreError,
    TokenStore,
    make_host_dataset,
    make_packed_host_dataset,
    pack_epoch,
)
from highnoon.data import shards as shards_lib
from highnoon.data.blocks import MappedFile
from highnoon.data.pipeline import HostBatcher
from highnoon.data.remote_blocks import BlockCache, RangedFile, block_cache
from highnoon.data.remote_samples import SampleRangedFile
from tests.remote_store_helpers import copy_tree, manifest_bytes, ram_copy, write_store

tf = pytest.importorskip("tensorflow")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "remote_read_worker.py")
SEQ_LEN = 48


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """600 samples of 5..80 ids in 3 shards, 64-byte blocks (many blocks per shard)."""
    lengths = np.random.default_rng(3).integers(5, 81, size=600)
    return write_store(str(tmp_path_factory.mktemp("remote") / "store"), lengths)


@pytest.fixture(scope="module")
def rows():
    """Host rows of 30 steps of 4 rows, drawn from every shard."""
    return np.random.default_rng(5).permutation(600)[:120].reshape(30, 4)


def _batches(dataset) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in b.items()} for b in dataset]


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("scheme", ["ram", "file"])
def test_in_place_batches_equal_the_memory_mapped_ones(local, rows, scheme):
    url = ram_copy(local) if scheme == "ram" else f"file://{local}"
    remote, mapped = TokenStore.open(url), TokenStore.open(local)
    assert {type(f) for f in remote.block_files()} == {RangedFile, SampleRangedFile}
    assert {type(s.files["tokens.bin"]) for s in remote._shards} == {SampleRangedFile}
    assert {type(f) for f in mapped.block_files()} == {MappedFile}
    assert remote.reads_in_place and not mapped.reads_in_place
    assert remote.fingerprint == mapped.fingerprint
    for overflow in ("truncate", "window"):
        _assert_same(
            _batches(make_host_dataset(remote, rows, SEQ_LEN, overflow=overflow, seed=3)),
            _batches(make_host_dataset(mapped, rows, SEQ_LEN, overflow=overflow, seed=3)),
        )
    lengths = np.asarray(mapped.features.lengths)
    np.testing.assert_array_equal(remote.features.lengths, lengths)
    np.testing.assert_array_equal(remote.features.surprisal_sum, mapped.features.surprisal_sum)
    packed = pack_epoch(np.arange(200), lengths, 16, 8)
    _assert_same(
        _batches(make_packed_host_dataset(remote, packed, host_id=1, num_hosts=2)),
        _batches(make_packed_host_dataset(mapped, packed, host_id=1, num_hosts=2)),
    )


def test_a_store_read_in_place_builds_larger_calls(local, rows, monkeypatch):
    """A store read in place builds ``_TOKENS_PER_CALL_IN_PLACE`` tokens a Python call, a
    memory-mapped one ``_TOKENS_PER_CALL`` (its calls cost less each); the batches are the
    same."""
    from highnoon.data import pipeline

    step_tokens = rows.shape[1] * SEQ_LEN
    monkeypatch.setattr(pipeline, "_TOKENS_PER_CALL", 2 * step_tokens)
    monkeypatch.setattr(pipeline, "_TOKENS_PER_CALL_IN_PLACE", 8 * step_tokens)
    counts: dict[bool, list[int]] = {False: [], True: []}
    real = HostBatcher.batches

    def recorded(self, first, count):
        counts[self.store.reads_in_place].append(count)
        return real(self, first, count)

    monkeypatch.setattr(HostBatcher, "batches", recorded)
    mapped = _batches(make_host_dataset(TokenStore.open(local), rows, SEQ_LEN))
    in_place = _batches(make_host_dataset(TokenStore.open(f"file://{local}"), rows, SEQ_LEN))
    _assert_same(in_place, mapped)
    assert sorted(counts[False]) == [2] * 15  # 30 steps
    assert sorted(counts[True]) == [6, 8, 8, 8]


def test_opening_reads_manifests_only_and_nothing_is_copied(local, rows, tmp_path, monkeypatch):
    monkeypatch.setenv("HIGHNOON_CACHE_DIR", str(tmp_path / "cache"))
    store = TokenStore.open(ram_copy(local), verify=True)
    assert store.bytes_read == 0
    _batches(make_host_dataset(store, rows[:2], SEQ_LEN))
    assert 0 < store.bytes_read < os.path.getsize(os.path.join(local, "shard-00000-of-00003",
                                                               "tokens.bin"))  # fmt: skip
    assert not (tmp_path / "cache").exists()  # no local copy of any file


def test_one_host_of_four_fetches_its_rows_bytes_plus_manifests(tmp_path):
    """Host 1 of 4, 100 steps: the bytes fetched (tokens and offsets) are at most 1.2x the
    bytes of its rows' tokens, plus the manifests read at open. Samples are read whole
    (seq_len above every length) and blocks are small next to them (32 bytes, samples of
    400-800 bytes)."""
    lengths = np.random.default_rng(1).integers(200, 400, size=1000)
    local = write_store(str(tmp_path / "s"), lengths, num_shards=4, block_bytes=32)
    block_cache().clear()
    store = TokenStore.open(ram_copy(local))
    order = np.random.default_rng(2).permutation(1000)[:800].reshape(100, 8)
    host_rows = order[:, 2:4]  # host 1 of 4: rows 2-3 of every global batch of 8
    _batches(make_host_dataset(store, host_rows, 512))
    fetched = {}
    for f in store.block_files():
        name = f.label.rsplit("/", 1)[-1]
        fetched[name] = fetched.get(name, 0) + f.bytes_read
    rows_bytes = int((lengths[host_rows.reshape(-1)] + 1).sum()) * 2  # uint16 ids with EOS
    assert fetched[shards_lib.LENGTHS] == fetched[shards_lib.SURPRISAL] == 0
    assert fetched[shards_lib.TOKENS] >= rows_bytes
    total = fetched[shards_lib.TOKENS] + fetched[shards_lib.OFFSETS]
    assert total <= 1.2 * rows_bytes, (total / rows_bytes, fetched)
    assert total + manifest_bytes(local) <= 1.2 * rows_bytes + manifest_bytes(local)


def _flip(url: str, name: str, offset: int) -> None:
    path = f"{url}/shard-00001-of-00003/{name}"
    with tf.io.gfile.GFile(path, "rb") as f:
        data = bytearray(f.read())
    data[offset] ^= 0x01
    tf.io.gfile.remove(path)  # ram:// appends on "wb" to an existing file
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(bytes(data))


def test_a_flipped_byte_in_a_remote_shard_is_refused_at_the_read(local):
    """A flipped id inside one sample: ``verify()`` names its block; a read names the sample
    (per-sample CRC32C) before any of its ids reaches a batch; its neighbours read fine."""
    url = ram_copy(local)
    shard = TokenStore.open(local)._shards[1]
    offsets = np.fromfile(os.path.join(local, shard.name, "offsets.bin"), "<i8")
    k = int(np.searchsorted(offsets, 100, side="right")) - 1  # the sample holding byte 200
    lo, hi = int(offsets[k]) * 2, int(offsets[k + 1]) * 2
    _flip(url, "tokens.bin", 200)  # block 3 of shard 1's tokens (bytes [192, 256))
    store = TokenStore.open(url, verify=True)  # manifests only: opens fine
    first = store._shards[1].first_sample
    expected = (
        rf"store '{url}', shard-00001-of-00003/tokens\.bin: block 3 \(byte offset 192, bytes "
        r"\[192, 256\)\) has CRC32C 0x[0-9a-f]{8}, the shard manifest records 0x[0-9a-f]{8}; "
        "the store is corrupt, rebuild it"
    )
    with pytest.raises(StoreError, match=expected):
        store.verify()
    sample = (
        rf"store '{url}', shard-00001-of-00003/tokens\.bin: sample {first + k} \(sample {k} of "
        rf"the shard, byte offset {lo}, bytes \[{lo}, {hi}\)\) has CRC32C 0x[0-9a-f]{{8}}, "
        r"sample_crc32c\.bin records 0x[0-9a-f]{8}; the store is corrupt, rebuild it"
    )
    fresh = TokenStore.open(url)
    neighbours = [first + k - 1, first + k + 1]
    for got, want in zip(fresh.samples(neighbours), TokenStore.open(local).samples(neighbours)):
        np.testing.assert_array_equal(got, want)
    batcher = HostBatcher(fresh, np.array([[first + k - 1], [first + k]]), 200)
    batcher.batch(0)
    with pytest.raises(StoreError, match=sample):
        batcher.batch(1)
    with pytest.raises(Exception, match=rf"shard-00001-of-00003/tokens\.bin: sample {first + k} "):
        _batches(make_host_dataset(TokenStore.open(url), np.arange(first, first + 8)[:, None],
                                   200))  # fmt: skip


def test_missing_and_truncated_remote_files_are_refused_at_their_first_read(local):
    """Opening a remote store reads its manifests only (no request per file); a missing or
    truncated file is a StoreError naming the shard and file at its first read, before any of
    its bytes is used, even bytes the short file still holds."""
    url = ram_copy(local)
    tf.io.gfile.remove(f"{url}/shard-00002-of-00003/offsets.bin")
    store = TokenStore.open(url)
    store.samples([0, 1])  # shard 0 reads fine
    with pytest.raises(StoreError, match=r"shard-00002-of-00003/offsets\.bin: the file is missing"):
        store.samples([store._shards[2].first_sample])
    url = ram_copy(local)
    path = f"{url}/shard-00000-of-00003/tokens.bin"
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    tf.io.gfile.remove(path)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data[:-10])
    store = TokenStore.open(url)
    with pytest.raises(
        StoreError,
        match=rf"store '{url}', shard-00000-of-00003/tokens\.bin: file has size {len(data) - 10}, "
        rf"the shard manifest records {len(data)}; the shard is truncated",
    ):
        store.samples([0])  # sample 0 is intact, but its file is not
    assert store._shards[0].files["tokens.bin"].bytes_read == 0


def test_the_pipeline_prefetches_the_next_steps_blocks(local, rows):
    """``HostBatcher.prefetch`` fetches what the next steps read, so building them then fetches
    nothing; the batches are the ones read without prefetching."""
    url = ram_copy(local)
    block_cache().clear()
    store = TokenStore.open(url)
    batcher = HostBatcher(store, rows, SEQ_LEN)
    batcher.prefetch(4, 3)
    for f in store.block_files():
        if isinstance(f, RangedFile):
            f.wait_prefetch()
    before = store.bytes_read
    assert before > 0
    got = batcher.batches(4, 3)
    assert store.bytes_read == before
    expected = HostBatcher(TokenStore.open(local), rows, SEQ_LEN).batches(4, 3)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_with_no_cache_every_read_fetches_and_nothing_is_prefetched(local, rows):
    store = TokenStore.open(ram_copy(local))
    for f in store.block_files():
        f.cache = BlockCache(0)
    batcher = HostBatcher(store, rows, SEQ_LEN)
    batcher.prefetch(0, 2)
    assert store.bytes_read == 0  # nowhere to keep prefetched blocks
    tokens = [s.files["tokens.bin"] for s in store._shards]
    batcher.batches(0, 2)
    once = sum(f.bytes_read for f in tokens)
    batcher.batches(0, 2)
    assert once > 0 and sum(f.bytes_read for f in tokens) == 2 * once


def _run_workers(urls: list[str], local: str, rows: np.ndarray, tmp_path, env: dict):
    """Two worker processes (hosts 0 and 1) read each of ``urls``; checks every batch against
    the memory-mapped store's; returns each host's per-URL info."""
    procs = []
    for host in range(2):
        rows_path = str(tmp_path / f"rows{host}.npy")
        np.save(rows_path, rows[:, host::2])
        out = str(tmp_path / f"out{host}.npz")
        procs.append((subprocess.Popen(
            [sys.executable, WORKER, rows_path, str(SEQ_LEN), out, *urls],
            env={**os.environ, "PYTHONPATH": ROOT, **env},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ), out, rows[:, host::2]))  # fmt: skip
    infos = []
    for proc, out, host_rows in procs:
        try:
            _, err = proc.communicate(timeout=240)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-3000:]
        expected = HostBatcher(TokenStore.open(local), host_rows, SEQ_LEN)
        with np.load(out) as data:
            for i in range(len(urls)):
                for step in range(host_rows.shape[0]):
                    for key, value in expected.batch(step).items():
                        np.testing.assert_array_equal(
                            data[f"{i}/{key}"][step], value, err_msg=f"{urls[i]} {key} {step}"
                        )
            infos.append(json.loads(str(data["info"])))
    return infos


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_read_one_store_in_place_from_file_urls_and_a_fake_gcs(local, rows, tmp_path):
    """Two hosts (worker processes) read one store through ``file://`` (no memory map) and
    through TensorFlow's own ``gs://`` client pointed at a fake GCS by an HTTPS proxy
    (tests/fake_gcs.py; without the ``cryptography`` package, ``file://`` only). Each host gets
    its batches; the object bytes the server sent for tokens.bin are what the hosts' reads
    fetched plus one byte per range read (the probe ``seek`` makes), never a whole file."""
    urls, env, fake = [f"file://{local}"], {}, None
    try:
        import cryptography  # noqa: F401
    except ImportError:
        pass
    else:
        from tests.fake_gcs import FakeGcs

        copy_tree(local, str(tmp_path / "gcs" / "bucket" / "store"))
        fake = FakeGcs(str(tmp_path / "gcs"), str(tmp_path))
        urls.append("gs://bucket/store")
        env = fake.env(GCS_READ_CACHE_BLOCK_SIZE_MB="0")
    try:
        infos = _run_workers(urls, local, rows, tmp_path, env)
    finally:
        if fake is not None:
            fake.close()
    for host in infos:
        for info in host:
            assert info["kinds"] == ["RangedFile", "SampleRangedFile"]  # never memory-mapped
            assert info["opened"] == 0 and info["fetched"]["tokens.bin"] > 0
    if fake is None:
        pytest.skip("file:// checked; the fake GCS needs the cryptography package")
    fetched = sum(host[1]["fetched"]["tokens.bin"] for host in infos)
    served = fake.bytes_served("/tokens.bin")
    reads = sum(1 for r in fake.requests if r["what"].startswith("media ")
                and r["what"].endswith("tokens.bin"))  # fmt: skip
    assert fetched <= served <= fetched + reads
    size = os.path.getsize(os.path.join(local, "shard-00000-of-00003", "tokens.bin"))
    assert max(r["bytes"] for r in fake.requests if r["what"].endswith("tokens.bin")) < size


def test_a_trainer_stage_reads_a_file_url_store_in_place_with_the_cache_setting(local, tmp_path):
    """A prepared store named by a ``file://`` URL is a stage's dataset, read in place; the
    ``store_cache_bytes`` setting bounds the process-wide block cache when stages are planned."""
    from tests.trainer_helpers import make_trainer

    cache = block_cache()
    before = cache.max_bytes
    try:
        trainer = make_trainer(tmp_path, store_cache_bytes=3 << 20, curriculum_strategy=None)
        trainer.add_curriculum_stage("remote", [f"file://{local}"], epochs=1)
        (plan,) = trainer.plan()
        assert cache.max_bytes == 3 << 20
        assert {type(f) for f in plan.store.block_files()} == {RangedFile, SampleRangedFile}
        assert plan.store.fingerprint == TokenStore.open(local).fingerprint
    finally:
        cache.resize(before)


def test_a_mixture_of_remote_stores_reads_each_in_place(local, rows, tmp_path):
    """A mixed stage's view over two stores on ``ram://`` (``store.concatenate``) reads each
    part from its own store: the batches equal the view over the memory-mapped parts'."""
    from highnoon.data.store import concatenate

    other = write_store(str(tmp_path / "other"), np.arange(1, 301) % 50 + 5, seed=9)
    remote = concatenate([TokenStore.open(ram_copy(local)), TokenStore.open(ram_copy(other))],
                         "ram://mix", {})  # fmt: skip
    mapped = concatenate([TokenStore.open(local), TokenStore.open(other)], "mix", {})
    mixed_rows = np.concatenate([rows, rows[:, :2] % 300 + 600], axis=1)  # both parts each step
    assert remote.reads_ahead and not mapped.reads_ahead
    _assert_same(
        _batches(make_host_dataset(remote, mixed_rows, SEQ_LEN)),
        _batches(make_host_dataset(mapped, mixed_rows, SEQ_LEN)),
    )


def test_a_store_whose_reads_do_not_wait_looks_up_nothing_to_read_ahead(local, rows, monkeypatch):
    """The pipeline asks ``reads_ahead_now`` before each call's read-ahead: once every shard's
    reads showed they do not wait, a call looks up none of its samples for it; a store whose
    reads wait still reads ahead. A fake clock decides what a read takes."""
    from highnoon.data import remote_blocks
    from highnoon.data.pipeline import StepRows

    block_cache().clear()
    store = TokenStore.open(f"file://{local}")
    asked = []
    steps = StepRows(30, 4, lambda a, b: asked.append((a, b)) or rows[a:b])
    batcher = HostBatcher(store, steps, SEQ_LEN)
    assert store.reads_ahead and store.reads_ahead_now  # nothing read yet: unknown
    monkeypatch.setattr(remote_blocks, "_clock", lambda: 0.0)  # reads take no time
    batcher.batches(0, 10)  # every shard read
    asked.clear()
    batcher.prefetch(10, 5)
    assert asked == [] and store.reads_ahead and not store.reads_ahead_now
    ticks = iter(range(10**6))
    monkeypatch.setattr(remote_blocks, "_clock", lambda: float(next(ticks)))  # 1 s a read
    batcher.batches(10, 10)  # new samples of every shard, fetched by reads that wait
    asked.clear()
    batcher.prefetch(20, 5)
    assert asked == [(20, 25)] and store.reads_ahead_now
    for f in store.block_files():
        f.wait_prefetch()  # the read-ahead it asked ends before the clock is restored


def _block_bytes(size: int, block: int, byte_offsets: np.ndarray) -> int:
    """Bytes of the blocks of a ``size``-byte file (blocks of ``block``) holding these bytes."""
    blocks = np.unique(np.asarray(byte_offsets) // block)
    return int(np.minimum(block, size - blocks * block).sum())


def test_a_host_fetches_its_rows_samples_and_only_their_metadata_blocks(tmp_path):
    """Host 1 of 4, 100 steps through the pipeline (reads ahead included): per shard, exactly
    its rows' samples of tokens (no gap coalescing here) and exactly the blocks of offsets and
    sample CRCs that hold their entries; never a shard's whole offsets (O(rows), not
    O(corpus))."""
    lengths = np.random.default_rng(1).integers(3, 12, size=4000)
    local = write_store(str(tmp_path / "s"), lengths, num_shards=4, block_bytes=64)
    block_cache().clear()
    store = TokenStore.open(ram_copy(local))
    for shard in store._shards:
        shard.files[shards_lib.TOKENS].gap_bytes = 0
    host_rows = np.random.default_rng(2).permutation(4000)[:800].reshape(100, 8)[:, 2:4]
    _batches(make_host_dataset(store, host_rows, 16))
    for shard in store._shards:
        mine = np.unique(host_rows)
        mine = mine[(mine >= shard.first_sample) & (mine < shard.first_sample + shard.num_samples)]
        local_idx = mine - shard.first_sample
        files = shard.files
        assert files[shards_lib.TOKENS].bytes_read == int((lengths[mine] + 1).sum()) * 2
        offsets = files[shards_lib.OFFSETS]
        assert offsets.bytes_read == _block_bytes(
            offsets.size, 64, np.concatenate([local_idx, local_idx + 1]) * 8
        )
        assert offsets.bytes_read < offsets.size / 2
        crcs = files[shards_lib.SAMPLE_CRC]
        assert crcs.bytes_read == _block_bytes(crcs.size, 64, local_idx * 4)
        assert files[shards_lib.LENGTHS].bytes_read == files[shards_lib.SURPRISAL].bytes_read == 0


def test_a_bounded_cache_bounds_what_a_host_holds(local, rows):
    """Every block and sample a host keeps (offsets, sample CRCs, tokens) is in the block cache,
    whose bound holds throughout; what is evicted is fetched again, and the batches are the
    memory-mapped store's."""
    store = TokenStore.open(ram_copy(local))
    cache = BlockCache(1024)
    for f in store.block_files():
        f.cache = cache
        f.crc32c.file.cache = cache  # the pages of its side file of block CRCs too
    batcher = HostBatcher(store, rows, SEQ_LEN)
    expected = HostBatcher(TokenStore.open(local), rows, SEQ_LEN)
    held = []
    for step in range(rows.shape[0]):
        got = batcher.batch(step)
        held.append(cache.bytes_held)
        for key, value in expected.batch(step).items():
            np.testing.assert_array_equal(got[key], value, err_msg=f"{key} {step}")
    assert 0 < max(held) <= 1024 and cache.evictions > 0
    # outside the cache a file keeps one flag a block (which blocks it checked) and the CRCs of
    # its side file's pages (4 bytes a page of 1 024 block CRCs), no data and no block CRCs
    for f in store.block_files():
        pages = f.crc32c.pages
        assert pages.dtype == np.uint32 and pages.size == -(-4 * f.num_blocks // 4096)
        for file in (f, f.crc32c.file):  # (the side file's own CRCs are the pages above)
            assert all(v.nbytes <= file.num_blocks for k, v in vars(file).items()
                       if isinstance(v, np.ndarray) and k != "crc32c")  # fmt: skip


def _edit_manifest(url: str, edit) -> None:
    path = f"{url}/manifest.json"
    with tf.io.gfile.GFile(path, "rb") as f:
        manifest = json.loads(f.read())
    edit(manifest)
    tf.io.gfile.remove(path)  # ram:// appends on "wb" to an existing file
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(json.dumps(manifest))


def test_shard_manifests_read_lazily_are_checked_and_old_stores_open_as_before(local, monkeypatch):
    """A lazily read ``shard.json`` that is not the one the manifest records is refused at the
    shard's first read; ``verify()`` reads every shard and checks the fingerprint; a manifest
    without shard summaries (a store written before them) opens by reading every shard
    manifest, as before, with the same fingerprint and samples; a summary that contradicts the
    counts is refused at open."""
    from highnoon.data import store as store_module

    mapped = TokenStore.open(local)
    url = ram_copy(local)
    with tf.io.gfile.GFile(f"{url}/shard-00001-of-00003/shard.json", "rb") as f:
        meta = json.loads(f.read())
    meta["skipped_empty"] += 1
    tf.io.gfile.remove(f"{url}/shard-00001-of-00003/shard.json")
    with tf.io.gfile.GFile(f"{url}/shard-00001-of-00003/shard.json", "wb") as f:
        f.write(shards_lib.canonical_json(meta))
    store = TokenStore.open(url)
    np.testing.assert_array_equal(store.samples([0])[0], mapped.samples([0])[0])
    with pytest.raises(StoreError, match=r"shard-00001-of-00003: shard\.json has sha256 [0-9a-f]+, "
                                         r"the manifest records [0-9a-f]+; the store is corrupt"):  # fmt: skip
        store.samples([store._shards[1].first_sample])
    with pytest.raises(StoreError, match=r"shard-00001-of-00003: shard\.json has sha256"):
        TokenStore.open(url).verify()

    url = ram_copy(local)
    _edit_manifest(url, lambda m: m.update(fingerprint="0" * 64))
    store = TokenStore.open(url)  # the fingerprint needs every shard manifest: not at open
    with pytest.raises(StoreError, match=r"the shards' fingerprint [0-9a-f]+ does not match the "
                                         r"manifest fingerprint 0{64}; rebuild the store"):  # fmt: skip
        store.verify()
    assert all(s.files.loaded for s in store._shards)

    url = ram_copy(local)
    _edit_manifest(url, lambda m: [(e.pop("files"), e.pop("first_sample")) for e in m["shards"]])
    reads: list[str] = []
    real = store_module._read_file_op
    monkeypatch.setattr(store_module, "_read_file_op", lambda p: reads.append(p) or real(p))
    old = TokenStore.open(url)
    assert sorted(r.rsplit("/", 2)[-2] for r in reads) == [s.name for s in mapped._shards]
    assert all(s.files.loaded for s in old._shards)
    assert old.fingerprint == mapped.fingerprint
    last = mapped.num_samples - 1
    np.testing.assert_array_equal(old.samples([last])[0], mapped.samples([last])[0])

    url = ram_copy(local)
    _edit_manifest(url, lambda m: m["shards"][2]["files"].update({"offsets.bin": 8}))
    with pytest.raises(StoreError, match=r"shard-00002-of-00003/offsets\.bin: manifest\.json "
                                         r"records size 8, \d+ for \d+ samples"):  # fmt: skip
        TokenStore.open(url)


def test_a_file_url_stores_manifests_are_read_as_local_files(local, rows, tmp_path, monkeypatch):
    """A ``file://`` store reads ``manifest.json`` and each ``shard.json`` as the local files
    they name, as its range reads are (``os.pread``), not through TensorFlow's read op (about
    2 ms a shard); a missing shard manifest is still refused naming the shard at its read."""
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(local, copy)
    monkeypatch.setattr(tf.io, "read_file", lambda *a, **k: pytest.fail("tf.io.read_file"))
    store = TokenStore.open(f"file://{copy}")
    mapped = TokenStore.open(local)
    assert store.fingerprint == mapped.fingerprint
    _assert_same(_batches(make_host_dataset(store, rows, SEQ_LEN)),
                 _batches(make_host_dataset(mapped, rows, SEQ_LEN)))  # fmt: skip
    os.remove(os.path.join(copy, store._shards[1].name, "shard.json"))
    store = TokenStore.open(f"file://{copy}")
    with pytest.raises(StoreError, match=rf"{store._shards[1].name}: the shard is missing"):
        store.samples([store._shards[1].first_sample])
