"""The production step runner: its learning-rate read-out (one compiled call per log event that
gives the eager schedule's exact value and follows the phase and stage multiplier variables),
the next segment's input built on a helper thread during a call, and the step config made once
per stage."""

from __future__ import annotations

import copy
import math
import threading

import numpy as np
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


# -- the next segment's input, built during a call ----------------------------------------
class FakeStep:
    """A compiled host call that trains nothing: each step's loss 0 and 1 token; ``during``
    runs inside the call (the test's probe of what happens while a call runs)."""

    def __init__(self, during=None) -> None:
        self.made = 0  # train_fn calls (one per stage expected)
        self.during = during
        self.configs = []

    def train_fn(self, config, agree=False):
        self.made += 1
        self.configs.append(config)

        def call(iterator, num_steps):
            if self.during is not None:
                self.during()
            return tf.zeros([num_steps]), tf.ones([num_steps])

        return call


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    from highnoon.data import TokenStore, build_token_store
    from highnoon.training.settings import StageSettings
    from highnoon.training.stage_plan import StagePlan
    from tests.trainer_helpers import corpus

    path = str(tmp_path_factory.mktemp("ahead") / "store")
    build_token_store(corpus(4, 90, max_len=20), "byte", path, progress=False)
    settings = StageSettings(
        batch_size=4, max_seq_length=16, eval_fraction=0.0, curriculum_strategy="size_based"
    )
    return StagePlan(0, "s", settings, 2, TokenStore.open(path), seed=3)


def _one_replica_runner(step: FakeStep, jit_compile: bool = False) -> TrainStepRunner:
    return TrainStepRunner(
        step, tf.distribute.get_strategy(), _schedule("cosine"), jit_compile=jit_compile,
        multi_host=False,
    )  # fmt: skip


def _probe_builds(runner: TrainStepRunner) -> tuple[list[str], threading.Event]:
    """The threads ``runner``'s segment builds ran on, and an event set when one starts."""
    threads, started = [], threading.Event()
    build = runner._build_segment

    def recorded(*args):
        threads.append(threading.current_thread().name)
        started.set()
        return build(*args)

    runner._build_segment = recorded
    return threads, started


def _batches(iterator) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in batch.items()} for batch in iterator]


def test_the_next_segments_input_is_built_during_the_call_and_feeds_the_same_batches(plan):
    step = FakeStep()
    runner = _one_replica_runner(step)
    threads, started = _probe_builds(runner)
    # The call waits until the build has begun: it runs on the helper thread meanwhile.
    step.during = lambda: started.wait(timeout=60) or pytest.fail("no build during the call")
    steps = plan.steps_per_epoch(1)
    runner.prepare(plan, 1, 0, steps, 16)
    assert threads == []  # nothing built before the call
    runner.run(iter(()), 1, plan, 16, lambda: False)
    iterator = runner.segment(plan, 1, 0, steps, 16)
    assert threads == ["highnoon-input-ahead"]  # taken, not built again
    ahead = _batches(iterator)
    fresh = _batches(runner._build_segment(plan, 1, 0, steps, 16))
    assert len(ahead) == steps == len(fresh)
    for a, b in zip(ahead, fresh):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_a_hint_for_another_segment_is_dropped_and_the_segment_built_in_the_loop(plan):
    runner = _one_replica_runner(FakeStep())
    threads, _ = _probe_builds(runner)
    steps = plan.steps_per_epoch(1)
    runner.prepare(plan, 1, 0, steps, 16)
    runner.run(iter(()), 1, plan, 16, lambda: False)
    iterator = runner.segment(plan, 1, 0, steps, 8)  # a different row length
    assert threads == ["highnoon-input-ahead", "MainThread"]
    assert next(iterator)["inputs"].shape == (4, 8)
    assert runner._ahead is None


def test_a_build_that_fails_ahead_raises_its_error_at_the_segment(plan):
    runner = _one_replica_runner(FakeStep())
    threads = []

    def failing(*args):
        threads.append(threading.current_thread().name)
        raise ValueError("shard 3 is missing")

    runner._build_segment = failing
    runner.prepare(plan, 1, 0, 2, 16)
    runner.run(iter(()), 1, plan, 16, lambda: False)  # the helper's failure is not the call's
    with pytest.raises(ValueError, match="shard 3 is missing"):
        runner.segment(plan, 1, 0, 2, 16)
    assert threads == ["highnoon-input-ahead", "MainThread"]


def test_several_replicas_build_their_distributed_input_in_the_loop(plan, mirrored):
    runner = TrainStepRunner(
        FakeStep(), mirrored, _schedule("cosine"), jit_compile=False, multi_host=False
    )
    runner.prepare(plan, 1, 0, 2, 16)
    assert runner._ahead is None


def test_the_step_config_and_host_call_are_made_once_per_stage(plan):
    step = FakeStep()
    runner = _one_replica_runner(step, jit_compile=True)
    compiled = [runner.run(iter(()), 2, plan, 16, lambda: False).compiled for _ in range(3)]
    assert step.made == 1 and compiled == [True, False, False]
    # The next stage makes its own (its settings may differ); the same config and row
    # length compile nothing new.
    assert not runner.run(iter(()), 1, copy.copy(plan), 16, lambda: False).compiled
    assert step.made == 2


def test_the_step_is_compiled_for_the_runs_steps_per_call(plan):
    """The run's steps_per_call reaches the step config: 1 compiles a host call without a loop
    (``TrainStep.train_fn``)."""
    from highnoon.training.step import StepConfig

    step = FakeStep()
    runner = TrainStepRunner(
        step, tf.distribute.get_strategy(), _schedule("cosine"), jit_compile=True,
        multi_host=False, steps_per_call=1,
    )  # fmt: skip
    runner.run(iter(()), 1, plan, 16, lambda: False)
    assert step.configs == [StepConfig(1, plan.settings.clip_norm, True, steps_per_call=1)]
