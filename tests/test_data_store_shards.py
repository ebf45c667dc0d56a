"""Sharded stores read in place: reads across shard boundaries, batches equal to a one-shard
store's, every bad input of a prepared store as a clear error (missing or truncated shard, a
manifest naming an absent file, a flipped byte caught at the read that would feed a batch,
another tokenizer, another vocabulary), and a prepared store used by path as a dataset entry,
alone, capped, and in a weighted mixture."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from highnoon.data import (
    ByteTokenizer,
    StoreError,
    TokenStore,
    VocabularyMismatchError,
    build_token_store,
    pack_epoch,
    prepare_stage_store,
    resolve_dataset,
    train_tokenizer_json,
)
from highnoon.data.pipeline import HostBatcher, PackedBatcher, make_host_dataset
from highnoon.data.sources import StoreSource
from highnoon.utils.validation import InvalidArgumentError
from tests.remote_store_helpers import flip_byte
from tests.trainer_helpers import corpus, write_jsonl

TEXTS = corpus(seed=3, count=60, min_len=1, max_len=12)
SHARD_TOKENS = 300  # 7 shards of the 60 texts (2258 ids)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same texts as one shard and as several (built once; tests copy before damaging)."""
    root = tmp_path_factory.mktemp("stores")
    one = build_token_store(TEXTS, "byte", str(root / "one"), progress=False)
    many = build_token_store(
        TEXTS, "byte", str(root / "many"), progress=False, max_shard_tokens=SHARD_TOKENS
    )
    return one, many


def _copy(store: TokenStore, tmp_path) -> str:
    target = str(tmp_path / "copy")
    shutil.copytree(store.path, target)
    return target


def test_a_sharded_store_holds_the_same_samples_and_features(stores):
    one, many = stores
    assert many.num_shards == 7 and one.num_shards == 1
    assert (many.num_samples, many.num_tokens) == (one.num_samples, one.num_tokens)
    every = np.arange(one.num_samples)
    assert [s.tolist() for s in many.samples(every)] == [s.tolist() for s in one.samples(every)]
    # scores see the corpus, not the shard: features equal the one-shard store's
    np.testing.assert_array_equal(many.features.lengths, one.features.lengths)
    np.testing.assert_array_equal(many.features.surprisal_sum, one.features.surprisal_sum)
    assert many.fingerprint != one.fingerprint  # another layout of the bytes


def test_no_sample_spans_two_shards_and_gathers_cross_boundaries(stores):
    one, many = stores
    eos = ByteTokenizer().eos_id
    first = [s["num_samples"] for s in many.manifest["shards"]]
    boundaries = np.cumsum(first)[:-1]
    for entry in many.manifest["shards"]:
        tokens = np.fromfile(os.path.join(many.path, entry["name"], "tokens.bin"), "<u2")
        assert tokens.size == entry["num_tokens"] and tokens[-1] == eos
    around = np.concatenate([boundaries - 1, boundaries])[::-1]  # last/first of each shard
    flat, offsets = many.gather(around)
    want_flat, want_offsets = one.gather(around)
    np.testing.assert_array_equal(flat, want_flat)
    np.testing.assert_array_equal(offsets, want_offsets)
    starts, lengths = many.sample_bounds(around.reshape(2, -1))
    assert starts.shape == (2, boundaries.size)
    np.testing.assert_array_equal(lengths.ravel(), np.diff(want_offsets))
    with pytest.raises(IndexError, match=r"sample indices must be in \[0, 60\)"):
        many.gather([60])


def test_batches_from_a_sharded_store_equal_a_one_shard_stores(stores):
    one, many = stores
    rows = np.arange(one.num_samples)[::-1].reshape(15, 4)
    for overflow in ("truncate", "window"):
        a = HostBatcher(one, rows, 16, overflow=overflow, seed=5).batches(0, 15)
        b = HostBatcher(many, rows, 16, overflow=overflow, seed=5).batches(0, 15)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    packed = pack_epoch(np.arange(one.num_samples)[::-1], one.features.lengths, 24, 4)
    a = PackedBatcher(one, packed, overflow="window").batches(0, packed.num_steps)
    b = PackedBatcher(many, packed, overflow="window").batches(0, packed.num_steps)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


