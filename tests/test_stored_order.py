"""Orders computed once and stored with the store: chunked scores equal whole-array scores bit
for bit; the stored order equals ``order_from_scores`` of the whole store's scores."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from highnoon.curriculum import stored_order
from highnoon.curriculum.order import order_from_scores, scores_fingerprint
from highnoon.curriculum.scoring import ScoreScale, score_scale, scores_from_features
from highnoon.curriculum.stored_order import open_stored_order, store_score_scale, write_orders
from highnoon.data.features import SampleFeatures
from highnoon.data.shards import crc32c_file
from highnoon.data.store import StoreError, TokenStore, head
from highnoon.utils.hashing import sha256_file
from highnoon.utils.processes import host_key
from highnoon.utils.validation import InvalidArgumentError
from tests.remote_store_helpers import ram_copy, write_store

NORMALISED = ("size_based", "difficulty_based", "mixed")


def _features(n: int, seed: int, *, distinct: int = 7) -> SampleFeatures:
    """``n`` samples with few distinct lengths and surprisals (many exact ties)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, distinct + 1, size=n).astype(np.int64)
    per_token = rng.integers(0, 3, size=n).astype(np.int64) << 22
    return SampleFeatures(lengths=lengths, surprisal_sum=lengths * per_token)


@pytest.mark.parametrize("strategy", NORMALISED)
@pytest.mark.parametrize("n,chunk", [(1, 1), (2, 1), (97, 10), (1000, 333), (257, 256)])
def test_chunked_scores_are_bit_identical_to_whole_array_scores(strategy, n, chunk):
    features = _features(n, seed=n)
    whole = scores_from_features(features, strategy)
    scale = None
    for start in range(0, n, chunk):  # the scale as preparation combines it, chunk by chunk
        part = score_scale(_slice(features, start, start + chunk))
        scale = part if scale is None else scale.combine(part)
    assert scale == score_scale(features)
    chunks = [
        scores_from_features(_slice(features, s, s + chunk), strategy, scale=scale)
        for s in range(0, n, chunk)
    ]
    assert np.concatenate(chunks).tobytes() == whole.tobytes()


