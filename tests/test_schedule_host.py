"""The learning-rate schedule's host form (``WarmupCosineSchedule.host_rate``): equal bit for
bit to the traced schedule a ``log`` event used to call, at every step of whole phases, for
every kind and decay shape; and the runner's read-out, which answers from it only once it gave
the graph's value, and otherwise keeps the graph."""

from __future__ import annotations

import pytest
import tensorflow as tf

from highnoon.training.optimization import WarmupCosineSchedule
from highnoon.training.runner import TrainStepRunner, _compiled_schedule

# (kind, decay shape); the shape only matters to "wsd"
KINDS = [
    ("cosine", "1-sqrt"),
    ("constant", "1-sqrt"),
    ("wsd", "linear"),
    ("wsd", "cosine"),
    ("wsd", "1-sqrt"),
]
# (peak, total steps, warm-up, min ratio, phase start, multiplier)
PHASES = [
    (3e-4, 240, 24, 0.1, 0, 1.0),
    (1e-3, 177, 0, 0.0, 13, 0.37),
    (6e-4, 300, 41, 0.05, 120, 2.5),
]


def _schedule(kind: str, shape: str, peak, total, warmup, ratio, start, multiplier):
    """As ``assembly.build`` makes it: phase, decay and multiplier in variables."""
    return WarmupCosineSchedule(
        peak,
        total,
        warmup,
        ratio,
        kind,
        multiplier=tf.Variable(multiplier, trainable=False),
        phase=tf.Variable([0, 0, 0], trainable=False, dtype=tf.int64),
        start_step=start,
        decay_shape=shape,
        decay=tf.Variable([0, 0], trainable=False, dtype=tf.int64),
    )


def _graph(schedule: WarmupCosineSchedule):
    graph = _compiled_schedule(schedule).get_concrete_function()
    return lambda step: float(graph(tf.constant(step, tf.int64)))


@pytest.mark.parametrize("kind, shape", KINDS)
def test_the_host_form_equals_the_traced_schedule_bit_for_bit_at_every_step(kind, shape):
    for phase in PHASES:
        schedule = _schedule(kind, shape, *phase)
        graph, multiplier = _graph(schedule), phase[-1]
        steps = range(schedule.start_step + schedule.total_steps + 20)  # before, in, after
        host = [schedule.host_rate(step, multiplier) for step in steps]
        assert host == [graph(step) for step in steps], (kind, shape, phase)


def test_the_host_form_follows_a_new_phase():
    schedule = _schedule("wsd", "cosine", *PHASES[0])
    schedule.set_phase(start_step=50, total_steps=90, warmup_steps=9, decay_start=60)
    graph = _graph(schedule)
    assert [schedule.host_rate(s, 1.0) for s in range(160)] == [graph(s) for s in range(160)]


class _Plan:
    def __init__(self, multiplier: float) -> None:
        self.learning_rate_multiplier = multiplier


def _runner(schedule: WarmupCosineSchedule) -> TrainStepRunner:
    return TrainStepRunner(None, None, schedule, jit_compile=False, multi_host=False)


def test_the_runner_reads_the_host_form_after_it_matched_the_graph():
    schedule = _schedule("cosine", "1-sqrt", *PHASES[0])
    runner, graph = _runner(schedule), _graph(schedule)
    runner.begin_stage(_Plan(0.75))
    assert runner.learning_rate(5) == graph(5)  # the graph, and the check
    calls = []
    runner._graph_rate = lambda step: calls.append(step)  # later read-outs call no graph
    steps = range(0, 280, 7)
    got = [runner.learning_rate(step) for step in steps]
    assert calls == []
    runner._graph_rate = graph
    assert got == [graph(step) for step in steps]
    runner.begin_stage(_Plan(1.5))  # a later stage's multiplier
    schedule.set_phase(start_step=100, total_steps=120, warmup_steps=0)  # a later train()
    assert [runner.learning_rate(s) for s in steps] == [graph(s) for s in steps]


class _Drifting(WarmupCosineSchedule):
    """A host form that is not the graph's: the runner must not use it."""

    def host_rate(self, step: int, multiplier: float) -> float:
        return super().host_rate(step, multiplier) * (1.0 + 1e-6)


def test_a_host_form_that_differs_from_the_graph_is_never_used():
    schedule = _Drifting(
        3e-4,
        240,
        24,
        multiplier=tf.Variable(1.0, trainable=False),
        phase=tf.Variable([0, 0, 0], trainable=False, dtype=tf.int64),
        decay=tf.Variable([0, 0], trainable=False, dtype=tf.int64),
    )
    runner, graph = _runner(schedule), _graph(schedule)
    runner.begin_stage(_Plan(1.0))
    steps = range(0, 240, 11)
    assert [runner.learning_rate(step) for step in steps] == [graph(step) for step in steps]