# --- bad input ---------------------------------------------------------------------------------


def test_a_missing_shard_is_an_error_naming_it(stores, tmp_path):
    path = _copy(stores[1], tmp_path)
    shutil.rmtree(os.path.join(path, "shard-00002-of-00007"))
    with pytest.raises(
        StoreError,
        match=r"shard-00002-of-00007: the shard is missing \(shard-00002-of-00007/shard\.json "
        r"does not exist\); the store is incomplete, rebuild it",
    ):
        TokenStore.open(path)


def test_a_truncated_shard_is_an_error_naming_the_file(stores, tmp_path):
    path = _copy(stores[1], tmp_path)
    tokens = os.path.join(path, "shard-00001-of-00007", "tokens.bin")
    size = os.path.getsize(tokens)
    os.truncate(tokens, size - 2)
    with pytest.raises(
        StoreError,
        match=rf"shard-00001-of-00007/tokens\.bin: file has size {size - 2}, manifest\.json "
        rf"records {size}; the shard is truncated or was modified, rebuild the store$",
    ):
        TokenStore.open(path)
    os.remove(tokens)
    with pytest.raises(StoreError, match=r"00007/tokens\.bin: the file is missing; .* rebuild"):
        TokenStore.open(path)


def test_a_manifest_naming_an_absent_file_is_an_error(stores, tmp_path):
    path = _copy(stores[0], tmp_path)
    with open(os.path.join(path, "manifest.json")) as handle:
        manifest = json.load(handle)
    manifest["files"]["tokenizer.model"] = {"size": 10, "sha256": "0" * 64}
    with open(os.path.join(path, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    with pytest.raises(
        StoreError,
        match=r"file tokenizer\.model is missing, the manifest records 10 bytes; the store is "
        "incomplete or was modified, rebuild it",
    ):
        TokenStore.open(path)


def test_an_edited_shard_manifest_is_an_error(stores, tmp_path):
    path = _copy(stores[1], tmp_path)
    shard_json = os.path.join(path, "shard-00000-of-00007", "shard.json")
    with open(shard_json) as handle:
        meta = json.load(handle)
    meta["skipped_empty"] += 1
    with open(shard_json, "w") as handle:
        json.dump(meta, handle)
    # opening reads manifest.json only; the shard's first read reads and checks its shard.json
    store = TokenStore.open(path)
    message = r"shard-00000-of-00007: shard\.json has sha256 [0-9a-f]{64}, the manifest records"
    with pytest.raises(StoreError, match=message):
        store.sample(0)
    assert TokenStore.open(path).sample(store.num_samples - 1)[-1] == store.tokenizer.eos_id
    with pytest.raises(StoreError, match=message):
        TokenStore.open(path).verify()


def test_a_local_store_opens_on_its_manifest_and_reads_a_shard_json_at_first_use(stores, tmp_path):
    """Opening reads no ``shard.json`` (their block CRCs grow with the store); a read loads the
    shards it touches only; ``verify()`` reads every one and checks the fingerprint."""
    store = TokenStore.open(stores[1].path)
    assert not any(shard.files.loaded for shard in store._shards)
    third = sum(entry["num_samples"] for entry in store.manifest["shards"][:2])
    np.testing.assert_array_equal(store.sample(third), stores[0].sample(third))
    assert [shard.files.loaded for shard in store._shards] == [i == 2 for i in range(7)]
    store.verify()
    path = _copy(stores[1], tmp_path)
    with open(os.path.join(path, "manifest.json")) as handle:
        manifest = json.load(handle)
    manifest["fingerprint"] = "0" * 64
    with open(os.path.join(path, "manifest.json"), "w") as handle:
        json.dump(manifest, handle)
    with pytest.raises(StoreError, match=r"does not match the manifest fingerprint 0{64}; rebuild"):
        TokenStore.open(path).verify()


_flip = flip_byte


def test_a_flipped_byte_is_caught_at_the_read_that_would_feed_a_batch(stores, tmp_path):
    path = _copy(stores[1], tmp_path)
    _flip(os.path.join(path, "shard-00003-of-00007", "tokens.bin"), 7)
    store = TokenStore.open(path, verify=True)  # manifests and sizes are fine
    first = store.manifest["shards"][3]
    base = sum(s["num_samples"] for s in store.manifest["shards"][:3])
    clean = np.arange(base).reshape(-1, 1)[:8]  # samples of shards 0-2 read fine
    assert HostBatcher(store, clean, 16).batch(0)["inputs"].shape == (1, 16)
    message = (
        rf"^store '.*copy', shard-00003-of-00007/tokens\.bin: block 0 \(byte offset 0, bytes "
        rf"\[0, {first['num_tokens'] * 2}\)\) has CRC32C 0x[0-9a-f]{{8}}, the shard manifest "
        r"records 0x[0-9a-f]{8}; the store is corrupt, rebuild it$"
    )
    with pytest.raises(StoreError, match=message):
        HostBatcher(store, np.array([[base]]), 16).batch(0)
    dataset = make_host_dataset(store, np.array([[0], [base]]), 16, steps_per_call=1)
    iterator = iter(dataset)
    next(iterator)  # step 0 reads shard 0 only
    with pytest.raises(Exception, match="shard-00003-of-00007/tokens.bin: block 0 .*rebuild it"):
        next(iterator)


def test_a_store_of_another_tokenizer_is_refused(stores, tmp_path):
    other = train_tokenizer_json(TEXTS, str(tmp_path / "tok.json"), 300)
    with pytest.raises(InvalidArgumentError) as info:
        prepare_stage_store(stores[0].path, other, str(tmp_path / "cache"), progress=False)
    message = str(info.value)
    assert message.startswith(
        f'the prepared store {stores[0].path!r} was tokenised with {{"type": "byte"}}, '
        'but this run\'s tokenizer is {"bos_token": "<s>"'
    )
    assert message.endswith(
        "train with the tokenizer the store was prepared with (a file-based one is kept in the "
        "store: none here), or prepare the data again with this tokenizer"
    )


def test_a_store_beyond_the_models_vocabulary_is_refused(stores, tmp_path):
    with pytest.raises(
        VocabularyMismatchError, match=r"holds token ids up to \d+, but vocab_size=100"
    ):
        prepare_stage_store(
            stores[0].path, "byte", str(tmp_path / "cache"), progress=False, vocab_size=100
        )


# --- a prepared store as a dataset entry ------------------------------------------------------


def test_a_prepared_store_is_read_in_place_by_path(stores, tmp_path):
    one = stores[0]
    source = resolve_dataset(one.path)
    assert isinstance(source, StoreSource)
    assert source.describe() == {"type": "store", "path": one.path, "fingerprint": one.fingerprint}
    cache = tmp_path / "cache"
    store = prepare_stage_store(one.path, ByteTokenizer(), str(cache), progress=False)
    assert store.path == one.path and store.fingerprint == one.fingerprint
    assert not (cache / "sources").exists() or not os.listdir(cache / "sources")  # no rebuild
    capped = prepare_stage_store(one.path, "byte", str(cache), max_samples=7, progress=False)
    assert capped.num_samples == 7 and capped.fingerprint != one.fingerprint
    assert [s.tolist() for s in capped.samples(range(7))] == [
        s.tolist() for s in one.samples(range(7))
    ]
    np.testing.assert_array_equal(capped.features.lengths, one.features.lengths[:7])
    many = stores[1]
    cut = many.manifest["shards"][0]["num_samples"] + 3  # inside the second shard
    head = prepare_stage_store(many.path, "byte", str(cache), max_samples=cut, progress=False)
    assert (head.num_samples, head.num_shards) == (cut, 2)
    assert head.num_tokens == int(np.sum(one.features.lengths[:cut]))
    assert [s.tolist() for s in head.samples(range(cut))] == [
        s.tolist() for s in one.samples(range(cut))
    ]
    with pytest.raises(IndexError, match=rf"token positions must be in \[0, {head.num_tokens}\)"):
        head.read_tokens(np.array([head.num_tokens]))  # the cut shard's later ids are not its
    with pytest.raises(InvalidArgumentError, match="options .*apply to raw sources only"):
        from highnoon.data import register_dataset, unregister_dataset

        register_dataset("prepared", one.path, text_field="body")
        try:
            resolve_dataset("prepared")
        finally:
            unregister_dataset("prepared")


def test_a_weighted_mixture_reads_a_prepared_store_and_a_raw_source(stores, tmp_path):
    many = stores[1]
    raw = write_jsonl(str(tmp_path / "raw.jsonl"), ["raw one", "raw two"])
    cache = str(tmp_path / "cache")
    mixed = prepare_stage_store([(many.path, 0.75), (raw, 0.25)], "byte", cache, progress=False)
    assert mixed.num_samples == many.num_samples + 2
    assert mixed.manifest["mixing"]["weights"] == [0.75, 0.25]
    assert mixed.manifest["mixing"]["part_counts"] == [many.num_samples, 2]
    assert mixed.manifest["sources"][0] == {
        "weight": 0.75, "name": many.path, "type": "store", "path": many.path,
        "fingerprint": many.fingerprint,
    }  # fmt: skip
    tok = ByteTokenizer()
    tail = [tok.decode(s) for s in mixed.samples([mixed.num_samples - 2, mixed.num_samples - 1])]
    assert tail == ["raw one", "raw two"]
    np.testing.assert_array_equal(mixed.features.lengths[: many.num_samples], many.features.lengths)
    assert not os.path.exists(os.path.join(cache, "stages"))  # no mixed copy is written


def test_a_trainer_stage_and_gin_name_a_prepared_store(stores, tmp_path):
    """The Trainer plans a stage on a prepared store by path, and on the same store registered
    under a name (as ``register_datasets.mapping`` in gin does), reading it in place; a model
    too small for its ids is refused before any work."""
    from highnoon.data import register_datasets, unregister_dataset
    from tests.trainer_helpers import make_trainer

    many = stores[1]
    register_datasets({"prepared_web": many.path})
    try:
        trainer = make_trainer(tmp_path)
        trainer.add_curriculum_stage("by_path", [many.path], epochs=1)
        trainer.add_curriculum_stage("by_name", ["prepared_web"], epochs=1)
        plans = trainer.plan()
    finally:
        unregister_dataset("prepared_web")
    assert [p.store.path for p in plans] == [many.path, many.path]
    assert [p.stream_fingerprint()["data"] for p in plans] == [many.fingerprint] * 2
    assert not os.path.exists(tmp_path / "cache" / "sources")  # nothing tokenised or copied


def test_shards_written_apart_make_one_store_an_empty_shard_included(stores, tmp_path):
    """As a preparation spread over workers writes it: a ShardWriter per sample range (one of
    them empty), the counts summed, features per shard, the manifest last."""
    from highnoon.data.shards import (
        MANIFEST,
        ShardWriter,
        canonical_json,
        shard_name,
        store_manifest,
        write_shard_features,
    )

    one, tok = stores[0], ByteTokenizer()
    ranges, root = [(0, 20), (20, 20), (20, 60)], tmp_path / "apart"
    names = [shard_name(i, len(ranges)) for i in range(len(ranges))]
    written = []
    for name, (a, b) in zip(names, ranges):
        writer = ShardWriter(str(root / name), tok.vocab_size, tok.eos_id)
        if b > a:
            writer.add(*tok.encode_batch(TEXTS[a:b]))
        written.append(writer.close())
    counts = np.sum([w.counts for w in written], axis=0)
    manifests = [write_shard_features(str(root / n), counts, a) for n, (a, _) in zip(names, ranges)]
    manifest = store_manifest(manifests, names, tok, sources=[], skipped={}, top_files={})
    (root / MANIFEST).write_bytes(canonical_json(manifest))
    store = TokenStore.open(str(root))
    assert (store.num_shards, store.num_samples) == (3, 60)
    every = np.arange(60)
    assert [s.tolist() for s in store.samples(every)] == [s.tolist() for s in one.samples(every)]
    np.testing.assert_array_equal(store.features.surprisal_sum, one.features.surprisal_sum)
    store.verify()


def test_features_of_a_range_or_of_given_samples_read_only_those(stores):
    """``features_range``/``features_at`` equal slices of ``features`` across shard boundaries,
    in the order asked."""
    one, many = stores
    whole = one.features
    n = one.num_samples
    for start, stop in [(0, n), (0, 0), (5, 6), (7, 41), (n - 1, n), (13, 13)]:
        part = many.features_range(start, stop)
        np.testing.assert_array_equal(part.lengths, whole.lengths[start:stop])
        np.testing.assert_array_equal(part.surprisal_sum, whole.surprisal_sum[start:stop])
        lengths = many.lengths_range(start, stop)
        assert lengths.dtype == np.int64
        np.testing.assert_array_equal(lengths, whole.lengths[start:stop])
    idx = np.array([59, 0, 8, 8, 31, 1, 58])
    picked = many.features_at(idx)
    np.testing.assert_array_equal(picked.lengths, whole.lengths[idx])
    np.testing.assert_array_equal(picked.surprisal_sum, whole.surprisal_sum[idx])
    assert many.features_at(np.zeros(0, dtype=np.int64)).lengths.shape == (0,)
    with pytest.raises(IndexError, match=r"sample indices must be in \[0, 60\)"):
        many.features_at([60])
    with pytest.raises(InvalidArgumentError, match="stop"):
        many.features_range(5, 61)
    with pytest.raises(InvalidArgumentError, match="stop"):
        many.features_range(5, 4)
    with pytest.raises(InvalidArgumentError, match="stop"):
        many.lengths_range(5, 61)


def test_a_range_of_lengths_reads_lengths_bin_alone(stores, monkeypatch):
    """``lengths_range`` (a stored order's ``size_based`` pass) reads no other feature file."""
    from highnoon.data import blocks

    store = TokenStore.open(stores[1].path)
    labels = []
    real = blocks.MappedFile.read
    monkeypatch.setattr(blocks.MappedFile, "read",
                        lambda self, a, b: labels.append(self.label) or real(self, a, b))  # fmt: skip
    store.lengths_range(0, store.num_samples)
    assert len(labels) == store.num_shards > 1
    assert all(label.endswith("/lengths.bin") for label in labels)


def test_a_large_read_unmaps_its_pages_and_reads_again_the_same(tmp_path, monkeypatch):
    """``MappedFile.read`` of a range of at least ``RELEASE_BYTES``, and a take spread over one,
    drop the pages they mapped (a scan or random reads keep O(read) resident memory); the
    bytes read before and after are the same."""
    from highnoon.data import blocks
    from highnoon.data.shards import crc32c_blocks

    data = np.arange(3 * 4096 + 100, dtype=np.uint8)
    path = tmp_path / "f.bin"
    path.write_bytes(data.tobytes())
    released = []
    monkeypatch.setattr(blocks, "RELEASE_BYTES", 4096)
    real = blocks.MappedFile._release
    monkeypatch.setattr(
        blocks.MappedFile,
        "_release",
        lambda self, a, b: released.append((a, b)) or real(self, a, b),
    )
    mapped = blocks.MappedFile(str(path), data.size, 4096, crc32c_blocks(data, 4096), label="f")
    np.testing.assert_array_equal(mapped.read(10, data.size), data[10:])
    np.testing.assert_array_equal(mapped.read(0, 100), data[:100])  # small: kept mapped
    np.testing.assert_array_equal(mapped.read(0, data.size), data)
    np.testing.assert_array_equal(mapped.take(np.array([5, 12000]), np.uint8), data[[5, 12000]])
    np.testing.assert_array_equal(mapped.take(np.array([7, 5]), np.uint8), data[[7, 5]])  # kept
    dense = np.arange(1, 12000, 2)
    np.testing.assert_array_equal(mapped.take(dense, np.uint8), data[dense])
    # a dense take spread over RELEASE_BYTES or more unmaps its span too (a sparse one, [5,
    # 12000], is read by pread: nothing mapped)
    assert released == [(10, data.size), (0, data.size), (1, 12000)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int64])
def test_a_sparse_take_by_pread_gives_the_mapped_elements_in_one_read_a_row(
    tmp_path, monkeypatch, dtype
):
    """A take spread wide enough is read by ``pread`` (``MappedFile._pread_take``): the
    elements equal the array's at every position, for batch rows (ascending, clamped at a
    sample's end), orders up and down, repeats and scattered positions; one read serves each
    stretch of positions at most ``PREAD_GAP`` bytes apart, however they are ordered."""
    from highnoon.data import blocks
    from highnoon.data.shards import crc32c_blocks

    rng = np.random.Generator(np.random.PCG64(3))
    data = rng.integers(0, 1000, size=200_000).astype(dtype)
    path = tmp_path / "f.bin"
    data.tofile(path)
    raw = np.fromfile(path, dtype=np.uint8)
    mapped = blocks.MappedFile(str(path), raw.size, 4096, crc32c_blocks(raw, 4096), label="f")
    mapped.verify()  # its block reads done: what follows counts the takes' reads only
    monkeypatch.setattr(blocks, "RELEASE_BYTES", 4096)  # every wide take is a sparse one
    reads = []
    real_pread = os.pread
    monkeypatch.setattr(
        os, "pread", lambda fd, n, at: reads.append((at, n)) or real_pread(fd, n, at)
    )
    n = data.size
    starts = np.array([150_000, 20, 90_000, 150_010, 60_000])  # rows 0 and 3 overlap
    lengths = np.array([40, 7, 33, 40, 1])
    rows = np.minimum(starts[:, None] + np.arange(48), (starts + lengths - 1)[:, None])
    ascending = np.sort(rng.integers(0, n, size=300))
    cases = {
        "rows": (rows, 4),  # rows 0 and 3 share one read
        "ascending": (ascending, None),
        "descending": (ascending[::-1].copy(), None),
        "scattered with repeats": (rng.integers(0, n, size=(6, 50)), None),
        "close elements out of order": (np.array([5000, 5003, 5001, 5009, 5000, n - 1]), 2),
        "rows inside a longer row": (  # the short rows are read with the long one
            np.concatenate([np.arange(1000, 1200), [1010, 1011, 1100, 1101, n - 1]]),
            2,
        ),
    }
    for name, (positions, expected_reads) in cases.items():
        reads.clear()
        np.testing.assert_array_equal(mapped.take(positions, dtype), data[positions], name)
        assert reads, name  # read by pread, not through the map
        if expected_reads is not None:
            assert len(reads) == expected_reads, (name, reads)


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_rows_read_with_their_samples_equal_positions_read_alone(stores, scheme):
    """``read_tokens`` with one sample a row (``[rows, 1]``, split by shard a row at a time)
    gives the ids the positions give alone and the one-shard store gives; empty shapes and
    scalars keep their shape; rows given samples of other shards are refused, not read."""
    one, many = stores
    store = TokenStore.open(scheme + many.path)
    idx = np.array([0, 59, 17, 31, 17, 44])  # every other shard or so, a repeat
    starts, lengths = store.sample_bounds(idx)
    pos = np.minimum(starts[:, None] + np.arange(5), (starts + lengths - 1)[:, None])
    expected = one.read_tokens(pos)
    np.testing.assert_array_equal(store.read_tokens(pos, samples=idx[:, None]), expected)
    np.testing.assert_array_equal(store.read_tokens(pos), expected)
    np.testing.assert_array_equal(store.read_tokens(pos[0], samples=0), expected[0])
    assert store.read_tokens(np.int64(pos[1, 0]), samples=59) == expected[1, 0]
    for shape in ((3, 0), (0, 5)):
        empty = np.zeros(shape, dtype=np.int64)
        assert store.read_tokens(empty, samples=np.zeros((shape[0], 1))).shape == shape
    with pytest.raises((StoreError, IndexError)):
        store.read_tokens(pos, samples=idx[::-1, None])
