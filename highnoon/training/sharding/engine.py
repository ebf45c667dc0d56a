"""The sharded training step of one replica, for the three levels (see ``levels.py``).

Per optimizer step, inside ``strategy.run``:

1. gradients, as this replica's share of the sum over replicas:
   * "optimizer": the local gradients of all micro-batches are summed, then reduce-scattered;
   * "gradients": each micro-batch's gradients are reduce-scattered as soon as they exist, and
     only the shares are summed from one micro-batch to the next;
   * "full": the backward pass through the gathered segments yields shares directly
     (``fsdp.GatherRunner``);
2. under loss scaling the shares are unscaled, and a non-finite gradient anywhere skips the step;
3. global-norm clipping: each replica's sum of squares of its shares, one all-reduce of that
   scalar (with the non-finite count, under loss scaling), the same scale as
   ``tf.clip_by_global_norm`` over the whole gradient;
4. AdamW on the shares (``adamw.adamw_update``);
5. "optimizer"/"gradients": the updated shares are all-gathered into the model's (replicated)
   variables; "full": the shares are the weights.

The collective-free parts (local gradients, the update) are separate functions so that
``jit_compile=True`` compiles each into one XLA computation on every platform; at level "full"
each segment's computation is compiled (the gathers around it stay outside XLA off TPUs).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from highnoon.training.losses import (
    Batch,
    accumulated_gradients,
    masked_token_loss_sum,
    micro_batch_gradients,
    model_inputs,
    split_micro_batches,
)
from highnoon.training.sharding import fsdp
from highnoon.training.sharding.adamw import AdamWSettings, adamw_update
from highnoon.training.sharding.checkpoint import has_storage, unsharded_layout
from highnoon.training.sharding.collectives import make_collectives, resolve_collectives
from highnoon.training.sharding.layout import spec_of
from highnoon.training.sharding.levels import ShardingLevel
from highnoon.training.sharding.recorder import StepRecorder
from highnoon.training.sharding.state import ShardedState
from highnoon.training.sharding.traffic import TrafficLog
from highnoon.training.step_engine import StepConfig, StepEngine
from highnoon.utils.validation import InvalidArgumentError


def _scaler(scale: tf.Tensor | None) -> Callable[[tf.Tensor], tf.Tensor] | None:
    return None if scale is None else (lambda loss: loss * scale)


class ShardedEngine(StepEngine):
    """Sharded state and replica step of ``model`` trained with ``optimizer`` (a Keras Adam or
    AdamW, possibly under a LossScaleOptimizer, unbuilt) at ``level`` (a ``ShardingLevel`` or
    its name) on ``strategy``. ``recorder``: a measurement hook (``recorder.py``), or None."""

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
        level: ShardingLevel | str,
        *,
        collectives: str = "auto",
        recorder: StepRecorder | None = None,
    ) -> None:
        level = ShardingLevel.parse(level)
        if level is None:
            raise InvalidArgumentError(
                "ShardedEngine: level=None shards nothing; use UnshardedEngine (TrainStep with "
                "sharding=None) or one of 'optimizer', 'gradients', 'full'"
            )
        self.settings = AdamWSettings.from_keras(optimizer)
        if optimizer.built:
            raise InvalidArgumentError(
                "sharding needs the optimizer unbuilt: a built Keras optimizer already holds "
                "whole-size moments for every weight; do not call optimizer.build(...) when "
                "sharding is on (the sharded step keeps the moments as shares)"
            )
        self.mode = resolve_collectives(collectives, strategy)
        self.model, self.optimizer, self.strategy, self.level = model, optimizer, strategy, level
        self.recorder = recorder
        self.num_replicas = strategy.num_replicas_in_sync
        if level.shards_weights:
            fsdp.check_segmented(model)
            fsdp.build_without_storage(model, strategy)
        elif not model.built or not all(has_storage(v) for v in model.weights):
            raise InvalidArgumentError(
                f"sharding={level.name!r} needs the model built with its weights (build or call "
                "it under strategy.scope() first); only sharding='full' builds it itself"
            )
        self.variables = list(model.trainable_variables)
        self.specs = [spec_of(v, self.num_replicas) for v in self.variables]
        self.decay = [self.settings.decays(v) for v in self.variables]
        self.state = ShardedState(
            self.variables,
            self.specs,
            strategy,
            shard_weights=level.shards_weights,
            loss_scaling=self.settings.loss_scaling,
        )
        if level.shards_weights:
            for var, share, spec in zip(self.variables, self.state.weights, self.specs):
                # An uninitialised Keras variable reads as its initialiser's value; the
                # initialisers are seeded, so every host computes the same whole tensor.
                self.state.assign_from_full(share, spec, var.value)
            fsdp.refuse_reads(model)
        self._compiled: dict[str, Callable] = {}
        self._checkpoint_objects: dict[str, object] | None = None

    # -- the replica step ----------------------------------------------------------------------
    def replica_step(self, batch: Batch, denominator: tf.Tensor, config: StepConfig) -> tf.Tensor:
        comm = make_collectives(
            self.mode,
            self.num_replicas,
            self._trace_log(config),
            on_tpu=isinstance(self.strategy, tf.distribute.TPUStrategy),
        )
        scale = self.state.loss_scale.read_value() if self.state.loss_scale is not None else None
        a, jit = config.accumulation_steps, config.jit_compile
        if not self.level.shards_gradients:
            grads, loss = self._fn("grads", jit, self._local_gradients)(
                batch, denominator, a, scale
            )
            grads = [tf.reshape(g, spec.shape) for g, spec in zip(grads, self.specs)]
            carried = grads
            shares = comm.reduce_scatter(grads, self.specs, chained=True)
        else:
            micro = split_micro_batches(batch, a)
            shares, loss = None, tf.constant(0.0, tf.float32)
            for index in range(a):
                part = {k: v[index] for k, v in micro.items()}
                if not self.level.shards_weights:
                    g, part_loss = self._fn("micro", jit, self._micro_gradients)(
                        part, denominator, scale
                    )
                    g = comm.reduce_scatter(g, self.specs, chained=True)
                else:
                    g, part_loss = self._full_gradients(part, denominator, scale, comm, jit)
                shares = g if shares is None else [s + x for s, x in zip(shares, g)]
                loss += part_loss
            carried = shares
        if self.recorder is not None:
            self.recorder.carried([tuple(g.shape) for g in carried])
        self._apply(shares, config.clip_norm, comm, scale, jit)
        return loss

    def _trace_log(self, config: StepConfig) -> TrafficLog:
        """Where this trace's collectives log their traffic: the recorder's log of this replica
        (MirroredStrategy traces its replicas in parallel threads), or a log nobody reads."""
        if self.recorder is None:
            return TrafficLog()
        replica = tf.get_static_value(tf.distribute.get_replica_context().replica_id_in_sync_group)
        replica = None if replica is None else int(replica)
        return self.recorder.trace_log(config, replica, self.num_replicas)

    def _local_gradients(self, batch, denominator, accumulation_steps, scale):
        """Whole local gradients summed over the micro-batches (no collective)."""
        return accumulated_gradients(
            self.model, batch, denominator, accumulation_steps, _scaler(scale)
        )

    def _micro_gradients(self, part, denominator, scale):
        """Whole local gradients of one micro-batch (no collective)."""
        return micro_batch_gradients(self.model, part, denominator, _scaler(scale))

    def _full_gradients(self, part, denominator, scale, comm, jit):
        """Shares of one micro-batch's gradients through the gathered segments."""
        values = [w.read_value() for w in self.state.weights]
        ids = [id(v) for v in self.variables]
        runner = fsdp.GatherRunner(
            comm,
            dict(zip(ids, self.specs)),
            dict(zip(ids, values)),
            recompute=True,
            jit_compile=jit,
        )
        with tf.GradientTape() as tape:
            tape.watch(values)
            logits = self.model(part["inputs"], training=True, runner=runner, **model_inputs(part))
            loss = masked_token_loss_sum(part["targets"], logits, part["loss_mask"]) / denominator
            objective = loss * scale if scale is not None else loss
        grads = tape.gradient(objective, values)
        return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, values)], loss

    def _apply(self, shares, clip_norm, comm, scale, jit) -> None:
        state = self.state
        stats = []
        if scale is not None:
            # Keras checks the scaled gradients (LossScaleOptimizer.check_finite), then unscales.
            nonfinite = tf.add_n(
                [tf.reduce_sum(tf.cast(~tf.math.is_finite(g), tf.float32)) for g in shares]
            )
            shares = [g / scale for g in shares]
        if clip_norm:
            stats.append(tf.reduce_sum(tf.stack([tf.nn.l2_loss(g) for g in shares])))
        if scale is not None:
            stats.append(nonfinite)
        if stats:  # one all-reduce of one or two scalars
            summed = comm.all_reduce([tf.stack(stats)])[0]
        if clip_norm:
            norm = tf.sqrt(summed[0] * tf.constant(2.0, tf.float32))
            shares, _ = tf.clip_by_global_norm(shares, clip_norm, use_norm=norm)
        iterations = state.iterations.read_value()
        learning_rate = self.settings.learning_rate_at(iterations)
        if self.level.shards_weights:
            weights = [w.read_value() for w in state.weights]
        else:
            rid = comm.replica_id
            weights = [spec.shard(v.value, rid) for v, spec in zip(self.variables, self.specs)]
        old = (weights, [m.read_value() for m in state.m], [v.read_value() for v in state.v])
        new = self._fn("update", jit, self._update)(*old, shares, learning_rate, iterations)
        if scale is not None:
            finite = tf.equal(summed[-1], 0.0)
            new = tuple(
                [tf.where(finite, n, o) for n, o in zip(ns, os)] for ns, os in zip(new, old)
            )
            self._update_loss_scale(finite, scale)
            state.iterations.assign_add(tf.cast(finite, tf.int64))
        else:
            state.iterations.assign_add(1)
        new_weights, new_m, new_v = new
        for var, value in zip(state.m, new_m):
            var.assign(value)
        for var, value in zip(state.v, new_v):
            var.assign(value)
        if self.level.shards_weights:
            for var, value in zip(state.weights, new_weights):
                var.assign(value)
        else:
            # One variable at a time: only one variable's whole-size gather buffers are alive
            # at once, not the whole model's (memory is what sharding is for).
            previous: list = []
            for var, value, spec in zip(self.variables, new_weights, self.specs):
                with tf.control_dependencies(previous):
                    (whole,) = comm.all_gather([value], [spec])
                    previous = [var.assign(whole)]

    def _update(self, weights, m, v, grads, learning_rate, iterations):
        out = [
            adamw_update(w, g, m_, v_, learning_rate, iterations, self.settings, decay)
            for w, g, m_, v_, decay in zip(weights, grads, m, v, self.decay)
        ]
        return tuple([o[i] for o in out] for i in range(3))

    def _update_loss_scale(self, finite: tf.Tensor, scale: tf.Tensor) -> None:
        """Keras' LossScaleOptimizer: halve on a non-finite step, double after growth_steps
        finite steps in a row (counter reset either way)."""
        counter = self.state.growth_counter.read_value()
        grow = tf.equal(counter, self.settings.loss_scaling.growth_steps - 1)
        zero = tf.zeros_like(counter)
        new_counter = tf.where(finite, tf.where(grow, zero, counter + 1), zero)
        new_scale = tf.where(finite, tf.where(grow, scale * 2.0, scale), scale * 0.5)
        self.state.growth_counter.assign(new_counter)
        self.state.loss_scale.assign(new_scale)

    def _fn(self, kind: str, jit: bool, fn: Callable) -> Callable:
        """``fn`` itself, or (``jit``) one cached XLA-compiled function per kind."""
        if not jit:
            return fn
        if kind not in self._compiled:
            self._compiled[kind] = tf.function(fn, jit_compile=True)
        return self._compiled[kind]

    # -- evaluation ----------------------------------------------------------------------------
    def replica_logits(self, batch: Batch) -> tf.Tensor:
        """Evaluation logits of this replica's batch (gathering the weights at level "full")."""
        extra = model_inputs(batch)
        if not self.level.shards_weights:
            return self.model(batch["inputs"], training=False, **extra)
        comm = make_collectives(self.mode, self.num_replicas, TrafficLog(), on_tpu=False)
        ids = [id(v) for v in self.variables]
        values = [w.read_value() for w in self.state.weights]
        runner = fsdp.GatherRunner(
            comm, dict(zip(ids, self.specs)), dict(zip(ids, values)), recompute=False
        )
        return self.model(batch["inputs"], training=False, runner=runner, **extra)

    # -- state outside the step ----------------------------------------------------------------
    def full_weights(self) -> list[np.ndarray]:
        """The whole trainable weights (model order) as numpy; every worker must call it."""
        if not self.level.shards_weights:
            return [np.asarray(v.numpy()) for v in self.variables]
        return [
            self.state.full_value(share, spec).numpy()
            for share, spec in zip(self.state.weights, self.specs)
        ]

    def export_model(self) -> keras.Model:
        """The model itself while it holds its weights ("optimizer", "gradients"); at "full" a
        new model of the same config holding the whole weights (built outside any strategy
        scope, so on this host's default device); every worker must call it."""
        if not self.level.shards_weights:
            return self.model
        weights = self.full_weights()
        model = type(self.model).from_config(self.model.get_config())
        model.build()
        for variable, value in zip(model.trainable_variables, weights):
            variable.assign(value)
        return model

    def checkpoint_objects(self) -> dict[str, object]:
        """``model`` and ``optimizer`` entries for ``tf.train.Checkpoint`` with the object graph
        (hence the names) of an unsharded run: see ``checkpoint.py``."""
        if self._checkpoint_objects is None:
            self._checkpoint_objects = unsharded_layout(self)
        return self._checkpoint_objects
