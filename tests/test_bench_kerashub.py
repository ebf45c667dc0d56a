"""``bench/bench_kerashub.py``'s per-call bookkeeping: each compiled call is filed under the
window the whole-window table times, the compilation window and the Trainer's tail after the
last ``log`` event are left out, and the medians are each arm's own."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "bench"))
import bench_kerashub  # the test extra installs keras-hub: a failed import fails the module


def _run(clocks, arm: str, seconds: list[float]) -> None:
    """``arm``'s calls, each reporting ``seconds`` through a fake clock."""
    for value in seconds:
        clocks.records.append((arm, len(clocks.windows) - (arm == "fit"), value, value / 2))


def test_calls_are_filed_under_their_timed_window() -> None:
    clocks = bench_kerashub.CallClocks()
    try:
        _run(clocks, "trainer", [9.0, 9.0])  # window 0: compilation, not timed
        clocks.close_window()  # the first log event: fit's first window (compilation) follows
        _run(clocks, "fit", [8.0, 8.0])
        clocks.open_trainer_window()
        _run(clocks, "trainer", [1.0, 3.0])  # window 1, timed
        clocks.close_window()
        _run(clocks, "fit", [2.0, 4.0])  # fit's window paired with window 1
        clocks.open_trainer_window()
        _run(clocks, "trainer", [5.0, 5.0])  # window 2, timed
        clocks.close_window()
        _run(clocks, "fit", [6.0, 7.0])
        clocks.open_trainer_window()
        _run(clocks, "trainer", [7.0])  # the tail after the last log event: not timed
        assert len(clocks.timed()) == 2
        trainer, fit = clocks.timed_calls("trainer"), clocks.timed_calls("fit")
    finally:
        clocks.close()
    np.testing.assert_array_equal(trainer[:, 0], [1.0, 3.0, 5.0, 5.0])
    np.testing.assert_array_equal(fit[:, 0], [2.0, 4.0, 6.0, 7.0])
    np.testing.assert_array_equal(fit[:, 1], [1.0, 2.0, 3.0, 3.5])
    medians = bench_kerashub.median_calls({"trainer": trainer, "fit": fit})
    assert medians["trainer_count"] == 4 and medians["fit_count"] == 4
    assert medians["trainer_wall"] == 4000.0 and medians["fit_wall"] == 5000.0
    assert medians["ratio"] == 1.25 and medians["cpu_ratio"] == 1.25


def test_a_wrapped_call_records_its_window() -> None:
    clocks = bench_kerashub.CallClocks()
    try:
        timed = clocks.wrap("trainer", lambda: {})
        timed()
        clocks.close_window()
        clocks.wrap("fit", lambda: {})()
    finally:
        clocks.close()
    assert [(arm, window) for arm, window, _, _ in clocks.records] == [("trainer", 0), ("fit", 0)]
    assert all(wall >= 0.0 and cpu >= 0.0 for _, _, wall, cpu in clocks.records)


def test_samples_replaces_each_chosen_cases_training_samples() -> None:
    assert [c.max_samples for c in bench_kerashub.cases(False)] == [480, 480]
    longer = bench_kerashub.cases(False, "llama", samples=1920)
    assert [(c.task, c.max_samples) for c in longer] == [("LlamaCausalLM", 1920)]
    assert longer[0].backbone == bench_kerashub.LLAMA_SMALL and longer[0].log_interval == 3
