"""Building a token store in one process: samples in, a format-2 store (``shards.py``) out.

``build_token_store(samples, tokenizer, path)`` encodes texts in batches of about 4 MB, writes
shards of at most about ``max_shard_tokens`` ids (``ShardSequence``: a shard is closed once it
reaches that many, or the next non-empty sample begins another read unit, and the next sample
has tokens), sums the shards' unigram counts, writes each shard's features
under those corpus counts, and writes ``manifest.json`` last: the same steps, with the same
writer, as a preparation spread over Beam workers, so both give the same store.

**Atomicity.** Everything is written into ``<path>.tmp-<owner>-<random>``, fsynced, then renamed
to ``path``. A killed build leaves at most a ``.tmp-`` directory, never ``path``; ``<owner>``
names the building process (host key, pid, start time), so ``remove_stale_build_dirs`` (run by
every build and by ``prepare_stage_store``) removes the temporaries of dead builders and never
those of a live one. Building to a remote path (``gs://``...) builds locally, then copies the
files with ``tf.io.gfile``, ``manifest.json`` last.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from absl import logging

from highnoon.data.read_units import UNIT_END
from highnoon.data.shards import (
    BLOCK_BYTES,
    MANIFEST,
    ShardTokens,
    ShardWriter,
    canonical_json,
    copy_tokenizer_file,
    shard_name,
    store_manifest,
    unit_shard_name,
    write_shard_features,
)
from highnoon.data.store_errors import StoreExistsError
from highnoon.data.tokenizers import Tokenizer, load_tokenizer
from highnoon.utils import processes
from highnoon.utils.files import fsync_tree, is_remote, publish_directory
from highnoon.utils.validation import InvalidArgumentError, check_positive_int

if TYPE_CHECKING:
    from highnoon.data.store import TokenStore

MAX_SHARD_TOKENS = 1 << 28  # ids per shard (512 MB of uint16): a few hundred shards per TB
# texts encoded together per batch (about 1 MB): big enough that numpy's per-call cost is
# small, small enough that a batch's arrays (8 bytes an id) stay in the cache and are reused
# from the heap instead of faulted in fresh (BENCHMARKS.md, "What bounds two processes")
BATCH_CHARS = 1 << 20


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


def publish_store(tmp: str, path: str, *, overwrite: bool) -> None:
    """Put the complete local store ``tmp`` at ``path`` (``files.publish_directory``). A store
    that another process put at ``path`` since the caller looked is replaced only with
    ``overwrite``; otherwise it is kept, since that process may be reading it, and this raises
    ``StoreExistsError``."""
    try:
        publish_directory(tmp, path, _temp_name(path, "old"), replace=overwrite)
    except FileExistsError as err:  # another process finished the same path first
        raise StoreExistsError(
            f"path={path!r} already exists (created concurrently); pass overwrite=True "
            "to replace it"
        ) from err


def directory_identity(path: str) -> tuple[int, int, int]:
    """(device, inode, ctime in ns) of ``path``: a directory published later differs (a rename
    moves ctime, so even a reused inode number does)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_ctime_ns


def set_aside_unusable(path: str, unusable: tuple[int, int, int]) -> None:
    """Remove the unusable entry at ``path``, but only the one this process found: an entry
    another process published since (after setting the same one aside) may be in use."""
    try:
        if directory_identity(path) != unusable:
            return
        aside = _temp_name(path, "old")
        os.rename(path, aside)
    except FileNotFoundError:  # set aside by another process
        return
    shutil.rmtree(aside, ignore_errors=True)


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
) -> Iterable[tuple[Any, Any]]:
    """Group samples into batches of about 4 MB of text and encode each batch at once; a
    ``UNIT_END`` comes out as ``(UNIT_END, UNIT_END)`` in its place."""
    texts: list[str] = []
    chars = 0
    for sample in samples:
        if sample is UNIT_END:  # passed on, after the texts before it
            if texts:
                yield tokenizer.encode_batch(texts)
                progress.update(len(texts))
                texts, chars = [], 0
            yield UNIT_END, UNIT_END
            continue
        if _is_text(sample):
            texts.append(sample)
            chars += len(sample)
            if chars >= BATCH_CHARS:
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


def _shard_splits(lengths: np.ndarray, room: int) -> int:
    """How many of the samples ``lengths`` (without EOS) the current shard takes when ``room``
    more ids fill it: every sample up to the first non-empty one that starts at or past the
    fill mark (empty samples stay with the shard before them)."""
    stored = np.where(lengths > 0, lengths + 1, 0)
    starts = np.cumsum(stored) - stored
    past = np.flatnonzero((starts >= room) & (stored > 0))
    return int(past[0]) if past.size else int(lengths.size)


