"""The production step runner's learning-rate read-out: one compiled call per log event that
gives the eager schedule's exact value and follows the phase and stage multiplier variables."""

from __future__ import annotations

import math

import pytest
import tensorflow as tf

from highnoon.training.optimization import WarmupCosineSchedule
from highnoon.training.runner import TrainStepRunner


def _schedule(kind: str) -> WarmupCosineSchedule:
    """A schedule as ``assembly.build`` makes it: phase, decay and multiplier in variables."""
    return WarmupCosineSchedule(
        peak=3e-3,
        total_steps=40,
        warmup_steps=4,
        min_ratio=0.1,
        kind=kind,
        multiplier=tf.Variable(1.0, trainable=False),
        phase=tf.Variable([0, 40, 4], trainable=False, dtype=tf.int64),
        decay=tf.Variable([30, 10], trainable=False, dtype=tf.int64),
    )


def _runner(schedule: WarmupCosineSchedule) -> TrainStepRunner:
    return TrainStepRunner(None, None, schedule, jit_compile=False, multi_host=False)


@pytest.mark.parametrize("kind", ["cosine", "wsd", "constant"])
def test_the_logged_rate_is_the_schedules_own_at_every_step(kind):
    schedule = _schedule(kind)
    runner = _runner(schedule)
    steps = [0, 1, 3, 4, 17, 29, 33, 39, 40, 55]
    assert [runner.learning_rate(s) for s in steps] == [float(schedule(s)) for s in steps]


def test_the_rate_follows_a_new_phase_and_stage_multiplier_without_retracing():
    schedule = _schedule("cosine")
    runner = _runner(schedule)
    before = runner.learning_rate(20)
    schedule.set_phase(start_step=10, total_steps=100, warmup_steps=0)  # a later train() call
    runner.begin_stage(type("Plan", (), {"learning_rate_multiplier": 0.5})())
    after = runner.learning_rate(20)
    assert after == float(schedule(20)) and after != before
    # 10 steps into a 100-step cosine at half the peak
    assert after == pytest.approx(0.5 * 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(0.1 * math.pi))))
    assert runner._rate.experimental_get_tracing_count() == 1


def test_a_schedule_without_phase_variables_stays_eager():
    """Its phase is Python attributes, which a trace would freeze; set_phase must still count."""
    schedule = WarmupCosineSchedule(3e-3, 40, 4)
    runner = _runner(schedule)
    first = runner.learning_rate(20)
    schedule.set_phase(start_step=20, total_steps=40, warmup_steps=4)
    assert runner.learning_rate(20) == float(schedule(20)) != first
