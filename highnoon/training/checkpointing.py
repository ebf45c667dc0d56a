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

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from highnoon.distribute.hosts import cleanup_write_dir, is_chief, write_dir
from highnoon.models.config import MODEL_CONFIG_FILENAME as MODEL_CONFIG_FILE
from highnoon.utils.files import atomic_write_text


@dataclass
class DataPosition:
    """Where training stands: enough to rebuild the exact input stream (docs/design.md,
    "Determinism"), plus the running sums a resumed epoch needs to report the same loss."""

    stage: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    tokens_seen: int = 0
    stage_start_step: int = 0
    # Per stage: the curriculum scheduler's JSON state (adaptive decisions, fingerprint).
    curriculum_states: dict[str, Any] = field(default_factory=dict)
    # Running sums of the current epoch, so a resumed epoch reports the same epoch loss.
    epoch_loss_sum: float = 0.0
    epoch_token_sum: float = 0.0
    last_epoch_loss: float | None = None
    completed_stages: list[dict[str, Any]] = field(default_factory=list)
    # Per stage index: what its stream was made from (``StagePlan.stream_fingerprint``),
    # compared on resume so a run never continues on changed data unnoticed.
    stage_fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)
    # Resumes that restarted a stage on changed data (``allow_data_change``).
    data_changes: list[dict[str, Any]] = field(default_factory=list)
    # What the current stage has fed so far: samples, real target tokens, computed token slots
    # (padding included), and samples its epochs left out.
    stage_counts: dict[str, int] = field(default_factory=dict)
    # The learning-rate schedule's phase: the stage it began at and the global step of that
    # stage's start (0, 0 for a run's planned stages; later for stages appended after it ended).
    schedule_start_stage: int = 0
    schedule_start_step: int = 0

    def enter_stage(self, index: int) -> None:
        self.stage, self.epoch, self.step_in_epoch = index, 0, 0
        self.stage_start_step = self.global_step
        self.epoch_loss_sum = self.epoch_token_sum = 0.0
        self.stage_counts = {}

    def count(self, **amounts: int) -> None:
        """Adds to the current stage's counts (``samples``, ``tokens``, ``slots``, ``dropped``)."""
        for key, amount in amounts.items():
            self.stage_counts[key] = self.stage_counts.get(key, 0) + int(amount)

    def stage_report(self) -> dict[str, Any]:
        """The current stage's ``samples_seen``, ``samples_dropped``, ``tokens_seen`` and
        ``padding_fraction`` (of the token positions it computed)."""
        counts = self.stage_counts
        slots = counts.get("slots", 0)
        return {
            "samples_seen": counts.get("samples", 0),
            "samples_dropped": counts.get("dropped", 0),
            "tokens_seen": counts.get("tokens", 0),
            "padding_fraction": 1.0 - counts.get("tokens", 0) / slots if slots else 0.0,
        }

    def record_steps(self, count: int, losses: np.ndarray, tokens: np.ndarray) -> None:
        """``count`` optimizer steps done, with their per-step losses and target tokens."""
        self.global_step += count
        self.step_in_epoch += count
        self.tokens_seen += int(tokens.sum())
        self.epoch_loss_sum += float((losses * tokens).sum())
        self.epoch_token_sum += float(tokens.sum())

    def next_epoch(self, epoch_loss: float) -> None:
        self.last_epoch_loss = epoch_loss
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss_sum = self.epoch_token_sum = 0.0

    def complete_stage(
        self, name: str, epochs: int, steps: int, samples_per_dataset: dict[str, int] | None = None
    ) -> None:
        """Record the finished stage (its summary entry) and enter the next one.
        ``samples_per_dataset``: samples trained per dataset entry, by the entry's name."""
        entry = {
            "name": name,
            "epochs": epochs,
            "final_loss": self.last_epoch_loss,
            "steps": steps,
            **self.stage_report(),
        }
        if samples_per_dataset is not None:
            entry["samples_per_dataset"] = dict(samples_per_dataset)
        self.completed_stages.append(entry)
        self.enter_stage(self.stage + 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DataPosition:
        values = json.loads(text)
        values.pop("fingerprint", None)  # written by 0.1 checkpoints, never set
        return cls(**values)


class _PositionState(tf.train.experimental.PythonState):
    """Checkpoint adapter: serialises the live ``DataPosition`` as JSON."""

    def __init__(self, holder: dict[str, DataPosition]) -> None:
        self._holder = holder

    def serialize(self) -> str:
        return self._holder["position"].to_json()

    def deserialize(self, string_value: bytes | str) -> None:
        text = string_value.decode("utf-8") if isinstance(string_value, bytes) else string_value
        self._holder["position"] = DataPosition.from_json(text)


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, or written by a different model)."""


class Checkpointer:
    """Saves and restores (model, optimizer, data position) in one directory."""

    def __init__(
        self,
        directory: str,
        *,
        model: tf.Module,
        optimizer: tf.Module,
        strategy: tf.distribute.Strategy,
        max_to_keep: int = 3,
    ) -> None:
        self.directory = directory
        self.strategy = strategy
        self.is_chief = is_chief(strategy)
        self._holder: dict[str, DataPosition] = {"position": DataPosition()}
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, position=_PositionState(self._holder)
        )
        self._write_dir = write_dir(directory, strategy)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, self._write_dir, max_to_keep=max_to_keep
        )
        # Called before every save (e.g. the run lock's check: never write after losing it).
        self.before_save: Callable[[], None] | None = None

    @property
    def position(self) -> DataPosition:
        return self._holder["position"]

    @position.setter
    def position(self, value: DataPosition) -> None:
        self._holder["position"] = value

    def save(self, step: int) -> str:
        """Writes a checkpoint on every worker; returns the chief's path."""
        if self.before_save is not None:
            self.before_save()
        tf.io.gfile.makedirs(self._write_dir)
        path = self.manager.save(checkpoint_number=step)
        if not self.is_chief:
            cleanup_write_dir(self._write_dir, self.directory)
            return os.path.join(self.directory, os.path.basename(path))
        return path

    def kept_paths(self) -> list[str]:
        """The checkpoints on disk that this manager keeps, oldest first (chief's paths)."""
        return [os.path.join(self.directory, os.path.basename(p)) for p in self.manager.checkpoints]

    def write_model_config(self, config: dict[str, Any]) -> None:
        """Chief only: the model's config beside the checkpoints (read by generate and resume)."""
        if not self.is_chief:
            return
        tf.io.gfile.makedirs(self.directory)
        atomic_write_text(
            os.path.join(self.directory, MODEL_CONFIG_FILE), json.dumps(config, indent=2)
        )

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
        _check_model_config(os.path.dirname(candidates[0]), model_config)
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
    return sorted(set(listed), key=_checkpoint_number, reverse=True)


def _checkpoint_number(prefix: str) -> int:
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _check_model_config(directory: str, model_config: dict[str, Any] | None) -> None:
    path = os.path.join(directory, MODEL_CONFIG_FILE)
    if model_config is None or not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as handle:
        saved = json.load(handle)
    differing = sorted(
        key for key in set(saved) | set(model_config) if saved.get(key) != model_config.get(key)
    )
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} vs {model_config.get(k)!r}" for k in differing)
        raise CheckpointError(
            f"the checkpoints in {directory} were written by a different model ({details}, "
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
