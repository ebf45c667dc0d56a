"""Training: the curriculum engine (numpy only) and the Trainer (TensorFlow, imported lazily)."""

from __future__ import annotations

from highnoon.utils.lazy import lazy_getattr

_EXPORTS = {
    "CurriculumScheduler": "highnoon.curriculum",
    "AdaptiveCurriculumScheduler": "highnoon.curriculum",
    "create_curriculum_batches": "highnoon.curriculum",
    "Trainer": "highnoon.training.trainer",
    "CurriculumStage": "highnoon.training.trainer",
    "RunLock": "highnoon.training.run_lock",
    "ModelDirLockedError": "highnoon.training.run_lock",
    "RunLockLostError": "highnoon.training.run_lock",
    "Preempted": "highnoon.training.preemption",
    "DataChangedError": "highnoon.training.resume",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr("highnoon.training", _EXPORTS, globals())
