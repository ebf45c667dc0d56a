"""Synthetic token stores (format 3) of N samples (up to 1e9), written fast and small on disk.

A store the real reader opens and checks (``TokenStore.open``: manifests, sizes, fingerprint;
every block a read touches is CRC-checked), with realistic features and no real text:

* ``lengths.bin`` / ``surprisal_sum.bin`` / ``offsets.bin`` / ``sample_crc32c.bin`` hold real
  data: lengths (EOS included) log-normal around ~600 ids, clipped to [2, 8192]; mean surprisal
  per id normal around 7 nats, clipped to [0.5, 15], as the writer's fixed point
  (``features.SURPRISAL_SCALE``); drawn from a fixed seed, chunk by chunk;
* ``tokens.bin`` is a sparse file of zeros of the right size (about 1.2 TB apparent at 1e9
  samples, nothing on disk): its per-block CRC32Cs are those of zero blocks and its per-sample
  CRC32Cs those of ``2 * length`` zero bytes, computed without writing or reading it.

CRC32Cs of the real files are computed while they are written (``BlockCrc``), so nothing is read
back, and go to the side files of the store's own writer (``shards.write_file_checksums``);
each file's block size is the writer's (``shards.file_block_bytes``: 4 KiB pages for
``lengths.bin``, 1 MiB for the others). Shard names, ``shard.json``
(``canonical_json``) and the manifest (``store_manifest``, fingerprint included) come from the
store's own writer (``highnoon.data.shards``).

    python bench/scale_store.py --num_samples=10000000 --path=/tmp/scale/1e7
"""

from __future__ import annotations

import argparse
import json
import os
import time

import google_crc32c
import numpy as np

from highnoon.data import shards
from highnoon.data.features import SURPRISAL_SCALE
from highnoon.data.tokenizers import load_tokenizer

SHARD_SAMPLES = 1 << 26  # samples per shard (~4e10 ids: the reader has no limit per shard)
CHUNK = 1 << 22  # samples generated at a time
MAX_LENGTH = 8192


class BlockCrc:
    """A file written in pieces with the CRC32C of every ``block_bytes`` block computed on the
    way (the last block short), as ``shards.crc32c_file`` would compute them afterwards."""

    def __init__(self, path: str, block_bytes: int = shards.BLOCK_BYTES) -> None:
        self.block_bytes = block_bytes
        self.crcs: list[int] = []
        self._tail = b""
        self._file = open(path, "wb")  # noqa: SIM115 (close())

    def write(self, data: np.ndarray) -> None:
        new = np.ascontiguousarray(data).tobytes()
        self._file.write(new)
        raw = self._tail + new
        whole = len(raw) - len(raw) % self.block_bytes
        if whole:
            self.crcs.extend(shards.crc32c_blocks(raw[:whole], self.block_bytes))
        self._tail = raw[whole:]

    def close(self) -> dict[str, object]:
        """Close the file and write its side file of block CRCs; its ``shard.json`` entry."""
        if self._tail:
            self.crcs.append(int(google_crc32c.value(self._tail)))
        self._file.close()
        return shards.write_file_checksums(self._file.name, self.block_bytes, self.crcs)


def _zero_crcs(num_bytes: int, block_bytes: int) -> list[int]:
    """Per-block CRC32Cs of ``num_bytes`` zero bytes."""
    full, rest = divmod(num_bytes, block_bytes)
    crcs = [int(google_crc32c.value(bytes(block_bytes)))] * full
    return crcs + ([int(google_crc32c.value(bytes(rest)))] if rest else [])


