"""AdamW over shares: the update of ``keras.optimizers.AdamW`` (and ``Adam``), element by element.

The sharded step cannot hand its shares to the Keras optimizer (Keras builds moments the size of
each whole variable and updates them in cross-replica context), so this module holds the same
arithmetic as a pure function of tensors, in Keras' order of operations:

* decoupled weight decay first, ``w -= w * weight_decay * lr``, for the variables Keras would
  decay: its ``exclude_from_weight_decay(var_names=...)`` patterns are searched in the name of
  the ``tf.Variable`` the TensorFlow backend updates, which is the Keras path plus ":0"
  (``high_noon_lm/block_0/attn_norm/scale:0``), so "norm" excludes the RMSNorm scales;
* ``m += (g - m) * (1 - beta_1)``, ``v += (g*g - v) * (1 - beta_2)``;
* ``w -= m * alpha / (sqrt(v) + epsilon)`` with bias correction folded into
  ``alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``, ``t = iterations + 1`` (epsilon outside
  the square root, scaled by neither correction: Keras' placement);
* the learning rate is the optimizer's schedule (``WarmupCosineSchedule`` with its stage
  multiplier variable) evaluated at the step counter before it is incremented.

Loss scaling (``keras.optimizers.LossScaleOptimizer``, mixed_float16) is described by
``LossScaling``; the sharded step applies it as Keras does (skip the step and halve the scale on
non-finite gradients, double it after ``growth_steps`` finite steps).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from highnoon.utils.validation import InvalidArgumentError


class UnsupportedOptimizerError(InvalidArgumentError):
    """The optimizer cannot be sharded (not Adam/AdamW, or an option the shares cannot honour)."""


@dataclass(frozen=True)
class LossScaling:
    """Dynamic loss scaling of a ``LossScaleOptimizer``."""

    initial_scale: float
    growth_steps: int


@dataclass(frozen=True)
class AdamWSettings:
    """The hyper-parameters of a Keras Adam/AdamW, read once from the configured optimizer."""

    learning_rate: Any  # a LearningRateSchedule, a Keras variable or a number
    beta_1: float
    beta_2: float
    epsilon: float
    weight_decay: float | None
    decay_exclusion: re.Pattern | None
    loss_scaling: LossScaling | None

    @classmethod
    def from_keras(cls, optimizer: keras.optimizers.Optimizer) -> AdamWSettings:
        """Reads ``optimizer`` (as ``make_optimizer`` builds it); refuses what it cannot match."""
        scaling = None
        inner = optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            scaling = LossScaling(
                float(optimizer.initial_scale), int(optimizer.dynamic_growth_steps)
            )
            inner = optimizer.inner_optimizer
        if not isinstance(inner, keras.optimizers.Adam):  # AdamW is an Adam
            raise UnsupportedOptimizerError(
                f"sharding needs an Adam or AdamW optimizer (make_optimizer name='adamw' or "
                f"'adam'), not {type(inner).__name__}; use sharding=None for other optimizers"
            )
        unsupported = {
            "amsgrad": inner.amsgrad,
            "clipnorm": inner.clipnorm,
            "global_clipnorm": inner.global_clipnorm,
            "clipvalue": inner.clipvalue,
            "use_ema": inner.use_ema,
            "gradient_accumulation_steps": inner.gradient_accumulation_steps,
            "loss_scale_factor": inner.loss_scale_factor,
        }
        used = sorted(name for name, value in unsupported.items() if value)
        if used:
            raise UnsupportedOptimizerError(
                f"sharding does not support the optimizer option(s) {used}: the step clips by "
                "global norm itself (clip_norm) and accumulates micro-batches itself "
                "(gradient_accumulation_steps); unset them on the optimizer"
            )
        if getattr(inner, "_exclude_from_weight_decay", None):
            raise UnsupportedOptimizerError(
                "sharding supports weight-decay exclusion by name only "
                "(exclude_from_weight_decay(var_names=...)), not by variable list"
            )
        return cls(
            learning_rate=inner._learning_rate,
            beta_1=float(inner.beta_1),
            beta_2=float(inner.beta_2),
            epsilon=float(inner.epsilon),
            weight_decay=None if inner.weight_decay is None else float(inner.weight_decay),
            decay_exclusion=getattr(inner, "_exclude_from_weight_decay_pattern", None),
            loss_scaling=scaling,
        )

    def decays(self, variable: Any) -> bool:
        """Whether Keras' TensorFlow backend would weight-decay the Keras ``variable``."""
        if self.weight_decay is None:
            return False
        tf_name = variable.path + ":0"  # the name of the tf.Variable Keras creates for it
        return self.decay_exclusion is None or self.decay_exclusion.search(tf_name) is None

    def learning_rate_at(self, iterations: tf.Tensor) -> tf.Tensor:
        """The learning rate of the step whose counter (before the update) is ``iterations``."""
        rate = self.learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            return rate(iterations)
        if isinstance(rate, keras.Variable):
            return rate.value
        return tf.constant(rate, tf.float32)


def adamw_update(
    w: tf.Tensor,
    g: tf.Tensor,
    m: tf.Tensor,
    v: tf.Tensor,
    learning_rate: tf.Tensor,
    iterations: tf.Tensor,
    settings: AdamWSettings,
    decay: bool,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """New (w, m, v) of one share at step counter ``iterations`` (before its increment). Pure and
    element-wise, so it compiles under XLA and gives the same numbers on a share as Keras on the
    whole variable."""
    dtype = w.dtype
    lr = tf.cast(learning_rate, dtype)
    if decay:  # keras/src/backend/tensorflow/optimizer.py: _apply_weight_decay
        w = w - w * tf.cast(settings.weight_decay, dtype) * lr
    # keras/src/optimizers/adam.py: update_step
    g = tf.cast(g, dtype)
    local_step = tf.cast(iterations + 1, dtype)
    beta_1_power = tf.pow(tf.cast(settings.beta_1, dtype), local_step)
    beta_2_power = tf.pow(tf.cast(settings.beta_2, dtype), local_step)
    alpha = lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)
    m = m + (g - m) * (1 - settings.beta_1)
    v = v + (tf.square(g) - v) * (1 - settings.beta_2)
    w = w - (m * alpha) / (tf.sqrt(v) + settings.epsilon)
    return w, m, v
