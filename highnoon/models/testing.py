"""Small helpers for model tests and benchmarks (the Trainer has the real training step).

`token_batch` makes a deterministic batch; `lm_loss` is the masked next-token cross-entropy;
`make_train_step` returns a plain GradientTape + optimizer step, optionally XLA-compiled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf


def token_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """inputs/targets int32 [batch, seq] of a learnable pattern (x, x+1, x+2, ... mod vocab)
    with random start tokens, and a loss mask of ones (float32)."""
    starts = np.random.default_rng(seed).integers(3, vocab, size=(batch, 1))
    tokens = (starts + np.arange(seq + 1)[None, :]) % (vocab - 3) + 3
    return {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "loss_mask": np.ones((batch, seq), np.float32),
    }


def lm_loss(logits, targets, loss_mask):
    """Mean cross-entropy over the tokens where `loss_mask` is 1 (float32 logits [B,T,V])."""
    per_token = tf.keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    mask = tf.cast(loss_mask, per_token.dtype)
    return tf.reduce_sum(per_token * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


def make_train_step(model, optimizer, *, jit_compile: bool = True) -> Callable:
    """`step(inputs, targets, loss_mask) -> loss`: one optimizer update on a batch."""

    @tf.function(jit_compile=jit_compile, autograph=False)
    def step(inputs, targets, loss_mask):
        with tf.GradientTape() as tape:
            loss = lm_loss(model(inputs, training=True), targets, loss_mask)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return step
