"""The mean of a run's last K checkpoints (checkpoint soup, LAWA), read back and exported.

Averaging the weights of the last few checkpoints of a run smooths out the noise of the last
optimizer steps the way the moving average (``averaging.py``, ``weight_average``) does, but
after the fact: any finished run can be averaged, with any K its kept checkpoints allow, and a
sharded run (which keeps no moving average) too. Kaddour et al. 2022 (LAWA) and Luo et al. 2025
(an easy-to-hard order's gain recovered under a decaying learning rate) average this way.

* Reading: the checkpoints are the run's own ``tf.train.Checkpoint`` files (never pickle), listed
  by ``checkpointing.checkpoint_candidates`` and read value by value through the checkpoint's
  object graph (``models/restore.py``), under the ``model`` entry. A sharded run's checkpoints
  hold whole tensors under the unsharded names (``sharding/checkpoint.py``), so they average
  exactly like an unsharded run's.
* Refused before any value is read: ``last`` < 1, more checkpoints than the directory keeps
  (the fix: ``max_checkpoints_to_keep``), a directory without checkpoints, an unreadable
  checkpoint, and checkpoints whose model values differ in path, shape or dtype.
* Arithmetic: every floating value is summed in float32 (or wider, for float64 weights), oldest
  checkpoint first, divided by K, and rounded once to the checkpoints' dtype: bfloat16 weights
  lose no precision to the accumulation. Integer values (counters) are taken from the newest
  checkpoint. One fixed order, numpy on the host: the same files give the same bits.
* Export: ``averaged_model`` is ``load_model`` of the newest checkpoint with the averages
  assigned; ``export_average`` writes it as a ``.keras`` file or as a checkpoint directory that
  ``load_model`` and ``highnoon-generate`` read (the run's ``model_config.json`` and tokenizer
  beside it, and ``average.json`` naming the checkpoints averaged).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from highnoon.models import contract
from highnoon.models.restore import checkpoint_keys, listed, model_variables
from highnoon.training.checkpointing import (
    CheckpointError,
    checkpoint_candidates,
    checkpoint_number,
)
from highnoon.training.run_dir import RunDir
from highnoon.utils import files
from highnoon.utils import validation as v

__all__ = [
    "CheckpointAverage",
    "average_checkpoints",
    "averaged_model",
    "export_average",
    "last_checkpoints",
]


@dataclass(frozen=True)
class CheckpointAverage:
    """The element-wise mean of the model values of K checkpoints of one run."""

    weights: dict[str, np.ndarray]  # checkpoint path ("model/embedding") -> mean, stored dtype
    checkpoints: tuple[str, ...]  # the prefixes averaged, oldest first

    @property
    def step(self) -> int:
        """The newest averaged checkpoint's number (``ckpt-N``)."""
        return checkpoint_number(self.checkpoints[-1])


def last_checkpoints(model_dir: str, last: int) -> tuple[str, ...]:
    """The prefixes of ``model_dir``'s newest ``last`` checkpoints, oldest first, once every
    check that needs no value has passed: ``last`` >= 1, that many checkpoints kept, each
    readable, all holding the same model values (paths, shapes, dtypes)."""
    model_dir = v.check_str("model_dir", model_dir)
    last = v.check_int("last", last, minimum=1)
    if files.isfile(model_dir + ".index"):
        raise v.InvalidArgumentError(
            f"model_dir={model_dir!r} is a checkpoint prefix; pass the run's directory (its "
            "last checkpoints are averaged)"
        )
    kept = checkpoint_candidates(model_dir)  # newest first
    if not kept:
        raise CheckpointError(
            f"model_dir={model_dir!r} holds no checkpoint; pass the directory a run saved its "
            "checkpoints in (highnoon-train --model_dir, Trainer.train(checkpoint_dir=...))"
        )
    if last > len(kept):
        names = ", ".join(os.path.basename(p) for p in reversed(kept))
        raise v.InvalidArgumentError(
            f"last={last} but {model_dir} keeps {len(kept)} checkpoint(s) ({names}); pass "
            f"last <= {len(kept)}, or train with max_checkpoints_to_keep >= {last} (a run "
            "keeps only that many newest checkpoints)"
        )
    chosen = tuple(reversed(kept[:last]))
    layouts = [_layout(prefix) for prefix in chosen]
    for prefix, layout in zip(chosen[:-1], layouts[:-1]):
        if layout != layouts[-1]:
            raise CheckpointError(
                f"{prefix} and {chosen[-1]} hold different models "
                f"({_differences(layout, layouts[-1])}); average checkpoints of one model: "
                f"pass a smaller last, or move the other model's checkpoints out of {model_dir}"
            )
    return chosen


