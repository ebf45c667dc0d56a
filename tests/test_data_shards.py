"""The store's shard writer (``data/shards.py``) and its block files (``data/blocks.py``):
what a shard holds byte for byte, features under the corpus counts, the manifest's fingerprint,
and per-block CRC32C checks on first read."""

from __future__ import annotations

import hashlib
import json
import os
import time

import google_crc32c
import numpy as np
import pytest

from highnoon.data import ByteTokenizer, blocks, shards
from highnoon.data.blocks import MappedFile
from highnoon.data.features import features_from_flat, surprisal_table, token_counts
from highnoon.data.shards import (
    ShardWriter,
    crc32c_blocks,
    shard_name,
    store_manifest,
    stored_samples,
    write_shard_features,
)
from highnoon.data.store_errors import StoreError
from highnoon.utils.validation import InvalidArgumentError

VOCAB, EOS = 259, 2


def test_shard_name():
    assert shard_name(0, 4) == "shard-00000-of-00004"
    assert shard_name(12, 100) == "shard-00012-of-00100"
    with pytest.raises(InvalidArgumentError, match=r"index=4 must be an integer in \[0, 3\]"):
        shard_name(4, 4)


def test_crc32c_blocks_of_bytes_and_arrays():
    data = bytes(range(256)) * 5  # 1280 bytes: blocks of 512, 512, 256
    expected = [google_crc32c.value(data[i : i + 512]) for i in (0, 512, 1024)]
    assert crc32c_blocks(data, 512) == expected
    assert crc32c_blocks(np.frombuffer(data, np.uint8).view("<u2"), 512) == expected
    assert crc32c_blocks(b"", 512) == []
    with pytest.raises(InvalidArgumentError, match="block_bytes=12 must be a multiple of 8"):
        crc32c_blocks(data, 12)


def _write(directory, samples, first_sample=0, counts=None, block_bytes=16):
    writer = ShardWriter(str(directory), VOCAB, EOS, block_bytes=block_bytes)
    flat = np.concatenate([np.asarray(s, np.int64) for s in samples])
    writer.add(flat, np.array([len(s) for s in samples]))
    written = writer.close()
    return written, (lambda c: write_shard_features(str(directory), c, first_sample))


def test_shard_files_byte_for_byte(tmp_path):
    samples = [[5, 6, 7], [], [100], [9, 9]]
    written, finish = _write(tmp_path / "s", samples)
    assert (written.num_samples, written.num_tokens, written.max_token_id) == (3, 9, 100)
    assert written.skipped_empty == 1
    assert written.counts.shape == (VOCAB,)
    stored = np.array([5, 6, 7, EOS, 100, EOS, 9, 9, EOS], "<u2")
    assert written.counts.tolist() == np.bincount(stored, minlength=VOCAB).tolist()
    manifest = finish(written.counts * 3)  # a corpus three times this shard: same frequencies
    d = tmp_path / "s"
    assert np.fromfile(d / "tokens.bin", "<u2").tolist() == stored.tolist()
    assert np.fromfile(d / "offsets.bin", "<i8").tolist() == [0, 4, 6, 9]
    assert np.fromfile(d / "lengths.bin", "<i8").tolist() == [4, 2, 3]
    expected = features_from_flat(stored, np.array([0, 4, 6, 9]), token_counts(stored, VOCAB))
    assert np.fromfile(d / "surprisal_sum.bin", "<i8").tolist() == (expected.surprisal_sum.tolist())
    assert sorted(os.listdir(d)) == [
        "lengths.bin", "lengths.crc32c", "offsets.bin", "offsets.crc32c", "sample_crc32c.bin",
        "sample_crc32c.crc32c", "shard.json", "surprisal_sum.bin", "surprisal_sum.crc32c",
        "tokens.bin", "tokens.crc32c",
    ]  # fmt: skip
    raw = stored.tobytes()  # one CRC32C per stored sample (EOS included), <u4
    assert np.fromfile(d / "sample_crc32c.bin", "<u4").tolist() == [
        google_crc32c.value(raw[a:b]) for a, b in ((0, 8), (8, 12), (12, 18))
    ]
    assert manifest["files"]["sample_crc32c.bin"]["size"] == 12
    assert json.loads((d / "shard.json").read_text()) == manifest
    assert manifest["num_samples"] == 3 and manifest["first_sample"] == 0
    assert manifest["skipped_empty"] == 1 and manifest["max_token_id"] == 100
    # the block CRCs in a side file (<u4), its pages' CRC32Cs in shard.json
    side = (d / "tokens.crc32c").read_bytes()
    assert np.frombuffer(side, "<u4").tolist() == crc32c_blocks((d / "tokens.bin").read_bytes(), 16)
    assert len(side) == 8  # 16 bytes, then the short last block of 2: two CRCs
    tokens = manifest["files"]["tokens.bin"]
    assert tokens == {"size": 18, "block_bytes": 16, "crc32c_pages": [google_crc32c.value(side)]}
    for name in shards.SHARD_FILES:
        side = (d / shards.sidecar_name(name)).read_bytes()
        assert side == np.array(crc32c_blocks((d / name).read_bytes(), 16), "<u4").tobytes()
        assert manifest["files"][name]["crc32c_pages"] == crc32c_blocks(side, 4096)


