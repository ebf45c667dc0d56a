"""The loss and gradient arithmetic every step engine shares (no collectives, no updates).

The loss of a step is the masked token cross-entropy summed over its rows and divided by the
*global* number of target tokens (``denominator``, summed over every replica by the caller), so
that summing the replicas' losses and gradients gives a single-device run's on the same batch.
These functions hold only that arithmetic: which replica sums what, and how the weights are then
updated, belongs to the engines (``step_engine.py``, ``sharding/engine.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

Batch = dict[str, tf.Tensor]
LossScale = Callable[[tf.Tensor], tf.Tensor]


def masked_token_loss_sum(targets: tf.Tensor, logits: tf.Tensor, loss_mask: tf.Tensor) -> tf.Tensor:
    """Sum over unmasked positions of the token cross-entropy (float32)."""
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(targets, tf.int32), logits=tf.cast(logits, tf.float32)
    )
    return tf.reduce_sum(per_token * tf.cast(loss_mask, tf.float32))


def model_inputs(batch: Batch) -> dict[str, Any]:
    """The optional model arguments a batch carries: ``positions`` and ``segment_ids`` of packed
    rows (absent for unpacked batches)."""
    return {key: batch[key] for key in ("positions", "segment_ids") if key in batch}


def split_micro_batches(batch: Batch, accumulation_steps: int) -> Batch:
    """[A * m, T] -> [A, m, T] for every tensor of a per-replica batch."""
    return {
        key: tf.reshape(value, [accumulation_steps, -1, *value.shape[1:]])
        for key, value in batch.items()
    }


def micro_batch_gradients(
    model: keras.Model,
    part: Batch,
    denominator: tf.Tensor,
    scale_loss: LossScale | None = None,
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Gradients (in the variables' dtypes) and loss of one micro-batch; ``scale_loss`` scales
    the objective (loss scaling) and not the returned loss."""
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        logits = model(part["inputs"], training=True, **model_inputs(part))
        loss = masked_token_loss_sum(part["targets"], logits, part["loss_mask"]) / denominator
        objective = scale_loss(loss) if scale_loss is not None else loss
    grads = [tf.cast(g, v.dtype) for g, v in zip(tape.gradient(objective, variables), variables)]
    return grads, loss


def accumulated_gradients(
    model: keras.Model,
    batch: Batch,
    denominator: tf.Tensor,
    accumulation_steps: int,
    scale_loss: LossScale | None = None,
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Summed gradients and loss of a replica's ``accumulation_steps`` micro-batches."""
    micro = split_micro_batches(batch, accumulation_steps)
    accumulated: list[tf.Tensor] | None = None
    local_loss = tf.constant(0.0, tf.float32)
    for index in range(accumulation_steps):
        part = {key: value[index] for key, value in micro.items()}
        grads, loss = micro_batch_gradients(model, part, denominator, scale_loss)
        # The first micro-batch's gradients start the sum: no zeros to allocate and add.
        accumulated = grads if accumulated is None else [a + g for a, g in zip(accumulated, grads)]
        local_loss += loss
    return accumulated, local_loss
