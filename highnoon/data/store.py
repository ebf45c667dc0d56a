"""The token store: tokenised samples in shards, read in place by byte range, verified per block.

A store (format 2) is a directory, local or on any ``tf.io.gfile`` filesystem (``gs://``):

* ``manifest.json``, written last (a directory without it is an interrupted build): format
  version, tokenizer config, counts, dtype, block size, largest id, the content ``fingerprint``
  (sha256 over the shards' ``shard.json``), the shards (name, counts, sha256 of their
  ``shard.json``), the top-level files (size + sha256), sources and skip counts;
* ``tokenizer.model`` / ``tokenizer.json``: a copy of a file-based tokenizer, so the store is
  self-contained;
* ``shard-00000-of-00004/`` ...: raw little-endian ``tokens.bin``, ``offsets.bin``,
  ``lengths.bin``, ``surprisal_sum.bin`` and ``shard.json`` (counts, ``first_sample``, per-block
  CRC32C of every file). ``shards.py`` writes them and says what each holds.

Sample ``i`` of the store is sample ``i - first_sample`` of the shard whose range holds it;
sample indices are positions in the sources' order (empty samples skipped and counted), however
many shards or processes wrote the store. Its ids are ``encode(text) + [eos_id]`` (no BOS: the
pipeline prepends ``bos_id``); a token sample is stored as given plus ``eos_id``.

**Opening** reads ``manifest.json``, which summarises every shard (counts, first sample, file
sizes, the sha256 of its ``shard.json``), and checks the summaries against each other; a local
store also checks every shard file's size against them (``stat`` only: a truncated shard, a
missing shard, a manifest naming an absent file are ``StoreError``s naming the shard or file and
saying "rebuild"). A shard's ``shard.json`` (its per-block CRC32Cs, a list that grows with the
shard) is read at the shard's first read and checked then against the sha256 the manifest
records, so opening costs the same time, memory and requests for a store of 1e6 samples or
1e9, 8 shards or 64. A store written before the summaries reads and checks every
``shard.json`` and the fingerprint at open. ``verify()`` reads every shard and the fingerprint.
``verify=True`` also hashes the top-level files (the tokenizer copy). No token is read.

**Reading** goes through one ``BlockFile`` per shard file (``blocks.py``): ``MappedFile`` (a
memory map) for a local path, ``RangedFile`` (``remote_blocks.py``: range reads through
``tf.io.gfile``) for a path with a scheme, ``file://`` included. Every block a read touches is
checked against its CRC32C the first time the process reads it: a flipped byte is a
``StoreError`` naming the store, shard, file, block and byte offset, before any token of that
block reaches a batch. ``verify()`` checks every block now (``highnoon-prepare-data --verify``).
``sample_bounds`` and ``read_tokens`` (global token positions; the pipeline passes the sample
of each, so an in-place store reads those samples' offsets only) are what the pipeline reads
through; ``gather``/``samples``/``sample`` return whole samples; ``features`` (lengths,
surprisal) are read from every shard on first use; ``features_range``/``features_at`` read
those of a range or of given samples only.

A mixed stage reads its parts in place too: ``concatenate(stores, manifest)`` is a store made of
the parts' shards, sample after sample, part after part (``stage_data.py``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from highnoon.data.blocks import BlockFile, MappedFile, SidecarCrcs
from highnoon.data.features import SampleFeatures
from highnoon.data.shards import (
    FORMAT_VERSION,
    LENGTHS,
    MANIFEST,
    OFFSETS,
    READ_FORMATS,
    SAMPLE_CRC,
    SAMPLE_FORMAT,
    SHARD_FILES,
    SHARD_MANIFEST,
    SIDECAR_PAGE_BYTES,
    SURPRISAL,
    TOKENS,
    sidecar_bytes,
    sidecar_name,
    store_fingerprint,
    token_dtype,
)
from highnoon.data.store_build import (
    MAX_SHARD_TOKENS,
    LineProgress,
    TokenBatch,
    build_token_store,
    remove_stale_build_dirs,
)
from highnoon.data.store_errors import StoreError, StoreExistsError, VocabularyMismatchError
from highnoon.data.tokenizers import Tokenizer, tokenizer_from_config
from highnoon.utils.files import is_remote
from highnoon.utils.hashing import sha256_file, sha256_hex
from highnoon.utils.validation import InvalidArgumentError, check_int, check_positive_int

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "MAX_SHARD_TOKENS",
    "SAMPLE_FORMAT",
    "LineProgress",
    "StoreError",
    "StoreExistsError",
    "TokenBatch",
    "TokenStore",
    "VocabularyMismatchError",
    "build_token_store",
    "check_enough_samples",
    "concatenate",
    "default_cache_dir",
    "head",
    "is_store",
    "remove_stale_build_dirs",
    "token_dtype",
]

OPEN_THREADS = 32  # shard manifests of a remote store read at once

_REQUIRED = ("format_version", "tokenizer", "num_samples", "num_tokens", "dtype", "fingerprint",
             "shards", "files", "max_token_id")  # fmt: skip


def default_cache_dir() -> str:
    """``$HIGHNOON_CACHE_DIR`` or ``~/.cache/highnoon``."""
    return os.environ.get("HIGHNOON_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "highnoon"
    )


# --- files, local or through tf.io.gfile ------------------------------------------------------


_FILE_URL = "file://"  # a local file named as a URL: read in place, not memory-mapped


def _join(root: str, *names: str) -> str:
    return "/".join([root.rstrip("/"), *names]) if is_remote(root) else os.path.join(root, *names)


def _read_bytes(path: str) -> bytes | None:
    """The bytes of ``path``, or None when it does not exist. A ``file://`` URL is read as the
    local file it names (as its range reads are, by ``os.pread``): TensorFlow's calls cost
    milliseconds more per small file."""
    if path.startswith(_FILE_URL):
        path = path[len(_FILE_URL) :]
    if not is_remote(path):
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
    import tensorflow as tf

    if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read()


def file_size(path: str) -> int | None:
    """The size of the file ``path`` in bytes, or None when it does not exist."""
    if not is_remote(path):
        return os.path.getsize(path) if os.path.isfile(path) else None
    import tensorflow as tf

    try:
        return int(tf.io.gfile.stat(path).length)
    except tf.errors.NotFoundError:
        return None


def is_store(path: str) -> bool:
    """Whether ``path`` is a directory holding a store manifest (a prepared store)."""
    if not isinstance(path, str) or not path:
        return False
    if not is_remote(path):
        return os.path.isfile(os.path.join(os.path.expanduser(path), MANIFEST))
    import tensorflow as tf

    return bool(tf.io.gfile.exists(_join(path, MANIFEST)))


def _block_crcs(root: str, name: str, file_name: str, m: dict[str, Any], label: str) -> Any:
    """A shard file's block CRCs: the list of a format-2 ``shard.json``, or (format 3) its side
    file read by page (``SidecarCrcs``), as a memory map locally or by range reads."""
    if "crc32c" in m:
        return m["crc32c"]
    size = sidecar_bytes(m["size"], m["block_bytes"])
    path, label = _join(root, name, sidecar_name(file_name)), f"{label}/{sidecar_name(file_name)}"
    if is_remote(root):
        from highnoon.data.remote_blocks import RangedFile

        file: BlockFile = RangedFile(path, size, SIDECAR_PAGE_BYTES, m["crc32c_pages"],
                                     label=label)  # fmt: skip
    else:
        file = MappedFile(path, size, SIDECAR_PAGE_BYTES, m["crc32c_pages"], label=label)
    return SidecarCrcs(file, size // 4, m["crc32c_pages"])


def _shard_files(
    root: str, name: str, meta: dict[str, Any], label: str, dtype: np.dtype
) -> dict[str, BlockFile]:
    """The ``BlockFile`` of every file of shard ``name``: memory maps for a local store (blocks
    checked on first touch); for a path with a scheme, range reads (``remote_blocks.py``), the
    tokens read and checked sample by sample (``remote_samples.py``). Block CRCs come from
    ``shard.json`` or from side files read by page (``_block_crcs``)."""
    args = {
        file_name: (
            _join(root, name, file_name),
            int(m["size"]),
            int(m["block_bytes"]),
            _block_crcs(root, name, file_name, m, label),
        )
        for file_name, m in meta["files"].items()
        if file_name in SHARD_FILES
    }
    if not is_remote(root):
        return {f: MappedFile(*a, label=f"{label}/{f}") for f, a in args.items()}
    from highnoon.data.remote_blocks import RangedFile
    from highnoon.data.remote_samples import SampleRangedFile

    files: dict[str, BlockFile] = {
        f: RangedFile(*a, label=f"{label}/{f}", cache=None) for f, a in args.items() if f != TOKENS
    }
    files[TOKENS] = SampleRangedFile(
        *args[TOKENS], label=f"{label}/{TOKENS}", dtype=dtype, offsets=files[OFFSETS],
        sample_crc32c=files[SAMPLE_CRC], first_sample=int(meta["first_sample"]),
    )  # fmt: skip
    return {f: files[f] for f in SHARD_FILES}


def _read_shard_manifests(root: str, names: list[str]) -> list[bytes | None]:
    """Every shard's ``shard.json`` bytes (None: missing). A remote store's are read by
    ``OPEN_THREADS`` threads at once, one ``tf.io.read_file`` request per shard (``GFile``
    would make two, and holds the GIL while it waits); BENCHMARKS.md, "Opening a store on
    gs://"."""
    paths = [_join(root, name, SHARD_MANIFEST) for name in names]
    if not is_remote(root) or len(paths) == 1:
        return [_read_bytes(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(OPEN_THREADS, len(paths))) as pool:
        return list(pool.map(_read_file_op, paths))


def _read_file_op(path: str) -> bytes | None:
    """The bytes of a remote file through the ``tf.io.read_file`` op (which, unlike
    ``GFile``, waits on the request without holding the GIL), None when it is missing."""
    if path.startswith(_FILE_URL):
        return _read_bytes(path)
    import tensorflow as tf

    try:
        return bytes(tf.io.read_file(path).numpy())
    except tf.errors.NotFoundError:
        return None


# --- the reader -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shard:
    """One shard as a store (or a concatenation of stores) sees it."""

    name: str
    first_sample: int  # index of its first sample in the store
    num_samples: int
    first_token: int  # position of its first id in the store's token positions
    num_tokens: int
    files: _ShardFiles


class _ShardFiles(Mapping):
    """A shard's ``BlockFile`` by file name. Made from the checked ``shard.json`` (``meta``), or
    lazily (a store whose manifest summarises its shards): ``shard.json`` is then read on the
    first access, checked against the sha256 and summary the store's manifest records, and the
    files made; ``sizes`` (from the summary) needs no read. The parsed ``shard.json`` is not
    kept: its block CRCs live in the files, as arrays (``blocks.crc_array``)."""

    def __init__(self, root: str, path: str, entry: dict[str, Any], first_sample: int,
                 dtype: np.dtype, meta: dict[str, Any] | None = None) -> None:  # fmt: skip
        self._args = (root, path, entry, first_sample, dtype)
        self.root = root
        self._lock = threading.Lock()
        self._files: dict[str, BlockFile] | None = None
        self.sizes = {f: int(entry["files"][f]) for f in SHARD_FILES} if meta is None else {
            f: int(meta["files"][f]["size"]) for f in SHARD_FILES}  # fmt: skip
        if meta is not None:
            self._made(meta)

    def _made(self, meta: dict[str, Any]) -> dict[str, BlockFile]:
        root, path, entry, _, dtype = self._args
        self._files = _shard_files(root, entry["name"], meta, f"store {path!r}, {entry['name']}",
                                   dtype)  # fmt: skip
        return self._files

    def manifest(self) -> dict[str, Any]:
        """The shard's ``shard.json``, read now and checked against the store's manifest."""
        root, path, entry, first_sample, dtype = self._args
        shard_json = _join(root, entry["name"], SHARD_MANIFEST)
        raw = _read_file_op(shard_json) if is_remote(root) else _read_bytes(shard_json)
        return _check_shard_manifest(raw, entry, first_sample, root, path, dtype)

    def _loaded(self) -> dict[str, BlockFile]:
        if self._files is None:
            with self._lock:
                if self._files is None:
                    return self._made(self.manifest())
        return self._files

    @property
    def loaded(self) -> bool:
        """Whether the shard's manifest was read (its files exist)."""
        return self._files is not None

    def __getitem__(self, name: str) -> BlockFile:
        return self._loaded()[name]

    def __setitem__(self, name: str, file: BlockFile) -> None:  # benches swap a reader in
        self._loaded()[name] = file

    def __iter__(self) -> Iterator[str]:
        return iter(SHARD_FILES)

    def __len__(self) -> int:
        return len(SHARD_FILES)


def _load_manifest(root: str, path: str) -> dict[str, Any]:
    raw = _read_bytes(_join(root, MANIFEST))
    if raw is None:
        exists = os.path.isdir(root) if not is_remote(root) else _is_remote_dir(root)
        if not exists:
            raise StoreError(f"path={path!r} does not exist or is not a directory")
        raise StoreError(
            f"path={path!r} has no {MANIFEST}: an incomplete (interrupted) build or not a "
            "token store; rebuild it"
        )
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(
            f"store {path!r}: {MANIFEST} is not valid JSON ({err}); rebuild it"
        ) from err
    if not isinstance(manifest, dict):
        raise StoreError(f"store {path!r}: {MANIFEST} is not a JSON object; rebuild it")
    version = manifest.get("format_version")
    if version not in READ_FORMATS:
        raise StoreError(
            f"store {path!r} has format_version={version!r}, this code reads "
            f"format_version {' or '.join(map(str, READ_FORMATS))} (sharded, verified per "
            "block); rebuild the store (highnoon-prepare-data, or delete it from data_cache_dir)"
        )
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise StoreError(f"store {path!r}: {MANIFEST} is incomplete: missing keys {missing}")
    return manifest


def _is_remote_dir(root: str) -> bool:
    import tensorflow as tf

    return bool(tf.io.gfile.isdir(root))


def _expected_sizes(n: int, t: int, itemsize: int) -> dict[str, int]:
    """The size of every shard file for ``n`` samples of ``t`` ids in total."""
    return {TOKENS: t * itemsize, OFFSETS: (n + 1) * 8, LENGTHS: n * 8, SURPRISAL: n * 8,
            SAMPLE_CRC: n * 4}  # fmt: skip


def _summarised(entries: list[dict[str, Any]]) -> bool:
    """Whether the manifest summarises every shard (stores written since lazy opening)."""
    return all(isinstance(e.get("files"), dict) and "first_sample" in e for e in entries)


def _check_summary(entry: dict[str, Any], first_sample: int, path: str, itemsize: int) -> None:
    """A shard's summary in the manifest agrees with the shards before it and its counts."""
    name, n, t = entry["name"], int(entry["num_samples"]), int(entry["num_tokens"])
    if int(entry["first_sample"]) != first_sample:
        raise StoreError(
            f"store {path!r}, {name}: {MANIFEST} records its first sample as "
            f"{entry['first_sample']}, the shards before it hold {first_sample}; rebuild the store"
        )
    for file_name, size in _expected_sizes(n, t, itemsize).items():
        if file_name not in entry["files"]:
            raise StoreError(
                f"store {path!r}, {name}/{file_name}: {MANIFEST} lists no such file (a store "
                "written before per-sample checksums); rebuild the store"
            )
        if int(entry["files"][file_name]) != size:
            raise StoreError(
                f"store {path!r}, {name}/{file_name}: {MANIFEST} records size "
                f"{entry['files'].get(file_name)}, {size} for {n} samples of {t} ids; the manifest "
                "is corrupt, rebuild the store"
            )


def _check_shard_manifest(
    raw: bytes | None, entry: dict[str, Any], first_sample: int, root: str, path: str,
    dtype: np.dtype,
) -> dict[str, Any]:  # fmt: skip
    """Shard ``entry``'s ``shard.json`` (``raw``, None: missing) checked against the manifest's
    sha256 and counts and, for a local store, its files' sizes; returns it parsed."""
    name = entry["name"]
    where = f"store {path!r}, {name}"
    if raw is None:
        raise StoreError(
            f"{where}: the shard is missing ({name}/{SHARD_MANIFEST} does not exist); the "
            "store is incomplete, rebuild it"
        )
    if sha256_hex(raw) != entry["sha256"]:
        upgrading = b'"crc32c_pages"' in raw and sidecar_name(TOKENS) not in entry["files"]
        fix = (
            "a format upgrade was interrupted: run highnoon-prepare-data --upgrade_stores="
            f"{path} again" if upgrading
            else "the store is corrupt or mixes two builds, rebuild it"
        )  # fmt: skip
        raise StoreError(
            f"{where}: {SHARD_MANIFEST} has sha256 {sha256_hex(raw)}, the manifest records "
            f"{entry['sha256']}; {fix}"
        )
    meta = json.loads(raw)
    n, t = int(meta["num_samples"]), int(meta["num_tokens"])
    if (n, t, int(meta["first_sample"])) != (
        int(entry["num_samples"]), int(entry["num_tokens"]), first_sample
    ):  # fmt: skip
        raise StoreError(
            f"{where}: {SHARD_MANIFEST} records {n} samples from sample "
            f"{meta['first_sample']}, the manifest {entry['num_samples']} from {first_sample}; "
            "rebuild the store"
        )
    expected = _expected_sizes(n, t, dtype.itemsize)
    for file_name in SHARD_FILES:
        recorded = meta["files"].get(file_name)
        label = f"store {path!r}, {name}/{file_name}"
        if recorded is None:
            raise StoreError(
                f"{label}: {SHARD_MANIFEST} lists no such file (a store written before "
                "per-sample checksums); rebuild the store"
            )
        actual = None if is_remote(root) else file_size(_join(root, name, file_name))
        if actual is None and not is_remote(root):
            raise _missing_file(label)
        if recorded["size"] != expected[file_name] or actual not in (None, recorded["size"]):
            raise _size_mismatch(
                label, recorded["size"] if actual is None else actual, SHARD_MANIFEST,
                f"{recorded['size']} ({expected[file_name]} for {n} samples of {t} ids)",
            )  # fmt: skip
        _check_checksums(recorded, entry, file_name, label)
    return meta


def _check_checksums(recorded: dict[str, Any], entry: dict[str, Any], file_name: str,
                     label: str) -> None:  # fmt: skip
    """A file's entry in ``shard.json`` holds its block CRCs (format 2) or the page CRCs of a
    side file whose size the store's manifest records (format 3)."""
    if "crc32c" in recorded:
        return
    pages = recorded.get("crc32c_pages")
    size = sidecar_bytes(recorded["size"], recorded.get("block_bytes") or 1)
    side = sidecar_name(file_name)
    if not isinstance(pages, list) or len(pages) != -(-size // SIDECAR_PAGE_BYTES):
        raise StoreError(
            f"{label}: {SHARD_MANIFEST} records neither its block CRCs nor the page CRCs of "
            f"{side} ({size // 4} blocks); the manifest is corrupt, rebuild the store"
        )
    if entry.get("files", {}).get(side, size) != size:
        raise StoreError(
            f"{label}: {MANIFEST} records {entry['files'][side]} bytes for {side}, "
            f"{SHARD_MANIFEST} {size} ({size // 4} blocks); rebuild the store"
        )


def _missing_file(label: str) -> StoreError:
    return StoreError(f"{label}: the file is missing; the store is incomplete, rebuild it")


def _size_mismatch(label: str, actual: int, source: str, recorded: str) -> StoreError:
    return StoreError(
        f"{label}: file has size {actual}, {source} records {recorded}; the shard is truncated "
        "or was modified, rebuild the store"
    )


def _check_local_shard(root: str, path: str, entry: dict[str, Any]) -> None:
    """A local shard opened on its summary: its ``shard.json`` and every file present, each
    file with the size the summary records (a few ``stat`` calls, no read: a missing or
    truncated shard is still an error at open, however big the store)."""
    name = entry["name"]
    if not os.path.isfile(_join(root, name, SHARD_MANIFEST)):
        raise StoreError(
            f"store {path!r}, {name}: the shard is missing ({name}/{SHARD_MANIFEST} does not "
            "exist); the store is incomplete, rebuild it"
        )
    side_files = [f for f in entry["files"] if f not in SHARD_FILES]  # block CRCs (format 3)
    for file_name in [*SHARD_FILES, *side_files]:
        label = f"store {path!r}, {name}/{file_name}"
        actual, recorded = file_size(_join(root, name, file_name)), int(entry["files"][file_name])
        if actual is None:
            raise _missing_file(label)
        if actual != recorded:
            raise _size_mismatch(label, actual, MANIFEST, str(recorded))


def _open_shards(root: str, path: str, manifest: dict[str, Any]) -> list[_Shard]:
    """The store's shards. A store whose manifest summarises its shards opens on that alone,
    each ``shard.json`` (its block CRCs: about 4 bytes per KiB of data) read at the shard's
    first use (``_ShardFiles``): open time and memory do not grow with the store. A local
    store's files are checked now against the summary's sizes (``stat`` only), a remote one's by
    each file's first read. A store written before the summaries has every ``shard.json`` read
    and checked now, and the fingerprint against them."""
    dtype = np.dtype(manifest["dtype"])
    entries = manifest["shards"]
    lazy = _summarised(entries)
    raws = None if lazy else _read_shard_manifests(root, [e["name"] for e in entries])
    shards, first_sample, first_token, metas = [], 0, 0, []
    for i, entry in enumerate(entries):
        if lazy:
            _check_summary(entry, first_sample, path, dtype.itemsize)
            if not is_remote(root):
                _check_local_shard(root, path, entry)
            files = _ShardFiles(root, path, entry, first_sample, dtype)
        else:
            meta = _check_shard_manifest(raws[i], entry, first_sample, root, path, dtype)
            metas.append(meta)
            files = _ShardFiles(root, path, entry, first_sample, dtype, meta=meta)
        n, t = int(entry["num_samples"]), int(entry["num_tokens"])
        shards.append(_Shard(entry["name"], first_sample, n, first_token, t, files))
        first_sample += n
        first_token += t
    if (first_sample, first_token) != (manifest["num_samples"], manifest["num_tokens"]):
        raise StoreError(
            f"store {path!r}: the shards hold {first_sample} samples of {first_token} ids, the "
            f"manifest records {manifest['num_samples']} of {manifest['num_tokens']}; the "
            "tokens/offsets/features do not match the manifest, rebuild it"
        )
    if not lazy:
        _check_fingerprint(metas, manifest, path)
    for name, meta in manifest["files"].items():
        actual = file_size(_join(root, name))
        if actual != meta["size"]:
            state = "is missing" if actual is None else f"has size {actual}"
            raise StoreError(
                f"store {path!r}: file {name} {state}, the manifest records {meta['size']} bytes; "
                "the store is incomplete or was modified, rebuild it"
            )
    return shards


def _crc_bytes_read(file: BlockFile) -> int:
    """Bytes a file's side file of block CRCs fetched (0 for CRCs kept in ``shard.json``)."""
    crcs = getattr(file, "crc32c", None)
    return crcs.bytes_read if isinstance(crcs, SidecarCrcs) else 0


def _check_fingerprint(metas: list[dict[str, Any]], manifest: dict[str, Any], path: str) -> None:
    """The manifest's fingerprint is the one of these shard manifests."""
    if store_fingerprint(metas) != manifest["fingerprint"]:
        raise StoreError(
            f"store {path!r}: the shards' fingerprint {store_fingerprint(metas)} does not match the "
            f"manifest fingerprint {manifest['fingerprint']}; rebuild the store"
        )


def _as_rows(pos: np.ndarray, samples: np.ndarray | None) -> tuple[np.ndarray, Any]:
    """``(positions, None)`` without ``samples``; with them, positions as rows that each lie in
    one sample, ``[R, W]``, and those samples ``[R, 1]``: ``samples`` of shape ``[..., 1]``
    beside positions ``[..., W]`` keep their rows (no copy), any other broadcast makes one row
    a position."""
    if samples is None:
        return pos, None
    if pos.ndim >= 1 and samples.shape == (*pos.shape[:-1], 1):
        return pos.reshape(-1, pos.shape[-1]), samples.reshape(-1, 1)
    return pos.reshape(-1, 1), np.broadcast_to(samples, pos.shape).reshape(-1, 1)


class TokenStore:
    """Read side of a store: its manifest, and samples read in place from its shards."""

    def __init__(
        self,
        path: str,
        manifest: dict[str, Any],
        shards: Sequence[_Shard],
        *,
        tokenizer_of: TokenStore | None = None,
        cache_dir: str | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self._shards = list(shards)
        self._sample_base = np.array([s.first_sample for s in self._shards], dtype=np.int64)
        self._token_base = np.array([s.first_token for s in self._shards], dtype=np.int64)
        first = self._shards[0]
        self._one_whole_file = (
            len(self._shards) == 1
            and first.first_token == 0
            and (first.num_tokens * self.dtype.itemsize == first.files.sizes[TOKENS])
        )
        self._features: SampleFeatures | None = None
        self._tokenizer: Tokenizer | None = None
        self._tokenizer_of = tokenizer_of  # a concatenation reads its first part's tokenizer
        self.parts: tuple[TokenStore, ...] = ()  # a concatenation's stores, in order
        self._cache_dir = cache_dir
        self._opened_lazily = False  # set by open: verify() then checks the fingerprint

    @classmethod
    def open(
        cls,
        path: str,
        verify: bool = False,
        cache_dir: str | None = None,
        *,
        vocab_size: int | None = None,
    ) -> TokenStore:
        """Open the store at ``path`` (local, or any ``tf.io.gfile`` URL, read in place).

        Reads the manifests only and checks them against each other and the files' sizes
        (module docstring); ``verify=True`` also hashes the top-level files. Blocks of data
        are checked when first read; ``verify()`` checks them all now. With ``vocab_size``, a
        stored token id outside ``[0, vocab_size)`` is a ``VocabularyMismatchError``.
        ``cache_dir`` is where a remote store's tokenizer file is copied.
        """
        if vocab_size is not None:
            vocab_size = check_positive_int("vocab_size", vocab_size)
        path = str(path)
        root = path.rstrip("/") if is_remote(path) else os.path.abspath(os.path.expanduser(path))
        manifest = _load_manifest(root, path)
        store = cls(root, manifest, _open_shards(root, path, manifest), cache_dir=cache_dir)
        store._opened_lazily = not all(s.files.loaded for s in store._shards)
        if verify:
            store._verify_files()
        if vocab_size is not None:
            store.check_vocab(vocab_size)
        return store

    # --- checks -------------------------------------------------------------------------------

    def _verify_files(self) -> None:
        """sha256 of the top-level files (the tokenizer copy) against the manifest."""
        for name, meta in sorted(self.manifest["files"].items()):
            raw = _read_bytes(_join(self.path, name)) or b""
            actual = sha256_hex(raw)
            if actual != meta["sha256"]:
                raise StoreError(
                    f"store {self.path!r}: file {name} has sha256 {actual}, the manifest records "
                    f"{meta['sha256']}; the store is corrupt, rebuild it"
                )

    def verify(self) -> None:
        """Check every block of every shard file against its CRC32C (blocks this process
        already checked are skipped) and the top-level files' sha256; StoreError if not."""
        self._verify_files()
        for shard in self._shards:
            for name in SHARD_FILES:
                shard.files[name].verify()  # type: ignore[attr-defined]
        if self._opened_lazily:  # the shard manifests were read one by one: their fingerprint
            metas = [s.files.manifest() for s in self._shards]  # read again: none is kept
            _check_fingerprint(metas, self.manifest, self.path)

    @property
    def bytes_read(self) -> int:
        """Bytes this object's files fetched from storage so far (benches and tests; shards
        not read yet count nothing and are not opened by asking)."""
        files = [f for s in self._shards if s.files.loaded for f in s.files.values()]
        return sum(f.bytes_read + _crc_bytes_read(f) for f in files)

    @property
    def max_token_id(self) -> int:
        """The largest stored token id (recorded in the manifest)."""
        return int(self.manifest["max_token_id"])

    def check_vocab(self, vocab_size: int) -> None:
        """``VocabularyMismatchError`` unless every stored id is in ``[0, vocab_size)``."""
        vocab_size = check_positive_int("vocab_size", vocab_size)
        if self.max_token_id >= vocab_size:
            try:
                built_with = repr(self.tokenizer)
                needed = max(self.tokenizer.vocab_size, self.max_token_id + 1)
            except Exception:  # the error must not hide behind a tokenizer that fails to load
                built_with = repr(self.manifest.get("tokenizer"))
                needed = self.max_token_id + 1
            raise VocabularyMismatchError(
                f"store {self.path!r} holds token ids up to {self.max_token_id}, but "
                f"vocab_size={vocab_size} (the model's vocabulary) only covers ids in "
                f"[0, {vocab_size}); the store was built by {built_with}. Build the model with "
                f"vocab_size >= {needed}, or prepare the data with the tokenizer the model was "
                "built for"
            )

    # --- facts ------------------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def features(self) -> SampleFeatures:
        """Every sample's features, read from the shards on first use."""
        if self._features is None:
            self._features = self.features_range(0, self.num_samples)
        return self._features

    def features_range(self, start: int, stop: int) -> SampleFeatures:
        """Features of samples ``[start, stop)`` only, read by range from the shards holding them
        (memory and reads O(stop - start); chunked scoring and ordering of a big store)."""
        lengths, surprisal = self._columns_range((LENGTHS, SURPRISAL), start, stop)
        return SampleFeatures(lengths=lengths, surprisal_sum=surprisal)

    def lengths_range(self, start: int, stop: int) -> np.ndarray:
        """Stored lengths of samples ``[start, stop)``: ``features_range(start, stop).lengths``
        without reading ``surprisal_sum.bin`` (what a pass needing lengths alone reads, such
        as the ``size_based`` stored order's)."""
        return self._columns_range((LENGTHS,), start, stop)[0]

    def _columns_range(self, names: tuple[str, ...], start: int, stop: int) -> list[np.ndarray]:
        """The int64 feature files ``names`` at samples ``[start, stop)``, read by range."""
        start = check_int("start", start, minimum=0, maximum=self.num_samples)
        stop = check_int("stop", stop, minimum=start, maximum=self.num_samples)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for shard in self._shards:
            lo = max(start, shard.first_sample) - shard.first_sample
            hi = min(stop, shard.first_sample + shard.num_samples) - shard.first_sample
            if hi <= lo:
                continue
            for name, chunks in parts.items():
                chunks.append(shard.files[name].read(lo * 8, hi * 8).view("<i8"))

        def joined(chunks: list[np.ndarray]) -> np.ndarray:  # "<i8" is int64: no more copies
            if len(chunks) == 1:
                return chunks[0].astype(np.int64, copy=False)
            return np.concatenate(chunks or [np.zeros(0, dtype=np.int64)]).astype(
                np.int64, copy=False
            )

        return [joined(parts[name]) for name in names]

    def features_at(self, indices: Sequence[int] | np.ndarray) -> SampleFeatures:
        """Features of the samples ``indices`` (1-D, any order, repeats allowed), in that order,
        read element by element (memory and reads O(len(indices)), not O(store))."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        return SampleFeatures(
            lengths=self._feature_at(LENGTHS, idx), surprisal_sum=self._feature_at(SURPRISAL, idx)
        )

    def lengths_at(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored lengths (EOS included) of the samples ``indices`` only: ``features_at(
        indices).lengths`` without reading the other feature file (packing needs lengths
        alone, and each sample read checks its file's block once)."""
        return self._feature_at(LENGTHS, np.asarray(indices, dtype=np.int64).reshape(-1))

    def _feature_at(self, name: str, idx: np.ndarray) -> np.ndarray:
        """The int64 feature file ``name`` at the 1-D samples ``idx``."""
        self._check_index(idx)
        out = np.empty(idx.shape, dtype=np.int64)
        if idx.size == 0:
            return out
        for s, mask in self._by_shard(self._sample_base, idx):
            shard = self._shards[s]
            local = (idx if mask is None else idx[mask]) - shard.first_sample
            values = shard.files[name].take(local, "<i8")
            if mask is None:
                out[...] = values
            else:
                out[mask] = values
        return out

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None and self._tokenizer_of is not None:
            self._tokenizer = self._tokenizer_of.tokenizer
        if self._tokenizer is None:
            config = dict(self.manifest["tokenizer"])
            if "model_file" in config:
                config["model_path"] = self._local_file(config.pop("model_file"))
            self._tokenizer = tokenizer_from_config(config)
        return self._tokenizer

    def _local_file(self, name: str) -> str:
        """A local path holding the top-level file ``name`` (a remote store's is copied once,
        by content, to the cache: it is small)."""
        path = _join(self.path, name)
        if not is_remote(path):
            return path
        from highnoon.utils.files import atomic_write_bytes

        sha = self.manifest["files"][name]["sha256"]
        local = os.path.join(self._cache_dir or default_cache_dir(), "tokenizers", sha[:32], name)
        if not os.path.isfile(local) or sha256_file(local) != sha:
            atomic_write_bytes(local, _read_bytes(path) or b"")
        return local

    # --- reads --------------------------------------------------------------------------------

    def _check_index(self, indices: np.ndarray) -> None:
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise IndexError(
                f"sample indices must be in [0, {self.num_samples}), got values in "
                f"[{indices.min()}, {indices.max()}]"
            )

    def sample_bounds(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(store token position of each sample's first id, its length with EOS), int64, for
        the samples ``indices`` (any shape; reads their offsets only)."""
        idx = np.asarray(indices, dtype=np.int64)
        self._check_index(idx)
        if len(self._shards) == 1:  # the hot path: no masks, no copies
            shard = self._shards[0]
            local = idx - shard.first_sample
            both = shard.files[OFFSETS].take(np.stack([local, local + 1]), "<i8")
            return both[0] + shard.first_token, both[1] - both[0]
        starts = np.empty(idx.shape, dtype=np.int64)
        lengths = np.empty(idx.shape, dtype=np.int64)
        for s, mask in self._by_shard(self._sample_base, idx):
            shard = self._shards[s]
            local = (idx if mask is None else idx[mask]) - shard.first_sample
            both = shard.files[OFFSETS].take(np.stack([local, local + 1]), "<i8")
            start, length = shard.first_token + both[0], both[1] - both[0]
            if mask is None:
                starts[...], lengths[...] = start, length
            else:
                starts[mask], lengths[mask] = start, length
        return starts, lengths

    def read_tokens(self, positions: np.ndarray, samples: Any = None) -> np.ndarray:
        """The ids (store dtype) at store token ``positions`` (any shape; ``sample_bounds``
        gives where samples are). Blocks read for the first time are checked. ``samples``
        (broadcastable to ``positions``), when the caller knows them: the store index of the
        sample holding each position, so a store read in place looks up those samples only
        instead of searching for them (``remote_samples.py``). Pass them compact (``[rows, 1]``
        for ``[rows, width]`` positions of one sample a row, as the pipeline does): shards and
        samples are then found once a row, not once a position."""
        pos = np.asarray(positions, dtype=np.int64)
        if samples is not None:
            samples = np.asarray(samples, dtype=np.int64)
        if self._one_whole_file:  # the hot path: the file's own bounds are the store's
            return self._shards[0].files[TOKENS].take(pos, self.dtype, samples=samples)
        if pos.size == 0:
            return np.zeros(pos.shape, dtype=self.dtype)
        if pos.min() < 0 or pos.max() >= self.num_tokens:
            raise IndexError(
                f"token positions must be in [0, {self.num_tokens}), got values in "
                f"[{pos.min()}, {pos.max()}]"
            )
        rows, row_samples = _as_rows(pos, samples)
        out = np.empty(rows.shape, dtype=self.dtype)
        by_sample = row_samples is not None  # a row's shard from its sample: one look a row
        keys = row_samples[:, 0] if by_sample else rows
        for s, mask in self._by_shard(self._sample_base if by_sample else self._token_base, keys):
            shard = self._shards[s]
            local = (rows if mask is None else rows[mask]) - shard.first_token
            owners = None
            if by_sample:
                owners = (row_samples if mask is None else row_samples[mask]) - shard.first_sample
            values = shard.files[TOKENS].take(local, self.dtype, samples=owners)
            if mask is None:
                out[...] = values
            else:
                out[mask] = values
        return out.reshape(pos.shape)

    def _by_shard(self, bases: np.ndarray, values: np.ndarray) -> list[tuple[int, Any]]:
        """``(shard, mask of values in it)`` for every shard some values fall in (mask None:
        all of them; the common one-shard case costs no mask)."""
        if len(self._shards) == 1:
            return [(0, None)]
        which = np.searchsorted(bases, values, side="right") - 1
        present = np.flatnonzero(np.bincount(which.reshape(-1), minlength=bases.size))
        if present.size == 1:
            return [(int(present[0]), None)]
        return [(int(s), which == s) for s in present]

    def sample(self, i: int) -> np.ndarray:
        """Token ids of sample ``i`` (int64, ending with EOS)."""
        flat, _ = self.gather([i])
        return flat

    def samples(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Token ids of several samples, gathered with one vectorised read."""
        flat, offsets = self.gather(indices)
        return np.split(flat, offsets[1:-1])

    def gather(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flat int64 ids, offsets) of the samples ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        starts, lengths = self.sample_bounds(idx)
        out_offsets = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_offsets[1:])
        positions = np.repeat(starts - out_offsets[:-1], lengths) + np.arange(out_offsets[-1])
        tokens = self.read_tokens(positions, samples=np.repeat(idx, lengths))
        return tokens.astype(np.int64), out_offsets

    # --- reading ahead, for stores read in place (remote_blocks.py) ----------------------------

    def block_files(self) -> list[BlockFile]:
        """Every file this store reads through, shard by shard (counters for benches, tests)."""
        return [shard.files[name] for shard in self._shards for name in SHARD_FILES]

    def _shards_read_in_place(self) -> list[_Shard]:
        """The shards read by byte range (a path with a scheme: ``gs://``, ``file://``) rather
        than memory-mapped."""
        return [shard for shard in self._shards if is_remote(shard.files.root)]

    @property
    def reads_in_place(self) -> bool:
        """Whether some shard is read by byte range rather than memory-mapped."""
        return bool(self._shards_read_in_place())

    @property
    def reads_ahead(self) -> bool:
        """Whether reading ahead may pay: some tokens file is read by range (a path with a
        scheme) into a block cache (``RangedFile.prefetches``)."""
        return self._reads_ahead(lambda tokens: getattr(tokens, "prefetches", False))

    @property
    def reads_ahead_now(self) -> bool:
        """Whether a read-ahead would be taken now: as ``reads_ahead``, and some such file's
        reads wait (``RangedFile.reads_ahead_now``). The pipeline asks it before each call's
        read-ahead, so a store whose reads do not wait costs no look-up of the call's samples
        (about 30 us a call)."""
        return self._reads_ahead(lambda tokens: getattr(tokens, "reads_ahead_now", False))

    def _reads_ahead(self, takes: Callable[[BlockFile], bool]) -> bool:
        """An unread remote shard (it reads ahead into the cache, when that is on) or a read
        shard whose tokens file ``takes`` read-ahead."""
        if any(not shard.files.loaded for shard in self._shards_read_in_place()):
            from highnoon.data.remote_blocks import block_cache

            if block_cache().enabled:  # an unread remote shard will read ahead into it
                return True
        return any(takes(shard.files[TOKENS]) for shard in self._shards if shard.files.loaded)

    def prefetch_samples(self, indices: np.ndarray) -> None:
        """Fetch the samples ``indices`` whole in the background, into the block cache (a hint:
        memory-mapped files ignore it). A tokens file read by sample takes the samples as they
        are (no offsets read here: a cached sample costs one cache look-up); one read by block
        gets their byte ranges."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)  # the files drop repeats
        self._check_index(idx)
        if idx.size == 0:
            return
        for s, mask in self._by_shard(self._sample_base, idx):
            shard = self._shards[s]
            tokens = shard.files[TOKENS]
            local = (idx if mask is None else idx[mask]) - shard.first_sample
            if hasattr(tokens, "prefetch_samples"):
                tokens.prefetch_samples(local)
            elif hasattr(tokens, "prefetch"):
                both = shard.files[OFFSETS].take(np.stack([local, local + 1]), "<i8")
                item = self.dtype.itemsize
                tokens.prefetch(zip((both[0] * item).tolist(), (both[1] * item).tolist()))

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"TokenStore({self.path!r}, num_samples={self.num_samples}, "
            f"num_tokens={self.num_tokens}, shards={self.num_shards}, "
            f"fingerprint={self.fingerprint[:12]})"
        )


def concatenate(stores: Sequence[TokenStore], path: str, manifest: dict[str, Any]) -> TokenStore:
    """A store whose samples are those of ``stores``, one store after the other, read in place
    from their shards (nothing is copied). ``manifest`` describes it (``num_samples``,
    ``num_tokens``, ``max_token_id`` and ``dtype`` are filled in); the stores must share one
    tokenizer (the first one's is used). The view's ``parts`` are ``stores``."""
    if not stores:
        raise InvalidArgumentError("concatenate needs at least one store")
    dtypes = {s.dtype.str for s in stores}
    if len(dtypes) != 1:
        raise InvalidArgumentError(
            f"the stores hold ids of different dtypes {sorted(dtypes)}: they were built with "
            "different tokenizers"
        )
    shards, first_sample, first_token = [], 0, 0
    for store in stores:
        for shard in store._shards:
            shards.append(replace(shard, first_sample=first_sample, first_token=first_token))
            first_sample += shard.num_samples
            first_token += shard.num_tokens
    full = {
        **manifest,
        "num_samples": first_sample,
        "num_tokens": first_token,
        "max_token_id": max(s.max_token_id for s in stores),
        "dtype": stores[0].dtype.str,
        "tokenizer": stores[0].manifest["tokenizer"],
    }
    view = TokenStore(path, full, shards, tokenizer_of=stores[0])
    view.parts = tuple(stores)  # each part keeps its own stored orders and score scale
    return view


def head(store: TokenStore, count: int) -> TokenStore:
    """The first ``count`` samples of ``store``, read in place (a prepared store under
    ``max_samples``); its fingerprint covers the store's and ``count``."""
    count = check_positive_int("count", count)
    if count >= store.num_samples:
        return store
    shards, tokens = [], 0
    for shard in store._shards:
        if shard.first_sample >= count:
            break
        n = min(shard.num_samples, count - shard.first_sample)
        if n < shard.num_samples:  # the cut shard: where its sample n starts
            end = int(shard.files[OFFSETS].take(np.array([n]), "<i8")[0])
            shard = replace(shard, num_samples=n, num_tokens=end)
        shards.append(shard)
        tokens += shard.num_tokens
    manifest = {
        **store.manifest,
        "num_samples": count,
        "num_tokens": tokens,
        "fingerprint": sha256_hex(f"{store.fingerprint}:head:{count}"),
        "head": {"of": store.fingerprint, "count": count},
    }
    return TokenStore(store.path, manifest, shards, tokenizer_of=store)


def check_enough_samples(store: TokenStore, global_batch_size: int) -> None:
    """Raise an InvalidArgumentError when the store cannot fill one global batch."""
    if store.num_samples < int(global_batch_size):
        raise InvalidArgumentError(
            f"the dataset at {store.path!r} has {store.num_samples} samples, fewer than one "
            f"global batch (global_batch_size={global_batch_size}); add data or lower the batch size"
        )
