"""The curriculum engine: scores, pacing, easy-to-hard order, keyed epoch permutations, pools and
per-host rows. numpy only: importing it never imports TensorFlow.

Layers: ``highnoon.data`` measures each sample (``data.features``); this package turns those
measurements into an order and a stream of global batches; ``highnoon.training`` trains on it.
"""

from __future__ import annotations

from highnoon.curriculum.adaptive import AdaptiveCurriculumScheduler
from highnoon.curriculum.batches import create_curriculum_batches
from highnoon.curriculum.order import order_from_scores, scores_fingerprint
from highnoon.curriculum.pacing import PACINGS, Pacing, canonical_pacing, pool_size
from highnoon.curriculum.scheduler import STRATEGIES, CurriculumScheduler
from highnoon.curriculum.scoring import random_scores, scores_from_features
from highnoon.curriculum.seq_length import SequenceLengthWarmup

__all__ = [
    "PACINGS",
    "STRATEGIES",
    "AdaptiveCurriculumScheduler",
    "CurriculumScheduler",
    "Pacing",
    "SequenceLengthWarmup",
    "canonical_pacing",
    "create_curriculum_batches",
    "order_from_scores",
    "pool_size",
    "random_scores",
    "scores_fingerprint",
    "scores_from_features",
]
