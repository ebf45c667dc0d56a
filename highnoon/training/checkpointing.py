"""Checkpoints of model, optimizer and data position (docs/design.md, "State on disk").

* The data position is a few integers plus the curriculum's recorded decisions, stored inside the
  TensorFlow checkpoint as JSON (``tf.train.experimental.PythonState``), so one atomic checkpoint
  holds everything a resume needs. A tf.distribute iterator cannot be checkpointed; the position
  lets the input pipeline be rebuilt at the right step instead.
* ``tf.train.CheckpointManager`` keeps the newest ``max_to_keep`` checkpoints; its state file is
  only updated after a checkpoint's files are complete.
* Multi-worker: every worker must call save (reading synced variables all-reduces); the chief
  writes to the checkpoint directory, the others to a temporary directory that is then removed.
* A corrupt or truncated latest checkpoint is reported and skipped in favour of the previous one;
  no checkpoint is ever deleted by a restore.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from absl import logging

from highnoon.training.position import DataPosition
from highnoon.training.run_dir import RunDir
from highnoon.utils import validation as v

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "DataPosition",
    "checkpoint_candidates",
    "checkpoint_number",
    "remove_stale_checkpoint_temporaries",
]


class _PositionState(tf.train.experimental.PythonState):
    """Checkpoint adapter: serialises the live ``DataPosition`` as JSON; a restore fills the
    same object in place, so everyone holding it sees the restored position."""

    def __init__(self, position: DataPosition) -> None:
        self._position = position

    def serialize(self) -> str:
        return self._position.to_json()

    def deserialize(self, string_value: bytes | str) -> None:
        text = string_value.decode("utf-8") if isinstance(string_value, bytes) else string_value
        self._position.replace_with(DataPosition.from_json(text))


class CheckpointError(v.InvalidArgumentError):
    """A checkpoint cannot be used (missing, or written by a different model)."""


class Checkpointer:
    """Saves and restores (model, optimizer, data position) in one directory."""

    def __init__(
        self,
        directory: str | RunDir,
        *,
        model: tf.Module,
        optimizer: tf.Module,
        strategy: tf.distribute.Strategy,
        max_to_keep: int = 3,
        position: DataPosition | None = None,
        before_save: Callable[[], None] | None = None,
    ) -> None:
        """``position`` is the live data position saved with every checkpoint and filled in
        place by ``restore``; ``before_save`` runs before every save (the run lock's check:
        never write after losing it)."""
        if not isinstance(directory, RunDir):
            directory = RunDir.for_strategy(directory, strategy)
        self.run_dir = directory
        self.directory = directory.path
        self.is_chief = directory.chief
        self.position = position if position is not None else DataPosition()
        self._before_save = before_save
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, position=_PositionState(self.position)
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, directory.checkpoint_write_dir, max_to_keep=max_to_keep
        )

    def save(self, step: int) -> str:
        """Writes a checkpoint on every worker; returns the chief's path."""
        if self._before_save is not None:
            self._before_save()
        tf.io.gfile.makedirs(self.run_dir.checkpoint_write_dir)
        path = self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            self.run_dir.cleanup_write_dir()
            return os.path.join(self.directory, os.path.basename(path))
        return path

    def kept_paths(self) -> list[str]:
        """The checkpoints on disk that this manager keeps, oldest first (chief's paths)."""
        return [os.path.join(self.directory, os.path.basename(p)) for p in self.manager.checkpoints]

    def write_model_config(self, config: dict[str, Any]) -> None:
        """Chief only: the model's config beside the checkpoints (``RunDir`` writes it)."""
        self.run_dir.write_model_config(config)

    def restore(self, path_or_dir: str, model_config: dict[str, Any] | None = None) -> str:
        """Restores from a checkpoint path, or the newest readable checkpoint of a directory.

        Returns the path restored. A corrupt newest checkpoint is skipped with a warning;
        a checkpoint from a differently shaped model is a ``CheckpointError``.
        """
        candidates = checkpoint_candidates(path_or_dir)
        if not candidates:
            raise CheckpointError(
                f"resume_from={path_or_dir!r} holds no checkpoint; pass a checkpoint directory "
                "written by Trainer.train (or a path like DIR/ckpt-1000), or resume_from=None"
            )
        _check_model_config(RunDir(os.path.dirname(candidates[0])), model_config)
        errors = []
        for candidate in candidates:
            try:
                self.checkpoint.restore(candidate).assert_existing_objects_matched()
            except Exception as error:  # TF reports truncation as OpError, IndexError, ...
                if _is_shape_error(error):
                    raise CheckpointError(
                        f"checkpoint {candidate} was written by a model of a different shape "
                        f"({_first_line(error)}); resume with the model it was trained with or "
                        "start from a fresh checkpoint_dir"
                    ) from error
                logging.warning(
                    "checkpoint %s is unreadable (%s); falling back to the previous one",
                    candidate,
                    _first_line(error),
                )
                errors.append(f"{candidate}: {_first_line(error)}")
                continue
            return candidate
        raise CheckpointError("no readable checkpoint in " + path_or_dir + ": " + "; ".join(errors))