def test_features_use_the_corpus_counts_not_the_shards(tmp_path):
    a, finish_a = _write(tmp_path / "a", [[5, 5, 5]])
    b, finish_b = _write(tmp_path / "b", [[6], [5, 6]], first_sample=1)
    corpus = a.counts + b.counts
    finish_a(corpus), finish_b(corpus)
    flat = np.array([5, 5, 5, EOS, 6, EOS, 5, 6, EOS])
    whole = features_from_flat(flat, np.array([0, 4, 6, 9]))  # one store over everything
    got = [np.fromfile(tmp_path / s / "surprisal_sum.bin", "<i8") for s in ("a", "b")]
    assert np.concatenate(got).tolist() == whole.surprisal_sum.tolist()


def test_writer_refuses_ids_outside_the_vocabulary_and_bad_lengths(tmp_path):
    writer = ShardWriter(str(tmp_path / "s"), VOCAB, EOS)
    with pytest.raises(InvalidArgumentError, match=r"ids must be in \[0, 259\).*\[1, 259\]"):
        writer.add(np.array([1, 259]), np.array([2]))
    with pytest.raises(InvalidArgumentError, match="sum to the number of ids"):
        writer.add(np.array([1, 2]), np.array([3]))
    writer.close()
    with pytest.raises(InvalidArgumentError, match="already closed"):
        writer.close()
    with pytest.raises(InvalidArgumentError, match="holds no closed ShardWriter"):
        write_shard_features(str(tmp_path / "nothing"), np.zeros(VOCAB, np.int64), 0)


def test_store_manifest_fingerprint_and_order(tmp_path):
    a, finish_a = _write(tmp_path / "a", [[5, 5, 5]])
    b, finish_b = _write(tmp_path / "b", [[6], [5, 6]], first_sample=1)
    ma, mb = finish_a(a.counts + b.counts), finish_b(a.counts + b.counts)
    names = [shard_name(0, 2), shard_name(1, 2)]
    manifest = store_manifest(
        [ma, mb], names, ByteTokenizer(), sources=[{"x": 1}], skipped={"bad": 2}, top_files={}
    )
    assert manifest["format_version"] == 3
    assert (manifest["num_samples"], manifest["num_tokens"], manifest["max_token_id"]) == (3, 9, 6)
    assert manifest["dtype"] == "<u2" and manifest["block_bytes"] == 16
    assert manifest["skipped"] == {"empty": 0, "bad": 2}
    raw = [(tmp_path / s / "shard.json").read_bytes() for s in ("a", "b")]
    assert manifest["shards"] == [
        {"name": n, "num_samples": m["num_samples"], "num_tokens": m["num_tokens"],
         "first_sample": m["first_sample"],
         "files": {**{f: m["files"][f]["size"] for f in shards.SHARD_FILES},
                   **{shards.sidecar_name(f): 4 * -(-m["files"][f]["size"] // 16)
                      for f in shards.SHARD_FILES}},
         "sha256": hashlib.sha256(r).hexdigest()}
        for n, m, r in zip(names, [ma, mb], raw)
    ]  # fmt: skip
    assert manifest["fingerprint"] == hashlib.sha256(raw[0] + b"\n" + raw[1] + b"\n").hexdigest()
    with pytest.raises(InvalidArgumentError, match="shard-00000-of-00002 has first_sample=1"):
        store_manifest([mb, ma], names, ByteTokenizer(), sources=[], skipped={}, top_files={})


# --- block files -------------------------------------------------------------------------------


@pytest.fixture
def block_file(tmp_path):
    data = np.arange(100, dtype="<u2")  # 200 bytes: blocks of 64 -> 4 blocks, the last short
    path = tmp_path / "tokens.bin"
    path.write_bytes(data.tobytes())
    return str(path), data


def test_mapped_file_reads_and_counts(block_file):
    path, data = block_file
    f = MappedFile(path, 200, 64, crc32c_blocks(data, 64), label="store S, shard-0/tokens.bin")
    assert f.read(10, 20).tolist() == list(data.view(np.uint8)[10:20])
    assert f.bytes_read == 64 + 10  # block 0 read once to check it, then the 10 bytes
    assert f.take(np.array([[99, 0], [31, 32]]), "<u2").tolist() == [[99, 0], [31, 32]]
    assert f.bytes_read == 74 + 64 + 8 + 8  # blocks 1 and 3 (short) checked, then 4 ids


def _flipped(path, offset):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ 0x10]))


