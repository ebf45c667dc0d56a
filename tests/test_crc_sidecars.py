"""Block CRCs in side files (store format 3): read by page, only the pages a read needs, locally
and by range; a missing, truncated or altered side file is an error naming the shard, file and
offset before any byte it covers is returned; format-2 stores still read, and ``upgrade_store``
rewrites one in place without touching its data or another store sharing its files."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from highnoon.curriculum.stored_order import open_stored_order, restamp_orders, write_orders
from highnoon.data import shards
from highnoon.data.store import StoreError, TokenStore
from highnoon.data.store_upgrade import upgrade_store
from tests.remote_store_helpers import as_format_2, flip_byte, ram_copy, write_store

N = 3000  # samples a shard; lengths.bin in blocks of 64 bytes: 375 blocks, 1 500 B of CRCs
SHARD = shards.shard_name(1, 2)


def _lengths() -> np.ndarray:
    return np.random.default_rng(5).integers(1, 6, size=2 * N)


def _store(path) -> str:
    return write_store(str(path), _lengths(), num_shards=2, block_bytes=64)


def _expected(indices) -> np.ndarray:
    return _lengths()[indices] + 1  # EOS included


def _side(path: str, name: str = shards.LENGTHS) -> str:
    return os.path.join(path, SHARD, shards.sidecar_name(name))


def _open(path: str, where: str) -> TokenStore:
    return TokenStore.open(path if where == "local" else ram_copy(path))


def test_shard_json_holds_page_crcs_not_block_crcs(tmp_path):
    path = _store(tmp_path / "s")
    with open(os.path.join(path, SHARD, shards.SHARD_MANIFEST), encoding="utf-8") as handle:
        meta = json.load(handle)
    for name, entry in meta["files"].items():
        assert "crc32c" not in entry
        with open(_side(path, name), "rb") as handle:
            side = handle.read()
        assert entry["crc32c_pages"] == shards.crc32c_blocks(side, shards.SIDECAR_PAGE_BYTES)
    with open(os.path.join(path, shards.MANIFEST), encoding="utf-8") as handle:
        top = json.load(handle)
    assert top["format_version"] == 3
    files = top["shards"][1]["files"]  # the side files' sizes too: checked by stat at open
    assert files[shards.sidecar_name(shards.LENGTHS)] == 4 * -(-8 * N // 64)


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_read_fetches_only_the_side_file_pages_it_checks(tmp_path, where, monkeypatch):
    from highnoon.data import blocks

    monkeypatch.setattr(blocks, "RACY_SECONDS", 1e9)  # this object checks its own pages
    path = write_store(str(tmp_path / "s"), np.full(2 * 20000, 2), num_shards=2, block_bytes=64)
    store = _open(path, where)
    # lengths.bin of shard 1: 160 000 bytes, 2 500 blocks, 10 000 B of CRCs: 3 pages
    assert store.lengths_at([20000 + 19000]).tolist() == [3]
    crcs = store._shards[1].files[shards.LENGTHS].crc32c
    assert (len(crcs), crcs.file.size) == (2500, 10000)
    mapped = where == "local"  # a memory map also counts the 4-byte CRC it then reads
    # its block's CRC is on the third (short) page: that page read and checked, no other
    assert crcs.bytes_read == 10000 - 8192 + 4 * mapped
    store.lengths_at([20000 + 19001, 20000 + 18990])  # blocks 2375 (checked) and 2373
    assert crcs.bytes_read == 10000 - 8192 + 8 * mapped  # the same page: not fetched again


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_flipped_byte_in_a_side_file_is_an_error_naming_it_and_its_offset(tmp_path, where):
    path = _store(tmp_path / "s")
    flip_byte(_side(path), 100)  # the CRC of block 25 of shard 1's lengths.bin
    store = _open(path, where)
    assert store.lengths_at([2000]).tolist() == _expected([2000]).tolist()  # the other shard
    side = shards.sidecar_name(shards.LENGTHS)
    # the side file's one page (1 500 bytes) holds the CRCs of blocks 0..374
    message = (
        rf"{SHARD}/{side}: block 0 \(byte offset 0, bytes \[0, 1500\)\) has CRC32C "
        r"0x[0-9a-f]{8}, the shard manifest records 0x[0-9a-f]{8}; the store is corrupt"
    )
    with pytest.raises(StoreError, match=message):
        store.lengths_at([N + 200])
    with pytest.raises(StoreError, match=message):
        TokenStore.open(path).verify()


def test_a_side_file_of_another_write_is_refused_at_read(tmp_path):
    # a side file with the right size holding other CRCs (another build's, or one written by
    # hand): its pages' CRCs are not the ones shard.json records
    path = _store(tmp_path / "s")
    side = _side(path, shards.TOKENS)
    crcs = np.fromfile(side, "<u4")
    (crcs ^ np.uint32(1)).astype("<u4").tofile(side)
    store = TokenStore.open(path)
    with pytest.raises(StoreError, match=rf"{SHARD}/tokens.crc32c: block 0 \(byte offset 0"):
        store.sample(N + 1)
    assert store.sample(1).size > 0  # the other shard reads


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_missing_side_file_is_an_error_naming_it(tmp_path, where):
    path = _store(tmp_path / "s")
    copy = ram_copy(path) if where == "ram" else path
    if where == "ram":
        import tensorflow as tf

        tf.io.gfile.remove(f"{copy}/{SHARD}/{shards.sidecar_name(shards.LENGTHS)}")
    else:
        os.remove(_side(path))
    side = rf"{SHARD}/{shards.sidecar_name(shards.LENGTHS)}: the file is missing"
    if where == "local":  # at open: a stat of every file the manifest lists
        with pytest.raises(StoreError, match=side):
            TokenStore.open(copy)
        return
    store = TokenStore.open(copy)  # remote: at the first read of the shard's lengths
    assert store.lengths_at([5]).tolist() == _expected([5]).tolist()
    with pytest.raises(StoreError, match=side):
        store.lengths_at([N + 5])


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_truncated_side_file_is_an_error_naming_it(tmp_path, where):
    path = _store(tmp_path / "s")
    with open(_side(path), "r+b") as handle:
        handle.truncate(1496)  # one CRC short
    side = rf"{SHARD}/{shards.sidecar_name(shards.LENGTHS)}: file has size 1496, "
    if where == "local":
        with pytest.raises(StoreError, match=side + "manifest.json records 1500"):
            TokenStore.open(path)
        return
    store = TokenStore.open(ram_copy(path))
    with pytest.raises(StoreError, match=side + "the shard manifest records 1500"):
        store.lengths_at([N + 5])


def test_a_side_file_size_the_manifests_disagree_on_is_refused(tmp_path):
    path = _store(tmp_path / "s")
    top_path = os.path.join(path, shards.MANIFEST)
    with open(top_path, encoding="utf-8") as handle:
        top = json.load(handle)
    top["shards"][1]["files"][shards.sidecar_name(shards.LENGTHS)] = 1504
    with open(top_path, "w", encoding="utf-8") as handle:
        json.dump(top, handle)
    with open(_side(path), "ab") as handle:
        handle.write(b"\0" * 4)  # the size manifest.json records, so open's stat passes
    store = TokenStore.open(path)
    with pytest.raises(StoreError, match=r"records 1504 bytes for lengths.crc32c, shard.json 1500"):
        store.lengths_at([N + 5])


@pytest.mark.parametrize("where", ["local", "ram"])
def test_format_2_stores_still_open_read_and_check(tmp_path, where):
    path = as_format_2(_store(tmp_path / "s"))
    store = _open(path, where)
    assert store.manifest["format_version"] == 2
    picks = [0, 17, N + 1, 2 * N - 1]
    assert store.lengths_at(picks).tolist() == _expected(picks).tolist()
    store.verify()
    flip_byte(os.path.join(path, SHARD, shards.LENGTHS), 70)  # block 1
    with pytest.raises(StoreError, match=rf"{SHARD}/lengths.bin: block 1 \(byte offset 64"):
        _open(path, where).lengths_at([N + 9])


def test_upgrade_moves_the_recorded_crcs_and_keeps_every_read(tmp_path):
    path = as_format_2(_store(tmp_path / "s"))
    write_orders(path, ("size_based",), chunk_samples=1000)
    before = TokenStore.open(path)
    old_fp = before.fingerprint
    order = open_stored_order(before, "size_based")[:].tolist()
    linked = str(tmp_path / "linked")  # a hard-link copy, as the bench converts its stores
    shutil.copytree(path, linked, copy_function=os.link)
    data = os.path.join(linked, SHARD, shards.TOKENS)
    stamp = os.stat(data).st_mtime_ns
    done = upgrade_store(linked)
    assert (done["old_fingerprint"], done["shards"], done["upgraded"]) == (old_fp, 2, 2)
    assert restamp_orders(linked, old_fp, done["fingerprint"]) == ["size_based"]
    after = TokenStore.open(linked)
    assert after.manifest["format_version"] == 3
    metas = []
    for name in (shards.shard_name(0, 2), SHARD):
        with open(os.path.join(linked, name, shards.SHARD_MANIFEST), encoding="utf-8") as handle:
            metas.append(json.load(handle))
    assert after.fingerprint == done["fingerprint"] == shards.store_fingerprint(metas) != old_fp
    assert all("crc32c" not in f for m in metas for f in m["files"].values())
    for a, b in zip(after.samples(range(2 * N)), before.samples(range(2 * N)), strict=True):
        np.testing.assert_array_equal(a, b)
    after.verify()
    assert open_stored_order(after, "size_based")[:].tolist() == order  # stamped, not stale
    assert os.stat(data).st_mtime_ns == stamp  # no data file written
    # the source store shares its data files and is untouched: still format 2, still reads
    assert TokenStore.open(path).fingerprint == old_fp
    TokenStore.open(path).verify()
    assert upgrade_store(linked)["upgraded"] == 0  # already format 3: nothing to do


def test_upgrade_keeps_a_corrupt_block_an_error(tmp_path):
    # the recorded CRCs move, they are not recomputed: damage since the build stays damage
    path = as_format_2(_store(tmp_path / "s"))
    flip_byte(os.path.join(path, SHARD, shards.LENGTHS), 70)
    upgrade_store(path)
    with pytest.raises(StoreError, match=rf"{SHARD}/lengths.bin: block 1 \(byte offset 64"):
        TokenStore.open(path).lengths_at([N + 9])


def test_an_interrupted_upgrade_is_finished_by_running_it_again(tmp_path):
    from highnoon.data import store_upgrade

    path = as_format_2(_store(tmp_path / "s"))
    clean = str(tmp_path / "clean")
    shutil.copytree(path, clean)
    expected = upgrade_store(clean)["fingerprint"]
    with open(os.path.join(path, shards.MANIFEST), encoding="utf-8") as handle:
        entry = json.load(handle)["shards"][0]
    store_upgrade._upgraded_shard(path, entry)  # killed after the first shard.json
    with pytest.raises(StoreError, match=r"a format upgrade was interrupted: run "
                       r"highnoon-prepare-data --upgrade_stores=.*/s again"):  # fmt: skip
        TokenStore.open(path).sample(0)
    done = upgrade_store(path)
    assert (done["upgraded"], done["fingerprint"]) == (1, expected)
    TokenStore.open(path).verify()


def test_upgrade_refuses_remote_paths():
    from highnoon.utils.validation import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="rewrites a local store in place"):
        upgrade_store("gs://bucket/store")


def test_an_orders_checksums_are_read_by_page_and_restamping_adds_the_page_crcs(
    tmp_path, monkeypatch
):
    # 6 000 samples: a <u4 order in 16-byte blocks has 1 500 block CRCs, 6 000 B: two pages
    from highnoon.data import blocks

    path = _store(tmp_path / "s")
    write_orders(path, ("size_based",), block_bytes=16)
    store = TokenStore.open(path)
    expected = open_stored_order(store, "size_based")[:].tolist()
    monkeypatch.setattr(blocks, "RACY_SECONDS", 1e9)  # this object checks its own pages
    order = open_stored_order(TokenStore.open(path), "size_based")
    crcs = order._file.crc32c
    assert (len(crcs), crcs.file.size) == (1500, 6000)
    assert order.take(np.array([5000])).tolist() == [expected[5000]]
    # block 1250's CRC is at byte 5000, on the second (short) page: that page is read and
    # checked (1 904 bytes), then its 4 bytes read through the map; the first page is not
    assert crcs.bytes_read == 6000 - 4096 + 4
    # an order json written before the page CRCs: the upgrade's restamp adds them, checked
    json_path = os.path.join(path, "orders", "size_based.json")
    with open(json_path, encoding="utf-8") as handle:
        meta = json.load(handle)
    pages = meta.pop("block_crc32c_pages"), meta.pop("lengths_crc32c_pages")
    meta["store_fingerprint"] = "old"
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(meta, handle)
    assert restamp_orders(path, "old", store.fingerprint) == ["size_based"]
    with open(json_path, encoding="utf-8") as handle:
        meta = json.load(handle)
    assert (meta["block_crc32c_pages"], meta["lengths_crc32c_pages"]) == pages
    assert open_stored_order(store, "size_based")[:].tolist() == expected
