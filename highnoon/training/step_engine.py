"""The step-engine interface and its unsharded implementation.

A step engine owns one replica's share of an optimizer step and of evaluation, inside
``strategy.run``: given the replica's batch and the global token count, it computes the gradients,
combines them across replicas, clips and updates the weights, and returns the replica's loss.
``TrainStep`` (``step.py``) wraps any engine in the compiled multi-step loop and the reductions
the host sees. Two engines exist: ``UnshardedEngine`` here (every replica holds everything, a
gradient all-reduce and the Keras optimizer) and ``sharding.engine.ShardedEngine`` (ZeRO-style
shares). Both take the loss and gradient arithmetic from ``losses.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from highnoon.training.losses import Batch, accumulated_gradients, model_inputs


@dataclass
class StepConfig:
    """What shapes and changes the compiled step; one compiled function per distinct config."""

    accumulation_steps: int = 1
    clip_norm: float | None = 1.0
    jit_compile: bool = False
    # The most optimizer steps one host call runs, when the run fixes it (None: any number).
    # 1, on a step that is one XLA computation, compiles the host call without the in-graph
    # loop (``TrainStep.train_fn``).
    steps_per_call: int | None = None


class StepEngine(abc.ABC):
    """One replica's training and evaluation step of ``model`` with ``optimizer`` on
    ``strategy``, and the state a run saves and exports."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    strategy: tf.distribute.Strategy

    @abc.abstractmethod
    def replica_step(self, batch: Batch, denominator: tf.Tensor, config: StepConfig) -> tf.Tensor:
        """One optimizer step of this replica (inside ``strategy.run``); returns the replica's
        loss, its share of the global mean (``denominator``: the global target-token count)."""

    @abc.abstractmethod
    def replica_logits(self, batch: Batch) -> tf.Tensor:
        """Evaluation logits of this replica's batch (inside ``strategy.run``)."""

    @abc.abstractmethod
    def checkpoint_objects(self) -> dict[str, Any]:
        """The ``model`` and ``optimizer`` entries of the run's ``tf.train.Checkpoint``."""

    @abc.abstractmethod
    def full_weights(self) -> list[np.ndarray]:
        """The whole trainable weights as numpy arrays (every worker calls it)."""

    @abc.abstractmethod
    def export_model(self) -> keras.Model:
        """A model holding the whole trained weights, for inference (every worker calls it)."""


def disable_optimizer_allreduce(optimizer: keras.optimizers.Optimizer) -> None:
    """Make a Keras optimizer apply gradients that the step has already summed across replicas.

    Keras 3's TensorFlow optimizer sums gradients across replicas in ``_all_reduce_sum_gradients``
    (replica context). The step does that itself, before clipping, so the optimizer's copy must
    be the identity. Applies to the inner optimizer of a ``LossScaleOptimizer`` too.
    """
    targets = [optimizer]
    inner = getattr(optimizer, "inner_optimizer", None)
    if inner is not None:
        targets.append(inner)
    for target in targets:
        target._all_reduce_sum_gradients = lambda grads_and_vars: list(grads_and_vars)


class UnshardedEngine(StepEngine):
    """Every replica holds the whole model, gradients and optimizer state.

    Gradients are summed across replicas here, not inside the optimizer, so that global-norm
    clipping sees the global gradient (Keras clips before its own all-reduce, i.e. per replica);
    the optimizer is told not to all-reduce again (``disable_optimizer_allreduce``).
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
    ) -> None:
        self.model, self.optimizer, self.strategy = model, optimizer, strategy
        disable_optimizer_allreduce(optimizer)
        self._xla: dict[tuple, Callable] = {}

    def replica_step(self, batch: Batch, denominator: tf.Tensor, config: StepConfig) -> tf.Tensor:
        if self.strategy.num_replicas_in_sync == 1:
            # One replica: nothing to sum across, so the whole step is one XLA computation (as
            # Keras' fit(jit_compile=True) compiles it), fusing AdamW's element-wise update.
            update = self._compiled("update", self._update_one_replica, config)
            return update(batch, denominator, config.accumulation_steps, config.clip_norm)
        # Several replicas: the optimizer's update runs in cross-replica context, which cannot
        # live inside an XLA computation, so only the gradients are compiled.
        grads, local_loss = self._gradient_fn(config)(batch, denominator, config.accumulation_steps)
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        self._clip_and_apply(grads, config.clip_norm)
        return local_loss

    def _micro_gradients(
        self, batch: Batch, denominator: tf.Tensor, accumulation_steps: int
    ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Summed gradients and loss of this replica's micro-batches: the pure, XLA-compilable
        part of a step (no collectives, no variable updates)."""
        scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        scale_loss = self.optimizer.scale_loss if scaled else None
        return accumulated_gradients(self.model, batch, denominator, accumulation_steps, scale_loss)

    def _gradient_fn(self, config: StepConfig) -> Callable:
        return self._compiled("grad", self._micro_gradients, config)

    def _update_one_replica(
        self, batch: Batch, denominator: tf.Tensor, accumulation_steps: int, clip_norm: float | None
    ) -> tf.Tensor:
        """A whole optimizer step when there is one replica: gradients, clipping, update."""
        grads, local_loss = self._micro_gradients(batch, denominator, accumulation_steps)
        self._clip_and_apply(grads, clip_norm)
        return local_loss

    def _compiled(self, kind: str, fn: Callable, config: StepConfig) -> Callable:
        """``fn`` as one XLA computation when ``config.jit_compile``, else as it is (it is traced
        into the step's graph either way)."""
        if not config.jit_compile:
            return fn
        key = (kind, config.accumulation_steps, config.clip_norm)
        if key not in self._xla:
            self._xla[key] = tf.function(fn, jit_compile=True)
        return self._xla[key]

    def _clip_and_apply(self, grads: list[tf.Tensor], clip_norm: float | None) -> None:
        if clip_norm:
            limit = clip_norm
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                # Loss-scaled gradients (mixed_float16), unscaled by the optimizer afterwards:
                # clipping them at clip_norm * scale clips the true gradients at clip_norm.
                limit = clip_norm * tf.cast(self.optimizer.dynamic_scale, tf.float32)
            grads, _ = tf.clip_by_global_norm(grads, limit)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))

    def replica_logits(self, batch: Batch) -> tf.Tensor:
        return self.model(batch["inputs"], training=False, **model_inputs(batch))

    def checkpoint_objects(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer}

    def full_weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.model.trainable_variables]

    def export_model(self) -> keras.Model:
        return self.model
