"""A measurement hook for the sharded step: what its traced program sends and keeps.

Tests and benches pass a ``StepRecorder`` to ``TrainStep(..., recorder=)``; the engine then
hands it each trace's traffic log and the shapes of the gradients it carries between
micro-batches. A training run passes none and keeps no measurements.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from highnoon.training.sharding.checkpoint import has_storage
from highnoon.training.sharding.traffic import TrafficLog
from highnoon.utils.validation import InvalidArgumentError


def config_key(config: Any) -> tuple:
    """The part of a ``StepConfig`` that makes a distinct traced step."""
    return (config.accumulation_steps, config.clip_norm, config.jit_compile)


class StepRecorder:
    """Traffic logs per traced step config and replica, and the carried gradients' shapes."""

    def __init__(self) -> None:
        self.traffic: dict[tuple, dict[int | None, TrafficLog]] = {}
        self.carried_gradient_shapes: list[tuple[int, ...]] = []
        self.num_replicas: int | None = None

    def trace_log(self, config: Any, replica: int | None, num_replicas: int) -> TrafficLog:
        """The log of one replica's trace of the step of ``config`` (emptied: a retrace logs
        the step anew)."""
        self.num_replicas = num_replicas
        log = self.traffic.setdefault(config_key(config), {}).setdefault(replica, TrafficLog())
        log.clear()
        return log

    def carried(self, shapes: list[tuple[int, ...]]) -> None:
        """The shapes of the gradients the traced step keeps between micro-batches."""
        self.carried_gradient_shapes = [tuple(s) for s in shapes]

    def bytes_sent_per_step(self, config: Any) -> float:
        """Bytes one replica sends per optimizer step of ``config``, from the collectives the
        traced step issues. The replicas run the same program, so any one's log is the step's."""
        key = config_key(config)
        if key not in self.traffic:
            raise InvalidArgumentError(
                f"config={config} names a step that has not been traced yet; run it once first"
            )
        log = next(iter(self.traffic[key].values()))
        return log.bytes_sent(self.num_replicas)

    def replica_bytes(self, engine: Any) -> dict[str, int]:
        """Bytes one replica of ``engine`` (a ``ShardedEngine``) holds, measured from the
        variables that exist: weights (the model's variables with storage plus weight shares),
        optimizer state, and the gradients carried between micro-batches in the last trace."""
        model_bytes = sum(
            _local_bytes(engine.strategy, v.value) for v in engine.model.weights if has_storage(v)
        )
        state = engine.state.replica_bytes()
        grads = sum(
            int(np.prod(shape)) * tf.as_dtype(v.dtype).size
            for shape, v in zip(self.carried_gradient_shapes, engine.variables)
        )
        return {
            "weights": model_bytes + state["weights"],
            "optimizer": state["optimizer"],
            "gradients": grads,
        }


def _local_bytes(strategy: tf.distribute.Strategy, variable: tf.Variable) -> int:
    """Bytes of ``variable``'s copy on the first local replica."""
    local = strategy.experimental_local_results(variable)[0]
    return int(np.prod(local.shape)) * local.dtype.size
