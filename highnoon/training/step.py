"""The compiled training and evaluation steps (docs/design.md, "The loop and the step").

One step consumes one *effective* global batch: ``gradient_accumulation_steps`` micro-batches per
replica, accumulated inside the compiled function. The loss is the masked token cross-entropy
summed over every replica and micro-batch and divided by the global number of target tokens, so
loss and gradients equal a single-device run on the same global batch, whatever the replica count
or accumulation.

Gradients are summed across replicas here, not inside the optimizer, so that global-norm clipping
sees the global gradient (Keras clips before its own all-reduce, i.e. per replica). The optimizer
is therefore told not to all-reduce again (``disable_optimizer_allreduce``).

``sharding`` ("optimizer", "gradients", "full"; ``highnoon/training/sharding/``) replaces the
gradient all-reduce and the Keras optimizer by a step over per-replica shares; with
``sharding=None`` (the default) the step is exactly the unsharded one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

Batch = dict[str, tf.Tensor]


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


def masked_token_loss_sum(targets: tf.Tensor, logits: tf.Tensor, loss_mask: tf.Tensor) -> tf.Tensor:
    """Sum over unmasked positions of the token cross-entropy (float32)."""
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.int32), logits=tf.cast(logits, tf.float32)
    )
    return tf.reduce_sum(per_token * tf.cast(loss_mask, tf.float32))


def _model_inputs(batch: Batch) -> dict[str, Any]:
    extra = {}
    if "positions" in batch:
        extra["positions"] = batch["positions"]
    if "segment_ids" in batch:
        extra["segment_ids"] = batch["segment_ids"]
    return extra


def _split_micro_batches(batch: Batch, accumulation_steps: int) -> Batch:
    """[A * m, T] -> [A, m, T] for every tensor of a per-replica batch."""
    return {
        key: tf.reshape(value, [accumulation_steps, -1, *value.shape[1:]])
        for key, value in batch.items()
    }


def micro_batch_gradients(
    model: keras.Model,
    part: Batch,
    denominator: tf.Tensor,
    scale_loss: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Gradients (in the variables' dtypes) and loss of one micro-batch; ``scale_loss`` scales
    the objective (loss scaling) and not the returned loss."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        logits = model(part["inputs"], training=True, **_model_inputs(part))
        loss = masked_token_loss_sum(part["targets"], logits, part["loss_mask"]) / denominator
        objective = scale_loss(loss) if scale_loss is not None else loss
    grads = [tf.cast(g, v.dtype) for g, v in zip(tape.gradient(objective, variables), variables)]
    return grads, loss


def accumulated_gradients(
    model: keras.Model,
    batch: Batch,
    denominator: tf.Tensor,
    accumulation_steps: int,
    scale_loss: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Summed gradients and loss of a replica's ``accumulation_steps`` micro-batches."""
    micro = _split_micro_batches(batch, accumulation_steps)
    accumulated: list[tf.Tensor] | None = None
    local_loss = tf.constant(0.0, tf.float32)
    for index in range(accumulation_steps):
        part = {key: value[index] for key, value in micro.items()}
        grads, loss = micro_batch_gradients(model, part, denominator, scale_loss)
        # The first micro-batch's gradients start the sum: no zeros to allocate and add.
        accumulated = grads if accumulated is None else [a + g for a, g in zip(accumulated, grads)]
        local_loss += loss
    return accumulated, local_loss


@dataclass
class StepConfig:
    """What shapes and changes the compiled step; one compiled function per distinct config."""

    accumulation_steps: int = 1
    clip_norm: float | None = 1.0
    jit_compile: bool = False