def test_a_flipped_byte_is_an_error_at_the_first_read_of_its_block(block_file, monkeypatch):
    path, data = block_file
    monkeypatch.setattr(blocks, "RACY_SECONDS", -1e9)  # bitmaps shared at once
    crc = crc32c_blocks(data, 64)
    _flipped(path, 130)  # block 2
    f = MappedFile(path, 200, 64, crc, label="store S, shard-00001-of-00002/tokens.bin")
    assert f.take(np.arange(64), "<u2").tolist() == list(range(64))  # blocks 0 and 1 are fine
    message = (
        r"^store S, shard-00001-of-00002/tokens\.bin: block 2 \(byte offset 128, bytes "
        r"\[128, 192\)\) has CRC32C 0x[0-9a-f]{8}, the shard manifest records 0x[0-9a-f]{8}; "
        r"the store is corrupt, rebuild it$"
    )
    with pytest.raises(StoreError, match=message):
        f.take(np.array([65]), "<u2")  # byte 130 is in block 2
    with pytest.raises(StoreError, match="block 2"):
        f.read(190, 195)
    with pytest.raises(StoreError, match="block 2"):
        f.verify()


def test_verified_blocks_are_shared_per_file_version(block_file, monkeypatch):
    path, data = block_file
    monkeypatch.setattr(blocks, "RACY_SECONDS", -1e9)
    crc = crc32c_blocks(data, 64)
    first = MappedFile(path, 200, 64, crc, label="a")
    first.verify()
    assert first.bytes_read == 200
    second = MappedFile(path, 200, 64, crc, label="b")
    second.verify()
    assert second.bytes_read == 0  # the same file version: nothing checked twice
    time.sleep(0.05)  # a later file-time tick than the write (ticks are a few ms)
    _flipped(path, 5)  # a change in place: a new version (ctime moves), checked again
    with pytest.raises(StoreError, match="^c: block 0 "):
        MappedFile(path, 200, 64, crc, label="c").read(0, 1)


def test_forgotten_blocks_are_checked_again_by_the_next_object(block_file, monkeypatch):
    path, data = block_file
    monkeypatch.setattr(blocks, "RACY_SECONDS", -1e9)
    crc = crc32c_blocks(data, 64)
    MappedFile(path, 200, 64, crc, label="a").verify()
    blocks.forget_verified_blocks()
    again = MappedFile(path, 200, 64, crc, label="b")
    again.verify()
    assert again.bytes_read == 200  # every block read and checked once more


def test_fresh_files_are_checked_by_every_object(block_file, monkeypatch):
    path, data = block_file
    monkeypatch.setattr(blocks, "RACY_SECONDS", 1e9)  # every file is "just changed"
    crc = crc32c_blocks(data, 64)
    MappedFile(path, 200, 64, crc, label="a").verify()
    again = MappedFile(path, 200, 64, crc, label="b")
    again.verify()
    assert again.bytes_read == 200