class ShardSequence:
    """The shards of one build, or of one read unit of a build spread over workers, cut by the
    store's rule: a shard is closed once it holds ``max_tokens`` ids, or the next non-empty
    sample begins another read unit (``end_unit``), and the next sample has tokens. An empty
    sample is counted in the shard of the non-empty sample before it (the first shard's when
    none precedes), so shards never span read units and a unit's shards are the same whoever
    writes them.

    Shards are written to ``directory/unit_shard_name(unit, k)``, a writer opened at the
    first non-empty sample it takes. With ``hold_leading_empty`` (a worker writing one unit of
    many), the empty samples before the unit's first non-empty one are not counted in any
    shard here but left in ``leading_empty``: they belong to the shard before the unit
    (``write_shard_features(..., more_empty=)``).
    """

    def __init__(
        self,
        directory: str,
        tokenizer: Tokenizer,
        max_tokens: int,
        block_bytes: int,
        *,
        unit: int = 0,
        hold_leading_empty: bool = False,
    ) -> None:
        self.directory = directory
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.block_bytes = block_bytes
        self.unit = unit
        self.hold_leading_empty = hold_leading_empty
        self.closed: list[tuple[str, ShardTokens]] = []
        self.writer: ShardWriter | None = None
        self.leading_empty = 0  # empty samples before any shard was opened
        self._unit_changed = False
        self._in_unit = 0  # shards opened in this unit

    def end_unit(self) -> None:
        """The samples added next belong to the next read unit."""
        self.unit += 1
        self._unit_changed = True
        self._in_unit = 0

    def _open(self) -> None:
        """Close the current shard (if any), open the unit's next one."""
        if self.writer is not None:
            self.closed.append((os.path.basename(self.writer.directory), self.writer.close()))
        name = unit_shard_name(self.unit, self._in_unit)
        self._in_unit += 1
        self._unit_changed = False
        self.writer = ShardWriter(
            os.path.join(self.directory, name),
            self.tokenizer.vocab_size,
            self.tokenizer.eos_id,
            block_bytes=self.block_bytes,
        )
        if not self.hold_leading_empty and self.leading_empty:
            self.writer.add(np.zeros(0, np.int64), np.zeros(self.leading_empty, np.int64))
            self.leading_empty = 0

    def add(self, flat: np.ndarray, lengths: np.ndarray) -> None:
        """Append samples (flat ids + lengths without EOS) of the current unit, in order."""
        while lengths.size:
            if self.writer is None or self._unit_changed:
                nonempty = np.flatnonzero(lengths)
                first = int(nonempty[0]) if nonempty.size else int(lengths.size)
                if first:  # empty samples own no ids: ``flat`` is unchanged
                    if self.writer is None:
                        self.leading_empty += first
                    else:  # with the previous unit's last sample
                        self.writer.add(flat[:0], lengths[:first])
                    lengths = lengths[first:]
                    continue
                self._open()
            assert self.writer is not None
            take = _shard_splits(lengths, self.max_tokens - self.writer.num_tokens)
            used = int(lengths[:take].sum())
            self.writer.add(flat[:used], lengths[:take])
            flat, lengths = flat[used:], lengths[take:]
            if lengths.size:  # the shard is full and a sample with tokens is next
                self._open()

    def close(self) -> list[tuple[str, ShardTokens]]:
        """Close the last shard; (directory name, ``ShardTokens``) of every shard, in order."""
        if self.writer is not None:
            self.closed.append((os.path.basename(self.writer.directory), self.writer.close()))
            self.writer = None
        return self.closed


