"""Goodput: where a job's wall time went, across restarts, and model FLOPs utilisation.

A run's wall time is split into buckets: productive step time (host calls after the first call
of each compiled step), compilation (the first call of each compiled step, which traces and
compiles), data (stores and plans), checkpoints (saves and restores), evaluation, and the rest.
Time lost to restarts is the productive time of the steps a crashed or preempted attempt trained
after its last checkpoint, which the next attempt replays.

The chief keeps ``goodput.json`` in the run directory, rewritten (atomically) at every log event,
checkpoint and at the end, with the job's totals so far and the furthest step reached; the next
attempt reads it, counts a restart when the last attempt did not finish, and the steps between
its restored checkpoint and that furthest step as replayed.

MFU is model FLOPs per second over the devices' peak: ``6 N + 12 L d s`` FLOPs per trained token
(``N`` parameters with the embedding, ``L`` layers, ``d`` width, ``s`` sequence length; the
forward and backward matmuls and the attention scores, as in the PaLM paper's appendix B).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from highnoon.training.devices import PEAK_FLOPS, detect_accelerator
from highnoon.training.run_dir import GOODPUT_FILE
from highnoon.utils.files import atomic_write_text, isfile, read_text

BUCKETS = ("productive_step", "compilation", "data", "checkpoint", "evaluation")
_measured_cpu_peak: float | None = None


class Goodput:
    """Times the buckets of this attempt and merges them with the job's earlier attempts."""

    def __init__(self, directory: str | None = None, writer: bool = True) -> None:
        self.path = os.path.join(directory, GOODPUT_FILE) if directory else None
        self.writer = writer and self.path is not None
        self.started = time.time()
        self.seconds = dict.fromkeys(BUCKETS, 0.0)
        self.steps = 0  # productive steps of this attempt
        self.earlier = _read(self.path) if self.path else {}
        self.restarts = int(self.earlier.get("restarts", 0))
        self.steps_replayed = int(self.earlier.get("steps_replayed", 0))
        self.lost_seconds = float(self.earlier.get("lost_to_restarts_seconds", 0.0))
        self.furthest_step = 0

    @contextlib.contextmanager
    def measure(self, bucket: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.seconds[bucket] += time.time() - start

    def add_steps(self, bucket: str, seconds: float, steps: int, global_step: int) -> None:
        """A host call of ``steps`` steps that took ``seconds``."""
        self.seconds[bucket] += seconds
        if bucket == "productive_step":
            self.steps += steps
        self.furthest_step = max(self.furthest_step, global_step)

    def resumed_at(self, step: int) -> None:
        """Called once the attempt knows the step it restored; counts an unfinished predecessor
        as a restart and the steps it trained past that checkpoint as replayed."""
        self.furthest_step = step
        if not self.earlier or self.earlier.get("finished", True):
            return
        self.restarts += 1
        replayed = max(int(self.earlier.get("furthest_step", 0)) - step, 0)
        per_step = float(self.earlier.get("seconds_per_step", 0.0))
        self.steps_replayed += replayed
        self.lost_seconds += replayed * per_step

    def report(self) -> dict[str, Any]:
        """The job's totals (all attempts so far) in seconds, and the goodput ratio."""
        earlier = self.earlier.get("seconds", {})
        totals = {b: self.seconds[b] + float(earlier.get(b, 0.0)) for b in BUCKETS}
        wall = time.time() - self.started + float(self.earlier.get("wall_seconds", 0.0))
        report: dict[str, Any] = {
            "wall_seconds": wall,
            **{f"{b}_seconds": totals[b] for b in BUCKETS},
            "other_seconds": max(wall - sum(totals.values()), 0.0),
            "lost_to_restarts_seconds": self.lost_seconds,
            "restarts": self.restarts,
            "steps_replayed": self.steps_replayed,
            "goodput": (totals["productive_step"] - self.lost_seconds) / wall if wall > 0 else 0.0,
        }
        return report

    def write(self, finished: bool = False) -> None:
        """Chief: the job's record so far, for the next attempt (atomic)."""
        if not self.writer:
            return
        report = self.report()
        steps = self.steps + int(self.earlier.get("productive_steps", 0))
        record = {
            "seconds": {b: report[f"{b}_seconds"] for b in BUCKETS},
            "wall_seconds": report["wall_seconds"],
            "restarts": self.restarts,
            "steps_replayed": self.steps_replayed,
            "lost_to_restarts_seconds": self.lost_seconds,
            "productive_steps": steps,
            "seconds_per_step": report["productive_step_seconds"] / steps if steps else 0.0,
            "furthest_step": self.furthest_step,
            "finished": finished,
        }
        atomic_write_text(self.path, json.dumps(record, indent=2))


def _read(path: str) -> dict[str, Any]:
    if not isfile(path):
        return {}
    try:
        record = json.loads(read_text(path))
    except ValueError:
        return {}  # a damaged record only costs the history, never the run
    return record if isinstance(record, dict) else {}


def flops_per_token(model_config: dict[str, Any], seq_length: int) -> float | None:
    """``6 N + 12 L d s`` for a HighNoon model config (None for other models)."""
    from highnoon.models.config import ModelConfig

    try:
        config = ModelConfig(**model_config)
    except TypeError:
        return None
    n = config.num_parameters()
    return 6.0 * n + 12.0 * config.num_layers * config.d_model * seq_length


def peak_flops(setting: float | str | None, num_devices: int) -> float | None:
    """The devices' total peak FLOP/s: a number per device, a known chip name, ``"auto"``
    (``devices.detect_accelerator``; a CPU is measured once per process), or None (no MFU)."""
    if setting is None:
        return None
    if isinstance(setting, int | float):
        return float(setting) * num_devices
    if setting != "auto":
        return PEAK_FLOPS[setting] * num_devices
    chip = detect_accelerator()
    if chip == "cpu":
        return measured_cpu_peak()
    return PEAK_FLOPS[chip] * num_devices if chip else None  # unknown: give its peak as a number


def measured_cpu_peak(size: int = 512, repeats: int = 20) -> float:
    """This CPU's float32 matmul FLOP/s (XLA), the best of a few runs; measured once."""
    global _measured_cpu_peak
    if _measured_cpu_peak is None:
        import tensorflow as tf

        a = tf.random.stateless_normal((size, size), seed=[1, 2])
        matmul = tf.function(lambda x: tf.matmul(x, x), jit_compile=True)
        matmul(a).numpy()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            matmul(a).numpy()
            best = min(best, time.perf_counter() - start)
        _measured_cpu_peak = 2.0 * size**3 / best
    return _measured_cpu_peak