class TrainStep:
    """Builds and caches the distributed train/eval functions for one model and optimizer.

    ``sharding``: None, "optimizer", "gradients" or "full" (``highnoon.training.sharding``); on
    one replica a level warns and trains unsharded. Sharded, the optimizer must be a Keras Adam
    or AdamW left unbuilt (the shares replace its moments), the model built ("optimizer",
    "gradients") or unbuilt ("full", built here without storage). ``collectives``: "auto",
    "portable" or "xla" (TPU only: true reduce-scatter and all-gather inside the XLA step).
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
        sharding: str | None = None,
        *,
        collectives: str = "auto",
    ) -> None:
        from highnoon.training.sharding.levels import resolve_sharding

        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.sharding = resolve_sharding(sharding, strategy.num_replicas_in_sync)
        self.sharded = None
        if self.sharding is None:
            disable_optimizer_allreduce(optimizer)
        else:
            from highnoon.training.sharding.engine import ShardedEngine

            self.sharded = ShardedEngine(
                model, optimizer, strategy, self.sharding, collectives=collectives
            )
        self._train_fns: dict[tuple, Callable] = {}
        self._eval_fn: Callable | None = None

    def checkpoint_objects(self) -> dict[str, Any]:
        """The ``model`` and ``optimizer`` entries of this run's ``tf.train.Checkpoint``: the
        objects themselves unsharded; sharded, stand-ins with the same names that save whole
        tensors (any replica count, sharded or not, restores them)."""
        if self.sharded is None:
            return {"model": self.model, "optimizer": self.optimizer}
        return self.sharded.checkpoint_objects()

    def export_model(self) -> keras.Model:
        """The trained model for inference: the model itself, or at sharding "full" (whose
        model holds no weights) a whole copy gathered from the shares (every worker calls)."""
        if self.sharded is None or self.sharding != "full":
            return self.model
        return self.sharded.export_model()

    def full_weights(self) -> list[Any]:
        """The model's whole trainable weights as numpy arrays (every worker must call it)."""
        if self.sharded is None:
            return [v.numpy() for v in self.model.trainable_variables]
        return self.sharded.full_weights()

    # -- replica functions -------------------------------------------------------------
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
        if key not in self._train_fns:
            self._train_fns[key] = tf.function(fn, jit_compile=True)
        return self._train_fns[key]

    def _replica_train_step(self, batch: Batch, config: StepConfig) -> tuple[tf.Tensor, tf.Tensor]:
        ctx = tf.distribute.get_replica_context()
        local_tokens = tf.reduce_sum(tf.cast(batch["loss_mask"], tf.float32))
        global_tokens = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_tokens)
        denominator = tf.maximum(global_tokens, 1.0)
        if self.sharded is not None:
            return self.sharded.replica_step(batch, denominator, config), local_tokens
        if self.strategy.num_replicas_in_sync == 1:
            # One replica: nothing to sum across, so the whole step is one XLA computation (as
            # Keras' fit(jit_compile=True) compiles it), fusing AdamW's element-wise update.
            update = self._compiled("update", self._update_one_replica, config)
            local_loss = update(batch, denominator, config.accumulation_steps, config.clip_norm)
            return local_loss, local_tokens
        # Several replicas: the optimizer's update runs in cross-replica context, which cannot
        # live inside an XLA computation, so only the gradients are compiled.
        grads, local_loss = self._gradient_fn(config)(batch, denominator, config.accumulation_steps)
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        self._clip_and_apply(grads, config.clip_norm)
        return local_loss, local_tokens

    def _clip_and_apply(self, grads: list[tf.Tensor], clip_norm: float | None) -> None:
        if clip_norm:
            limit = clip_norm
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                # Loss-scaled gradients (mixed_float16), unscaled by the optimizer afterwards:
                # clipping them at clip_norm * scale clips the true gradients at clip_norm.
                limit = clip_norm * tf.cast(self.optimizer.dynamic_scale, tf.float32)
            grads, _ = tf.clip_by_global_norm(grads, limit)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))

    def _replica_eval_step(self, batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
        if self.sharded is not None:
            logits = self.sharded.replica_logits(batch, _model_inputs(batch))
        else:
            logits = self.model(batch["inputs"], training=False, **_model_inputs(batch))
        loss_sum = masked_token_loss_sum(batch["targets"], logits, batch["loss_mask"])
        return loss_sum, tf.reduce_sum(tf.cast(batch["loss_mask"], tf.float32))

    # -- distributed functions ---------------------------------------------------------
    def train_fn(self, config: StepConfig, agree: bool = False) -> Callable:
        """``fn(iterator, num_steps) -> (losses [num_steps], tokens [num_steps])``: ``num_steps``
        optimizer steps in one host call (several per call keep TPUs busy). ``num_steps`` enters
        the compiled function as a tensor, so a shorter call (an epoch's last) does not retrace.

        ``agree=True`` (multi-host runs): ``fn(iterator, num_steps, flag) -> (losses, tokens,
        flags)``, where ``flags`` is the sum over every replica of its host's ``flag`` (1.0: a
        preemption signal arrived). The flag rides in the reduction that already sums each
        step's loss and token count, so every host learns whether any host must stop at no extra
        collective and no extra host round trip."""
        key = ("train", config.accumulation_steps, config.clip_norm, config.jit_compile, agree)
        if key not in self._train_fns:
            self._train_fns[key] = self._build_train_fn(config, agree)
        compiled = self._train_fns[key]
        if agree:
            return lambda iterator, num_steps, flag: compiled(
                iterator, tf.constant(num_steps, tf.int32), tf.constant(float(flag), tf.float32)
            )
        return lambda iterator, num_steps: compiled(iterator, tf.constant(num_steps, tf.int32))

    def _build_train_fn(self, config: StepConfig, agree: bool) -> Callable:
        strategy = self.strategy

        def replica_step(batch: Batch, flag: tf.Tensor) -> tf.Tensor:
            loss, tokens = self._replica_train_step(batch, config)
            # Loss, tokens and the preemption flag travel in one reduction (tf.identity gives
            # the flag this replica's device; a bare argument has none).
            return tf.stack([loss, tokens, tf.identity(flag)])

        def one_step(batch: Batch, flag: tf.Tensor) -> tf.Tensor:
            per_replica = strategy.run(replica_step, args=(batch, flag))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        def steps(iterator, num_steps: tf.Tensor, flag: tf.Tensor):
            losses = tf.TensorArray(tf.float32, size=num_steps)
            tokens = tf.TensorArray(tf.float32, size=num_steps)
            flags = tf.constant(0.0)
            for i in tf.range(num_steps):
                totals = one_step(next(iterator), flag)
                losses = losses.write(i, totals[0])
                tokens = tokens.write(i, totals[1])
                flags = totals[2]
            return losses.stack(), tokens.stack(), flags

        if agree:
            return tf.function(steps)

        @tf.function
        def fn(iterator, num_steps: tf.Tensor):
            losses, tokens, _ = steps(iterator, num_steps, tf.constant(0.0))
            return losses, tokens

        return fn

    def eval_fn(self) -> Callable:
        """``fn(batch) -> (loss_sum, token_count)`` summed over all replicas."""
        if self._eval_fn is None:
            strategy = self.strategy

            @tf.function
            def fn(batch):
                loss_sum, tokens = strategy.run(self._replica_eval_step, args=(batch,))
                return (
                    strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, tokens, axis=None),
                )

            self._eval_fn = fn
        return self._eval_fn
