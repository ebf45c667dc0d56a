"""Optimizer and learning-rate schedule of a training run.

The schedule is a pure function of the optimizer step (linear warm-up, then cosine decay to
``min_learning_rate_ratio`` of the peak by the last step, or constant) times a per-stage
multiplier. The multiplier is a variable the Trainer sets at each stage start to
``stage learning rate / base learning rate * stage weight`` (docs/design.md, "The loop and the
step": a stage's ``weight`` scales its learning rate, since an adaptive optimizer would ignore a
scaled loss).
"""

from __future__ import annotations

import math

import gin
import keras
import tensorflow as tf

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
# Parameters whose names contain these are not weight-decayed (norm scales, biases).
NO_DECAY_NAME_PARTS = ("norm", "bias")


@keras.saving.register_keras_serializable(package="highnoon")
class WarmupCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``peak * multiplier * shape(step)``: linear warm-up over ``warmup_steps``, then cosine
    decay to ``min_ratio * peak`` at ``total_steps`` (or flat when ``kind='constant'``)."""

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int,
        min_ratio: float = 0.1,
        kind: str = "cosine",
        multiplier: tf.Variable | None = None,
    ) -> None:
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.min_ratio = float(min_ratio)
        self.kind = kind
        self.multiplier = multiplier

    def shape(self, step: tf.Tensor) -> tf.Tensor:
        step = tf.cast(step, tf.float32)
        if self.kind == "constant":
            factor = tf.constant(1.0)
        else:
            span = float(max(self.total_steps - self.warmup_steps, 1))
            progress = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
            factor = self.min_ratio + (1.0 - self.min_ratio) * cosine
        if self.warmup_steps > 0:
            factor = factor * tf.minimum((step + 1.0) / float(self.warmup_steps), 1.0)
        return factor

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        rate = self.peak * self.shape(step)
        if self.multiplier is not None:
            rate = rate * tf.cast(self.multiplier, tf.float32)
        return rate

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_ratio": self.min_ratio,
            "kind": self.kind,
        }


@gin.configurable
def make_optimizer(
    schedule: WarmupCosineSchedule,
    name: str = "adamw",
    weight_decay: float = 0.01,
    beta_1: float = 0.9,
    beta_2: float = 0.95,
    epsilon: float = 1e-8,
    momentum: float = 0.0,
    loss_scaling: bool = False,
) -> keras.optimizers.Optimizer:
    """The run's optimizer (gin: ``make_optimizer.name = 'sgd'`` etc.).

    ``loss_scaling`` wraps it in Keras' ``LossScaleOptimizer`` (needed for ``mixed_float16``).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer name={name!r} is not supported; use one of {OPTIMIZERS}")
    if name == "adamw":
        optimizer = keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
        )
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAME_PARTS))
    elif name == "adam":
        optimizer = keras.optimizers.Adam(
            learning_rate=schedule, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon
        )
    else:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=momentum)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
