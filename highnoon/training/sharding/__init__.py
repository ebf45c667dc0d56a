"""ZeRO-style sharding of optimizer state, gradients and weights across replicas.

``TrainStep(..., sharding="optimizer" | "gradients" | "full")`` trains with it; see
``levels.py`` for what each level keeps per replica (``ShardingLevel``), ``engine.py`` for the
step engine, ``recorder.py`` for the measurement hook tests and benches pass in,
``checkpoint.py`` for checkpoints that any replica count restores, and
``highnoon.models.memory`` for the memory plan that picks a level.
"""

from __future__ import annotations

from highnoon.training.sharding.levels import (
    CHOICES,
    COLLECTIVES,
    LEVELS,
    ShardingLevel,
    check_level,
    resolve_level,
    resolve_sharding,
)
from highnoon.utils.lazy import lazy_getattr

_LAZY = {
    "ShardedEngine": "highnoon.training.sharding.engine",
    "ShardSpec": "highnoon.training.sharding.layout",
    "StepRecorder": "highnoon.training.sharding.recorder",
    "AdamWSettings": "highnoon.training.sharding.adamw",
    "UnsupportedOptimizerError": "highnoon.training.sharding.adamw",
    "ShardingModelError": "highnoon.training.sharding.fsdp",
    "TrafficLog": "highnoon.training.sharding.traffic",
    "step_traffic": "highnoon.training.sharding.traffic",
    "collective_bytes": "highnoon.training.sharding.traffic",
}

__all__ = [
    "CHOICES",
    "COLLECTIVES",
    "LEVELS",
    "AdamWSettings",
    "ShardSpec",
    "ShardedEngine",
    "ShardingLevel",
    "ShardingModelError",
    "StepRecorder",
    "TrafficLog",
    "UnsupportedOptimizerError",
    "check_level",
    "collective_bytes",
    "resolve_level",
    "resolve_sharding",
    "step_traffic",
]

__getattr__ = lazy_getattr("highnoon.training.sharding", _LAZY, globals())
