"""Atomic file writes: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import os
import uuid


def atomic_write_text(path: str, text: str) -> str:
    """Writes ``text`` to a temporary name beside ``path``, then renames it into place.

    Works for local paths and any ``tf.io.gfile`` filesystem (``gs://`` ...); TensorFlow is only
    imported for non-local paths. Returns ``path``.
    """
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if "://" not in path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path
    import tensorflow as tf

    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(tmp, "w") as handle:
        handle.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path
