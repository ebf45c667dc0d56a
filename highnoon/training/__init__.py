"""Training: the curriculum engine (numpy only) and the Trainer (TensorFlow, imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CurriculumScheduler": "highnoon.training.curriculum",
    "AdaptiveCurriculumScheduler": "highnoon.training.curriculum",
    "create_curriculum_batches": "highnoon.training.curriculum",
    "Trainer": "highnoon.training.trainer",
    "CurriculumStage": "highnoon.training.trainer",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'highnoon.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
