"""What the controller drives: anything that runs N steps from an iterator (Orbit's
``AbstractTrainer``), and the production implementation over the compiled ``TrainStep``.

The controller knows *when* to call, log, evaluate, save and stop; a ``StepRunner`` knows *how*
a stage's input is read and how steps run. ``tests/test_controller.py`` drives the loop with a
fake runner that trains nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class StepOutputs:
    """One host call's outcome: each step's loss and target-token count, whether this call
    compiled the step (the goodput's ``compilation`` bucket), and whether every host agreed to
    stop after it (a preemption signal on any host)."""

    losses: np.ndarray  # float64 [num_steps]
    tokens: np.ndarray  # float64 [num_steps]
    compiled: bool
    stop: bool


class StepRunner(Protocol):
    """Runs a stage's steps for the controller."""

    # Errors after which the loop must not save (a lost peer cannot take part in a save).
    fatal_errors: tuple[type[BaseException], ...]

    def begin_stage(self, plan: Any) -> None:
        """A stage starts (or resumes): e.g. its learning-rate multiplier takes effect."""

    def learning_rate(self, step: int) -> float:
        """The learning rate the optimizer used at ``step`` (0-based)."""

    def segment(self, plan: Any, epoch: int, start: int, end: int, seq_length: int) -> Iterator:
        """The input of epoch steps ``[start, end)`` on rows of ``seq_length`` tokens."""

    def run(
        self,
        iterator: Iterator,
        num_steps: int,
        plan: Any,
        seq_length: int,
        stop_requested: Callable[[], bool],
    ) -> StepOutputs:
        """``num_steps`` optimizer steps from ``iterator`` in one host call; ``stop_requested``
        says whether this host got a preemption signal (``StepOutputs.stop``: agreed)."""


def _compiled_schedule(schedule: Any) -> Callable[[Any], Any]:
    """``schedule(step)`` as one graph call, for the learning rate every ``log`` event reports.

    Evaluated eagerly the schedule is some 30 small ops: 1.2 ms per log event against
    0.42 ms as one call, host time spent between two steps (docs/design.md, "KerasHub models",
    per step against fit; BENCHMARKS.md). The graph reads the schedule's phase and stage
    multiplier from their variables (``assembly.build`` makes them), so it follows ``set_phase``
    and ``begin_stage``; a schedule whose phase is plain Python attributes would be frozen into
    the trace, so it stays eager. The function is kept on the schedule, so a later ``train()``
    (a new runner) calls the same trace instead of tracing again (about 30 ms).
    """
    import tensorflow as tf

    if getattr(schedule, "phase", None) is None or getattr(schedule, "decay", None) is None:
        return schedule
    traced = getattr(schedule, "_highnoon_traced_rate", None)
    if traced is None:
        traced = tf.function(
            lambda step: schedule(step),
            input_signature=[tf.TensorSpec([], tf.int64)],
            autograph=False,
        )
        schedule._highnoon_traced_rate = traced
    return traced


def _host_is_cpu() -> bool:
    """Whether the schedule's graph runs on the host's CPU (no GPU to place it on)."""
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


class _InputAhead:
    """The input of the segment that comes next, built on a helper thread while a host call
    runs (the compiled call releases the GIL), so an epoch change costs the loop no pipeline
    construction (about 35-50 ms on a CPU host; BENCHMARKS.md, "Host time between calls").

    The pipeline's rows are computed when it is read, not when it is built, so building it
    early feeds exactly what a build at the segment's start would. A failed build is dropped:
    the segment is then built at its start, where the same error is raised in the loop."""

    def __init__(self, build: Callable[..., Iterator], plan: Any, args: tuple[int, ...]) -> None:
        self.plan, self.args = plan, args
        self.iterator: Iterator | None = None
        self._build = build
        self._thread = threading.Thread(target=self._run, name="highnoon-input-ahead", daemon=True)

    def _run(self) -> None:
        try:
            self.iterator = self._build(self.plan, *self.args)
        except Exception:  # rebuilt (and its error raised) at the segment's start
            self.iterator = None

    def start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def join(self) -> None:
        if self._thread.ident is not None:
            self._thread.join()

    def take(self, plan: Any, args: tuple[int, ...]) -> Iterator | None:
        """The built iterator if it is this segment's (the hint may have been wrong)."""
        if plan is not self.plan or args != self.args:
            return None
        self.join()
        return self.iterator


class TrainStepRunner:
    """``StepRunner`` over a ``TrainStep`` under a ``tf.distribute`` strategy."""

    def __init__(
        self,
        step: Any,  # TrainStep
        strategy: Any,  # tf.distribute.Strategy
        schedule: Any,  # WarmupCosineSchedule, with its stage multiplier
        *,
        jit_compile: bool,
        multi_host: bool,
        steps_per_call: int | None = None,
    ) -> None:
        import tensorflow as tf

        self.step = step
        self.strategy = strategy
        self.schedule = schedule
        self.jit_compile = jit_compile
        # The loop's most steps per host call (None: any): 1 compiles a call with no loop.
        self.steps_per_call = steps_per_call
        self.multi_host = multi_host  # hosts agree on preemption inside every host call
        self.fatal_errors = (tf.errors.OpError,)
        self._compiled: set[tuple] = set()  # (step config, row length) whose first call ran
        self._rate = _compiled_schedule(schedule)
        # A log event's read-out calls the traced graph directly: the tf.function's dispatch
        # (signature binding, cache look-up) costs as much again as the schedule itself.
        self._rate_call: Callable[[Any], Any] | None = None
        # The schedule's host form (``host_rate``) replaces the graph once it gave the same
        # value at a first read-out; None: not checked yet, False: the graph (an accelerator
        # may run the graph, whose ``cos`` is not the C library's).
        self._host_rate: bool | None = (
            None if hasattr(schedule, "host_rate") and _host_is_cpu() else False
        )
        self._multiplier: float | None = None  # the value begin_stage gave the variable
        self._train: tuple[Any, tuple, Callable] | None = None  # (plan, config key, train fn)
        self._ahead: _InputAhead | None = None  # the next segment's input (``prepare``)

    def begin_stage(self, plan: Any) -> None:
        self.schedule.multiplier.assign(plan.learning_rate_multiplier)
        self._multiplier = plan.learning_rate_multiplier

    def learning_rate(self, step: int) -> float:
        """The schedule at ``step``: its host form where that was checked equal to the graph
        (a ``log`` event's read-out then costs no TensorFlow call), else the traced graph."""
        if self._host_rate and self._multiplier is not None:
            return self.schedule.host_rate(step, self._multiplier)
        rate = self._graph_rate(step)
        if self._host_rate is None and self._multiplier is not None:
            self._host_rate = self.schedule.host_rate(step, self._multiplier) == rate
        return rate

    def _graph_rate(self, step: int) -> float:
        import tensorflow as tf

        if self._rate_call is None:
            rate = self._rate
            self._rate_call = (
                rate.get_concrete_function() if hasattr(rate, "get_concrete_function") else rate
            )
        return float(self._rate_call(tf.constant(step, tf.int64)))

    def segment(self, plan: Any, epoch: int, start: int, end: int, seq_length: int) -> Iterator:
        ahead, self._ahead = self._ahead, None
        args = (epoch, start, end, seq_length)
        iterator = ahead.take(plan, args) if ahead is not None else None
        return iterator if iterator is not None else self._build_segment(plan, *args)

    def prepare(self, plan: Any, epoch: int, start: int, end: int, seq_length: int) -> None:
        """A hint from the loop: ``segment(plan, epoch, start, end, seq_length)`` comes after
        the next host call, whose run builds that input on a helper thread. Only where the step
        reads the host pipeline itself (one replica): a distributed input stays on the loop's
        thread."""
        from highnoon.training.inputs import feeds_host_dataset

        if feeds_host_dataset(self.strategy):
            self._ahead = _InputAhead(self._build_segment, plan, (epoch, start, end, seq_length))

    def _build_segment(
        self, plan: Any, epoch: int, start: int, end: int, seq_length: int
    ) -> Iterator:
        from highnoon.training.inputs import training_dataset

        dataset = training_dataset(
            self.strategy, plan, epoch=epoch, start_step=start, end=end, seq_length=seq_length
        )
        return iter(dataset)

    def _train_fn(self, plan: Any) -> tuple[tuple, Callable]:
        """The stage's step config (as a key) and compiled host call, made once per stage."""
        if self._train is None or self._train[0] is not plan:
            import dataclasses

            from highnoon.training.step import StepConfig

            config = StepConfig(
                accumulation_steps=plan.settings.gradient_accumulation_steps,
                clip_norm=plan.settings.clip_norm,
                jit_compile=self.jit_compile,
                steps_per_call=self.steps_per_call,
            )
            train_fn = self.step.train_fn(config, agree=self.multi_host)
            self._train = (plan, dataclasses.astuple(config), train_fn)
        return self._train[1], self._train[2]

    def run(
        self,
        iterator: Iterator,
        num_steps: int,
        plan: Any,
        seq_length: int,
        stop_requested: Callable[[], bool],
    ) -> StepOutputs:
        config_key, train_fn = self._train_fn(plan)
        ahead = self._ahead
        if ahead is not None:  # the next segment's input is built while this call runs
            ahead.start()
        try:
            if self.multi_host:  # every host learns whether any host got a preemption signal
                losses, tokens, flags = train_fn(iterator, num_steps, stop_requested())
                stop = float(flags) > 0.0
            else:  # one host: a signal that arrived during the call stops after it
                losses, tokens = train_fn(iterator, num_steps)
                stop = stop_requested()
        finally:
            if ahead is not None:  # never outlives the call: no build under a callback
                ahead.join()
        key = (*config_key, seq_length)  # one compilation per input shape
        compiled = key not in self._compiled
        self._compiled.add(key)
        return StepOutputs(
            losses=losses.numpy().astype(np.float64),
            tokens=tokens.numpy().astype(np.float64),
            compiled=compiled,
            stop=stop,
        )
