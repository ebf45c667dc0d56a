"""``trainer.json``: the settings and stages ``Trainer.save`` writes beside its checkpoint.

Plain JSON (no pickle), format 1::

    {"format": 1, "settings": {...StageSettings...}, "run_options": {...RunOptions...},
     "tokenizer": {...tokenizer config...}, "stages": [{"name", "datasets", "epochs",
     "weight", "config_overrides"}, ...], "loop": {...LoopSettings...}}

(``loop`` is absent from files written before the loop settings were Trainer settings.)

``read_trainer_state`` checks the file's shape and names the problem (invalid JSON with its
position, a missing key, a wrong type, an unknown format); the values themselves are validated
by the settings dataclasses when the Trainer is rebuilt.
"""

from __future__ import annotations

import json
from typing import Any

import tensorflow as tf

from highnoon.training.run_dir import TRAINER_STATE_FILE, RunDir
from highnoon.utils import validation as v

FORMAT = 1
_SHAPE = {"settings": dict, "run_options": dict, "tokenizer": dict, "stages": list}
_OPTIONAL = {"loop": dict}  # absent from files written before the loop settings joined
_STAGE_SHAPE = {"name": str, "datasets": list, "weight": (int, float), "config_overrides": dict}


class TrainerStateError(v.InvalidArgumentError):
    """``trainer.json`` is missing, unreadable or not in the expected shape."""


def state_path(directory: str) -> str:
    return RunDir(directory).trainer_json


def read_trainer_state(directory: str) -> dict[str, Any]:
    """The parsed, shape-checked ``trainer.json`` of a ``Trainer.save`` directory."""
    path = state_path(directory)
    if not tf.io.gfile.exists(path):
        raise TrainerStateError(
            f"{directory!r} holds no {TRAINER_STATE_FILE}; pass a directory written by "
            "Trainer.save(path)"
        )
    with tf.io.gfile.GFile(path) as handle:
        text = handle.read()
    try:
        state = json.loads(text)
    except json.JSONDecodeError as error:
        raise TrainerStateError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno} column "
            f"{error.colno}); restore it from the run or save the trainer again"
        ) from None
    _check_shape(path, state, {"format": int, **_SHAPE}, "")
    _check_shape(path, state, {k: t for k, t in _OPTIONAL.items() if k in state}, "")
    if state["format"] != FORMAT:
        raise TrainerStateError(
            f"{path} has format={state['format']!r}; this version of highnoon reads format {FORMAT}"
        )
    for index, stage in enumerate(state["stages"]):
        _check_shape(path, stage, _STAGE_SHAPE, f"stages[{index}].")
        if stage.get("epochs") is not None and not isinstance(stage["epochs"], int):
            raise TrainerStateError(
                f"{path}: stages[{index}].epochs={stage['epochs']!r} must be an integer or null"
            )
    return state


def write_trainer_state(directory: str, state: dict[str, Any]) -> None:
    from highnoon.utils.files import atomic_write_text

    atomic_write_text(state_path(directory), json.dumps({"format": FORMAT, **state}, indent=2))


def _check_shape(path: str, obj: Any, shape: dict[str, Any], prefix: str) -> None:
    if not isinstance(obj, dict):
        raise TrainerStateError(
            f"{path}: {prefix.rstrip('.') or 'the file'} must be a JSON object, got "
            f"{type(obj).__name__}"
        )
    missing = [key for key in shape if key not in obj]
    if missing:
        raise TrainerStateError(
            f"{path}: missing key(s) {[prefix + k for k in missing]}; the file is damaged or "
            "was not written by Trainer.save"
        )
    for key, kind in shape.items():
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "number"
            raise TrainerStateError(f"{path}: {prefix}{key}={value!r} must be a {names}")