def test_score_scale_round_trips_through_json_and_handles_empty_and_zero_surprisal():
    features = _features(50, seed=1)
    scale = score_scale(features)
    assert ScoreScale.from_json(scale.to_json()) == scale
    empty = SampleFeatures(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert score_scale(empty) == ScoreScale(0, 0.0)
    flat = SampleFeatures(np.array([3, 1, 2]), np.zeros(3, np.int64))
    scores = scores_from_features(flat, "difficulty_based", scale=score_scale(flat))
    np.testing.assert_array_equal(scores, scores_from_features(flat, "difficulty_based"))
    assert np.argsort(scores, kind="stable").tolist() == [1, 2, 0]
    # a chunk scored without the store's scale normalises by its own maxima: other scores
    chunk = SampleFeatures(np.array([2, 1]), np.array([2 << 24, 0]))
    wider = ScoreScale(max_length=8, max_rarity=4.0)
    assert (
        scores_from_features(chunk, "mixed").tolist()
        != scores_from_features(chunk, "mixed", scale=wider).tolist()
    )


def _slice(features: SampleFeatures, start: int, stop: int) -> SampleFeatures:
    return SampleFeatures(features.lengths[start:stop], features.surprisal_sum[start:stop])


# --- stored orders ------------------------------------------------------------------------------


def _store(tmp_path, n: int, *, num_shards: int = 3, seed: int = 0, name: str = "s") -> TokenStore:
    """A store of ``n`` samples of few distinct lengths (exact ties under every strategy's
    length part), tiny blocks so every CRC check is its own."""
    lengths = np.random.default_rng(seed).integers(1, 6, size=n)
    path = write_store(str(tmp_path / name), lengths, num_shards=min(num_shards, n), seed=seed)
    return TokenStore.open(path)


def _expected(store: TokenStore, strategy: str) -> np.ndarray:
    return order_from_scores(scores_from_features(store.features, strategy))


@pytest.mark.parametrize("n", [1, 2, 3, 31, 257, 600])
def test_the_stored_order_equals_the_in_memory_order_of_the_whole_store(tmp_path, n, monkeypatch):
    """With a chunk of 4 samples the external path really runs (buckets, and buckets split
    again); the result is exactly ``order_from_scores`` of the whole store's scores."""
    store = _store(tmp_path, n, seed=n)
    scatters = []
    real = stored_order._scatter
    monkeypatch.setattr(stored_order, "_scatter", lambda *a: scatters.append(1) or real(*a))
    paths = write_orders(store, chunk_samples=4, block_bytes=64)
    assert sorted(paths) == sorted(NORMALISED)
    if n >= 257:
        assert scatters  # some bucket was larger than 4 and split again
    for strategy in NORMALISED:
        order = open_stored_order(store, strategy)
        expected = _expected(store, strategy)
        assert len(order) == n and order.strategy == strategy
        np.testing.assert_array_equal(order[:], expected)
        assert order.scores_fingerprint == scores_fingerprint(
            scores_from_features(store.features, strategy)
        )
        assert order.scale == score_scale(store.features)
        positions = np.arange(n)[::-1].reshape(-1, 1)
        np.testing.assert_array_equal(order.take(positions), expected[positions])
        np.testing.assert_array_equal(order[n // 3 : n : 2], expected[n // 3 : n : 2])
        np.testing.assert_array_equal(order[np.array([n - 1, 0])], expected[[n - 1, 0]])
        meta = json.loads((tmp_path / "s" / "orders" / f"{strategy}.json").read_text())
        assert (meta["format"], meta["dtype"], meta["num_samples"]) == (
            "highnoon.order/3",
            "<u4",
            n,
        )
        # the lengths column: the stored length of the sample at each order position
        lengths = np.asarray(store.features.lengths)
        np.testing.assert_array_equal(order.lengths[:], lengths[expected])
        np.testing.assert_array_equal(order.lengths[positions], lengths[expected[positions]])
        column_crcs = tmp_path / "s" / "orders" / f"{strategy}.lengths.crc32c"
        assert meta["lengths_crc32c_sha256"] == sha256_file(str(column_crcs))
        assert meta["store_fingerprint"] == store.fingerprint
        crc_path = tmp_path / "s" / "orders" / f"{strategy}.crc32c"
        assert np.fromfile(crc_path, dtype="<u4").tolist() == crc32c_file(paths[strategy], 64)
        assert meta["block_crc32c_sha256"] == sha256_file(str(crc_path))
    assert sorted(os.listdir(tmp_path / "s" / "orders")) == sorted(
        f"{s}.{e}"
        for s in NORMALISED
        for e in ("bin", "crc32c", "json", "lengths.bin", "lengths.crc32c")
    )  # no temporaries left
    with pytest.raises(IndexError, match=rf"order positions must be in \[0, {n}\)"):
        order.take(np.array([n]))


def test_a_big_chunk_and_a_sharded_store_give_the_same_order(tmp_path):
    one = _store(tmp_path, 200, num_shards=1, name="one")
    write_orders(one, ["mixed"], chunk_samples=1 << 20)
    np.testing.assert_array_equal(open_stored_order(one, "mixed")[:], _expected(one, "mixed"))


def test_a_killed_write_leaves_no_json_and_the_order_absent(tmp_path, monkeypatch):
    store = _store(tmp_path, 50)
    write_orders(store, ["size_based"], chunk_samples=8)
    assert open_stored_order(store, "size_based") is not None

    def killed(local, target):
        raise KeyboardInterrupt  # the process dies between the bin and its json

    monkeypatch.setattr(stored_order, "_publish", killed)
    with pytest.raises(KeyboardInterrupt):
        write_orders(store, ["size_based"], chunk_samples=8)
    orders = tmp_path / "s" / "orders"
    assert sorted(os.listdir(orders)) == [
        "size_based.bin", "size_based.crc32c", "size_based.lengths.bin",
        "size_based.lengths.crc32c",
    ]  # fmt: skip  # json gone,
    # temporaries removed
    assert open_stored_order(store, "size_based") is None
    monkeypatch.undo()
    # a writer killed outright (no cleanup) leaves its bucket files, named after it: removed by
    # the next write once that process is gone
    dead = orders / f"mixed.tmp-{host_key()}-999999999-0-0badcafe"
    (dead / "buckets-x").mkdir(parents=True)
    (dead / "buckets-x" / "bucket-0.key").write_bytes(b"12345678")
    assert write_orders(store, ["size_based"], only_missing=True, chunk_samples=8)
    np.testing.assert_array_equal(
        open_stored_order(store, "size_based")[:], _expected(store, "size_based")
    )
    assert not dead.exists()


def test_only_missing_keeps_fresh_orders_and_rewrites_stale_ones(tmp_path):
    store = _store(tmp_path, 40)
    write_orders(store, ["size_based", "mixed"])
    assert write_orders(store, ["size_based", "mixed"], only_missing=True) == {}
    meta_path = tmp_path / "s" / "orders" / "mixed.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "store_fingerprint": "other"}))
    assert list(write_orders(store, ["size_based", "mixed"], only_missing=True)) == ["mixed"]
    assert open_stored_order(store, "mixed").scores_fingerprint == meta["scores_fingerprint"]


def test_stale_and_corrupt_orders_are_refused_with_the_fix(tmp_path):
    store = _store(tmp_path, 60)
    other = _store(tmp_path, 60, seed=9, name="other")
    write_orders(store, ["difficulty_based"], block_bytes=64)
    shutil.copytree(tmp_path / "s" / "orders", tmp_path / "other" / "orders")
    fix = r"re-run highnoon-prepare-data --orders_only=.*other to write the orders again"
    with pytest.raises(
        StoreError, match=rf"the order is stale: computed from store fingerprint .*{fix}"
    ):
        open_stored_order(other, "difficulty_based")
    fix = fix.replace("other", "s")
    bin_path = tmp_path / "s" / "orders" / "difficulty_based.bin"
    raw = bytearray(bin_path.read_bytes())
    raw[70] ^= 1  # block 1 of 64-byte blocks
    bin_path.write_bytes(bytes(raw))
    order = open_stored_order(store, "difficulty_based")
    assert order.take(np.array([3])).shape == (1,)  # block 0 is intact
    with pytest.raises(StoreError, match=rf"difficulty_based.bin: block 1 \(byte offset 64.*{fix}"):
        order.take(np.array([20]))
    bin_path.write_bytes(bytes(raw[:-4]))
    with pytest.raises(
        StoreError, match=rf"the order has 236 bytes, its json records 240 bytes; {fix}"
    ):
        open_stored_order(store, "difficulty_based")
    (tmp_path / "s" / "orders" / "difficulty_based.json").write_text("{")
    with pytest.raises(StoreError, match=rf"not valid JSON .*{fix}"):
        open_stored_order(store, "difficulty_based")


def test_what_is_never_stored(tmp_path):
    store = _store(tmp_path, 20)
    assert open_stored_order(store, "size_based") is None  # not written
    assert open_stored_order(store, "random") is None  # keyed by the stage seed
    assert open_stored_order(head(store, 5), "size_based") is None
    with pytest.raises(InvalidArgumentError, match="strategy='random' cannot be stored"):
        write_orders(store, ["random"])
    with pytest.raises(InvalidArgumentError, match="strategies='hardest'"):
        write_orders(store, ["hardest"])
    with pytest.raises(InvalidArgumentError, match="chunk_samples"):
        write_orders(store, chunk_samples=0)
    with pytest.raises(InvalidArgumentError, match="first 5 samples of a store"):
        write_orders(head(store, 5))
    assert not (tmp_path / "s" / "orders").exists()  # refused before any work


def test_store_score_scale_from_the_json_or_the_features(tmp_path, monkeypatch):
    store = _store(tmp_path, 70)
    expected = score_scale(store.features)
    assert store_score_scale(store, chunk_samples=8) == expected
    write_orders(store, ["mixed"])
    reopened = TokenStore.open(store.path)
    monkeypatch.setattr(TokenStore, "features_range", None)  # no feature is read
    assert store_score_scale(reopened) == expected


def test_orders_of_a_store_on_a_gfile_filesystem_are_written_and_read_by_range(tmp_path):
    """A store on ``ram://`` (read in place through ``tf.io.gfile``): the order is written
    beside it and read back with ranged, CRC-checked reads."""
    local = _store(tmp_path, 90)
    remote = TokenStore.open(ram_copy(local.path))
    write_orders(remote, ["size_based"], work_dir=str(tmp_path), block_bytes=64)
    order = open_stored_order(TokenStore.open(remote.path), "size_based")
    assert type(order._file).__name__ == "RangedFile"
    np.testing.assert_array_equal(order[:], _expected(local, "size_based"))
    np.testing.assert_array_equal(
        order.take(np.array([[5, 80]])), _expected(local, "size_based")[[[5, 80]]]
    )
    assert not os.path.exists(os.path.join(local.path, "orders"))


def test_any_number_of_threads_writes_the_same_bytes(tmp_path):
    """The scores of two orders hashed by the worker threads, in chunk order: the same files
    (fingerprints in the jsons included) for 1 and 3 threads."""
    store = _store(tmp_path, 300)
    written = {}
    for threads in (1, 3):
        write_orders(store, chunk_samples=16, threads=threads)
        written[threads] = _orders_bytes(store)
    assert written[1] == written[3]
    assert (
        np.frombuffer(written[1]["mixed.bin"], "<u4").tolist() == _expected(store, "mixed").tolist()
    )
    meta = json.loads(written[3]["difficulty_based.json"])
    assert meta["scores_fingerprint"] == scores_fingerprint(
        scores_from_features(store.features, "difficulty_based")
    )


def test_a_chunk_that_fails_to_read_stops_the_write_with_its_error(tmp_path, monkeypatch):
    """The chunks after a failed one do not wait for its turn forever: the error reaches the
    caller and no order is left behind."""
    store = _store(tmp_path, 300)
    real = TokenStore.features_range
    reads = []

    def failing(self, start, stop):
        reads.append(start)
        if len(reads) > 300 // 16 + 2:  # the scan's 19 chunks, then the pass's second
            raise OSError("the disk went away")
        return real(self, start, stop)

    monkeypatch.setattr(TokenStore, "features_range", failing)
    with pytest.raises(OSError, match="the disk went away"):
        write_orders(store, chunk_samples=16, threads=2)
    assert sorted(os.listdir(tmp_path / "s" / "orders")) == []


def test_the_block_crcs_are_a_binary_file_whose_corruption_is_refused_with_the_fix(tmp_path):
    store = _store(tmp_path, 300)
    write_orders(store, ["mixed"])  # the default: 4 KiB blocks
    orders = tmp_path / "s" / "orders"
    meta = json.loads((orders / "mixed.json").read_text())
    assert (meta["format"], meta["block_bytes"]) == ("highnoon.order/3", 4096)
    assert "block_crc32c" not in meta
    crc_path = orders / "mixed.crc32c"
    assert crc_path.read_bytes() == np.array(crc32c_file(str(orders / "mixed.bin"), 4096),
                                             dtype="<u4").tobytes()  # fmt: skip
    np.testing.assert_array_equal(open_stored_order(store, "mixed")[:], _expected(store, "mixed"))
    # read by 4 KiB page, each page against the CRC32C the json records for it
    assert meta["block_crc32c_pages"] == crc32c_file(str(crc_path), 4096)
    fix = r"re-run highnoon-prepare-data --orders_only=.*s to write the orders again"
    raw = bytearray(crc_path.read_bytes())
    raw[1] ^= 1
    crc_path.write_bytes(bytes(raw))
    order = open_stored_order(store, "mixed")  # opens: its size is right
    with pytest.raises(
        StoreError,
        match=r"orders/mixed.crc32c: block 0 \(byte offset 0, bytes \[0, 4\)\) has CRC32C "
        rf"0x[0-9a-f]{{8}}, the shard manifest records 0x[0-9a-f]{{8}}.*; or {fix}",
    ):
        order[:]  # before any index of the order is returned
    # an order written before the page CRCs reads its .crc32c whole, against the sha256
    del meta["block_crc32c_pages"], meta["lengths_crc32c_pages"]
    (orders / "mixed.json").write_text(json.dumps(meta))
    with pytest.raises(
        StoreError,
        match=rf"mixed.crc32c: sha256 [0-9a-f]{{64}}, the order's json records "
        rf"{meta['block_crc32c_sha256']}; the checksums are corrupt or of another write, {fix}",
    ):
        open_stored_order(store, "mixed")
    crc_path.unlink()
    with pytest.raises(StoreError, match=rf"mixed.crc32c: the order's block checksums are "
                       rf"missing; {fix}"):  # fmt: skip
        open_stored_order(store, "mixed")
    assert store_score_scale(store) == score_scale(store.features)  # an unusable order is skipped


def test_an_order_of_format_1_with_its_crcs_in_the_json_still_opens(tmp_path):
    store = _store(tmp_path, 200)
    write_orders(store, ["size_based"], block_bytes=64)
    orders = tmp_path / "s" / "orders"
    meta = json.loads((orders / "size_based.json").read_text())
    del meta["block_crc32c_sha256"]
    (orders / "size_based.crc32c").unlink()
    old = {**meta, "format": "highnoon.order/1",
           "block_crc32c": crc32c_file(str(orders / "size_based.bin"), 64)}  # fmt: skip
    (orders / "size_based.json").write_text(json.dumps(old))
    order = open_stored_order(TokenStore.open(store.path), "size_based")
    np.testing.assert_array_equal(order[:], _expected(store, "size_based"))
    raw = bytearray((orders / "size_based.bin").read_bytes())
    raw[130] ^= 1  # block 2 of 64-byte blocks
    (orders / "size_based.bin").write_bytes(bytes(raw))
    order = open_stored_order(TokenStore.open(store.path), "size_based")
    with pytest.raises(StoreError, match=r"size_based.bin: block 2 \(byte offset 128"):
        order.take(np.array([40]))
    del old["block_crc32c"]
    (orders / "size_based.json").write_text(json.dumps(old))
    with pytest.raises(StoreError, match=r"missing keys \['block_crc32c'\]"):
        open_stored_order(TokenStore.open(store.path), "size_based")


def test_a_corrupt_lengths_column_page_is_refused_with_the_file_and_offset(tmp_path):
    store = _store(tmp_path, 60)
    write_orders(store, ["mixed"], block_bytes=64)
    column = tmp_path / "s" / "orders" / "mixed.lengths.bin"
    raw = bytearray(column.read_bytes())
    raw[130] ^= 1  # block 2 of 64-byte blocks: positions 32..47
    column.write_bytes(bytes(raw))
    order = open_stored_order(TokenStore.open(store.path), "mixed")
    expected = np.asarray(store.features.lengths)[_expected(store, "mixed")]
    np.testing.assert_array_equal(order.lengths[0:32], expected[:32])  # blocks 0-1 intact
    fix = r"re-run highnoon-prepare-data --orders_only=.*s to write the orders again"
    with pytest.raises(
        StoreError, match=rf"orders/mixed.lengths.bin: block 2 \(byte offset 128.*{fix}"
    ):
        order.lengths.take(np.array([40]))
    column.write_bytes(bytes(raw[:-4]))
    with pytest.raises(
        StoreError,
        match=rf"the order's lengths column has 236 bytes, its json records 240 bytes; {fix}",
    ):
        open_stored_order(TokenStore.open(store.path), "mixed")


def test_an_order_of_format_2_opens_without_its_column_and_only_missing_rewrites_it(tmp_path):
    store = _store(tmp_path, 90)
    write_orders(store, ["size_based"])
    orders = tmp_path / "s" / "orders"
    meta = json.loads((orders / "size_based.json").read_text())
    for key in ("lengths_dtype", "lengths_crc32c_sha256"):
        del meta[key]
    (orders / "size_based.json").write_text(json.dumps({**meta, "format": "highnoon.order/2"}))
    (orders / "size_based.lengths.bin").unlink()
    (orders / "size_based.lengths.crc32c").unlink()
    old = open_stored_order(TokenStore.open(store.path), "size_based")
    assert old.lengths is None and old.format == "highnoon.order/2"
    np.testing.assert_array_equal(old[:], _expected(store, "size_based"))
    assert list(write_orders(store, ["size_based"], only_missing=True)) == ["size_based"]
    new = open_stored_order(TokenStore.open(store.path), "size_based")
    np.testing.assert_array_equal(
        new.lengths[:], np.asarray(store.features.lengths)[_expected(store, "size_based")]
    )


def test_the_scatter_raises_the_open_files_limit_or_refuses_with_the_fix(tmp_path, monkeypatch):
    """600 samples in chunks of 4: at most 301 buckets of 3 files open at once."""
    import resource

    store = _store(tmp_path, 600)
    raised = []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (100, 10_000))
    monkeypatch.setattr(resource, "setrlimit", lambda kind, limits: raised.append(limits))
    write_orders(store, ["mixed"], chunk_samples=4)
    assert raised[0] == (301 * 3 + 64, 10_000)  # before the scan, for the most buckets
    np.testing.assert_array_equal(open_stored_order(store, "mixed")[:], _expected(store, "mixed"))
    scans = []
    monkeypatch.setattr(stored_order, "_scan", lambda *a: scans.append(a))
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (100, 903))
    with pytest.raises(InvalidArgumentError) as err:
        write_orders(store, ["mixed"], chunk_samples=4)
    assert str(err.value) == (
        "write_orders' scatter into 301 buckets keeps 903 files open at once (967 with the "
        "process's others), but this process may open at most 903 (its hard limit on open "
        "files); pass a larger chunk_samples (fewer, larger buckets), or raise the limit "
        "(ulimit -Hn)"
    )
    assert not scans  # refused before any feature was read
    assert open_stored_order(store, "mixed") is not None  # the order written before is kept


def _feature_reads(monkeypatch) -> list[tuple[str, int, int]]:
    """Every read of a range of features, as (what, start, stop), in call order."""
    reads: list[tuple[str, int, int]] = []
    for name in ("features_range", "lengths_range"):
        real = getattr(TokenStore, name)

        def recorded(self, start, stop, _real=real, _name=name):
            reads.append((_name, start, stop))
            return _real(self, start, stop)

        monkeypatch.setattr(TokenStore, name, recorded)
    return reads


def _orders_bytes(store: TokenStore) -> dict[str, bytes]:
    root = os.path.join(store.path, "orders")
    return {name: open(os.path.join(root, name), "rb").read() for name in os.listdir(root)}


def test_the_features_are_read_once_for_the_scale_once_for_the_scaled_orders_and_lengths_once(
    tmp_path, monkeypatch
):
    """Three orders, three passes: the scale's (both files), difficulty_based and mixed
    together (both files), size_based (lengths.bin alone); the bytes equal those of each order
    written on its own."""
    store = _store(tmp_path, 50)
    alone = {}
    for strategy in NORMALISED:
        write_orders(store, [strategy], chunk_samples=16, block_bytes=64)
        alone.update(_orders_bytes(store))
    shutil.rmtree(os.path.join(store.path, "orders"))
    reads = _feature_reads(monkeypatch)
    paths = write_orders(store, chunk_samples=16, block_bytes=64)
    assert list(paths) == list(NORMALISED)  # the caller's order
    chunks = [(0, 16), (16, 32), (32, 48), (48, 50)]
    assert reads == (
        [("features_range", a, b) for a, b in chunks] * 2
        + [("lengths_range", a, b) for a, b in chunks]
    )
    assert _orders_bytes(store) == alone
    assert len(alone) == 15


def test_too_few_open_files_for_two_orders_at_once_writes_them_one_at_a_time(tmp_path, monkeypatch):
    """600 samples in chunks of 4: 301 buckets of 3 files a strategy; a hard limit of 1 000
    fits one strategy's scatter (967 files with the process's others), not two: one pass
    each, the same bytes."""
    import resource

    store = _store(tmp_path, 600)
    write_orders(store, ["difficulty_based", "mixed"], chunk_samples=4)
    together = _orders_bytes(store)
    shutil.rmtree(os.path.join(store.path, "orders"))
    raised = []
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (100, 1000))
    monkeypatch.setattr(resource, "setrlimit", lambda kind, limits: raised.append(limits))
    reads = _feature_reads(monkeypatch)
    write_orders(store, ["mixed", "difficulty_based"], chunk_samples=4)
    starts = [start for what, start, _ in reads if what == "features_range" and start == 0]
    assert len(starts) == 3  # the scale, mixed, difficulty_based
    assert not [r for r in reads if r[0] == "lengths_range"]
    assert raised and all(limits == (301 * 3 + 64, 1000) for limits in raised)
    assert _orders_bytes(store) == together
