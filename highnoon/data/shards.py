"""Writing the shards of a token store (format 2): the one writer every preparation shares.

A store is a directory of shards plus a top-level ``manifest.json`` (``store.py`` says how it is
read). A shard is a directory ``shard-00000-of-00004/`` of raw little-endian files without
headers, so any byte range of them can be read on its own:

* ``tokens.bin``         the samples' ids back to back, each ending with EOS (``<u2``/``<u4``);
* ``offsets.bin``        ``<i8 [num_samples + 1]``, local to the shard, from 0;
* ``lengths.bin``, ``surprisal_sum.bin``  ``<i8 [num_samples]``, the features
  (``features.features_from_flat``) under the *corpus'* unigram counts, so a sample's score does
  not depend on which shard holds it or how many shards there are;
* ``sample_crc32c.bin``  ``<u4 [num_samples]``, the CRC32C of each sample's stored bytes in
  ``tokens.bin`` (EOS included): a reader fetching single samples by range checks each one
  without fetching the whole block around it (``remote_samples.py``);
* ``<file>.crc32c``      beside each file above (``tokens.crc32c``...), ``<u4``: the CRC32C of
  every ``block_bytes`` block of it (the last one short), which readers check the first time
  they read a block (``blocks.py``): a 4 KiB page for ``lengths.bin``, 1 MiB for the others
  (``file_block_bytes``). Binary and read by page, so a reader holds and parses the CRCs of
  the blocks it reads, not the shard's (format 3; format 2 kept them as JSON lists in
  ``shard.json``, O(corpus) to parse at a shard's first read);
* ``shard.json``         counts, ``first_sample`` (global index of its first sample), largest id,
  empty samples skipped, and per file its size, block size and ``crc32c_pages``: the CRC32C
  of every 4 KiB page of its ``.crc32c`` side file (``SIDECAR_PAGE_BYTES``: one per 1 024
  blocks), so a side-file page is checked when read and the fingerprint over the shard
  manifests still covers every byte.

How a store is written, in one process or spread over many (Beam workers):

1. one ``ShardWriter`` per shard (any process, any order) takes the shard's samples in source
   order and writes ``tokens.bin`` + ``offsets.bin``; ``close`` returns its ``ShardTokens``.
   It takes flat ids (``add``) or samples already in their stored form (``add_stored``, from
   ``stored_samples``, which ``add`` calls too): a Beam worker makes that form where it
   tokenises and counts there, and the shard writer only appends it;
2. the shards' (or the tokenised chunks') unigram counts are summed (the corpus counts);
3. ``write_shard_features`` per shard writes the features and ``shard.json``;
4. ``store_manifest`` builds the top manifest from the shards' manifests, written last; it
   summarises every shard (counts, ``first_sample``, file sizes, the sha256 of its
   ``shard.json``) so a remote store opens on it alone (``store.py``). The fingerprint is over
   the shard manifests only: the summaries do not change it.

The writer keeps what ``write_shard_features`` needs later (dtype, largest id, skips) in a small
``writer.json`` inside the shard, removed once ``shard.json`` exists, so step 3 may run in
another process than step 1.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np

from highnoon.data.features import features_from_flat, surprisal_table
from highnoon.data.tokenizers import Tokenizer, load_tokenizer
from highnoon.utils.files import atomic_write_bytes
from highnoon.utils.hashing import sha256_file, sha256_hex
from highnoon.utils.validation import InvalidArgumentError, check_int, check_positive_int

FORMAT_VERSION = 3  # block CRCs in side files; 2 (CRCs as JSON lists) is still read
READ_FORMATS = (2, 3)
# the store format as cache keys and mixed stages' fingerprints name it: 3 stores the same
# contents as 2, so a cached store of either is found and a mixture keeps its fingerprint
KEY_FORMAT = 2
BLOCK_BYTES = 1 << 20  # CRC32C granularity of tokens.bin: 1 MiB, a cheap check per range read
SAMPLE_BLOCK_BYTES = 1 << 12  # of the files read per sample at random: a page (file_block_bytes)
MANIFEST = "manifest.json"
SHARD_MANIFEST = "shard.json"
TOKENS = "tokens.bin"
OFFSETS = "offsets.bin"
LENGTHS = "lengths.bin"
SURPRISAL = "surprisal_sum.bin"
SAMPLE_CRC = "sample_crc32c.bin"
SHARD_FILES = (TOKENS, OFFSETS, LENGTHS, SURPRISAL, SAMPLE_CRC)
SIDECAR_SUFFIX = ".crc32c"  # a shard file's block CRCs: ``tokens.bin`` -> ``tokens.crc32c``
SIDECAR_PAGE_BYTES = 1 << 12  # the side file's own check unit: 1 024 block CRCs a page
SAMPLE_INDEXED = (OFFSETS, LENGTHS, SURPRISAL, SAMPLE_CRC)  # one element per sample
# read at every host per sample of every global step (packing): checked in pages. The other
# sample-indexed files are read per host row; their CRC lists would cost more at open than
# their 1 MiB blocks cost in reads while the lists are JSON (BENCHMARKS.md, issue 21)
RANDOM_READ = (LENGTHS,)
SAMPLE_FORMAT = "encode(text) + [eos_id]; the pipeline prepends bos_id"
WRITER_STATE = "writer.json"  # a closed ShardWriter's facts, until shard.json replaces them
# Passes over a shard's data go in cache-sized pieces: a few MB of temporaries are reused from
# the heap, while pieces of 64-128 MB were fresh pages every time (zeroed by the kernel, a third
# of a build's CPU), and they stay in the cache (BENCHMARKS.md, "What bounds two processes").
_CRC_READ = 4  # blocks read at a time when checksumming a file
_FEATURE_TOKENS = 1 << 20  # ids whose features are computed at once (8 MB int64 temporaries)


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab <= 65535), else ``uint32`` (little endian)."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


def shard_name(index: int, count: int) -> str:
    """The directory of shard ``index`` of ``count``: ``shard-00000-of-00004``."""
    count = check_positive_int("count", count)
    index = check_int("index", index, minimum=0, maximum=count - 1)
    return f"shard-{index:05d}-of-{count:05d}"


def unit_shard_name(unit: int, index: int) -> str:
    """The directory of the ``index``-th shard of read unit ``unit`` (a file of a source of
    several files): ``unit-00003-shard-00001``. Known where the unit is written, before the
    number of shards is: a worker writing straight into a ``gs://`` store renames nothing."""
    unit = check_int("unit", unit, minimum=0)
    index = check_int("index", index, minimum=0)
    return f"unit-{unit:05d}-shard-{index:05d}"


