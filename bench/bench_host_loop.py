"""The Trainer's host time between its compiled calls: what the loop costs per host call.

    python bench/bench_host_loop.py               # tiny KerasHub GPT-2, 3 epochs, many small calls
    python bench/bench_host_loop.py --profile     # and a cProfile table of the loop's functions
    python bench/bench_host_loop.py --case gpt2   # bench_kerashub's GPT-2 4x128 (55 ms steps)

``bench_kerashub.py`` finds the Trainer about 1 ms of host time per step behind KerasHub's
``fit``, outside the compiled calls. This bench takes that host time apart on a model so small
(one layer, width 16, 4 x 32 rows) that its compiled call costs about as much as the loop
around it, so the loop's work stands out.

The Trainer trains once to trace and compile everything, then trains again (the same built
step; a new controller and runner, as every ``train()`` makes) with every compiled call
(``TrainStep.train_fn``, results fetched to the host) timestamped. The gap between the end of
one call and the start of the next is host time, and each gap is classed by what happened in
it: an epoch change (a new input pipeline), a ``log`` event (the learning rate, goodput record,
listeners), or neither (the per-call bookkeeping alone). The table gives each class's count,
median and mean milliseconds, and its share of the host time per step, in wall time and in
the loop thread's own CPU time (``time.thread_time``: on a shared machine a gap's wall time
includes waiting for a core, its CPU time does not). Gaps of the first call of the timed run
(the runner's first learning-rate call traces the schedule) are shown apart.

Each round trains twice, alternating two arms in this one process: ``ahead`` is the Trainer as
it is (the controller hints each next segment and the runner builds its input on a helper
thread during the segment's last call), ``in loop`` the same with ``TrainStepRunner.prepare``
made a no-op (every segment's input built between calls, as before). Each arm's table pools its
rounds; the epoch-change ratio (``in loop`` / ``ahead``, above 1: ahead is faster) compares the
same gaps. On the tiny model a call is far shorter than a build, so the build cannot hide behind
it; ``--case gpt2`` has calls as long as a build.

The learning-rate table times what a ``log`` event reads: the schedule run eagerly, as its
``tf.function``, the traced graph called directly (the runner's read-out until its first one
matched the host form), and the schedule's host form (``WarmupCosineSchedule.host_rate``, what
the runner reads after that), interleaved call by call, with ratios against the eager one.

``--profile`` then trains once more under cProfile and lists, per host call, the cumulative
microseconds of the loop's own functions (controller, runner, position, plan, goodput, events).
cProfile inflates Python time several-fold: read that table for shares, the first for time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from typing import Any

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kerashub import GPT2_SMALL, Case, make_trainer

from highnoon.training.runner import TrainStepRunner, _compiled_schedule
from highnoon.training.trainer import Trainer

TINY = Case(
    "GPT-2 1x16",
    "GPT2CausalLM",
    {"num_layers": 1, "num_heads": 1, "hidden_dim": 16, "intermediate_dim": 32,
     "max_sequence_length": 32, "dropout": 0.0},
    batch=4,
    seq=32,
    max_samples=480,
    epochs=3,
    log_interval=3,
)  # fmt: skip
CASES = {
    "tiny": TINY,
    "gpt2": Case("GPT-2 4x128", "GPT2CausalLM", GPT2_SMALL, max_samples=480, epochs=3),
}

# The loop's own functions, as cProfile names them (file suffix, function name).
LOOP_FUNCTIONS = [
    ("training/controller.py", "_run_segment"),
    ("training/runner.py", "run"),
    ("training/step.py", "<lambda>"),
    ("training/controller.py", "_after_call"),
    ("training/runner.py", "learning_rate"),
    ("training/runner.py", "segment"),
    ("training/stage_plan.py", "step_totals"),
    ("training/position.py", "record_steps"),
    ("training/position.py", "count"),
    ("training/controller.py", "add"),
    ("training/controller.py", "_check_finite"),
    ("training/goodput.py", "add_steps"),
    ("training/goodput.py", "write"),
    ("training/events.py", "emit"),
    ("training/controller.py", "_end_epoch"),
]


class CallTimes:
    """Start and end of every compiled call, and which gaps an epoch change or a log fell in."""

    def __init__(self, trainer: Trainer) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        # The loop thread's own CPU seconds at the same moments: on a shared machine a gap's
        # wall time includes waiting for a core, its CPU time does not.
        self.cpu_starts: list[float] = []
        self.cpu_ends: list[float] = []
        self.segments: set[int] = set()  # calls that follow a new pipeline
        self.logs: set[int] = set()  # calls that follow a log event
        trainer.add_callback(self._on_event)
        self.trainer = trainer
        self._segment = TrainStepRunner.segment

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["event"] == "train_begin":
            step = self.trainer._step
            build = step.train_fn
            step.train_fn = lambda *a, **k: self._timed(build(*a, **k))
        elif event["event"] == "log":
            self.logs.add(len(self.ends))

    def _timed(self, call: Any) -> Any:
        def timed(*args: Any) -> Any:
            self.cpu_starts.append(time.thread_time())
            self.starts.append(time.perf_counter())
            out = call(*args)
            tf.nest.map_structure(lambda t: t.numpy(), out)
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.thread_time())
            return out

        return timed

    def __enter__(self) -> CallTimes:
        times = self

        def segment(runner: Any, *args: Any) -> Any:
            times.segments.add(len(times.ends))
            return times._segment(runner, *args)

        TrainStepRunner.segment = segment
        return self

    def __exit__(self, *exc: Any) -> None:
        TrainStepRunner.segment = self._segment

    def gaps(self) -> dict[str, np.ndarray]:
        """Host milliseconds between calls, by class (call ``i``'s gap precedes it), as rows of
        (wall, the loop thread's CPU)."""
        classes: dict[str, list[tuple[float, float]]] = {
            "epoch change": [], "log": [], "plain": [], "first": []
        }  # fmt: skip
        for i in range(1, len(self.starts)):
            gap = (
                1e3 * (self.starts[i] - self.ends[i - 1]),
                1e3 * (self.cpu_starts[i] - self.cpu_ends[i - 1]),
            )
            if i in self.segments:
                kind = "epoch change"
            elif i in self.logs:
                kind = "first" if i == min(self.logs) else "log"
            else:
                kind = "plain"
            classes[kind].append(gap)
        return {k: np.array(v, dtype=np.float64).reshape(-1, 2) for k, v in classes.items()}


def train(trainer: Trainer, case: Case) -> None:
    trainer.train(save_checkpoints=False, checkpoint_dir=None, log_interval=case.log_interval)


def timed_run(trainer: Trainer, case: Case, ahead: bool) -> dict[str, Any]:
    """One ``train()`` with its calls timestamped; ``ahead=False``: no input built ahead."""
    prepare = TrainStepRunner.prepare
    if not ahead:
        TrainStepRunner.prepare = lambda *args: None
    try:
        with CallTimes(trainer) as times:
            started = time.perf_counter()
            train(trainer, case)
            wall = time.perf_counter() - started
    finally:
        TrainStepRunner.prepare = prepare
    inside = sum(e - s for s, e in zip(times.starts, times.ends))
    return {"wall": wall, "inside": inside, "gaps": times.gaps()}


def host_tables(trainer: Trainer, case: Case, rounds: int) -> None:
    runs: dict[str, list[dict[str, Any]]] = {"ahead": [], "in loop": []}
    for _ in range(rounds):
        for arm in runs:
            runs[arm].append(timed_run(trainer, case, ahead=arm == "ahead"))
    steps = trainer._position.global_step * rounds
    print(f"\n{case.label}, {case.batch} x {case.seq}, {steps // rounds} steps a run, one per "
          f"host call, {rounds} runs per arm\n")  # fmt: skip
    print(
        "| arm | between calls | count | median ms | mean ms | ms per step | median CPU ms "
        "| CPU ms per step |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    pooled = {}
    for arm, arm_runs in runs.items():
        wall = sum(r["wall"] for r in arm_runs)
        inside = sum(r["inside"] for r in arm_runs)
        gaps = {k: np.concatenate([r["gaps"][k] for r in arm_runs]) for k in arm_runs[0]["gaps"]}
        pooled[arm] = gaps
        for kind, values in gaps.items():
            if values.size:
                gap, cpu = values[:, 0], values[:, 1]
                print(f"| {arm} | {kind} | {gap.size} | {np.median(gap):.3f} "
                      f"| {gap.mean():.3f} | {gap.sum() / steps:.3f} | {np.median(cpu):.3f} "
                      f"| {cpu.sum() / steps:.3f} |")  # fmt: skip
        host = sum(float(g[:, 0].sum()) for g in gaps.values())
        host_cpu = sum(float(g[:, 1].sum()) for g in gaps.values())
        print(f"| {arm} | all (wall {1e3 * wall / steps:.3f}, in calls "
              f"{1e3 * inside / steps:.3f}) | | | | {host / steps:.3f} | "
              f"| {host_cpu / steps:.3f} |")  # fmt: skip
    changes = [float(pooled[arm]["epoch change"][:, 0].sum()) for arm in ("in loop", "ahead")]
    if changes[1] > 0:
        print(f"\nepoch change, in loop / ahead: {changes[0] / changes[1]:.2f}")


def rate_table(trainer: Trainer, rounds: int = 300) -> None:
    schedule = trainer._built.schedule
    function = _compiled_schedule(schedule)
    runner = TrainStepRunner(None, None, schedule, jit_compile=True, multi_host=False)
    multiplier = float(schedule.multiplier.numpy())
    arms = {
        "eager": lambda step: float(schedule(tf.constant(step, tf.int64))),
        "tf.function": lambda step: float(function(tf.constant(step, tf.int64))),
        # (older code, measured before a change, has no host form)
        "traced graph": getattr(runner, "_graph_rate", runner.learning_rate),
    }
    if hasattr(schedule, "host_rate"):
        arms["host form (host_rate)"] = lambda step: schedule.host_rate(step, multiplier)
    times: dict[str, list[float]] = {name: [] for name in arms}
    for step in range(rounds + 1):
        for name, read in arms.items():
            started = time.perf_counter()
            read(step)
            if step:  # the first call traces
                times[name].append(time.perf_counter() - started)
    base = np.median(times["eager"])
    print(f"\nlearning-rate read-out, {rounds} interleaved calls each\n")
    print("| read-out | median ms | p90 ms | eager / this |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {1e3 * np.median(values):.3f} | {1e3 * np.percentile(values, 90):.3f} "
              f"| {base / np.median(values):.2f} |")  # fmt: skip


def profile_table(trainer: Trainer, case: Case) -> None:
    profile = cProfile.Profile()
    profile.enable()
    train(trainer, case)
    profile.disable()
    calls = trainer._position.global_step
    stats = pstats.Stats(profile).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    print(f"\ncProfile, {calls} host calls (inflated; for shares)\n")
    print("| function | calls | cumulative us per host call | own us per host call |")
    print("|---|---:|---:|---:|")
    for suffix, name in LOOP_FUNCTIONS:
        rows = [v for (f, _, n), v in stats.items() if f.endswith(suffix) and n == name]
        if not rows:
            continue
        count = sum(r[1] for r in rows)
        own, cumulative = sum(r[2] for r in rows), sum(r[3] for r in rows)
        print(f"| {suffix.split('/')[-1]}:{name} | {count} | {1e6 * cumulative / calls:.1f} "
              f"| {1e6 * own / calls:.1f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), default="tiny")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per arm")
    parser.add_argument("--profile", action="store_true", help="also a cProfile table")
    args = parser.parse_args(argv)
    case = CASES[args.case]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(case, os.path.join(tmp, "cache"))
        train(trainer, case)  # traces and compiles
        host_tables(trainer, case, args.rounds)
        rate_table(trainer)
        if args.profile:
            profile_table(trainer, case)


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