def synthetic_features(start: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, surprisal_sum) of samples ``[start, start + size)``: a function of (seed,
    start), so any chunking of the same store gives the same features."""
    rng = np.random.Generator(np.random.PCG64([seed, start]))
    lengths = np.clip(rng.lognormal(6.2, 0.9, size), 2, MAX_LENGTH).astype(np.int64)
    per_id = np.clip(rng.normal(7.0, 1.5, size), 0.5, 15.0)
    surprisal = np.round(lengths * per_id * SURPRISAL_SCALE).astype(np.int64)
    return lengths, surprisal


def write_scale_store(path: str, num_samples: int, *, seed: int = 0, progress: bool = True) -> str:
    """Write the synthetic store of ``num_samples`` samples at ``path`` (manifest last)."""
    tokenizer = load_tokenizer("byte")
    dtype = shards.token_dtype(tokenizer.vocab_size)
    block = shards.BLOCK_BYTES
    # CRC32C of a sample of L ids (all zero bytes), for every L the generator can draw
    sample_crc = np.array(
        [int(google_crc32c.value(bytes(n * dtype.itemsize))) for n in range(MAX_LENGTH + 1)],
        dtype="<u4",
    )
    num_shards = -(-num_samples // SHARD_SAMPLES)
    names = [shards.shard_name(i, num_shards) for i in range(num_shards)]
    metas = []
    max_id = 0
    started = time.perf_counter()
    for s, name in enumerate(names):
        directory = os.path.join(path, name)
        os.makedirs(directory, exist_ok=True)
        first, last = s * SHARD_SAMPLES, min((s + 1) * SHARD_SAMPLES, num_samples)
        files = {f: BlockCrc(os.path.join(directory, f), shards.file_block_bytes(f, block))
                 for f in shards.SAMPLE_INDEXED}  # fmt: skip
        position = 0
        for start in range(first, last, CHUNK):
            lengths, surprisal = synthetic_features(start, min(CHUNK, last - start), seed)
            offsets = np.cumsum(lengths) - lengths + position
            position += int(lengths.sum())
            files[shards.OFFSETS].write(offsets.astype("<i8"))
            files[shards.LENGTHS].write(lengths.astype("<i8"))
            files[shards.SURPRISAL].write(surprisal.astype("<i8"))
            files[shards.SAMPLE_CRC].write(sample_crc[lengths])
        files[shards.OFFSETS].write(np.array([position], dtype="<i8"))
        tokens_bytes = position * dtype.itemsize
        with open(os.path.join(directory, shards.TOKENS), "wb") as handle:
            handle.truncate(tokens_bytes)  # sparse: zeros, nothing on disk
        file_meta = {f: w.close() for f, w in files.items()}
        token_block = shards.file_block_bytes(shards.TOKENS, block)
        file_meta[shards.TOKENS] = shards.write_file_checksums(
            os.path.join(directory, shards.TOKENS), token_block,
            _zero_crcs(tokens_bytes, token_block),
        )  # fmt: skip
        meta = {"num_samples": last - first, "num_tokens": position, "first_sample": first,
                "max_token_id": max_id, "skipped_empty": 0,
                "files": {f: file_meta[f] for f in shards.SHARD_FILES}}  # fmt: skip
        with open(os.path.join(directory, shards.SHARD_MANIFEST), "wb") as handle:
            handle.write(shards.canonical_json(meta))
        metas.append(meta)
        if progress:
            print(
                f"  shard {s + 1}/{num_shards} ({time.perf_counter() - started:.0f} s)", flush=True
            )
    manifest = shards.store_manifest(
        metas, names, tokenizer, sources=[{"synthetic": num_samples, "seed": seed}],
        skipped=None, top_files={},
    )  # fmt: skip
    with open(os.path.join(path, shards.MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, sort_keys=True)
    return path


def reblock_store(source: str, path: str) -> str:
    """A store at ``path`` with the data files of the store at ``source`` (hard links: no copy)
    and the block CRCs of today's writer rules (``shards.file_block_bytes``; a stored order's
    ``.crc32c`` side file and its lengths column, format 3), so a 1e9 store written with 1 MiB blocks everywhere is
    measured again without writing 30 GB. ``tokens.bin`` keeps its recorded 1 MiB CRCs; every
    other CRC is computed from the file's bytes as the writer does. ``source`` is a format-2
    store (CRC lists in ``shard.json``); the result is upgraded to format 3 last
    (``store_upgrade``)."""
    from highnoon.curriculum import stored_order
    from highnoon.data.store_upgrade import upgrade_store

    with open(os.path.join(source, shards.MANIFEST), encoding="utf-8") as handle:
        old = json.load(handle)
    if old["format_version"] != 2:
        raise SystemExit(f"{source} is a format-{old['format_version']} store; reblock takes 2")
    names = [entry["name"] for entry in old["shards"]]
    metas = []
    for name in names:
        os.makedirs(os.path.join(path, name), exist_ok=True)
        with open(os.path.join(source, name, shards.SHARD_MANIFEST), encoding="utf-8") as handle:
            meta = json.load(handle)
        for f, entry in meta["files"].items():
            target = os.path.join(path, name, f)
            if not os.path.exists(target):
                os.link(os.path.join(source, name, f), target)
            block = shards.file_block_bytes(f)
            if block != entry["block_bytes"]:
                entry.update(block_bytes=block, crc32c=shards.crc32c_file(target, block))
        with open(os.path.join(path, name, shards.SHARD_MANIFEST), "wb") as handle:
            handle.write(shards.canonical_json(meta))
        metas.append(meta)
    manifest = shards.store_manifest(
        metas, names, old["tokenizer"], sources=old["sources"], skipped=None, top_files={}
    )
    with open(os.path.join(path, shards.MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, sort_keys=True)
    orders = os.path.join(source, stored_order.ORDERS_DIR)
    for name in sorted(os.listdir(orders)) if os.path.isdir(orders) else []:
        if not name.endswith(".json"):
            continue
        strategy = name[: -len(".json")]
        with open(os.path.join(orders, name), encoding="utf-8") as handle:
            meta = json.load(handle)
        bin_path, json_path = stored_order.order_paths(path, strategy)
        os.makedirs(os.path.dirname(bin_path), exist_ok=True)
        if not os.path.exists(bin_path):
            os.link(os.path.join(orders, f"{strategy}.bin"), bin_path)
        block = stored_order.ORDER_BLOCK_BYTES
        meta.pop("block_crc32c", None)
        meta.update(
            format=stored_order.FORMAT, block_bytes=block, store_fingerprint=manifest["fingerprint"],
            block_crc32c_sha256=stored_order.write_block_crcs(bin_path, block)[1],
            lengths_dtype=stored_order.LENGTHS_DTYPE.str,
            lengths_crc32c_sha256=_lengths_column(path, names, bin_path, meta["dtype"],
                                                  stored_order.lengths_paths(path, strategy)),
        )  # fmt: skip
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, sort_keys=True)
    done = upgrade_store(path)  # the CRC lists into side files
    stored_order.restamp_orders(path, done["old_fingerprint"], done["fingerprint"])
    return path


def _lengths_column(
    path: str, names: list[str], bin_path: str, dtype: str, targets: tuple[str, str]
) -> str:
    """Write an order's lengths column (format 3: the stored length at each order position)
    from the order already on disk: every sample's length held in memory as ``<u4`` (4 bytes a
    sample: 4 GB at 1e9, where ``write_orders`` carries the lengths through its sort in bounded
    memory), then the order read chunk by chunk; returns the sha256 of its ``.crc32c``."""
    from highnoon.curriculum import stored_order

    lengths = np.concatenate([
        np.fromfile(os.path.join(path, name, shards.LENGTHS), dtype="<i8").astype("<u4")
        for name in names
    ])  # fmt: skip
    column_path, crc_path = targets
    writer = BlockCrc(column_path, stored_order.ORDER_BLOCK_BYTES)
    order_dtype = np.dtype(dtype)
    for start in range(0, lengths.size, CHUNK):
        count = min(CHUNK, lengths.size - start)
        order = np.fromfile(bin_path, dtype=order_dtype, count=count,
                            offset=start * order_dtype.itemsize)  # fmt: skip
        writer.write(lengths[order])
    crcs = writer.close()["crc32c"]
    with open(crc_path, "wb") as handle:
        handle.write(np.asarray(crcs, dtype="<u4").tobytes())
    from highnoon.utils.hashing import sha256_file

    return sha256_file(crc_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_samples", type=int)
    parser.add_argument("--path", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reblock_from", help="a store whose data files --path links to, "
                        "its CRCs recomputed with today's block sizes (reblock_store)")  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    if args.reblock_from:
        reblock_store(args.reblock_from, args.path)
        print(f"{args.reblock_from} reblocked at {args.path} in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
        return
    if args.num_samples is None:
        parser.error("--num_samples is needed (or --reblock_from)")
    write_scale_store(args.path, args.num_samples, seed=args.seed)
    print(f"{args.num_samples} samples at {args.path} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
