"""A run's tokenizer, kept inside its directory so the run still loads after it is moved.

A tokenizer backed by a file (SentencePiece ``.model``, Hugging Face ``tokenizer.json``) is
copied into the directory under its ``store_file`` name, and its config is recorded with
``model_path`` relative to the directory (``"tokenizer.json"``), never the absolute path of the
user's file: a model_dir copied to another machine, or a user file deleted after training,
still gives back the exact tokenizer (the sha256 in the config is checked on load).

``save_tokenizer(tokenizer, directory)`` writes the copy and ``highnoon_tokenizer.json`` (the
record ``highnoon-generate``, the lm-eval adapter and ``Trainer.load`` read) and returns the
relative config (what ``trainer.json`` stores). ``resolve_config`` turns a relative config back
into one that ``tokenizer_from_config`` loads; ``load_saved_tokenizer`` does both.
"""

from __future__ import annotations

import json
import os
from typing import Any

from highnoon.data.tokenizers import Tokenizer, tokenizer_from_config
from highnoon.utils import files

RECORD_FILE = "highnoon_tokenizer.json"


def relative_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """``tokenizer.to_config()`` with its file named as the copy a directory keeps."""
    config = tokenizer.to_config()
    if tokenizer.store_file and "model_path" in config:
        config["model_path"] = tokenizer.store_file
    return config


def save_tokenizer(tokenizer: Tokenizer, directory: str) -> dict[str, Any]:
    """Copies ``tokenizer``'s file (if any) into ``directory`` and records its config there
    (``RECORD_FILE``); returns the recorded config (``model_path`` relative to ``directory``).
    Both writes are atomic; the copy is rewritten only when its content differs."""
    config = relative_config(tokenizer)
    if tokenizer.store_file:
        target = os.path.join(directory, tokenizer.store_file)
        source = os.path.abspath(tokenizer.model_path)
        if os.path.abspath(target) != source:
            with open(source, "rb") as handle:
                files.atomic_write_bytes(target, handle.read())
    files.atomic_write_text(
        os.path.join(directory, RECORD_FILE), json.dumps(config, indent=2, sort_keys=True) + "\n"
    )
    return config


def resolve_config(config: dict[str, Any], directory: str) -> dict[str, Any]:
    """``config`` with a relative ``model_path`` (or ``path``) made relative to ``directory``
    (an absolute one, as written before runs kept a copy, stays as it is)."""
    config = dict(config)
    for key in ("model_path", "path"):
        value = config.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value:
            config[key] = os.path.join(directory, value)
    return config


def load_saved_tokenizer(directory: str) -> Tokenizer | None:
    """The tokenizer ``save_tokenizer`` recorded in ``directory``, or None when it holds no
    record (a run written before runs kept their tokenizer)."""
    path = os.path.join(directory, RECORD_FILE)
    if not files.isfile(path):
        return None
    return tokenizer_from_config(resolve_config(json.loads(files.read_text(path)), directory))
