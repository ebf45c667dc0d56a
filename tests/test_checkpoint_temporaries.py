"""Temporaries of a killed checkpoint save are removed at the next start.

A real process saves, SIGKILLs itself inside a save (or an atomic write), and
``remove_stale_checkpoint_temporaries`` removes exactly what it left, keeping the complete
checkpoint, which then restores.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

tf = pytest.importorskip("tensorflow")

from highnoon.training.checkpointing import remove_stale_checkpoint_temporaries  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "killed_save_worker.py")
HARD_TIMEOUT = 120
COMPLETE = ["checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]


def _killed_save(directory: str, mode: str) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, WORKER, directory, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=HARD_TIMEOUT,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert proc.stdout.split() == ["SAVED", "1"]


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    ("mode", "leftover", "what"),
    [
        ("shards", r"ckpt-2_temp", "a checkpoint save"),
        # ckpt-2 itself is complete, the state file naming it was not renamed into place
        ("state", r"checkpoint\.tmp[0-9a-f]{32}", "an atomic file write"),
        ("atomic", r"summary\.json\.tmp-\d+-[0-9a-f]{8}", "an atomic file write"),
    ],
)
def test_killed_save_leftovers_are_removed_and_the_checkpoint_restores(
    tmp_path, caplog, mode, leftover, what
):
    directory = str(tmp_path / "ckpt")
    _killed_save(directory, mode)
    names = sorted(os.listdir(directory))
    extra = [n for n in names if n not in COMPLETE and not n.startswith("ckpt-2.")]
    assert len(extra) == 1 and re.fullmatch(leftover, extra[0]), names
    caplog.set_level(logging.WARNING)

    removed = remove_stale_checkpoint_temporaries(directory)

    path = os.path.join(directory, extra[0])
    assert removed == [path]
    assert sorted(os.listdir(directory)) == sorted(set(names) - {extra[0]})
    assert [r.getMessage() for r in caplog.records] == [
        f"removed {path}, left behind by {what} that was killed"
    ]
    restored = tf.train.Checkpoint(v=tf.Variable(tf.zeros([64])))
    restored.restore(tf.train.latest_checkpoint(directory)).assert_existing_objects_matched()
    assert float(tf.reduce_sum(restored.v)) == 64.0
    assert remove_stale_checkpoint_temporaries(directory) == []


def test_missing_directory_is_nothing_to_clean(tmp_path):
    assert remove_stale_checkpoint_temporaries(str(tmp_path / "absent")) == []
