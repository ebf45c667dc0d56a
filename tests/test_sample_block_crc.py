"""Block sizes per shard file: ``lengths.bin`` in 4 KiB pages, the others in 1 MiB blocks
(``shards.file_block_bytes``). A flipped byte is still found at read, naming the shard, file,
block and byte offset, locally and by range; stores written before (1 MiB everywhere) still
read."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from highnoon.data import shards
from highnoon.data.store import StoreError, TokenStore
from tests.remote_store_helpers import as_format_2, flip_byte, ram_copy, write_store

N = 1500  # 1 500 samples a shard: lengths.bin spans 3 pages (512 samples a page)


def _store(tmp_path, block_bytes: int = shards.BLOCK_BYTES) -> str:
    lengths = np.random.default_rng(3).integers(1, 4, size=2 * N)
    return write_store(str(tmp_path / "s"), lengths, num_shards=2, block_bytes=block_bytes)


def test_the_block_size_of_each_file():
    assert shards.file_block_bytes(shards.LENGTHS) == 4096
    assert shards.file_block_bytes(shards.LENGTHS, 64) == 64  # never larger than the shard's
    for name in (shards.TOKENS, shards.OFFSETS, shards.SURPRISAL, shards.SAMPLE_CRC):
        assert shards.file_block_bytes(name) == 1 << 20
        assert shards.file_block_bytes(name, 64) == 64
    assert set(shards.SAMPLE_INDEXED) | {shards.TOKENS} == set(shards.SHARD_FILES)


def test_shard_json_records_each_files_block_size_and_crcs(tmp_path):
    path = _store(tmp_path)
    shard = os.path.join(path, shards.shard_name(1, 2))
    with open(os.path.join(shard, shards.SHARD_MANIFEST), encoding="utf-8") as handle:
        files = json.load(handle)["files"]
    for name, meta in files.items():
        block = 4096 if name == shards.LENGTHS else 1 << 20
        assert meta["block_bytes"] == block
        side = np.fromfile(os.path.join(shard, shards.sidecar_name(name)), "<u4").tolist()
        assert side == shards.crc32c_file(os.path.join(shard, name), block)
    side = os.path.join(shard, shards.sidecar_name(shards.LENGTHS))
    assert os.path.getsize(side) == 3 * 4  # 12 000 bytes in pages of 4 096: three CRCs
    with open(os.path.join(path, shards.MANIFEST), encoding="utf-8") as handle:
        assert json.load(handle)["block_bytes"] == 4096  # the smallest of the files'


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_flipped_length_is_found_at_read_with_shard_block_and_offset(tmp_path, where):
    path = _store(tmp_path)
    shard = shards.shard_name(1, 2)
    flip_byte(os.path.join(path, shard, shards.LENGTHS), 4096 + 8 * 10)  # sample N + 522, page 1
    store = TokenStore.open(path if where == "local" else ram_copy(path))
    expected = np.random.default_rng(3).integers(1, 4, size=2 * N) + 1  # EOS included
    # pages 0 and 2 of the same file are intact: a page, not a MiB, is checked
    np.testing.assert_array_equal(store.lengths_at([N + 5, N + 1100]), expected[[N + 5, N + 1100]])
    with pytest.raises(
        StoreError,
        match=rf"{shard}/lengths.bin: block 1 \(byte offset 4096, bytes \[4096, 8192\)\) has "
        r"CRC32C 0x[0-9a-f]{8}, the shard manifest records 0x[0-9a-f]{8}; the store is corrupt",
    ):
        store.lengths_at([N + 600])
    with pytest.raises(StoreError, match=rf"{shard}/lengths.bin: block 1 \(byte offset 4096"):
        store.lengths_at([N + 600])  # still refused: a bad block is never marked checked


def test_a_flipped_offset_is_found_when_the_sample_is_read(tmp_path):
    path = _store(tmp_path)
    shard = shards.shard_name(0, 2)
    flip_byte(os.path.join(path, shard, shards.OFFSETS), 8192 + 3)  # offsets of samples 1024..
    store = TokenStore.open(path)
    assert store.sample(N + 3).size > 0  # the other shard
    with pytest.raises(StoreError, match=rf"{shard}/offsets.bin: block 0 \(byte offset 0, "):
        store.sample(3)  # a 1 MiB block: the whole file


def test_verify_checks_every_page_of_every_file(tmp_path):
    path = _store(tmp_path)
    shard = shards.shard_name(1, 2)
    TokenStore.open(path).verify()
    flip_byte(os.path.join(path, shard, shards.LENGTHS), 2 * 4096 + 1)
    with pytest.raises(StoreError, match=rf"{shard}/lengths.bin: block 2 \(byte offset 8192"):
        TokenStore.open(path).verify()


def test_a_store_with_1_mib_blocks_everywhere_still_reads(tmp_path):
    """Stores written before the per-file rule: shard.json records 1 MiB for every file; each
    reader honours the recorded size."""
    path = as_format_2(_store(tmp_path), block_bytes=1 << 20)  # CRC lists in shard.json too
    names = [shards.shard_name(i, 2) for i in range(2)]
    with open(os.path.join(path, shards.MANIFEST), encoding="utf-8") as handle:
        assert json.load(handle)["block_bytes"] == 1 << 20
    expected = np.random.default_rng(3).integers(1, 4, size=2 * N) + 1
    for store in (TokenStore.open(path), TokenStore.open(ram_copy(path))):
        np.testing.assert_array_equal(store.lengths_at([0, N + 1400]), expected[[0, N + 1400]])
        store.verify()
    flip_byte(os.path.join(path, names[1], shards.LENGTHS), 4096 + 80)
    with pytest.raises(StoreError, match=rf"{names[1]}/lengths.bin: block 0 \(byte offset 0, "):
        TokenStore.open(path).lengths_at([N + 5])  # the whole MiB block, as recorded


def test_a_sparse_take_reads_by_pread_the_same_values_and_checks_blocks(tmp_path, monkeypatch):
    """A take spread over ``RELEASE_BYTES`` asking under 1/``SPARSE_RATIO`` of its bytes is
    read by ``pread`` (a fault on the map would map ~500 KiB around each element): the values
    are ``np.take``'s, any shape and dtype, and blocks are still checked first."""
    from highnoon.data import blocks

    data = np.random.default_rng(0).integers(0, 1 << 40, size=6000).astype("<i8")
    path = tmp_path / "f.bin"
    path.write_bytes(data.tobytes())
    monkeypatch.setattr(blocks, "RELEASE_BYTES", 4096)
    reads = []
    real = blocks.MappedFile._pread_take
    monkeypatch.setattr(blocks.MappedFile, "_pread_take",
                        lambda self, p, d: reads.append(p.size) or real(self, p, d))  # fmt: skip
    crcs = shards.crc32c_blocks(data, 4096)
    mapped = blocks.MappedFile(str(path), data.nbytes, 4096, crcs, label="f")
    positions = np.array([[5999, 3, 4, 3], [2000, 5, 5998, 6]])
    np.testing.assert_array_equal(mapped.take(positions, "<i8"), data[positions])
    halves = data.view("<i4")
    np.testing.assert_array_equal(mapped.take(positions * 2 + 1, "<i4"), halves[positions * 2 + 1])
    np.testing.assert_array_equal(mapped.take(np.arange(0, 6000, 3), "<i8"), data[::3])  # dense
    assert reads == [8, 8]
    flip_byte(str(path), 8 * 2000 + 1)  # block 3 (of 4 096 bytes)
    fresh = blocks.MappedFile(str(path), data.nbytes, 4096, crcs, label="f")
    with pytest.raises(StoreError, match=r"f: block 3 \(byte offset 12288"):
        fresh.take(positions, "<i8")
