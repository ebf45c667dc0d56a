"""The indexed token store: tokenised samples on disk, read through a memory map.

A store is a directory:

* ``tokens.bin``   every sample's ids back to back (``uint16`` when the vocabulary has at most
  65535 ids, else ``uint32``; little endian), read with ``np.memmap``.
* ``offsets.npy``  int64 ``[num_samples + 1]``: sample ``i`` is ``tokens[offsets[i]:offsets[i+1]]``.
* ``features.npz`` ``lengths`` and ``surprisal_sum`` (int64, ``scoring.features_from_flat`` with
  unigram counts over the whole store), so hosts score samples without rescanning the corpus.
* ``tokenizer.model`` or ``tokenizer.json`` (SentencePiece and Hugging Face tokenizer.json
  stores) a copy of the tokenizer's file (``Tokenizer.store_file``), so the store is
  self-contained; its sha256 is checked with the other files and again when the store's
  tokenizer is loaded.
* ``manifest.json`` written last: format version, tokenizer config, counts, dtype, file sizes,
  the sha256 content fingerprint of tokens + offsets, the sha256 of every other file, the
  largest stored token id, source descriptions and skip counts.

**Sample format.** A text sample is stored as ``encode(text) + [eos_id]``; token samples are
stored as given plus ``eos_id``. No BOS: the pipeline prepends ``bos_id`` to every row. Samples
whose encoding is empty are skipped and counted in ``manifest["skipped"]["empty"]``.

**Atomicity.** ``build_token_store`` writes into ``<path>.tmp-<owner>-<random>``, fsyncs every
file and the directory, then renames it to ``path``. A killed build leaves at most a ``.tmp-``
directory, never ``path``; a directory without a complete manifest is rejected by
``TokenStore.open``. ``<owner>`` names the building process (host key, pid, start time), so
``remove_stale_build_dirs`` (run by every build and by ``prepare_stage_store``) removes the
temporaries of dead builders and never those of a live one.

**Verification.** ``TokenStore.open(verify=True)`` (what training uses, through
``prepare_stage_store``) recomputes the content fingerprint (sha256 over ``tokens.bin`` and the
offsets, streamed through the memory map) and the sha256 of the small files, once per process
per file version (a file changed in place changes its ctime and is hashed again). A mismatch is a
``StoreError``. ``vocab_size=`` makes a token id outside ``[0, vocab_size)`` a
``VocabularyMismatchError`` at open. Cost: about 1 s per GB of tokens on one core (sha256 at
~1 GB/s with SHA extensions); ``bench/bench_data.py --verify_mb 1024`` measures it.

**Remote stores.** A path with a scheme (``gs://...``) is copied with ``tf.io.gfile`` to a local
cache directory (``cache_dir``, default ``$HIGHNOON_CACHE_DIR`` or ``~/.cache/highnoon/stores``)
keyed by the path, then memory-mapped; a cached copy whose manifest matches is reused. Building
to a remote path builds locally first and copies the files, manifest last.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from highnoon.data.features import SampleFeatures, features_from_flat
from highnoon.data.tokenizers import (
    Tokenizer,
    load_tokenizer,
    tokenizer_from_config,
)
from highnoon.utils import processes
from highnoon.utils.files import is_remote, publish_directory
from highnoon.utils.hashing import new_sha256, sha256_file, sha256_hex
from highnoon.utils.validation import InvalidArgumentError, check_positive_int

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENS = "tokens.bin"
OFFSETS = "offsets.npy"
FEATURES = "features.npz"
SAMPLE_FORMAT = "encode(text) + [eos_id]; the pipeline prepends bos_id"
_BATCH_CHARS = 1 << 22  # texts encoded together per batch (about 4 MB)


class StoreError(ValueError):
    """A store directory is missing, incomplete, or does not match its manifest."""


class StoreExistsError(ValueError):
    """``build_token_store`` was asked to write where a store already is."""


class VocabularyMismatchError(ValueError):
    """A store holds token ids the model cannot embed (not corruption: rebuilding won't help)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id fits (vocab <= 65535), else ``uint32``."""
    return np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")


_VERIFY_CHUNK = 1 << 23  # token ids hashed per step (16-32 MB of the memory map)


def _scan_tokens(tokens: np.ndarray, offsets: np.ndarray) -> tuple[str, int]:
    """(sha256 over the token bytes then the little-endian int64 offsets, largest token id).

    Streams the memory map in chunks: no copy of the store is made, and the pages read are the
    ones training reads next.
    """
    digest = new_sha256()
    largest = -1
    for start in range(0, tokens.size, _VERIFY_CHUNK):
        chunk = np.ascontiguousarray(tokens[start : start + _VERIFY_CHUNK])
        digest.update(memoryview(chunk).cast("B"))
        largest = max(largest, int(chunk.max()))
    digest.update(np.asarray(offsets, dtype="<i8").tobytes())
    return digest.hexdigest(), largest


def _file_version(path: str) -> tuple[Any, ...]:
    """Identifies one version of a file: an in-place change moves ctime (users cannot set it)."""
    st = os.stat(path)
    return (
        os.path.realpath(path),
        st.st_dev,
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


# (file versions of a store) -> largest token id: stores verified by this process
_VERIFIED: dict[tuple[Any, ...], int] = {}
_VERIFIED_LOCK = threading.Lock()
# File times tick coarsely (a few ms): a file changed within this many seconds of its check
# could change again with the same ctime, so such a check is not remembered (as git does).
_RACY_SECONDS = 2.0


# --- temporaries of killed builds ------------------------------------------------------------

_OWNED_TEMP = re.compile(
    r"^(?P<base>.+)\.(?P<kind>tmp|old)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]{8}$"
)
_LEGACY_TEMP = re.compile(r"^(?P<base>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}$")
STALE_TEMP_SECONDS = 6 * 3600  # untouched this long, a temporary of another host's build is dead


def _temp_name(path: str, kind: str) -> str:
    """``<path>.<kind>-<host key>-<pid>-<start>-<random>``: the owner is part of the name."""
    start = processes.process_start(os.getpid()) or 0
    return f"{path}.{kind}-{processes.host_key()}-{os.getpid()}-{start}-{secrets.token_hex(4)}"


def _last_change(path: str) -> float:
    """The latest mtime/ctime of a directory and everything in it (a rename moves ctime)."""
    st = os.lstat(path)
    latest = max(st.st_mtime, st.st_ctime)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):  # removed meanwhile
                st = os.lstat(os.path.join(root, name))
                latest = max(latest, st.st_mtime, st.st_ctime)
    return latest


def _temp_owner_gone(path: str, match: re.Match[str], stale_seconds: float) -> str | None:
    """Why the temporary at ``path`` is abandoned, or None when its builder may still run."""
    if match.re is _OWNED_TEMP and match["host"] == processes.host_key():
        pid, start = int(match["pid"]), int(match["start"]) or None
        if processes.pid_alive(pid, start):
            return None
        return f"its builder (pid {pid} on this host) is gone"
    idle = time.time() - _last_change(path)
    if idle < stale_seconds:
        return None
    owner = "another host" if match.re is _OWNED_TEMP else "an unknown process"
    return f"it was written by {owner} and untouched for {idle / 3600:.1f} h"


def remove_stale_build_dirs(
    directory: str, *, base: str | None = None, stale_seconds: float = STALE_TEMP_SECONDS
) -> list[str]:
    """Remove the ``.tmp-``/``.old-`` directories killed store builds left in ``directory``.

    Only ``<base>.tmp-...`` ones when ``base`` is given. A temporary is removed when its builder
    ran on this host and is dead (pid gone, or reused by another process), or, for another
    host's (or an older naming's) temporary, when nothing in it changed for ``stale_seconds``.
    A live builder's temporary is never touched. Logs a warning per removal; returns the paths.
    """
    if is_remote(directory) or not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        match = _OWNED_TEMP.match(name) or _LEGACY_TEMP.match(name)
        path = os.path.join(directory, name)
        if not match or (base is not None and match["base"] != base) or not os.path.isdir(path):
            continue
        try:
            reason = _temp_owner_gone(path, match, stale_seconds)
        except OSError:  # removed meanwhile by someone else
            continue
        if reason is None:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            logging.warning(
                "removed %s, the temporary directory of a killed token store build (%s)",
                path,
                reason,
            )
            removed.append(path)
    return removed


def _is_text(sample: Any) -> bool:
    return isinstance(sample, str)


class TokenBatch(NamedTuple):
    """Many token samples at once (flat ids + lengths, no EOS): a fast path for
    ``build_token_store`` when the samples are already token ids (e.g. mixing stores)."""

    flat: np.ndarray
    lengths: np.ndarray


class _Writer:
    """Appends encoded samples (plus EOS) to ``tokens.bin`` and tracks offsets and the hash."""

    def __init__(self, directory: str, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.file = open(os.path.join(directory, TOKENS), "wb")  # noqa: SIM115 (closed in close())
        self.digest = new_sha256()
        self.lengths: list[np.ndarray] = []
        self.num_tokens = 0
        self.skipped_empty = 0
        self.max_id = -1

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append samples given as flat ids + lengths (without EOS); empty ones are skipped."""
        keep = lengths > 0
        self.skipped_empty += int((~keep).sum())
        if not keep.all():
            lengths = lengths[keep]  # empty samples own no tokens, so ``flat`` is unchanged
        if lengths.size == 0:
            return
        if flat.size and (flat.min() < 0 or flat.max() >= self.tokenizer.vocab_size):
            raise InvalidArgumentError(
                f"token ids must be in [0, {self.tokenizer.vocab_size}) for {self.tokenizer!r}, "
                f"got values in [{flat.min()}, {flat.max()}]"
            )
        out_lengths = lengths + 1
        out = np.empty(int(out_lengths.sum()), dtype=self.dtype)
        eos_pos = np.cumsum(out_lengths) - 1
        is_token = np.ones(out.size, dtype=bool)
        is_token[eos_pos] = False
        out[is_token] = flat
        out[eos_pos] = self.tokenizer.eos_id
        data = out.tobytes()
        self.file.write(data)
        self.digest.update(data)
        self.lengths.append(out_lengths)
        self.num_tokens += out.size
        self.max_id = max(self.max_id, int(out.max()))

    def close(self) -> np.ndarray:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int64)
        offsets = np.zeros(lengths.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets


def _write_json(path: str, obj: Any) -> None:
    """A file inside a store being built (published with its directory, so no rename here)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)


class LineProgress:
    """A store build's progress where standard error is no terminal (a log file, CI, a captured
    notebook cell): tqdm redraws its bar with carriage returns there, which run together on one
    line. This writes whole lines instead: one every ``every_seconds`` while samples come, and
    one when the build finishes."""

    def __init__(self, desc: str, stream: Any = None, every_seconds: float = 30.0) -> None:
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.every_seconds = every_seconds
        self.n = 0
        self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            print(f"{self.desc}: {self.n} samples so far", file=self.stream, flush=True)

    def close(self) -> None:
        print(f"{self.desc}: {self.n} samples, done", file=self.stream, flush=True)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        del n

    def close(self) -> None:
        pass


def _progress_bar(desc: str, progress: bool) -> Any:
    """tqdm's bar on a terminal, ``LineProgress`` elsewhere, nothing when ``progress`` is off."""
    if not progress:
        return _NoProgress()
    if not sys.stderr.isatty():
        return LineProgress(desc)
    from tqdm import tqdm

    return tqdm(desc=desc, unit=" samples", file=sys.stderr, mininterval=0.5)


def _encode_chunks(
    samples: Iterable[Any], tokenizer: Tokenizer, progress: Any
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Group samples into batches of about 4 MB of text and encode each batch at once."""
    texts: list[str] = []
    chars = 0
    for sample in samples:
        if _is_text(sample):
            texts.append(sample)
            chars += len(sample)
            if chars >= _BATCH_CHARS:
                yield tokenizer.encode_batch(texts)
                progress.update(len(texts))
                texts, chars = [], 0
            continue
        if texts:
            yield tokenizer.encode_batch(texts)
            progress.update(len(texts))
            texts, chars = [], 0
        if isinstance(sample, TokenBatch):
            yield np.asarray(sample.flat, np.int64), np.asarray(sample.lengths, np.int64)
            progress.update(len(sample.lengths))
            continue
        ids = np.asarray(sample)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise InvalidArgumentError(
                "a sample must be a str or a 1-D integer token array, got "
                f"{type(sample).__name__} with shape {ids.shape}"
            )
        yield ids.astype(np.int64), np.array([ids.size], dtype=np.int64)
        progress.update(1)
    if texts:
        yield tokenizer.encode_batch(texts)
        progress.update(len(texts))


def build_token_store(
    samples: Iterable[Any],
    tokenizer: Tokenizer | str | dict,
    path: str,
    *,
    sources: Sequence[dict[str, Any]] | None = None,
    skipped: dict[str, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    extra: dict[str, Any] | None = None,
) -> TokenStore:
    """Tokenise ``samples`` (str texts or 1-D int token arrays) into a store at ``path``.

    ``sources`` (JSON-able source descriptions) and ``skipped`` (counts of samples a source
    dropped) go into the manifest. An existing store at ``path`` is an error unless
    ``overwrite=True``. An empty result (no non-empty sample) is a ValueError. Shows a tqdm
    progress bar on stderr when ``progress`` is true. Returns the opened store.
    """
    tokenizer = load_tokenizer(tokenizer)
    if is_remote(path):
        import tempfile

        import tensorflow as tf

        local = tempfile.mkdtemp(prefix="highnoon-store-")
        store_dir = os.path.join(local, "store")
        build_token_store(
            samples, tokenizer, store_dir, sources=sources, skipped=skipped,
            progress=progress, extra=extra,
        )  # fmt: skip
        if tf.io.gfile.exists(os.path.join(path, MANIFEST)):
            if not overwrite:
                raise InvalidArgumentError(
                    f"path={path!r} already holds a token store; pass overwrite=True"
                )
            tf.io.gfile.remove(os.path.join(path, MANIFEST))
        tf.io.gfile.makedirs(path)
        names = [*sorted(n for n in os.listdir(store_dir) if n != MANIFEST), MANIFEST]
        for name in names:
            tf.io.gfile.copy(os.path.join(store_dir, name), f"{path}/{name}", overwrite=True)
        shutil.rmtree(local)
        return TokenStore.open(path)

    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise StoreExistsError(f"path={path!r} already exists; pass overwrite=True to replace it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_build_dirs(parent, base=os.path.basename(path))
    tmp = _temp_name(path, "tmp")
    os.makedirs(tmp)
    try:
        bar = _progress_bar(f"building {os.path.basename(path)}", progress)
        started = time.perf_counter()
        writer = _Writer(tmp, tokenizer)
        try:
            for flat, lengths in _encode_chunks(samples, tokenizer, bar):
                writer.add(flat, lengths)
        finally:
            bar.close()
            offsets = writer.close()
        if offsets.size <= 1:
            raise InvalidArgumentError(
                f"the dataset for path={path!r} is empty: no sample had any token "
                f"({writer.skipped_empty} empty samples skipped); sources={list(sources or [])}"
            )
        np.save(os.path.join(tmp, OFFSETS), offsets)
        tokens = np.memmap(os.path.join(tmp, TOKENS), dtype=writer.dtype, mode="r")
        features = features_from_flat(tokens, offsets)
        del tokens
        np.savez(
            os.path.join(tmp, FEATURES),
            lengths=features.lengths,
            surprisal_sum=features.surprisal_sum,
        )
        digest = writer.digest
        digest.update(offsets.astype("<i8").tobytes())
        tokenizer_config = tokenizer.to_config()
        if tokenizer.store_file:  # a tokenizer read from a file: keep a copy beside the tokens
            shutil.copyfile(tokenizer.model_path, os.path.join(tmp, tokenizer.store_file))
            tokenizer_config = {
                **tokenizer.fingerprint_config(),
                "model_file": tokenizer.store_file,
            }
        skips = {"empty": writer.skipped_empty, **(skipped or {})}
        checksums = {n: sha256_file(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))}
        del checksums[TOKENS]  # covered by the fingerprint
        manifest = {
            "format_version": FORMAT_VERSION,
            "tokenizer": tokenizer_config,
            "num_samples": int(offsets.size - 1),
            "num_tokens": int(offsets[-1]),
            "dtype": writer.dtype.str,
            "fingerprint": digest.hexdigest(),
            "max_token_id": writer.max_id,
            "files": {n: os.path.getsize(os.path.join(tmp, n)) for n in sorted(os.listdir(tmp))},
            "sha256": checksums,
            "sample_format": SAMPLE_FORMAT,
            "sources": list(sources or []),
            "skipped": skips,
            "build_seconds": round(time.perf_counter() - started, 3),
            **(extra or {}),
        }
        _write_json(os.path.join(tmp, MANIFEST), manifest)
        try:
            publish_directory(tmp, path, _temp_name(path, "old"))
        except FileExistsError as err:  # another process finished the same path first
            raise StoreExistsError(
                f"path={path!r} already exists (created concurrently); pass overwrite=True "
                "to replace it"
            ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenStore.open(path)


def default_cache_dir() -> str:
    """``$HIGHNOON_CACHE_DIR`` or ``~/.cache/highnoon``."""
    return os.environ.get("HIGHNOON_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "highnoon"
    )


def _local_copy(path: str, cache_dir: str | None, *, refresh: bool = False) -> str:
    """Copy a remote store to the local cache (reused when its manifest matches, unless
    ``refresh``)."""
    import tensorflow as tf

    manifest_path = f"{path.rstrip('/')}/{MANIFEST}"
    if not tf.io.gfile.exists(manifest_path):
        raise StoreError(f"path={path!r} has no {MANIFEST}: not a complete token store")
    with tf.io.gfile.GFile(manifest_path, "rb") as f:
        remote_manifest = f.read()
    key = sha256_hex(path, chars=16)
    local = os.path.join(cache_dir or os.path.join(default_cache_dir(), "stores"), key)
    local_manifest = os.path.join(local, MANIFEST)
    if os.path.exists(local_manifest) and not refresh:
        with open(local_manifest, "rb") as f:
            if f.read() == remote_manifest:
                return local
    remove_stale_build_dirs(os.path.dirname(local), base=os.path.basename(local))
    tmp = _temp_name(local, "tmp")
    os.makedirs(tmp)
    for name in json.loads(remote_manifest)["files"]:
        tf.io.gfile.copy(f"{path.rstrip('/')}/{name}", os.path.join(tmp, name), overwrite=True)
    with open(os.path.join(tmp, MANIFEST), "wb") as f:
        f.write(remote_manifest)
    publish_directory(tmp, local, _temp_name(local, "old"))
    return local


class TokenStore:
    """Read side of a store: memory-mapped tokens, offsets, features and the manifest."""

    def __init__(self, path: str, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self.dtype = np.dtype(manifest["dtype"])
        self.tokens = np.memmap(os.path.join(path, TOKENS), dtype=self.dtype, mode="r")
        try:
            self.offsets = np.load(os.path.join(path, OFFSETS), allow_pickle=False)
            with np.load(os.path.join(path, FEATURES), allow_pickle=False) as data:
                self._features = SampleFeatures(
                    lengths=data["lengths"].astype(np.int64),
                    surprisal_sum=data["surprisal_sum"].astype(np.int64),
                )
        except Exception as err:  # numpy/zipfile raise many types for damaged files
            raise StoreError(
                f"store {path!r}: {OFFSETS} or {FEATURES} is unreadable "
                f"({type(err).__name__}: {err}); the store is corrupt, rebuild it"
            ) from err
        self._tokenizer: Tokenizer | None = None
        self._max_token_id: int | None = None

    @classmethod
    def open(
        cls,
        path: str,
        verify: bool = False,
        cache_dir: str | None = None,
        *,
        vocab_size: int | None = None,
    ) -> TokenStore:
        """Open the store at ``path`` (local, or remote via a local cache copy).

        Always checks the manifest is complete and every file has the recorded size and shape.
        ``verify=True`` also checks the content: the sha256 fingerprint of tokens + offsets and
        the sha256 of the other files, once per process per file version (module docstring).
        Any mismatch is a StoreError. With ``vocab_size``, a stored token id outside
        ``[0, vocab_size)`` is a ``VocabularyMismatchError``. A remote store whose local copy
        fails verification is copied again once.
        """
        if vocab_size is not None:
            vocab_size = check_positive_int("vocab_size", vocab_size)
        path = str(path)
        if not is_remote(path):
            store = cls._open_local(os.path.abspath(path), path)
            if verify:
                store.verify()
        else:
            store = cls._open_local(_local_copy(path, cache_dir), path)
            if verify:
                try:
                    store.verify()
                except StoreError as err:
                    logging.warning(
                        "local copy of %s failed verification (%s); copying again", path, err
                    )
                    store = cls._open_local(_local_copy(path, cache_dir, refresh=True), path)
                    store.verify()
        if vocab_size is not None:
            store.check_vocab(vocab_size)
        return store

    @classmethod
    def _open_local(cls, local: str, path: str) -> TokenStore:
        """The structural checks of ``open``: manifest, file sizes, shapes (no content hash)."""
        manifest_path = os.path.join(local, MANIFEST)
        if not os.path.isdir(local):
            raise StoreError(f"path={path!r} does not exist or is not a directory")
        if not os.path.isfile(manifest_path):
            raise StoreError(
                f"path={path!r} has no {MANIFEST}: an incomplete (interrupted) build or not a "
                "token store; rebuild it"
            )
        try:
            with open(manifest_path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise StoreError(f"{manifest_path!r} is not valid JSON: {err}") from err
        if not isinstance(manifest, dict):
            raise StoreError(f"{manifest_path!r} is not a JSON object; rebuild the store")
        required = ("format_version", "num_samples", "num_tokens", "dtype", "fingerprint", "files")
        missing = [k for k in required if k not in manifest]
        if missing:
            raise StoreError(f"{manifest_path!r} is incomplete: missing keys {missing}")
        if manifest["format_version"] != FORMAT_VERSION:
            raise StoreError(
                f"store {path!r} has format_version={manifest['format_version']}, this code reads "
                f"format_version={FORMAT_VERSION}; rebuild the store"
            )
        for name, size in manifest["files"].items():
            file_path = os.path.join(local, name)
            actual = os.path.getsize(file_path) if os.path.isfile(file_path) else None
            if actual != size:
                raise StoreError(
                    f"store {path!r}: file {name} has size {actual}, manifest records {size}; "
                    "the store is corrupt or was modified, rebuild it"
                )
        store = cls(local, manifest)
        n, t = manifest["num_samples"], manifest["num_tokens"]
        off = store.offsets
        if (
            off.shape != (n + 1,)
            or store.tokens.size != t
            or off[0] != 0
            or off[-1] != t
            or np.any(np.diff(off) < 0)
            or store._features.lengths.shape != (n,)
        ):
            raise StoreError(
                f"store {path!r}: tokens/offsets/features do not match the manifest "
                f"(num_samples={n}, num_tokens={t}); rebuild it"
            )
        return store

    def _versions(self) -> tuple[Any, ...]:
        names = sorted([*self.manifest["files"], MANIFEST])
        return tuple(_file_version(os.path.join(self.path, n)) for n in names)

    def verify(self) -> None:
        """Check the content against the manifest (sha256 of every file); StoreError if not.

        Hashes at most once per process per version of the store's files: a second store
        object for the same unchanged files costs one ``stat`` per file.
        """
        versions = self._versions()
        with _VERIFIED_LOCK:
            known = _VERIFIED.get(versions)
        if known is not None:
            self._max_token_id = known
            return
        started = time.time()
        for name, expected in sorted(self.manifest.get("sha256", {}).items()):
            actual = sha256_file(os.path.join(self.path, name))
            if actual != expected:
                raise StoreError(
                    f"store {self.path!r}: file {name} has sha256 {actual}, the manifest records "
                    f"{expected}; the store is corrupt, rebuild it"
                )
        fingerprint, largest = _scan_tokens(self.tokens, self.offsets)
        if fingerprint != self.manifest["fingerprint"]:
            raise StoreError(
                f"store {self.path!r}: content fingerprint {fingerprint} does not match the "
                f"manifest fingerprint {self.manifest['fingerprint']}; the store is corrupt "
                "(changed in place), rebuild it"
            )
        self._max_token_id = largest
        if started - max(v[-1] for v in versions) / 1e9 > _RACY_SECONDS:
            with _VERIFIED_LOCK:
                _VERIFIED[versions] = largest

    @property
    def max_token_id(self) -> int:
        """The largest stored token id: from verification, the manifest, or one scan."""
        if self._max_token_id is None:
            recorded = self.manifest.get("max_token_id")
            if isinstance(recorded, int) and not isinstance(recorded, bool):
                self._max_token_id = recorded
            else:  # stores written before the manifest recorded it
                self._max_token_id = max(
                    (int(self.tokens[i : i + _VERIFY_CHUNK].max())
                     for i in range(0, self.tokens.size, _VERIFY_CHUNK)),
                    default=-1,
                )  # fmt: skip
        return self._max_token_id

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

    @property
    def num_samples(self) -> int:
        return int(self.manifest["num_samples"])

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def features(self) -> SampleFeatures:
        return self._features

    @property
    def fingerprint(self) -> str:
        return str(self.manifest["fingerprint"])

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            config = dict(self.manifest["tokenizer"])
            if "model_file" in config:
                config["model_path"] = os.path.join(self.path, config.pop("model_file"))
            self._tokenizer = tokenizer_from_config(config)
        return self._tokenizer

    def _check_index(self, indices: np.ndarray) -> None:
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise IndexError(
                f"sample indices must be in [0, {self.num_samples}), got values in "
                f"[{indices.min()}, {indices.max()}]"
            )

    def sample(self, i: int) -> np.ndarray:
        """Token ids of sample ``i`` (int64, ending with EOS)."""
        self._check_index(np.asarray([i]))
        return np.asarray(self.tokens[self.offsets[i] : self.offsets[i + 1]], dtype=np.int64)

    def samples(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Token ids of several samples, gathered with one vectorised read."""
        flat, offsets = self.gather(indices)
        return np.split(flat, offsets[1:-1])

    def gather(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(flat int64 ids, offsets) of the samples ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        self._check_index(idx)
        starts = self.offsets[idx]
        lengths = self.offsets[idx + 1] - starts
        out_offsets = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=out_offsets[1:])
        positions = np.repeat(starts - out_offsets[:-1], lengths) + np.arange(out_offsets[-1])
        return np.asarray(self.tokens[positions], dtype=np.int64), out_offsets

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"TokenStore({self.path!r}, num_samples={self.num_samples}, "
            f"num_tokens={self.num_tokens}, fingerprint={self.fingerprint[:12]})"
        )


def check_enough_samples(store: TokenStore, global_batch_size: int) -> None:
    """Raise ValueError when the store cannot fill one global batch."""
    if store.num_samples < int(global_batch_size):
        raise InvalidArgumentError(
            f"the dataset at {store.path!r} has {store.num_samples} samples, fewer than one "
            f"global batch (global_batch_size={global_batch_size}); add data or lower the batch size"
        )
