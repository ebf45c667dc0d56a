"""`create_model`: a `HighNoonLM` from a preset name or a `ModelConfig`, plus overrides.

Vocabulary size: an explicit `vocab_size` override wins, else the tokenizer's `vocab_size`, else
259 (the byte tokenizer). A vocabulary smaller than the tokenizer's is a ValueError (the model
could not embed every id). The model is returned unbuilt: no weight is allocated until
`model.build()` or the first call, so a 20B config can be inspected on a laptop.
"""

from __future__ import annotations

import os
from typing import Any

from highnoon.models.config import MODEL_CONFIG_FILENAME, ModelConfig, load_model_config
from highnoon.models.memory import GIB, check_weights_fit, host_memory_bytes
from highnoon.models.presets import get_preset
from highnoon.utils.validation import InvalidArgumentError, check_positive_float, is_integer

DEFAULT_PRESET = "highnoon-tiny"


def resolve_config(
    name_or_config: str | ModelConfig | dict[str, Any],
    *,
    tokenizer: Any = None,
    **overrides: Any,
) -> ModelConfig:
    """The `ModelConfig` `create_model` would build (no TensorFlow needed)."""
    explicit_vocab = "vocab_size" in overrides
    if isinstance(name_or_config, str):
        config = get_preset(name_or_config)
    elif isinstance(name_or_config, ModelConfig):
        config, explicit_vocab = name_or_config, True  # a full config's vocab is deliberate
    elif isinstance(name_or_config, dict):
        explicit_vocab = explicit_vocab or "vocab_size" in name_or_config
        config = ModelConfig.from_dict(name_or_config)
    else:
        raise InvalidArgumentError(
            f"create_model: name_or_config={name_or_config!r} must be a preset name, a "
            "ModelConfig or a dict of ModelConfig fields"
        )
    if tokenizer is not None:
        tokenizer_vocab = int(tokenizer.vocab_size)
        if not explicit_vocab:
            overrides["vocab_size"] = tokenizer_vocab
        vocab = overrides.get("vocab_size", config.vocab_size)
        if is_integer(vocab) and vocab < tokenizer_vocab:
            raise InvalidArgumentError(
                f"create_model: vocab_size={vocab} is smaller than the tokenizer's vocab_size="
                f"{tokenizer_vocab}; it must be >= {tokenizer_vocab}"
            )
    return config.replace(**overrides) if overrides else config


def create_model(
    name_or_config: str | ModelConfig | dict[str, Any] | None = None,
    *,
    size: str | None = None,
    tokenizer: Any = None,
    remat: bool = False,
    **overrides: Any,
):
    """Create an (unbuilt) `HighNoonLM`.

    Args:
      name_or_config: a preset name (see `highnoon.models.PRESETS`; the short names `"3b"`,
        `"7b"`, `"tiny"` ... work too), a `ModelConfig` or a dict. Default: `highnoon-tiny`.
      size: the preset by keyword, `create_model(size="3b")`; give it or `name_or_config`.
      tokenizer: optional tokenizer (duck-typed: `vocab_size`, `encode`, `decode`, ...); sets the
        vocabulary size and is attached as `model.tokenizer` for string prompts in `generate`.
      remat: recompute each block in the backward pass instead of keeping its activations
        (about a third more compute, activation memory of one block instead of all).
      **overrides: `ModelConfig` fields to change, e.g. `num_layers=2, dropout=0.1`.

    Gin (through `highnoon.launch.configurables.create_model`, which registers this function):
    `create_model.name_or_config = "highnoon-small"`, `create_model.num_layers = 6`,
    `create_model.remat = True`.
    """
    from highnoon.models.transformer import HighNoonLM

    if size is not None:
        if name_or_config is not None:
            raise InvalidArgumentError(
                f"create_model: give the preset once, as name_or_config={name_or_config!r} or "
                f"size={size!r}, not both"
            )
        name_or_config = size
    if name_or_config is None:
        name_or_config = DEFAULT_PRESET
    config = resolve_config(name_or_config, tokenizer=tokenizer, **overrides)
    model = HighNoonLM(config, remat=remat)
    if tokenizer is not None:
        model.tokenizer = tokenizer
    return model


