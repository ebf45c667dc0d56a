"""highnoon: curriculum training of language models on TensorFlow.

The top-level names are imported lazily (PEP 562), so `from highnoon import CurriculumScheduler`
does not pay for importing TensorFlow; `hn.Trainer` and `hn.create_model` do.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CurriculumScheduler": "highnoon.training.curriculum",
    "AdaptiveCurriculumScheduler": "highnoon.training.curriculum",
    "create_curriculum_batches": "highnoon.training.curriculum",
    "Trainer": "highnoon.training.trainer",
    "CurriculumStage": "highnoon.training.trainer",
    "create_model": "highnoon.models",
    "register_dataset": "highnoon.data",
    "create_strategy": "highnoon.distribute",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'highnoon' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
