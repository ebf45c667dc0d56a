"""Saves into a checkpoint directory and SIGKILLs itself in the middle, leaving real temporaries.

    python killed_save_worker.py DIR MODE

Every mode first saves ckpt-1 completely. Then:
  shards  killed inside the second save, after its shards are written and before they are
          merged: leaves ckpt-2_temp/
  state   killed while the CheckpointManager renames its new state file: leaves checkpoint.tmp<hex>
  atomic  killed inside highnoon's atomic_write_text before the rename: leaves <name>.tmp-<pid>-<hex>
"""

from __future__ import annotations

import os
import signal
import sys

import tensorflow as tf
from tensorflow.python.lib.io import file_io
from tensorflow.python.ops import gen_io_ops

from highnoon.utils import files


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    directory, mode = sys.argv[1:3]
    ckpt = tf.train.Checkpoint(v=tf.Variable(tf.ones([64])))
    manager = tf.train.CheckpointManager(ckpt, directory, max_to_keep=3)
    manager.save(checkpoint_number=1)
    print("SAVED 1", flush=True)
    if mode == "shards":
        gen_io_ops.merge_v2_checkpoints = _die
        manager.save(checkpoint_number=2)
    elif mode == "state":
        file_io.rename = _die
        manager.save(checkpoint_number=2)
    elif mode == "atomic":
        files.os.replace = _die
        files.atomic_write_text(os.path.join(directory, "summary.json"), "{}")
    raise SystemExit(f"mode {mode!r} did not die")


if __name__ == "__main__":
    main()