def load_model(path: str, *, compile: bool = False, device_memory_gib: float | None = None):
    """Load a model saved as `.keras` or as a `tf.train.Checkpoint` with `model_config.json`.

    A checkpoint of a KerasHub model (its `model_config.json` names `model_type: keras_hub`)
    loads as that KerasHub CausalLM, without a preprocessor (`models/kerashub.py`).

    `path` may be a `.keras` file, a checkpoint directory (latest checkpoint; the config is in
    the directory) or a checkpoint prefix like `dir/ckpt-3` (config next to it); local or any
    `tf.io.gfile` path (`gs://...`). The checkpoint must hold the model under the key `model`
    (`tf.train.Checkpoint(model=model, ...)`); other entries (optimizer, step, data position)
    are ignored.

    Before anything is allocated the config's weights must fit `device_memory_gib` (default:
    this machine's physical memory), and before anything is restored the checkpoint's model
    values must match the model's weights one to one (same paths, same shapes): a config that
    disagrees with its checkpoint is an error naming both, never a silently truncated model.
    """
    import keras
    import tensorflow as tf

    from highnoon.models.restore import check_checkpoint_matches
    from highnoon.models.transformer import HighNoonLM

    device_memory_gib = check_positive_float(
        "device_memory_gib", device_memory_gib, allow_none=True
    )
    gfile = tf.io.gfile
    if path.endswith(".keras"):
        if not gfile.exists(path):
            raise InvalidArgumentError(f"load_model: path={path!r} does not exist")
        return keras.models.load_model(
            path, custom_objects={"HighNoonLM": HighNoonLM}, compile=compile
        )
    # A prefix first: some filesystems (ram://) call any path prefix a directory.
    if gfile.exists(path + ".index"):
        directory, prefix = os.path.dirname(path) or ".", path
    elif gfile.isdir(path):
        directory, prefix = path, tf.train.latest_checkpoint(path)
        if prefix is None:
            raise InvalidArgumentError(f"load_model: no checkpoint in directory path={path!r}")
    else:
        raise InvalidArgumentError(
            f"load_model: path={path!r} is neither a .keras file, a checkpoint directory nor a "
            "checkpoint prefix (no .index file)"
        )
    config_path = os.path.join(directory, MODEL_CONFIG_FILENAME)
    if not gfile.exists(config_path):
        raise InvalidArgumentError(
            f"load_model: {directory}/{MODEL_CONFIG_FILENAME} does not exist; a checkpoint is "
            "loaded with the model config saved beside it (the Trainer writes it)"
        )
    if _is_kerashub_config(config_path):  # a KerasHub model the Trainer trained
        from highnoon.models import kerashub

        return kerashub.load_checkpoint(prefix, _read_json(config_path), config_path)
    config = load_model_config(config_path)
    check_model_fits(config, device_memory_gib, source=config_path)
    model = HighNoonLM(config)
    model.build()
    check_checkpoint_matches(prefix, model, config, config_path)
    # Match through the object graph: a Trainer checkpoint also holds the optimizer, which may
    # name the same variables under its own path, so counting keys under 'model/' is not enough.
    status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise InvalidArgumentError(
            f"load_model: checkpoint {prefix!r} does not hold the weights of the model that "
            f"{config_path} describes ({str(error).splitlines()[0][:200]}); "
            "save with tf.train.Checkpoint(model=model, ...)"
        ) from error
    return model


def _read_json(path: str) -> Any:
    import json

    from highnoon.utils import files

    try:
        return json.loads(files.read_text(path))
    except json.JSONDecodeError:
        return None  # load_model_config names the error


def _is_kerashub_config(path: str) -> bool:
    data = _read_json(path)
    return isinstance(data, dict) and data.get("model_type") == "keras_hub"


def check_model_fits(
    config: ModelConfig, device_memory_gib: float | None = None, *, source: str = "the config"
) -> None:
    """Refuse to build a model whose weights (in the Keras policy's variable dtype) exceed
    `device_memory_gib`, or this machine's physical memory when that is None (unknown: no
    check). Raises `ModelDoesNotFitError` naming the size and the settings behind it."""
    import keras

    if device_memory_gib is not None:
        device_bytes, memory_of = int(device_memory_gib * GIB), "the device (device_memory_gib)"
    else:
        device_bytes, memory_of = host_memory_bytes(), "this machine"
    if device_bytes is None:
        return
    dtype = keras.config.dtype_policy().variable_dtype
    check_weights_fit(config, device_bytes, param_dtype=dtype, source=source, memory_of=memory_of)
