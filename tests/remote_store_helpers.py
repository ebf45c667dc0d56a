"""Small stores for the in-place reading tests, written with the shared shard writer (format
3), the same stores as format 2 wrote them (``as_format_2``), and copies of them on other
``tf.io.gfile`` filesystems."""

from __future__ import annotations

import json
import os
import uuid

import numpy as np

from highnoon.data import shards
from highnoon.data.tokenizers import load_tokenizer


def write_store(
    path: str,
    lengths: np.ndarray,
    *,
    num_shards: int = 3,
    block_bytes: int = 64,
    seed: int = 0,
) -> str:
    """A byte-tokenizer store at ``path`` with one sample per entry of ``lengths`` (ids without
    EOS), split into ``num_shards`` shards of about equal sample counts."""
    tokenizer = load_tokenizer("byte")
    rng = np.random.Generator(np.random.PCG64(seed))
    lengths = np.asarray(lengths, dtype=np.int64)
    bounds = np.linspace(0, lengths.size, num_shards + 1).astype(np.int64)
    names = [shards.shard_name(i, num_shards) for i in range(num_shards)]
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        writer = shards.ShardWriter(
            os.path.join(path, name), tokenizer.vocab_size, tokenizer.eos_id,
            block_bytes=block_bytes,
        )  # fmt: skip
        part = lengths[lo:hi]
        writer.add(rng.integers(3, 259, size=int(part.sum())), part)
        counts += writer.close().counts
    manifests = [
        shards.write_shard_features(os.path.join(path, name), counts, int(lo))
        for name, lo in zip(names, bounds[:-1])
    ]
    manifest = shards.store_manifest(
        manifests, names, tokenizer, sources=[], skipped=None, top_files={}
    )
    with open(os.path.join(path, shards.MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, sort_keys=True)
    return path


def as_format_2(path: str, block_bytes: int | None = None) -> str:
    """Rewrite the local store at ``path`` as format 2 wrote it: each file's block CRCs as a
    list in its ``shard.json`` (``block_bytes``: recomputed for that block size, else the
    recorded size), no side files, the manifest of format 2."""
    with open(os.path.join(path, shards.MANIFEST), encoding="utf-8") as handle:
        top = json.load(handle)
    names = [entry["name"] for entry in top["shards"]]
    metas = []
    for name in names:
        manifest_path = os.path.join(path, name, shards.SHARD_MANIFEST)
        with open(manifest_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        for file_name, entry in meta["files"].items():
            block = block_bytes or entry["block_bytes"]
            entry.pop("crc32c_pages", None)
            entry["block_bytes"] = block
            entry["crc32c"] = shards.crc32c_file(os.path.join(path, name, file_name), block)
            side = os.path.join(path, name, shards.sidecar_name(file_name))
            if os.path.exists(side):
                os.remove(side)
        with open(manifest_path, "wb") as handle:
            handle.write(shards.canonical_json(meta))
        metas.append(meta)
    new = shards.store_manifest(
        metas, names, load_tokenizer("byte"), sources=[], skipped=None, top_files={}
    )
    assert new["format_version"] == 2
    with open(os.path.join(path, shards.MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(new, handle, sort_keys=True)
    return path


def flip_byte(path: str, offset: int, mask: int = 0x04) -> None:
    """Flip the bits ``mask`` of the byte at ``offset`` of the local file ``path`` in place."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ mask]))


def copy_tree(local: str, target: str) -> str:
    """Copy the directory ``local`` to ``target`` (any ``tf.io.gfile`` URL); returns target."""
    import tensorflow as tf

    for root, _, files in os.walk(local):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), local).replace(os.sep, "/")
            tf.io.gfile.makedirs(os.path.dirname(f"{target}/{rel}"))
            tf.io.gfile.copy(os.path.join(root, name), f"{target}/{rel}", overwrite=True)
    return target


def ram_copy(local: str) -> str:
    """A copy of the store at ``local`` in this process' ``ram://`` filesystem."""
    return copy_tree(local, f"ram://stores/{uuid.uuid4().hex}")


def manifest_bytes(local: str) -> int:
    """Bytes of a store's manifests (``manifest.json``, every ``shard.json`` and the side files
    of block CRCs, which a reader fetches by page)."""
    total = os.path.getsize(os.path.join(local, shards.MANIFEST))
    for root, _, files in os.walk(local):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in files
                     if n == shards.SHARD_MANIFEST
                     or n.endswith(shards.SIDECAR_SUFFIX))  # fmt: skip
    return total
