"""Content hashes of source files, remembered across runs so an unchanged corpus is not re-read.

A source's cache key holds the sha256 of each of its files (``sources.py``), so an edit that
keeps size and mtime still rebuilds its store. Hashing runs at about 1 GB/s, which for a large
corpus is minutes at every start; so the hash is remembered in
``<cache_dir>/file_hashes/<sha256 of the real path>.json`` (``prepare_stage_store`` sets the
directory with ``remembered_in``) together with the file's inode, size,
mtime and **ctime**, and reused while all of them are unchanged. ctime cannot be set by users
(``touch``/``os.utime`` set mtime, and any write, chmod or rename moves ctime), so an edit
that restores size and mtime is still seen. File times tick coarsely (a few ms), so a hash taken
less than ``RACY_SECONDS`` after the file's last change is not remembered (the file could change
again within the same tick), as git does for its index. The memo is a best-effort cache: an
unreadable or unwritable entry only means hashing again.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import time
from collections.abc import Iterator

from highnoon.utils.files import atomic_write_text
from highnoon.utils.hashing import sha256_file, sha256_hex

RACY_SECONDS = 2.0
_VERSION = 1


_MEMO_DIR: contextvars.ContextVar[str | None] = contextvars.ContextVar("memo_dir", default=None)


@contextlib.contextmanager
def remembered_in(memo_dir: str | None) -> Iterator[None]:
    """Within the block, ``content_sha256(path)`` remembers hashes in ``memo_dir``."""
    token = _MEMO_DIR.set(memo_dir)
    try:
        yield
    finally:
        _MEMO_DIR.reset(token)


def _identity(st: os.stat_result) -> dict[str, int]:
    return {
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def content_sha256(path: str) -> str:
    """The sha256 of the local file ``path``, from the memo (see ``remembered_in``) when the
    file is provably unchanged since it was hashed (module docstring); without one, hashed."""
    memo_dir = _MEMO_DIR.get()
    real = os.path.realpath(path)
    if memo_dir is None:
        return sha256_file(real)
    entry_path = os.path.join(memo_dir, sha256_hex(real, chars=32) + ".json")
    identity = _identity(os.stat(real))
    with contextlib.suppress(OSError, ValueError):
        with open(entry_path, encoding="utf-8") as handle:
            entry = json.load(handle)
        if (
            entry.get("version") == _VERSION
            and entry.get("path") == real
            and entry.get("identity") == identity
        ):
            return str(entry["sha256"])
    started = time.time()
    digest = sha256_file(real)
    after = os.stat(real)
    settled = started - identity["ctime_ns"] / 1e9 > RACY_SECONDS
    if settled and _identity(after) == identity:  # unchanged while hashing, and not racy
        entry = {"version": _VERSION, "path": real, "identity": identity, "sha256": digest}
        with contextlib.suppress(OSError):
            atomic_write_text(entry_path, json.dumps(entry, sort_keys=True))
    return digest