def checkpoint_candidates(path_or_dir: str) -> list[str]:
    """Checkpoint prefixes to try, newest first: a prefix itself, or all of a directory's."""
    if tf.io.gfile.exists(path_or_dir + ".index"):
        return [path_or_dir]
    if not tf.io.gfile.isdir(path_or_dir):
        return []
    state = tf.train.get_checkpoint_state(path_or_dir)
    listed = list(state.all_model_checkpoint_paths) if state else []
    if not listed:  # state file lost: fall back to the files themselves
        listed = [
            p[: -len(".index")] for p in tf.io.gfile.glob(os.path.join(path_or_dir, "*.index"))
        ]
    # get_checkpoint_state already joins relative entries to the directory: no second join.
    return sorted(set(listed), key=checkpoint_number, reverse=True)


def checkpoint_number(prefix: str) -> int:
    """N of a prefix ``.../ckpt-N`` (-1 for a prefix without one)."""
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _check_model_config(run_dir: RunDir, model_config: dict[str, Any] | None) -> None:
    saved = run_dir.read_model_config() if model_config is not None else None
    if saved is None:
        return
    differing = sorted(
        key for key in set(saved) | set(model_config) if saved.get(key) != model_config.get(key)
    )
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} vs {model_config.get(k)!r}" for k in differing)
        raise CheckpointError(
            f"the checkpoints in {run_dir.path} were written by a different model ({details}, "
            "checkpoint vs this model); build the model with the same configuration, or use a "
            "fresh checkpoint_dir"
        )


def _is_shape_error(error: BaseException) -> bool:
    text = str(error).lower()
    return "shape" in text and (
        "mismatch" in text or "incompatible" in text or "compatible" in text
    )


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


# --- temporaries of killed saves -------------------------------------------------------------
# TensorFlow writes a checkpoint's shards into "<prefix>_temp/" and then merges them into
# "<prefix>.index/.data-*"; the CheckpointManager's state file is written as
# "checkpoint.tmp<uuid hex>" and renamed. highnoon's own atomic writes (trainer.json,
# summary.json, the model config) use "<name>.tmp-<pid>-<hex8>". A process killed in between
# leaves these behind for good.
_SAVE_TEMP_DIR = re.compile(r"^.+-\d+_temp$")
_TEMP_FILES = (
    re.compile(r"^checkpoint\.tmp[0-9a-f]{32}$"),
    re.compile(r"^.+\.tmp-\d+-[0-9a-f]{8}$"),
)


def remove_stale_checkpoint_temporaries(directory: str) -> list[str]:
    """Remove what killed saves left in a checkpoint directory; returns the paths removed.

    Removes ``ckpt-N_temp`` directories and the temporary files of interrupted atomic writes
    (see above), with a warning per item. Call it on the chief at the start of a run, while it
    holds the model_dir's run lock (``run_lock.RunLock``): then no other process is saving into
    ``directory``, so every temporary found is dead. Works for any ``tf.io.gfile`` path.
    """
    if not tf.io.gfile.isdir(directory):
        return []
    removed = []
    for entry in sorted(tf.io.gfile.listdir(directory)):
        name = entry.rstrip("/")  # object stores list directories with a trailing slash
        path = os.path.join(directory, name)
        if _SAVE_TEMP_DIR.match(name) and tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
            what = "a checkpoint save"
        elif any(p.match(name) for p in _TEMP_FILES) and not tf.io.gfile.isdir(path):
            tf.io.gfile.remove(path)
            what = "an atomic file write"
        else:
            continue
        logging.warning("removed %s, left behind by %s that was killed", path, what)
        removed.append(path)
    return removed