def _write_shards(
    samples: Iterable[Any], tokenizer: Tokenizer, tmp: str, progress: bool, *,
    max_shard_tokens: int, block_bytes: int, path: str, sources: Sequence[dict[str, Any]] | None,
) -> tuple[list[dict], list[str]]:  # fmt: skip
    """Encode ``samples`` into shards under ``tmp``; their manifests and names, in order. A
    ``UNIT_END`` among the samples ends a read unit (``read_units.unit_samples``): the shards
    of a source of several units keep their ``unit_shard_name``; a single unit's are renamed
    ``shard-00000-of-00004``..."""
    bar = _progress_bar(f"building {os.path.basename(path)}", progress)
    parts = ShardSequence(tmp, tokenizer, max_shard_tokens, block_bytes)
    try:
        for flat, lengths in _encode_chunks(samples, tokenizer, bar):
            if flat is UNIT_END:
                parts.end_unit()
            else:
                parts.add(flat, lengths)
    finally:
        bar.close()
        written = parts.close()
    if not written:
        raise InvalidArgumentError(
            f"the dataset for path={path!r} is empty: no sample had any token "
            f"({parts.leading_empty} empty samples skipped); sources={list(sources or [])}"
        )
    counts = np.sum([s.counts for _, s in written], axis=0)  # the corpus' unigram counts
    names, manifests, first = [], [], 0
    for i, (written_name, shard) in enumerate(written):
        name = written_name if parts.unit else shard_name(i, len(written))
        directory = os.path.join(tmp, name)
        if name != written_name:
            os.rename(os.path.join(tmp, written_name), directory)
        manifests.append(write_shard_features(directory, counts, first))
        fsync_tree(directory)
        names.append(name)
        first += shard.num_samples
    return manifests, names


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
    max_shard_tokens: int = MAX_SHARD_TOKENS,
    block_bytes: int = BLOCK_BYTES,
) -> TokenStore:
    """Tokenise ``samples`` (str texts or 1-D int token arrays) into a store at ``path``.

    ``sources`` (JSON-able source descriptions) and ``skipped`` (counts of samples a source
    dropped) go into the manifest. An existing store at ``path`` is an error unless
    ``overwrite=True``. An empty result (no non-empty sample) is an error. A new shard starts
    once one holds ``max_shard_tokens`` ids, or at the next read unit where ``samples`` holds
    ``read_units.UNIT_END`` markers (``read_units.unit_samples(source)``: a source's samples
    as a preparation on Beam cuts them); ``block_bytes`` is the CRC32C block size. Shows a
    progress bar on stderr when ``progress`` is true. Returns the opened store.
    """
    from highnoon.data.store import TokenStore

    tokenizer = load_tokenizer(tokenizer)
    max_shard_tokens = check_positive_int("max_shard_tokens", max_shard_tokens)
    if is_remote(path):
        return _build_remote(
            samples, tokenizer, path, sources=sources, skipped=skipped, overwrite=overwrite,
            progress=progress, extra=extra, max_shard_tokens=max_shard_tokens,
            block_bytes=block_bytes,
        )  # fmt: skip
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite:
        raise StoreExistsError(f"path={path!r} already exists; pass overwrite=True to replace it")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_build_dirs(parent, base=os.path.basename(path))
    tmp = _temp_name(path, "tmp")
    os.makedirs(tmp)
    try:
        started = time.perf_counter()
        manifests, names = _write_shards(
            samples, tokenizer, tmp, progress, max_shard_tokens=max_shard_tokens,
            block_bytes=block_bytes, path=path, sources=sources,
        )  # fmt: skip
        manifest = store_manifest(
            manifests,
            names,
            tokenizer,
            sources=list(sources or []),
            skipped=dict(skipped or {}),
            top_files=copy_tokenizer_file(tokenizer, tmp),
            extra={"build_seconds": round(time.perf_counter() - started, 3), **(extra or {})},
        )
        with open(os.path.join(tmp, MANIFEST), "wb") as handle:  # last: the store is complete
            handle.write(canonical_json(manifest))
        publish_store(tmp, path, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return TokenStore.open(path)


def _build_remote(samples: Iterable[Any], tokenizer: Tokenizer, path: str, *, overwrite: bool,
                  **options: Any) -> TokenStore:  # fmt: skip
    """Build locally, then copy every file with ``tf.io.gfile``, ``manifest.json`` last."""
    import tempfile

    import tensorflow as tf

    from highnoon.data.store import TokenStore

    path = path.rstrip("/")
    if tf.io.gfile.exists(f"{path}/{MANIFEST}"):
        if not overwrite:
            raise StoreExistsError(
                f"path={path!r} already holds a token store; pass overwrite=True"
            )
        tf.io.gfile.remove(f"{path}/{MANIFEST}")  # first: the old store is incomplete from now
    local = tempfile.mkdtemp(prefix="highnoon-store-")
    try:
        store_dir = os.path.join(local, "store")
        build_token_store(samples, tokenizer, store_dir, **options)
        tf.io.gfile.makedirs(path)
        for root, _, files in sorted(os.walk(store_dir)):
            relative = os.path.relpath(root, store_dir)
            target = path if relative == "." else f"{path}/{relative}"
            tf.io.gfile.makedirs(target)
            for name in sorted(files):
                if root != store_dir or name != MANIFEST:
                    tf.io.gfile.copy(os.path.join(root, name), f"{target}/{name}", overwrite=True)
        tf.io.gfile.copy(os.path.join(store_dir, MANIFEST), f"{path}/{MANIFEST}", overwrite=True)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return TokenStore.open(path)
