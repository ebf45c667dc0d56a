"""Sharding with real worker processes: MultiWorkerMirroredStrategy clusters on 127.0.0.1.

Each worker (``tests/workers/sharding_worker.py``) drives ``TrainStep`` directly on the
one-block nano model through the global batches and two stages of ``tests/sharding_helpers.py``
(24 steps, accumulation 2, clipping, a stage boundary at step 12 with another learning-rate
multiplier and clip norm). Every run is compared with one unsharded worker on the same global
batches:

* each level on 2 workers, and level "full" on 3, ends with the unsharded weights (float
  tolerance ``sharding_helpers.RTOL/ATOL``: sums run in another order), identical on every
  worker; each worker holds 1/N of the optimizer state (and of the carried gradients and the
  weights, by level), and the traffic its traced step logs is ``step_traffic``'s;
* a "full" run checkpointed at step 10 on 2 workers resumes on 1 worker (unsharded), on 2 and
  on 3 workers (sharded) and ends with the weights of the uninterrupted run;
* the "optimizer" level compiles its pieces with XLA (``jit_compile``) between real collectives.

A cluster start (each worker imports TensorFlow and Keras and joins the strategy) and a trace
of the step are the costly parts, so runs with the same worker count share one cluster: the
worker trains its list of runs one after the other, each on a fresh ``TrainStep`` but the resume
on 2 workers, which restores into the step it continues (four clusters, seven traces, eight
runs).

Bitwise equality where the order of sums is the same is shown in-process
(``tests/test_sharding.py``). Every cluster runs under a hard kill timeout.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import pytest

from highnoon.launch.local_cluster import run_local_cluster
from highnoon.models.memory import share_elements
from highnoon.training.sharding import step_traffic
from tests import sharding_helpers as H

# A test's first use of a shared cluster pays for all its runs (at most three; the cluster
# runs under HARD_TIMEOUT): the session's 300 s per test does not cover that on loaded cores.
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "sharding_worker.py")
HARD_TIMEOUT = 1500  # seconds per cluster of up to 3 runs (tracing "full" is slow on loaded cores)
CONFIG = H.CONFIG
WEIGHT_BYTES = CONFIG.num_parameters() * 4


class Outcome:
    """One worker's outputs."""

    def __init__(self, out_dir: str, task: int) -> None:
        base = os.path.join(out_dir, f"worker{task}")
        with np.load(base + ".npz") as arrays:
            self.weights = [arrays[k] for k in sorted(arrays.files)]
        with open(base + ".json", encoding="utf-8") as handle:
            self.facts: dict[str, Any] = json.load(handle)


def _cluster(tmp_root: str, name: str, num_workers: int, runs: dict[str, dict]) -> dict:
    """One cluster of ``num_workers`` training ``runs`` (name: run spec) one after the other
    (one cluster start serves them all); returns each run's outcomes, one per worker."""
    specs = []
    for run, spec in runs.items():
        out_dir = os.path.join(tmp_root, run)
        os.makedirs(out_dir)
        specs.append({"level": None, "last_step": H.TOTAL_STEPS, "jit_compile": False, **spec,
                      "out_dir": out_dir})  # fmt: skip
    path = os.path.join(tmp_root, f"{name}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(specs, handle)
    result = run_local_cluster(
        [sys.executable, WORKER, path],
        num_workers,
        timeout=HARD_TIMEOUT,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="1"),
        echo=lambda line: None,
        cwd=ROOT,
    )
    assert result.exit_codes == [0] * num_workers, result.outputs
    found = {}
    for run, spec in zip(runs, specs):
        outcomes = [Outcome(spec["out_dir"], task) for task in range(num_workers)]
        assert [o.facts["replicas"] for o in outcomes] == [num_workers] * num_workers
        for other in outcomes[1:]:  # every worker ends with the same bits
            assert all(np.array_equal(a, b) for a, b in zip(outcomes[0].weights, other.weights))
        found[run] = outcomes
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("sharding"))


def _resume_checkpoint(root: str) -> str:
    return os.path.join(root, "resume-ckpt")


@pytest.fixture(scope="module")
def full_pair(root) -> dict:
    """Two workers: "full" for all 24 steps, writing its checkpoint after step 10 (mid stage 0)
    on the way; then, in the same processes, that checkpoint restored into the same step and
    trained on from step 11 (no second cluster trains steps 1-10, none starts for the resume
    on 2, and the step is not traced again: the restore overwrites everything the run trained,
    which the uninterrupted weights at the end show; a fresh step restores it on 1 and 3
    workers)."""
    ckpt = _resume_checkpoint(root)
    runs = {
        "full2": {"level": "full", "save_at": 10, "save_to": ckpt},
        "resume-on-2": {"level": "full", "restore_from": ckpt, "same_step": True},
    }
    return _cluster(root, "two-full", 2, runs)


