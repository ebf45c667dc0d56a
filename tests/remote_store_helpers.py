"""Small format-2 stores for the in-place reading tests, written with the shared shard writer,
and copies of them on other ``tf.io.gfile`` filesystems."""

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
    """Bytes of a store's manifests (``manifest.json`` and every ``shard.json``)."""
    total = os.path.getsize(os.path.join(local, shards.MANIFEST))
    for root, _, files in os.walk(local):
        total += sum(os.path.getsize(os.path.join(root, n)) for n in files
                     if n == shards.SHARD_MANIFEST)  # fmt: skip
    return total