def average_checkpoints(model_dir: str, last: int) -> CheckpointAverage:
    """The mean of the model weights of ``model_dir``'s newest ``last`` checkpoints.

    ``last=1`` gives the newest checkpoint's weights exactly. Every check of
    ``last_checkpoints`` runs before a value is read."""
    return _average(last_checkpoints(model_dir, last))


def averaged_model(model_dir: str, last: int, *, device_memory_gib: float | None = None) -> Any:
    """The run's model (``load_model``: its config, checked against the checkpoint) holding
    the mean of its newest ``last`` checkpoints."""
    return _averaged_model(last_checkpoints(model_dir, last), device_memory_gib)[0]


def export_average(
    model_dir: str, last: int, output: str, *, device_memory_gib: float | None = None
) -> str:
    """Writes the mean of ``model_dir``'s newest ``last`` checkpoints to ``output``; returns
    the path ``load_model`` reads.

    ``output`` ending in ``.keras``: a Keras file. Otherwise a new directory holding
    ``ckpt-N`` (N the newest step averaged) with the run's ``model_config.json``, tokenizer and
    ``average.json``. Every argument is checked before anything is loaded."""
    chosen = last_checkpoints(model_dir, last)
    output = _checked_output(output, model_dir)
    model, average = _averaged_model(chosen, device_memory_gib)
    if output.endswith(".keras"):
        return _write_keras(model, output)
    return _write_checkpoint_dir(model, average, model_dir, output)


# -- internals ---------------------------------------------------------------------------------
def _reader(prefix: str) -> Any:
    try:
        return tf.compat.v1.train.NewCheckpointReader(prefix)
    except Exception as error:  # TF reports a damaged index as DataLossError, OpError, ...
        raise _unreadable(prefix, error) from None


def _value(reader: Any, key: str, prefix: str) -> np.ndarray:
    try:
        return np.asarray(reader.get_tensor(key))
    except Exception as error:  # a damaged or truncated data file shows only here
        raise _unreadable(prefix, error) from None


def _unreadable(prefix: str, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {prefix} is unreadable ({str(error).strip().splitlines()[0][:200]}); "
        "average fewer checkpoints (a smaller last) or remove the damaged one"
    )