def canonical_json(obj: Any) -> bytes:
    """The one byte form of a JSON document that hashes are taken over (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _check_block_bytes(block_bytes: int) -> int:
    block_bytes = check_positive_int("block_bytes", block_bytes)
    if block_bytes % 8:  # an element of any store file never straddles two blocks
        raise InvalidArgumentError(f"block_bytes={block_bytes} must be a multiple of 8")
    return block_bytes


def file_block_bytes(name: str, block_bytes: int = BLOCK_BYTES) -> int:
    """The CRC32C block size of shard file ``name`` in a shard written with ``block_bytes``: at
    most ``SAMPLE_BLOCK_BYTES`` for ``lengths.bin`` (``RANDOM_READ``), which every packed host
    reads one element at a time at random (the length of every sample of a global step): a
    first read checks a page, not a MiB. ``block_bytes`` for the others. Each file's size is in
    its ``shard.json`` entry, so readers need no rule (docs/design.md, "Block sizes per
    file")."""
    block_bytes = _check_block_bytes(block_bytes)
    return min(block_bytes, SAMPLE_BLOCK_BYTES) if name in RANDOM_READ else block_bytes


def crc32c_blocks(data: Any, block_bytes: int = BLOCK_BYTES) -> list[int]:
    """CRC32C (as GCS computes it) of every ``block_bytes`` block of ``data`` (bytes or a numpy
    array's raw bytes), the last block short; ``[]`` for no data."""
    import google_crc32c

    block_bytes = _check_block_bytes(block_bytes)
    if isinstance(data, np.ndarray):
        view = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        return [
            int(google_crc32c.value(view[i : i + block_bytes].tobytes()))
            for i in range(0, view.size, block_bytes)
        ]
    data = bytes(data)
    return [
        int(google_crc32c.value(data[i : i + block_bytes]))
        for i in range(0, len(data), block_bytes)
    ]


def crc32c_file(path: str, block_bytes: int = BLOCK_BYTES) -> list[int]:
    """``crc32c_blocks`` of a local file, read a few blocks at a time."""
    out: list[int] = []
    with open(path, "rb") as handle:
        while chunk := handle.read(block_bytes * _CRC_READ):
            out.extend(crc32c_blocks(chunk, block_bytes))
    return out


def sidecar_name(name: str) -> str:
    """The side file holding the block CRCs of shard file ``name``: ``tokens.bin`` ->
    ``tokens.crc32c``, as a stored order's (``orders/<strategy>.crc32c``). Not
    ``tokens.bin.crc32c``: no file name is another's prefix, which TensorFlow's ``ram://``
    filesystem mishandles (a copy onto ``a.bin`` once ``a.bin.crc32c`` exists writes nothing)."""
    return name.removesuffix(".bin") + SIDECAR_SUFFIX


def sidecar_bytes(size: int, block_bytes: int) -> int:
    """The size of the side file holding the block CRCs of a ``size``-byte file in blocks of
    ``block_bytes``: 4 bytes a block, the last one short."""
    return 4 * -(-int(size) // int(block_bytes))


def write_file_checksums(path: str, block_bytes: int, crcs: Any = None) -> dict[str, Any]:
    """Write the block CRCs of the shard file ``path`` (local) to its side file
    (``sidecar_name``, synced) and return its ``shard.json`` entry: ``size``, ``block_bytes``
    and ``crc32c_pages`` (the CRC32C of every ``SIDECAR_PAGE_BYTES`` page of the side file).
    ``crcs``: the block CRCs when the caller has them (a writer that computed them on the way),
    else they are computed from the file. Every writer of a store goes through here."""
    block_bytes = _check_block_bytes(block_bytes)
    size = os.path.getsize(path)
    if crcs is None:
        crcs = crc32c_file(path, block_bytes)
    raw = np.asarray(crcs, dtype="<u4").tobytes()
    if len(raw) != sidecar_bytes(size, block_bytes):
        raise InvalidArgumentError(
            f"{path!r}: {len(raw) // 4} block CRCs for {size} bytes in blocks of {block_bytes}; "
            "pass one CRC per block (the last one short)"
        )
    # beside, then renamed: a store upgraded in place may share its files by hard links
    atomic_write_bytes(os.path.join(os.path.dirname(path), sidecar_name(os.path.basename(path))),
                       raw)  # fmt: skip
    pages = crc32c_blocks(raw, SIDECAR_PAGE_BYTES)
    return {"size": size, "block_bytes": block_bytes, "crc32c_pages": pages}


@dataclass(frozen=True)
class ShardTokens:
    """What a closed ``ShardWriter`` wrote: counts, largest id, unigram counts (int64
    ``[vocab_size]``, EOS included: the corpus counts are their sum; None when the writer did
    not count) and empty samples skipped."""

    num_samples: int
    num_tokens: int
    max_token_id: int
    counts: np.ndarray | None
    skipped_empty: int


@dataclass(frozen=True)
class StoredSamples:
    """Samples in the form a shard stores them, before any shard holds them.

    ``tokens``: the ids in the store's dtype, each non-empty sample followed by EOS;
    ``lengths``: every sample's length *without* EOS, int64, empty samples as 0 (so a run of
    samples can be cut out with its skipped empty ones, ``part``); ``crcs``: the CRC32C of each
    non-empty sample's stored bytes (``<u4``). ``stored_samples`` makes it from flat ids; a
    Beam worker makes it where it tokenises, and the shard writer appends it unchanged
    (``ShardWriter.add_stored``): every store's bytes come from this one function.
    """

    tokens: np.ndarray
    lengths: np.ndarray
    crcs: np.ndarray

    @property
    def skipped_empty(self) -> int:
        return int(self.lengths.size - self.crcs.size)

    def part(self, lo: int, hi: int) -> StoredSamples:
        """Samples ``lo..hi-1`` (empty ones included in the count)."""
        nonempty = self.lengths > 0
        a = int(np.count_nonzero(nonempty[:lo]))
        b = a + int(np.count_nonzero(nonempty[lo:hi]))
        start = int(self.lengths[:lo].sum()) + a  # ids before, plus one EOS per sample before
        stop = start + int(self.lengths[lo:hi].sum()) + (b - a)
        return StoredSamples(self.tokens[start:stop], self.lengths[lo:hi], self.crcs[a:b])


def stored_samples(
    flat: np.ndarray, lengths: np.ndarray, vocab_size: int, eos_id: int
) -> StoredSamples:
    """Samples given as flat ids + lengths (without EOS) in their stored form: EOS appended to
    each non-empty one, ids in ``token_dtype(vocab_size)``, per-sample CRC32C. Ids outside
    ``[0, vocab_size)`` or lengths that do not sum to the ids are an ``InvalidArgumentError``."""
    flat = np.asarray(flat).reshape(-1)
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if int(lengths.sum()) != flat.size or (lengths.size and lengths.min() < 0):
        raise InvalidArgumentError(
            f"lengths must be >= 0 and sum to the number of ids ({flat.size}), got "
            f"sum {int(lengths.sum())}"
        )
    dtype = token_dtype(vocab_size)
    kept = lengths[lengths > 0]  # empty samples own no ids, so ``flat`` is unchanged
    if kept.size == 0:
        return StoredSamples(np.zeros(0, dtype), lengths, np.zeros(0, "<u4"))
    if flat.min() < 0 or flat.max() >= vocab_size:
        raise InvalidArgumentError(
            f"token ids must be in [0, {vocab_size}) (the tokenizer's vocabulary), got "
            f"values in [{flat.min()}, {flat.max()}]"
        )
    out_lengths = kept + 1
    out = np.empty(int(out_lengths.sum()), dtype=dtype)
    eos_pos = np.cumsum(out_lengths) - 1
    is_token = np.ones(out.size, dtype=bool)
    is_token[eos_pos] = False
    out[is_token] = flat
    out[eos_pos] = eos_id
    crcs = _sample_crcs(out.tobytes(), (eos_pos + 1) * out.itemsize)
    return StoredSamples(out, lengths, crcs)


class ShardWriter:
    """Writes one shard's ``tokens.bin``, ``offsets.bin`` and ``sample_crc32c.bin`` into
    ``directory`` (local path).

    ``add`` takes samples in source order as flat ids + lengths, *without* EOS (the writer
    appends ``eos_id``); ``add_stored`` takes them already in their stored form
    (``stored_samples``). Empty samples are skipped and counted. Ids outside
    ``[0, vocab_size)`` are an ``InvalidArgumentError``. With ``count_tokens`` (the one-process
    build) the writer sums the shard's unigram counts; a Beam build counts where it tokenises.
    """

    def __init__(
        self,
        directory: str,
        vocab_size: int,
        eos_id: int,
        *,
        block_bytes: int = BLOCK_BYTES,
        count_tokens: bool = True,
    ) -> None:
        self.directory = str(directory)
        self.vocab_size = check_positive_int("vocab_size", vocab_size)
        self.eos_id = check_int("eos_id", eos_id, minimum=0, maximum=self.vocab_size - 1)
        self.block_bytes = _check_block_bytes(block_bytes)
        self.dtype = token_dtype(self.vocab_size)
        os.makedirs(self.directory, exist_ok=True)
        self._file = open(os.path.join(self.directory, TOKENS), "wb")  # noqa: SIM115 (close())
        self._crc_file = open(os.path.join(self.directory, SAMPLE_CRC), "wb")  # noqa: SIM115
        self._lengths: list[np.ndarray] = []
        self._counts = np.zeros(self.vocab_size, dtype=np.int64) if count_tokens else None
        self.num_tokens = 0
        self.skipped_empty = 0
        self.max_id = -1
        self._closed = False

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append samples given as flat ids + lengths (without EOS); empty ones are skipped."""
        samples = stored_samples(flat, lengths, self.vocab_size, self.eos_id)
        counts = None
        if self._counts is not None and samples.crcs.size:
            # from the ids as given (no cast of the stored ids to int64), plus one EOS a sample
            counts = np.bincount(np.asarray(flat).reshape(-1), minlength=self.vocab_size)
            counts[self.eos_id] += samples.crcs.size
        self._append(samples, counts)

    def add_stored(self, samples: StoredSamples) -> None:
        """Append samples in their stored form (``stored_samples``) as they are."""
        self._append(samples, None)

    def _append(self, samples: StoredSamples, counts: np.ndarray | None) -> None:
        """Append stored samples; ``counts``: their unigram counts when the caller has them."""
        if samples.tokens.dtype != self.dtype:
            raise InvalidArgumentError(
                f"stored samples hold {samples.tokens.dtype} ids, this shard stores "
                f"{self.dtype}; make them with stored_samples(..., vocab_size={self.vocab_size})"
            )
        self.skipped_empty += samples.skipped_empty
        if samples.crcs.size == 0:
            return
        out = np.ascontiguousarray(samples.tokens)
        self._file.write(out)  # the buffer itself, no copy
        self._crc_file.write(samples.crcs.astype("<u4", copy=False).tobytes())
        if self._counts is not None:
            if counts is None:
                counts = np.bincount(out, minlength=self.vocab_size)
            self._counts += counts
        lengths = samples.lengths
        self._lengths.append(lengths[lengths > 0] + 1)
        self.num_tokens += out.size
        self.max_id = max(self.max_id, int(out.max()))

    def close(self) -> ShardTokens:
        """Flush and sync ``tokens.bin`` and ``sample_crc32c.bin``, write ``offsets.bin``; the
        shard's ``ShardTokens``."""
        if self._closed:
            raise InvalidArgumentError(f"the ShardWriter of {self.directory!r} is already closed")
        self._closed = True
        for handle in (self._file, self._crc_file):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        offsets = np.zeros(lengths.size + 1, dtype="<i8")
        np.cumsum(lengths, out=offsets[1:])
        _write_synced(os.path.join(self.directory, OFFSETS), offsets.tobytes())
        state = {
            "dtype": self.dtype.str,
            "block_bytes": self.block_bytes,
            "max_token_id": self.max_id,
            "skipped_empty": self.skipped_empty,
        }
        _write_synced(os.path.join(self.directory, WRITER_STATE), canonical_json(state))
        return ShardTokens(
            num_samples=int(lengths.size),
            num_tokens=self.num_tokens,
            max_token_id=self.max_id,
            counts=None if self._counts is None else self._counts.copy(),
            skipped_empty=self.skipped_empty,
        )


def _sample_crcs(raw: bytes, ends: np.ndarray) -> np.ndarray:
    """CRC32C of each sample's stored bytes (``raw[previous end : end]``, EOS included), as
    ``<u4``; a little over 1 us a sample of a few hundred ids (BENCHMARKS.md, "Per-sample
    reads")."""
    import google_crc32c

    stops = ends.tolist()
    value = google_crc32c.value
    return np.fromiter(
        (value(raw[a:b]) for a, b in zip([0, *stops[:-1]], stops)), dtype="<u4", count=len(stops)
    )


def _write_synced(path: str, data: bytes) -> None:
    """A file inside a shard (published with the store, so no rename here), synced."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_shard_features(
    directory: str, corpus_counts: np.ndarray, first_sample: int, *, more_empty: int = 0
) -> dict:
    """Features of the shard's samples under the corpus' unigram counts
    (``features.features_from_flat`` with ``counts=corpus_counts``: scores equal a one-process
    build's), ``lengths.bin``/``surprisal_sum.bin``, the block CRCs of every file in their side
    files, then ``shard.json``; returns the ``shard.json`` dict. ``more_empty``: empty samples
    this shard counts that its writer never saw (the leading empty samples of the read units
    after it, which other workers read: ``store_build.ShardSequence``)."""
    directory = str(directory)
    first_sample = check_int("first_sample", first_sample, minimum=0)
    more_empty = check_int("more_empty", more_empty, minimum=0)
    state_path = os.path.join(directory, WRITER_STATE)
    if not os.path.isfile(state_path):
        raise InvalidArgumentError(
            f"directory={directory!r} holds no closed ShardWriter ({WRITER_STATE} is missing); "
            "write the shard's tokens with ShardWriter and close() it first"
        )
    with open(state_path, encoding="utf-8") as handle:
        state = json.load(handle)
    dtype, block_bytes = np.dtype(state["dtype"]), int(state["block_bytes"])
    counts = np.asarray(corpus_counts, dtype=np.int64)
    offsets = np.fromfile(os.path.join(directory, OFFSETS), dtype="<i8")
    tokens_path = os.path.join(directory, TOKENS)
    num_tokens = int(offsets[-1])
    tokens = (
        np.memmap(tokens_path, dtype=dtype, mode="r") if num_tokens else np.zeros(0, dtype=dtype)
    )
    if tokens.size != num_tokens:
        raise InvalidArgumentError(
            f"shard {directory!r}: {TOKENS} holds {tokens.size} ids, {OFFSETS} ends at "
            f"{num_tokens}; the shard was not written by one ShardWriter, write it again"
        )
    if tokens.size and counts.size <= state["max_token_id"]:
        raise InvalidArgumentError(
            f"corpus_counts has {counts.size} entries, but the shard holds token id "
            f"{state['max_token_id']}; pass the sum of every shard's ShardTokens.counts"
        )
    lengths, surprisal = _features_in_chunks(tokens, offsets, counts)
    del tokens
    _write_synced(os.path.join(directory, LENGTHS), lengths.astype("<i8").tobytes())
    _write_synced(os.path.join(directory, SURPRISAL), surprisal.astype("<i8").tobytes())
    files = {
        name: write_file_checksums(
            os.path.join(directory, name), file_block_bytes(name, block_bytes)
        )
        for name in SHARD_FILES
    }
    manifest = {
        "num_samples": int(offsets.size - 1),
        "num_tokens": num_tokens,
        "first_sample": first_sample,
        "max_token_id": int(state["max_token_id"]),
        "skipped_empty": int(state["skipped_empty"]) + more_empty,
        "files": files,
    }
    _write_synced(os.path.join(directory, SHARD_MANIFEST), canonical_json(manifest))
    os.remove(state_path)
    return manifest


def _features_in_chunks(
    tokens: np.ndarray, offsets: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``features_from_flat`` over runs of whole samples of about ``_FEATURE_TOKENS`` ids, so a
    shard of 2^28 ids needs no 2 GB prefix array (integer sums: the result is the same)."""
    lengths, surprisal = [], []
    table = surprisal_table(counts)  # once per shard, not per piece
    first, n = 0, offsets.size - 1
    while first < n:
        last = int(np.searchsorted(offsets, offsets[first] + _FEATURE_TOKENS, side="right")) - 1
        last = min(max(last, first + 1), n)
        base = int(offsets[first])
        part = features_from_flat(
            tokens[base : int(offsets[last])], offsets[first : last + 1] - base, table=table
        )
        lengths.append(part.lengths)
        surprisal.append(part.surprisal_sum)
        first = last
    if not lengths:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(lengths), np.concatenate(surprisal)


def store_fingerprint(shard_manifests: list[dict]) -> str:
    """sha256 over the shards' ``shard.json`` contents (canonical JSON), in order, each followed
    by a newline: the CRCs it covers (the block CRCs, or the pages of their side files) change
    with any byte of the store."""
    return sha256_hex(b"".join(canonical_json(m) + b"\n" for m in shard_manifests))


def copy_tokenizer_file(tokenizer: Tokenizer, directory: str) -> dict[str, dict[str, Any]]:
    """Copy a file-based tokenizer into a store ``directory`` (local); the ``top_files`` entry
    for ``store_manifest`` (``{}`` for a tokenizer without a file)."""
    if not tokenizer.store_file:
        return {}
    target = os.path.join(directory, tokenizer.store_file)
    shutil.copyfile(tokenizer.model_path, target)
    return {tokenizer.store_file: {"size": os.path.getsize(target), "sha256": sha256_file(target)}}


def shards_format(shard_manifests: list[dict]) -> int:
    """The store format these shard manifests make: 3 when their block CRCs are in side files
    (``crc32c_pages``), 2 when ``shard.json`` lists them (stores written before)."""
    inline = any("crc32c" in f for s in shard_manifests for f in s["files"].values())
    return 2 if inline else FORMAT_VERSION


def shard_summary(name: str, shard: dict) -> dict[str, Any]:
    """Shard ``name``'s entry in the store's ``manifest.json``: its counts, first sample, the
    size of every file (side files included, so a local store checks them by ``stat`` at open)
    and the sha256 of its ``shard.json``."""
    files = {}
    for file_name, meta in shard["files"].items():
        files[file_name] = int(meta["size"])
        if "crc32c_pages" in meta:
            files[sidecar_name(file_name)] = sidecar_bytes(meta["size"], meta["block_bytes"])
    return {
        "name": name,
        "num_samples": int(shard["num_samples"]),
        "num_tokens": int(shard["num_tokens"]),
        "first_sample": int(shard["first_sample"]),
        "files": files,
        "sha256": sha256_hex(canonical_json(shard)),
    }


def store_manifest(
    shard_manifests: list[dict],
    shard_names: list[str],
    tokenizer: Tokenizer | str | dict,
    *,
    sources: list[dict[str, Any]] | None,
    skipped: dict[str, int] | None,
    top_files: dict[str, dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> dict:
    """The top ``manifest.json`` of a store whose shards (in order) have these manifests and
    directory names. ``top_files``: the top-level files (the tokenizer copy: size + sha256).
    ``skipped``: counts a source dropped (``empty`` is added from the shards). Checks that the
    shards cover the sample indices ``0..n-1`` in order."""
    tokenizer = load_tokenizer(tokenizer)
    if len(shard_manifests) != len(shard_names) or not shard_manifests:
        raise InvalidArgumentError(
            f"store_manifest needs one name per shard manifest and at least one shard, got "
            f"{len(shard_manifests)} manifests and {len(shard_names)} names"
        )
    expected_first = 0
    for name, shard in zip(shard_names, shard_manifests):
        if shard["first_sample"] != expected_first:
            raise InvalidArgumentError(
                f"shard {name} has first_sample={shard['first_sample']}, but the shards before "
                f"it hold {expected_first} samples; shards must cover the samples in order"
            )
        expected_first += int(shard["num_samples"])
    config = tokenizer.to_config()
    if tokenizer.store_file:
        if tokenizer.store_file not in top_files:
            raise InvalidArgumentError(
                f"top_files has no {tokenizer.store_file!r}: copy the tokenizer into the store "
                "with copy_tokenizer_file first"
            )
        config = {**tokenizer.fingerprint_config(), "model_file": tokenizer.store_file}
    block_sizes = {f["block_bytes"] for s in shard_manifests for f in s["files"].values()}
    empty = sum(int(s["skipped_empty"]) for s in shard_manifests)
    return {
        "format_version": shards_format(shard_manifests),
        "tokenizer": config,
        "num_samples": expected_first,
        "num_tokens": sum(int(s["num_tokens"]) for s in shard_manifests),
        "dtype": token_dtype(tokenizer.vocab_size).str,
        "block_bytes": int(min(block_sizes)),
        "max_token_id": max(int(s["max_token_id"]) for s in shard_manifests),
        "fingerprint": store_fingerprint(shard_manifests),
        "shards": [shard_summary(name, shard) for name, shard in zip(shard_names, shard_manifests)],
        "files": dict(top_files),
        "sources": list(sources or []),
        "skipped": {"empty": empty, **(skipped or {})},
        "sample_format": SAMPLE_FORMAT,
        **(extra or {}),
    }
