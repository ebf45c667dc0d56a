"""File access for run directories: atomic writes (a reader sees the old file or the new one,
never a half-written one: ``atomic_write_text`` for a file, ``publish_directory`` for a
directory built beside its destination), and the reads that go with them (content hashes are
``highnoon.utils.hashing``'s).

Local paths use the standard library; any other ``tf.io.gfile`` filesystem (``gs://``,
``ram://`` ...) goes through TensorFlow, imported only for such paths, so pure-Python callers
(``ModelConfig``) stay TensorFlow-free on local paths.
"""

from __future__ import annotations

import os
import shutil
import uuid


def atomic_write_text(path: str, text: str) -> str:
    """Writes ``text`` to a temporary name beside ``path``, then renames it into place.

    Works for local paths and any ``tf.io.gfile`` filesystem (``gs://`` ...); TensorFlow is only
    imported for non-local paths. Returns ``path``.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str, data: bytes) -> str:
    """``atomic_write_text`` for bytes (a PNG, an archive): a temporary name beside ``path``,
    fsynced, then renamed into place. Returns ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(tmp, "wb") as handle:
        handle.write(data)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def fsync_tree(directory: str) -> None:
    """fsync every file directly in a local ``directory``, then the directory itself."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_directory(tmp: str, path: str, aside: str, *, replace: bool) -> None:
    """Puts the complete local directory ``tmp`` at ``path`` atomically: a reader sees the old
    directory or the new one, never a mix. ``tmp`` is synced first. With ``replace``, an
    existing ``path`` is renamed to ``aside`` and removed afterwards; without, an existing
    ``path`` is left alone. Raises ``FileExistsError`` when ``path`` exists and is not to be
    replaced, or when another process put a directory there in between."""
    fsync_tree(tmp)
    if os.path.exists(path):
        if not replace:  # another process published first: theirs may be in use
            raise FileExistsError(f"{path} was created by another process meanwhile")
        os.rename(path, aside)
    else:
        aside = ""
    try:
        os.rename(tmp, path)  # fails on a non-empty directory put there since
    except OSError as error:
        raise FileExistsError(f"{path} was created by another process meanwhile") from error
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    if aside:
        shutil.rmtree(aside, ignore_errors=True)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def is_remote(path: str) -> bool:
    """True for a ``tf.io.gfile`` URL (``gs://``, ``ram://`` ...), False for a local path."""
    return "://" in os.fspath(path)


def isdir(path: str) -> bool:
    """Whether ``path`` is a directory (local or any ``tf.io.gfile`` filesystem)."""
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
    """Whether ``path`` exists and is not a directory (local or any ``tf.io.gfile`` filesystem)."""
    if not is_remote(path):
        return os.path.isfile(path)
    gfile = _gfile()
    return gfile.exists(path) and not gfile.isdir(path)


def read_bytes(path: str) -> bytes:
    """The bytes of ``path`` (local or any ``tf.io.gfile`` filesystem)."""
    if not is_remote(path):
        with open(path, "rb") as handle:
            return handle.read()
    with _gfile().GFile(path, "rb") as handle:
        return handle.read()


def read_text(path: str) -> str:
    """The UTF-8 text of ``path`` (local or any ``tf.io.gfile`` filesystem)."""
    if not is_remote(path):
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    with _gfile().GFile(path, "r") as handle:
        return handle.read()