def test_reads_outside_the_file_and_wrong_sizes(block_file):
    path, data = block_file
    crc = crc32c_blocks(data, 64)
    f = MappedFile(path, 200, 64, crc, label="L")
    with pytest.raises(StoreError, match=r"^L: read of bytes \[190, 202\) outside the file"):
        f.read(190, 202)
    with pytest.raises(StoreError, match=r"^L: read of bytes \[200, 202\) outside the file"):
        f.take(np.array([100]), "<u2")
    with pytest.raises(StoreError, match="records 3 block checksums for 200 bytes"):
        MappedFile(path, 200, 64, crc[:3], label="L")
    short = MappedFile(path, 264, 64, [*crc, 0], label="L")
    with pytest.raises(StoreError, match="file has size 200, the shard manifest records 264"):
        short.read(0, 1)


def test_features_computed_in_chunks_of_samples_equal_one_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "_FEATURE_TOKENS", 7)  # a few samples per chunk, one if longer
    rng = np.random.default_rng(0)
    samples = [rng.integers(3, VOCAB, int(n)) for n in rng.integers(1, 12, 40)]
    written, finish = _write(tmp_path / "s", samples, block_bytes=64)
    finish(written.counts)
    stored = np.fromfile(tmp_path / "s" / "tokens.bin", "<u2")
    offsets = np.fromfile(tmp_path / "s" / "offsets.bin", "<i8")
    whole = features_from_flat(stored, offsets)
    assert np.fromfile(tmp_path / "s" / "lengths.bin", "<i8").tolist() == whole.lengths.tolist()
    assert np.fromfile(tmp_path / "s" / "surprisal_sum.bin", "<i8").tolist() == (
        whole.surprisal_sum.tolist()
    )


def test_counts_taken_from_the_given_ids_equal_the_stored_ids_counts(tmp_path):
    # add() counts the ids as given plus an EOS a non-empty sample (no int64 copy of the stored
    # ids); add_stored() counts the stored ids: the same vector, EOS included, empties skipped
    samples = [[5, 6, 7], [], [EOS, 100], [], [9, 9], [3]]
    flat = np.concatenate([np.asarray(s, np.int64) for s in samples])
    lengths = np.array([len(s) for s in samples])
    given = ShardWriter(str(tmp_path / "a"), VOCAB, EOS)
    given.add(flat, lengths)
    stored = ShardWriter(str(tmp_path / "b"), VOCAB, EOS)
    stored.add_stored(stored_samples(flat, lengths, VOCAB, EOS))
    a, b = given.close(), stored.close()
    expected = np.bincount(np.fromfile(tmp_path / "a" / "tokens.bin", "<u2"), minlength=VOCAB)
    assert a.counts.dtype == np.int64 and a.counts.tolist() == expected.tolist()
    assert b.counts.tolist() == expected.tolist() and a.counts[EOS] == 5
    assert (tmp_path / "a" / "tokens.bin").read_bytes() == (
        tmp_path / "b" / "tokens.bin"
    ).read_bytes()


def test_features_from_a_given_table_equal_features_from_counts():
    rng = np.random.default_rng(1)
    flat = rng.integers(0, VOCAB, 500)
    offsets = np.array([0, 10, 11, 200, 500])
    counts = token_counts(flat, VOCAB) + 1
    one = features_from_flat(flat, offsets, counts)
    other = features_from_flat(flat, offsets, np.zeros(3, np.int64), table=surprisal_table(counts))
    assert one.surprisal_sum.tolist() == other.surprisal_sum.tolist()
    assert one.lengths.tolist() == other.lengths.tolist()


def test_scattered_blocks_are_announced_to_the_kernel_before_they_are_read(block_file, monkeypatch):
    # a cold first read of scattered runs (a packed host's first windows of a big order) asks
    # for every run at once, so the disk serves them in parallel, not one latency after another
    path, data = block_file
    asked = []
    real = os.posix_fadvise
    monkeypatch.setattr(
        os,
        "posix_fadvise",
        lambda fd, a, n, advice: asked.append((a, n, advice)) or real(fd, a, n, advice),
    )
    f = MappedFile(path, 200, 64, crc32c_blocks(data, 64), label="L")
    assert f.take(np.array([1, 70]), "<u2").tolist() == [1, 70]  # blocks 0 and 2: two runs
    assert asked == [(0, 64, os.POSIX_FADV_WILLNEED), (128, 64, os.POSIX_FADV_WILLNEED)]
    asked.clear()
    assert f.read(64, 66).tolist() == list(data.view(np.uint8)[64:66])  # one run: no hint
    assert asked == []
