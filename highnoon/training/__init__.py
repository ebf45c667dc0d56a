"""Training: the `Trainer` and the run around it (the loop, checkpoints, preemption, the run
lock, the curriculum report), on TensorFlow. Every name is imported lazily, on first use.

The curriculum engine is `highnoon.curriculum` (numpy only). `CurriculumScheduler`,
`AdaptiveCurriculumScheduler` and `create_curriculum_batches` are also importable from here, as
in earlier releases, so existing code keeps working; new code imports them from
`highnoon.curriculum` (or `highnoon`).
"""

from __future__ import annotations

from highnoon.utils.lazy import lazy_getattr

_CURRICULUM_ALIASES = {  # kept for earlier imports; the curriculum lives in highnoon.curriculum
    "CurriculumScheduler": "highnoon.curriculum",
    "AdaptiveCurriculumScheduler": "highnoon.curriculum",
    "create_curriculum_batches": "highnoon.curriculum",
}
_EXPORTS = {
    "Trainer": "highnoon.training.trainer",
    "CurriculumStage": "highnoon.training.trainer",
    "RunLock": "highnoon.training.run_lock",
    "ModelDirLockedError": "highnoon.training.run_lock",
    "RunLockLostError": "highnoon.training.run_lock",
    "Preempted": "highnoon.training.preemption",
    "DataChangedError": "highnoon.training.resume",
    "average_checkpoints": "highnoon.training.checkpoint_average",
    "averaged_model": "highnoon.training.checkpoint_average",
    "export_average": "highnoon.training.checkpoint_average",
    **_CURRICULUM_ALIASES,
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr("highnoon.training", _EXPORTS, globals())
