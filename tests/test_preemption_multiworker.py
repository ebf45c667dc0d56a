"""Preemption with real worker processes: SIGTERM to one worker stops both at the same step,
saved, with the restart code; ``local_cluster`` relaunches the job, which ends with the weights of
an uninterrupted run, bitwise.

Every run is 2 workers of ``tests/workers/train_worker.py`` (one-block nano model, deterministic
ops, eval at each stage's end) under ``run_with_restarts`` with a hard kill timeout.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from highnoon.distribute.errors import EXIT_RESTART
from highnoon.launch.local_cluster import ClusterResult, run_with_restarts
from highnoon.training.checkpointing import checkpoint_candidates
from tests.multiworker_helpers import (
    HARD_TIMEOUT,
    ROOT,
    WORKER,
    Outcome,
    assert_bitwise_equal,
    make_workdir,
    write_runs,
    write_spec,
)

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict[str, str]:
    return make_workdir(tmp_path_factory.mktemp("preemption"))


def _spec(workdir, name: str, trainer_extra: dict | None = None, **extra) -> str:
    """A worker spec with stage-end evaluations (the "eval" moment) and ``trainer_extra``."""
    return write_spec(
        workdir, name, trainer_extra={"eval_fraction": 0.25, **(trainer_extra or {})}, **extra
    )


def _run(
    spec: str, max_restarts: int, restart_grace: float = 60, runs: int = 1
) -> list[ClusterResult]:
    return run_with_restarts(
        [sys.executable, WORKER, spec],
        2,
        max_restarts=max_restarts,
        timeout=HARD_TIMEOUT * runs,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="1"),
        echo=lambda line: None,
        cwd=ROOT,
        restart_grace=restart_grace,
    )


def _events(output: str, name: str) -> list[dict]:
    found = []
    for line in output.splitlines():
        if line.startswith("EVENT "):
            event = json.loads(line[len("EVENT ") :])
            if event["event"] == name:
                found.append(event)
    return found


@pytest.fixture(scope="module")
def uninterrupted_then_nan(workdir) -> tuple[list[Outcome], list[ClusterResult]]:
    """One job (one cluster start for two runs): the uninterrupted run every relaunched job is
    compared with, then, in the same processes, a run whose loss turns NaN at step 3, which
    ends the job; relaunches allowed (the NaN must not use them). (outcomes, attempts)."""
    spec = _spec(workdir, "uninterrupted")
    nan = _spec(workdir, "nan", poison_at_step=3)
    attempts = _run(write_runs([spec, nan]), max_restarts=3, runs=2)
    outcomes = [Outcome(spec, task) for task in (0, 1)]
    for outcome in outcomes:  # the first run ended cleanly before the second began
        assert not outcome.facts["stopped"], attempts[0].outputs
        assert outcome.facts["events"][-1]["event"] == "train_end"
    return outcomes, attempts


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_then_nan) -> list[Outcome]:
    return uninterrupted_then_nan[0]


# One job preempted at every moment in turn: attempt k stops at CHAIN[k] (on the task given),
# attempt k + 1 resumes there. One relaunched job instead of a fresh job per moment proves the
# same per moment (both workers stop at one agreed, saved step and say so; the relaunch starts
# there) and, at the end, the uninterrupted weights bitwise after five restarts. The moments
# come in the order a run meets them (14 steps: a quarter of each store is held out): step 1, a
# host call, the periodic save at step 8, the end of stage "first" (step 10, after its
# evaluation), then the evaluation at EVAL_INTERVAL (step 11, inside stage "second": a stage-end
# evaluation of the last stage leaves no step to stop at).
CHAIN = (
    ("first_step", 1),
    ("inside_step", 0),
    ("save", 0),
    ("stage_boundary", 1),
    ("eval", 1),
)
EVAL_INTERVAL = 11


@pytest.mark.timeout(900)  # six attempts of a 2-worker job (each under HARD_TIMEOUT)
def test_sigterm_to_one_worker_at_each_moment_stops_both_at_one_saved_step_and_relaunches_exactly(
    workdir, uninterrupted
):
    marker = os.path.join(workdir["root"], "marker-chain")
    chain = [{"task": task, "at": moment} for moment, task in CHAIN]
    spec = _spec(
        workdir,
        "preempt-chain",
        preempt={"marker": marker, "chain": chain},
        eval_interval=EVAL_INTERVAL,  # evaluations leave the weights alone: same as uninterrupted
    )
    attempts = _run(spec, max_restarts=len(CHAIN))
    assert [a.exit_codes for a in attempts] == [[EXIT_RESTART] * 2] * len(CHAIN) + [[0, 0]], [
        a.outputs for a in attempts
    ]
    ckpt = os.path.join(workdir["root"], "preempt-chain", "ckpt")
    start, stops = 0, []
    for (moment, task), first in zip(CHAIN, attempts):
        assert f"SIGTERM-SELF at={moment}" in first.outputs[task], moment
        for out in first.outputs:
            (begin,) = _events(out, "train_begin")
            assert begin["start_step"] == start, moment
        (stop0,), (stop1,) = (_events(out, "preempted") for out in first.outputs)
        assert stop0["step"] == stop1["step"] > 0, moment  # the same agreed step on both
        assert stop0["checkpoint"] == os.path.join(ckpt, f"ckpt-{stop0['step']}")
        saved = [e["step"] for e in _events(first.outputs[0], "checkpoint_saved")]
        assert saved[-1] == stop0["step"], moment  # the chief's last save is the agreed step
        for out in first.outputs:  # every worker, the chief included, says where it stopped
            assert (
                f": preempted at the agreed step {stop0['step']} (saved "
                f"{stop0['checkpoint']}); exit code {EXIT_RESTART}: relaunch to resume"
            ) in out
        # Only the chain's task signalled itself, once, in this attempt.
        assert [out.count("SIGTERM-SELF") for out in first.outputs] == [
            int(t == task) for t in (0, 1)
        ], moment
        start = stop0["step"]
        stops.append(start)
    # Each attempt trained before it stopped; the moments landed where the chain says (step 1,
    # the end of stage "first", inside stage "second"). Measured: [1, 5, 9, 10, 12].
    assert stops == sorted(set(stops)) and stops[0] == 1 and stops[3] == 10 < stops[4], stops
    for out in attempts[-1].outputs:
        (begin,) = _events(out, "train_begin")
        assert begin["start_step"] == start
        assert "SIGTERM-SELF" not in out
    resumed = [Outcome(spec, t) for t in (0, 1)]
    assert_bitwise_equal(resumed)
    for got, want in zip(resumed[0].weights, uninterrupted[0].weights):
        np.testing.assert_array_equal(got, want)
    with open(os.path.join(ckpt, "summary.json"), encoding="utf-8") as handle:
        assert json.load(handle)["goodput"]["restarts"] == len(CHAIN)


def test_a_save_that_outlasts_the_grace_period_leaves_the_previous_checkpoint(
    workdir, uninterrupted
):
    marker = os.path.join(workdir["root"], "marker-grace")
    spec = _spec(
        workdir,
        "preempt-grace",
        preempt={
            "task": 0,
            "at": "inside_step",
            "call": 6,  # after the periodic checkpoint at step 4
            "marker": marker,
            "slow_save_seconds": 30,
        },
        trainer_extra={"preemption_grace_seconds": 2.0},
    )
    first, second = _run(spec, max_restarts=1, restart_grace=10)
    assert first.exit_codes[0] == EXIT_RESTART, first.outputs
    assert "preemption grace period of 2 s ran out" in first.outputs[0]
    ckpt = os.path.join(workdir["root"], "preempt-grace", "ckpt")
    assert second.exit_codes == [0, 0], second.outputs
    (begin,) = _events(second.outputs[0], "train_begin")
    assert begin["start_step"] == 4  # the step-6 save never finished: ckpt-4, intact
    resumed = Outcome(spec, 0)
    for got, want in zip(resumed.weights, uninterrupted[0].weights):
        np.testing.assert_array_equal(got, want)
    assert checkpoint_candidates(ckpt)


def test_a_nan_loss_is_not_relaunched(uninterrupted_then_nan):
    _, attempts = uninterrupted_then_nan
    assert len(attempts) == 1 and attempts[0].exit_code == 1, attempts[0].outputs
    assert "NonFiniteLossError" in attempts[0].outputs[0]