def _layout(prefix: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{path: (shape, dtype name)}`` of the checkpoint's model values."""
    reader = _reader(prefix)
    try:
        keys = checkpoint_keys(prefix)  # the object graph is a value of the data file
    except Exception as error:  # a truncated data file: IndexError, DataLossError, ...
        raise _unreadable(prefix, error) from None
    if not keys:
        raise CheckpointError(
            f"checkpoint {prefix} holds no model entry; it was not written by a highnoon run "
            "(tf.train.Checkpoint(model=model, ...))"
        )
    shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    return {path: (tuple(shapes[key]), dtypes[key].name) for path, key in keys.items()}


def _differences(older: dict[str, Any], newer: dict[str, Any]) -> str:
    items = [f"{p} {list(older[p][0])} {older[p][1]} vs {list(newer[p][0])} {newer[p][1]}"
             for p in sorted(set(older) & set(newer)) if older[p] != newer[p]]  # fmt: skip
    items += [f"{p} only in the older" for p in sorted(set(older) - set(newer))]
    items += [f"{p} only in the newer" for p in sorted(set(newer) - set(older))]
    return listed(items)


def _average(chosen: tuple[str, ...]) -> CheckpointAverage:
    """The mean, one value at a time in a fixed order (oldest checkpoint first)."""
    readers = [_reader(prefix) for prefix in chosen]
    keys = [checkpoint_keys(prefix) for prefix in chosen]
    dtypes = readers[-1].get_variable_to_dtype_map()
    weights: dict[str, np.ndarray] = {}
    for path in sorted(keys[-1]):
        dtype = dtypes[keys[-1][path]]
        if not dtype.is_floating:  # a counter or seed: the newest value
            weights[path] = _value(readers[-1], keys[-1][path], chosen[-1])
            continue
        total = None
        for prefix, reader, names in zip(chosen, readers, keys):
            value = _value(reader, names[path], prefix)
            if total is None:
                total = np.zeros(value.shape, np.promote_types(np.float32, value.dtype))
            total += value.astype(total.dtype)
        weights[path] = (total / total.dtype.type(len(chosen))).astype(dtype.as_numpy_dtype)
    return CheckpointAverage(weights=weights, checkpoints=chosen)


def _averaged_model(
    chosen: tuple[str, ...], device_memory_gib: float | None
) -> tuple[Any, CheckpointAverage]:
    from highnoon.models.factory import load_model

    model = load_model(chosen[-1], device_memory_gib=device_memory_gib)  # checks config too
    average = _average(chosen)
    # The object the Trainer checkpoints: the model, or a KerasHub CausalLM's wrapper.
    variables = model_variables(contract.adapt(model))
    for path, value in average.weights.items():
        variables[path].assign(value)
    return model, average


def _checked_output(output: str, model_dir: str) -> str:
    output = v.check_str("output", output)
    if output.endswith(".keras"):
        v.check_writable_dir("output's directory", os.path.dirname(output) or ".")
        return output
    if os.path.abspath(output.rstrip("/")) == os.path.abspath(model_dir.rstrip("/")):
        raise v.InvalidArgumentError(
            f"output={output!r} is the run's model_dir: a resume would take the average for "
            "the run's newest checkpoint; pass a new directory or a .keras file"
        )
    existing = checkpoint_candidates(output)
    if existing:
        raise v.InvalidArgumentError(
            f"output={output!r} already holds checkpoints ({os.path.basename(existing[0])}); "
            "pass a new directory or a .keras file"
        )
    return v.check_writable_dir("output", output)


def _write_keras(model: Any, output: str) -> str:
    """Saved beside nothing: into a temporary directory, then the bytes written atomically."""
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, os.path.basename(output))
        model.save(local)
        with open(local, "rb") as handle:
            return files.atomic_write_bytes(output, handle.read())


def _write_checkpoint_dir(
    model: Any, average: CheckpointAverage, model_dir: str, output: str
) -> str:
    """The run's config, tokenizer and provenance first, the checkpoint last: a reader that
    sees the checkpoint sees everything it needs beside it."""
    from highnoon.data.saved_tokenizer import load_saved_tokenizer

    source, target = RunDir(model_dir), RunDir(output)
    config = source.read_model_config()
    if config is not None:
        target.write_model_config(config)
    tokenizer = load_saved_tokenizer(model_dir)
    if tokenizer is not None:
        target.write_tokenizer(tokenizer)
    record = {
        "model_dir": model_dir,
        "last": len(average.checkpoints),
        "checkpoints": [os.path.basename(p) for p in average.checkpoints],
    }
    target.write_text(target.average_json, json.dumps(record, indent=2) + "\n")
    checkpoint = tf.train.Checkpoint(model=contract.adapt(model))
    manager = tf.train.CheckpointManager(checkpoint, output, max_to_keep=1)
    return manager.save(checkpoint_number=max(average.step, 0))
