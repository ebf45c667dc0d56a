"""highnoon: curriculum training of language models on TensorFlow.

The top-level names are imported lazily (PEP 562), so `from highnoon import CurriculumScheduler`
does not pay for importing TensorFlow; `hn.Trainer` and `hn.create_model` do.
"""

from __future__ import annotations

from highnoon.utils.lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "CurriculumScheduler": "highnoon.curriculum",
    "AdaptiveCurriculumScheduler": "highnoon.curriculum",
    "create_curriculum_batches": "highnoon.curriculum",
    "Trainer": "highnoon.training.trainer",
    "CurriculumStage": "highnoon.training.trainer",
    "create_model": "highnoon.models",
    "ModelConfig": "highnoon.models.config",
    "register_dataset": "highnoon.data",
    "create_strategy": "highnoon.distribute",
}

__all__ = [*_EXPORTS, "__version__"]


__getattr__ = lazy_getattr("highnoon", _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
