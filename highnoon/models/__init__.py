"""The model zoo: configs and presets, the decoder-only transformer, generation, memory estimates.

`ModelConfig`, the presets and `estimate_memory` are pure Python; `HighNoonLM`, `create_model`'s
result and `load_model` need TensorFlow/Keras (imported when first used).
"""

from __future__ import annotations

from highnoon.models.config import (
    MODEL_CONFIG_FILENAME,
    ModelConfig,
    load_model_config,
    save_model_config,
)
from highnoon.models.factory import create_model, load_model, resolve_config
from highnoon.models.memory import MemoryEstimate, ModelDoesNotFitError, check_fits, estimate_memory
from highnoon.models.presets import (
    NOMINAL_PARAMETERS,
    PRESETS,
    get_preset,
    preset_names,
    preset_table,
    preset_table_markdown,
)
from highnoon.utils.lazy import lazy_getattr

_LAZY = {
    "HighNoonLM": "highnoon.models.transformer",
    "generate": "highnoon.models.generation",
}

__all__ = [
    "MODEL_CONFIG_FILENAME",
    "NOMINAL_PARAMETERS",
    "PRESETS",
    "HighNoonLM",
    "MemoryEstimate",
    "ModelConfig",
    "ModelDoesNotFitError",
    "check_fits",
    "create_model",
    "estimate_memory",
    "generate",
    "get_preset",
    "load_model",
    "load_model_config",
    "preset_names",
    "preset_table",
    "preset_table_markdown",
    "resolve_config",
    "save_model_config",
]


__getattr__ = lazy_getattr("highnoon.models", _LAZY, globals())
