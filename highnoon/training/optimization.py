"""Optimizer and learning-rate schedule of a training run.

The schedule is a pure function of the optimizer step (linear warm-up, then cosine decay to
``min_learning_rate_ratio`` of the peak by the last step, constant, or warmup-stable-decay:
flat at the peak, then a decay of a chosen length and shape to the floor) times a per-stage
multiplier. Its phase (the step it starts at, its horizon and warm-up) lives in a variable, so a
compiled step follows a phase set after it was traced: each ``train()`` sets it from its plans,
and stages appended after a finished run start a phase of their own (docs/design.md, "The loop
and the step"). The multiplier is a variable the Trainer sets at each stage start to
``stage learning rate / base learning rate * stage weight`` (docs/design.md, "The loop and the
step": a stage's ``weight`` scales its learning rate, since an adaptive optimizer would ignore a
scaled loss).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from highnoon.training.settings import RunOptions

# Parameters whose names contain these are not weight-decayed (norm scales, biases).
NO_DECAY_NAME_PARTS = ("norm", "bias")


@keras.saving.register_keras_serializable(package="highnoon")
class WarmupCosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``peak * multiplier * shape(step - start_step)``: linear warm-up over ``warmup_steps``,
    then, by ``kind``:

    * ``cosine``: cosine decay to ``min_ratio * peak`` at ``total_steps``;
    * ``constant``: flat at the peak;
    * ``wsd`` (warmup-stable-decay, MiniCPM 2024): flat at the peak until ``decay_start``, then
      down to ``min_ratio * peak`` over ``decay_steps`` steps, along ``decay_shape`` (``linear``,
      ``cosine`` or ``1-sqrt``); flat at the floor after it.

    Steps before ``start_step`` count as the phase's first; ``decay_start`` counts from it.

    With ``phase`` (an int64 variable of 3 values) the start, horizon and warm-up are read from
    it, and with ``decay`` (an int64 variable of 2 values) the decay's start and length, so
    ``set_phase`` reaches functions traced earlier; without, from the Python attributes.
    """

    def __init__(
        self,
        peak: float,
        total_steps: int,
        warmup_steps: int,
        min_ratio: float = 0.1,
        kind: str = "cosine",
        multiplier: tf.Variable | None = None,
        phase: tf.Variable | None = None,
        start_step: int = 0,
        *,
        decay_start: int | None = None,
        decay_steps: int | None = None,
        decay_shape: str = "1-sqrt",
        decay: tf.Variable | None = None,
    ) -> None:
        self.peak = float(peak)
        self.min_ratio = float(min_ratio)
        self.kind = kind
        self.decay_shape = decay_shape
        self.multiplier = multiplier
        self.phase = phase
        self.decay = decay
        self.set_phase(start_step, total_steps, warmup_steps, decay_start, decay_steps)

    def set_phase(
        self,
        start_step: int,
        total_steps: int,
        warmup_steps: int,
        decay_start: int | None = None,
        decay_steps: int | None = None,
    ) -> None:
        """The phase that begins at optimizer step ``start_step`` and decays over
        ``total_steps`` steps after a warm-up of ``warmup_steps``; a ``wsd`` phase decays over
        ``decay_steps`` steps from phase step ``decay_start`` (default: the phase's last tenth)."""
        self.start_step = max(int(start_step), 0)
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 0)
        if decay_steps is None:
            decay_steps = max(self.total_steps // 10, 1)
        self.decay_steps = max(int(decay_steps), 1)
        if decay_start is None:
            decay_start = self.total_steps - self.decay_steps
        self.decay_start = max(int(decay_start), 0)
        if self.phase is not None:
            self.phase.assign(
                tf.constant([self.start_step, self.total_steps, self.warmup_steps], tf.int64)
            )
        if self.decay is not None:
            self.decay.assign(tf.constant([self.decay_start, self.decay_steps], tf.int64))

    def _phase(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        if self.phase is None:
            start, total, warmup = self.start_step, self.total_steps, self.warmup_steps
            return tf.constant(float(start)), tf.constant(float(total)), tf.constant(float(warmup))
        values = tf.cast(tf.convert_to_tensor(self.phase), tf.float32)
        return values[0], values[1], values[2]

    def _decay(self) -> tuple[tf.Tensor, tf.Tensor]:
        if self.decay is None:
            return tf.constant(float(self.decay_start)), tf.constant(float(self.decay_steps))
        values = tf.cast(tf.convert_to_tensor(self.decay), tf.float32)
        return values[0], values[1]

    def _remaining(self, progress: tf.Tensor) -> tf.Tensor:
        """Share of the way from the peak to the floor still left at decay ``progress``."""
        if self.decay_shape == "linear":
            return 1.0 - progress
        if self.decay_shape == "cosine":
            return 0.5 * (1.0 + tf.cos(math.pi * progress))
        return 1.0 - tf.sqrt(progress)  # "1-sqrt"

    def shape(self, step: tf.Tensor) -> tf.Tensor:
        start, total, warmup = self._phase()
        step = tf.maximum(tf.cast(step, tf.float32) - start, 0.0)
        if self.kind == "constant":
            factor = tf.constant(1.0)
        elif self.kind == "wsd":
            decay_start, decay_steps = self._decay()
            progress = tf.clip_by_value((step - decay_start) / decay_steps, 0.0, 1.0)
            factor = self.min_ratio + (1.0 - self.min_ratio) * self._remaining(progress)
        else:
            span = tf.maximum(total - warmup, 1.0)
            progress = tf.clip_by_value((step - warmup) / span, 0.0, 1.0)
            cosine = 0.5 * (1.0 + tf.cos(math.pi * progress))
            factor = self.min_ratio + (1.0 - self.min_ratio) * cosine
        ramp = tf.minimum((step + 1.0) / tf.maximum(warmup, 1.0), 1.0)
        return factor * tf.where(warmup > 0.0, ramp, 1.0)

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        rate = self.peak * self.shape(step)
        if self.multiplier is not None:
            rate = rate * tf.cast(self.multiplier, tf.float32)
        return rate

    def host_rate(self, step: int, multiplier: float) -> float | None:
        """``float(self(step))`` with the multiplier's value ``multiplier``, computed on the
        host: the graph's float32 operations one by one in numpy scalars, in the same order,
        and its ``cos`` by the C library's ``cosf``, which TensorFlow's CPU kernel calls on a
        scalar. On a CPU it equals the traced graph bit for bit (tests/test_schedule_host.py
        checks every kind and shape over whole phases); 13 us against a graph call's
        100-250 us, at every ``log`` event. None where there is no ``cosf`` to call."""
        cos = _cosf()
        if cos is None:
            return None
        f32 = np.float32
        one, zero = f32(1.0), f32(0.0)
        start, total, warmup = f32(self.start_step), f32(self.total_steps), f32(self.warmup_steps)
        x = max(f32(step) - start, zero)
        if self.kind == "constant":
            factor = one
        else:
            if self.kind == "wsd":
                begin, span = f32(self.decay_start), f32(self.decay_steps)
            else:
                begin, span = warmup, max(total - warmup, one)
            progress = min(max((x - begin) / span, zero), one)
            shape = "cosine" if self.kind != "wsd" else self.decay_shape
            if shape == "linear":
                remaining = one - progress
            elif shape == "cosine":
                remaining = f32(0.5) * (one + cos(f32(math.pi) * progress))
            else:  # "1-sqrt"
                remaining = one - np.sqrt(progress)
            factor = f32(self.min_ratio) + f32(1.0 - self.min_ratio) * remaining
        ramp = min((x + one) / max(warmup, one), one)
        rate = f32(self.peak) * (factor * (ramp if warmup > zero else one))
        return float(rate * f32(multiplier))

    def get_config(self) -> dict:
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_ratio": self.min_ratio,
            "kind": self.kind,
            "start_step": self.start_step,
            "decay_start": self.decay_start,
            "decay_steps": self.decay_steps,
            "decay_shape": self.decay_shape,
        }


@functools.cache
def _cosf() -> Callable[[np.float32], np.float32] | None:
    """The C library's float32 cosine (what TensorFlow's CPU ``Cos`` kernel computes for one
    value), or None where no C math library can be loaded."""
    name = ctypes.util.find_library("m")
    try:
        library = ctypes.CDLL(name)
        cosf = library.cosf
    except (OSError, AttributeError, TypeError):
        return None
    cosf.restype, cosf.argtypes = ctypes.c_float, [ctypes.c_float]
    return lambda value: np.float32(cosf(float(value)))


@dataclass(frozen=True)
class Phase:
    """A schedule phase's shape in steps counted from its start: horizon, warm-up, and where
    a ``wsd`` decay starts and how long it lasts."""

    total: int
    warmup: int
    decay_start: int
    decay_steps: int


def schedule_phase(
    planned_steps: list[int],
    start_stage: int,
    warmup_steps: int | None,
    warmup_fraction: float,
    *,
    decay_steps: int | float = 0.1,
    decay_stage: int | None = None,
) -> Phase:
    """The phase covering the stages from ``start_stage`` on, given every stage's planned
    steps: the horizon is their sum; the warm-up ``warmup_steps``, else ``warmup_fraction`` of
    the horizon. A ``wsd`` decay covers stage ``decay_stage`` and every stage after it when
    that stage is in the phase; else the phase's last ``decay_steps`` steps (an int), or that
    share of the horizon (a float), at least one step and at most the horizon."""
    total = max(sum(planned_steps[start_stage:]), 1)
    warmup = int(total * warmup_fraction) if warmup_steps is None else int(warmup_steps)
    if decay_stage is not None and decay_stage >= start_stage:
        decay_start = sum(planned_steps[start_stage:decay_stage])
        return Phase(total, warmup, decay_start, max(total - decay_start, 1))
    if isinstance(decay_steps, float):
        length = int(total * decay_steps)
    else:
        length = int(decay_steps)
    length = min(max(length, 1), total)
    return Phase(total, warmup, total - length, length)


def make_optimizer(
    schedule: WarmupCosineSchedule,
    options: RunOptions | None = None,
    *,
    loss_scaling: bool = False,
) -> keras.optimizers.Optimizer:
    """The run's optimizer, as ``options`` (a ``RunOptions``, default settings when None)
    declare it: ``optimizer`` names it, ``weight_decay``, ``beta_1``, ``beta_2``, ``epsilon``
    and ``momentum`` are its hyper-parameters, ``weight_average`` its moving average of the
    weights (Keras' ``use_ema``) (settings like every other, so gin binds them as
    ``Trainer.weight_decay`` and ``trainer.json`` keeps them).

    ``loss_scaling`` wraps it in Keras' ``LossScaleOptimizer`` (needed for ``mixed_float16``).
    """
    o = options if options is not None else RunOptions()
    average: dict = {}
    if o.weight_average is not None:  # Keras' own moving average (``averaging.py``)
        average = {"use_ema": True, "ema_momentum": o.weight_average}
    if o.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(
            learning_rate=schedule,
            weight_decay=o.weight_decay,
            beta_1=o.beta_1,
            beta_2=o.beta_2,
            epsilon=o.epsilon,
            **average,
        )
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAME_PARTS))
    elif o.optimizer == "adam":
        optimizer = keras.optimizers.Adam(
            learning_rate=schedule, beta_1=o.beta_1, beta_2=o.beta_2, epsilon=o.epsilon, **average
        )
    else:  # "sgd": RunOptions allows no other name
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=o.momentum, **average)
    if loss_scaling:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