@pytest.fixture(scope="module")
def full_two(full_pair) -> Outcome:
    return full_pair["full2"][0]


@pytest.fixture(scope="module")
def one_worker(root, full_pair) -> dict:
    """One worker: the unsharded reference every other run is compared with, then the resume
    from ``full_pair``'s checkpoint (unsharded: one replica)."""
    runs = {
        "reference": {},
        "resume-on-1": {"level": "full", "restore_from": _resume_checkpoint(root)},
    }
    return _cluster(root, "one", 1, runs)


@pytest.fixture(scope="module")
def reference(one_worker) -> Outcome:
    (outcome,) = one_worker["reference"]
    assert outcome.facts["sharding"] is None and len(outcome.facts["losses"]) == H.TOTAL_STEPS
    return outcome


@pytest.fixture(scope="module")
def two_levels(root) -> dict:
    """Two workers: "optimizer", "gradients", then "optimizer" compiled with XLA."""
    runs = {
        "optimizer2": {"level": "optimizer"},
        "gradients2": {"level": "gradients"},
        "optimizer2-jit": {"level": "optimizer", "jit_compile": True},
    }
    return _cluster(root, "two-levels", 2, runs)


def _check_bytes(outcome: Outcome, level: str, replicas: int) -> None:
    """Bytes one replica holds and sends, against the unsharded figures."""
    shares = share_elements(CONFIG, replicas) * 4  # bytes of one replica's share of all weights
    assert shares * replicas - WEIGHT_BYTES < replicas * 4 * len(CONFIG.weight_shapes())
    held = outcome.facts["replica_bytes"]
    assert held["optimizer"] == 2 * shares + 8  # both moments' shares and the step counter
    assert held["gradients"] == (WEIGHT_BYTES if level == "optimizer" else shares)
    assert held["weights"] == (shares if level == "full" else WEIGHT_BYTES)
    traffic = step_traffic(CONFIG, level, replicas, accumulation_steps=H.ACCUMULATION)
    scalar = 2 * (replicas - 1) / replicas * 4  # the clip norm's one-scalar all-reduce
    for sent in outcome.facts["bytes_sent"].values():
        assert sent == pytest.approx(traffic + scalar, rel=1e-12)


@pytest.mark.parametrize("level", ["optimizer", "gradients"])
def test_level_on_two_workers_ends_with_the_unsharded_weights(two_levels, reference, level):
    outcome = two_levels[f"{level}2"][0]
    np.testing.assert_allclose(outcome.facts["losses"], reference.facts["losses"], rtol=1e-5)
    H.assert_weights_close(outcome.weights, reference.weights)
    _check_bytes(outcome, level, 2)


def test_full_on_two_workers_ends_with_the_unsharded_weights(reference, full_two):
    np.testing.assert_allclose(full_two.facts["losses"], reference.facts["losses"], rtol=1e-5)
    H.assert_weights_close(full_two.weights, reference.weights)
    _check_bytes(full_two, "full", 2)


def test_sharded_checkpoint_resumes_on_one_two_and_three_workers(
    root, reference, full_two, full_pair, one_worker
):
    """'full' on 2 workers checkpointed after step 10 (mid stage 0; ``full_two``); resumed on 1
    worker (which trains unsharded), on 2 and on 3 workers (sharded, each holding a half or a
    third): each ends with the uninterrupted run's weights."""
    ckpt = _resume_checkpoint(root)
    resumed = {
        1: one_worker["resume-on-1"][0],
        2: full_pair["resume-on-2"][0],
        3: _cluster(root, "three", 3, {"resume-on-3": {"level": "full", "restore_from": ckpt}})[
            "resume-on-3"
        ][0],
    }
    for workers, outcome in resumed.items():
        assert outcome.facts["first_step"] == 11
        assert outcome.facts["sharding"] == (None if workers == 1 else "full")
        np.testing.assert_allclose(
            outcome.facts["losses"], full_two.facts["losses"][10:], rtol=1e-5
        )
        # Only the last 14 steps' sums run in another order: measured 6e-8 apart.
        for got, want in zip(outcome.weights, full_two.weights):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        H.assert_weights_close(outcome.weights, reference.weights)
        if workers > 1:
            _check_bytes(outcome, "full", workers)


def test_optimizer_level_with_xla_on_two_workers(two_levels, reference):
    outcome = two_levels["optimizer2-jit"][0]
    H.assert_weights_close(outcome.weights, reference.weights)
    _check_bytes(outcome, "optimizer", 2)
