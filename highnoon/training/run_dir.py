"""``RunDir``: the one owner of a model directory's layout.

A run writes everything into one directory (``model_dir`` to the launcher, ``checkpoint_dir`` to
``Trainer.train``, ``path`` to ``Trainer.save``): checkpoints, ``summary.json``, ``goodput.json``,
``run.lock``, ``summaries/``, ``model_config.json``, ``trainer.json``, ``config.gin`` and the
run's tokenizer (``highnoon_tokenizer.json`` and the copy of a tokenizer file); an averaged
export's directory (``checkpoint_average.py``) adds ``average.json``. Their
names live here and nowhere else, and every collaborator that touches the directory receives
this object at construction. It is frozen: which directory, which task writes there (the chief)
and where this task writes checkpoint files (the chief: the directory itself; another worker:
a temporary directory, removed after each save, as Model Garden's ``train_lib`` does).

``model_config.json`` has one writer (``write_model_config``) and one reader
(``read_model_config``), both in ``ModelConfig``'s JSON format, which ``load_model`` reads too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from highnoon.distribute.hosts import cleanup_write_dir, is_chief, write_dir
from highnoon.models.config import MODEL_CONFIG_FILENAME
from highnoon.utils import files

SUMMARY_FILE = "summary.json"
GOODPUT_FILE = "goodput.json"
LOCK_FILE = "run.lock"
SUMMARIES_DIR = "summaries"
TRAINER_STATE_FILE = "trainer.json"
GIN_CONFIG_FILE = "config.gin"
AVERAGE_FILE = "average.json"  # an averaged export's record of the checkpoints it averaged


@dataclass(frozen=True)
class RunDir:
    """The paths of one model directory, and this task's role in writing it."""

    path: str
    chief: bool = True
    write_path: str = ""  # where this task writes checkpoint files ("" = ``path``)

    @classmethod
    def for_strategy(cls, path: str, strategy: Any) -> RunDir:
        """The directory as seen by this task of ``strategy``'s cluster."""
        return cls(path, chief=is_chief(strategy), write_path=write_dir(path, strategy))

    # -- paths -----------------------------------------------------------------------------
    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def checkpoint_write_dir(self) -> str:
        return self.write_path or self.path

    @property
    def summary_json(self) -> str:
        return self.join(SUMMARY_FILE)

    @property
    def goodput_json(self) -> str:
        return self.join(GOODPUT_FILE)

    @property
    def run_lock(self) -> str:
        return self.join(LOCK_FILE)

    @property
    def summaries(self) -> str:
        return self.join(SUMMARIES_DIR)

    @property
    def model_config_json(self) -> str:
        return self.join(MODEL_CONFIG_FILENAME)

    @property
    def trainer_json(self) -> str:
        return self.join(TRAINER_STATE_FILE)

    @property
    def config_gin(self) -> str:
        return self.join(GIN_CONFIG_FILE)

    @property
    def average_json(self) -> str:
        return self.join(AVERAGE_FILE)

    # -- files -------------------------------------------------------------------------------
    def cleanup_write_dir(self) -> None:
        """A worker's temporary checkpoint files, removed (the chief's directory never is)."""
        cleanup_write_dir(self.checkpoint_write_dir, self.path)

    def write_model_config(self, config: dict[str, Any]) -> None:
        """Chief only: the model's configuration beside the checkpoints (``generate``,
        ``load_model`` and every resume read it)."""
        if not self.chief:
            return
        import tensorflow as tf  # gfile: local and remote paths alike

        tf.io.gfile.makedirs(self.path)
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        files.atomic_write_text(self.model_config_json, text)

    def read_model_config(self) -> dict[str, Any] | None:
        """The saved model configuration, or None when the directory holds none."""
        if not files.isfile(self.model_config_json):
            return None
        return json.loads(files.read_text(self.model_config_json))

    def write_tokenizer(self, tokenizer: Any) -> dict[str, Any] | None:
        """Chief only: the run's tokenizer, a copy of its file and its config with the file
        named relative to the directory (``highnoon.data.saved_tokenizer``), so a moved run
        still loads; returns that config."""
        if not self.chief:
            return None
        from highnoon.data.saved_tokenizer import save_tokenizer

        return save_tokenizer(tokenizer, self.path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Chief only: the finished run's summary."""
        if self.chief:
            files.atomic_write_text(self.summary_json, json.dumps(summary, indent=2))

    def write_text(self, path: str, text: str) -> str | None:
        """Chief only: one file of this directory, written atomically; returns its path."""
        if not self.chief:
            return None
        return files.atomic_write_text(path, text)
