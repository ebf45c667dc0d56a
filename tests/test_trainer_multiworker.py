"""The Trainer's multi-host promises, proved with real worker processes on 127.0.0.1.

Each test starts real ``MultiWorkerMirroredStrategy`` clusters (``launch.local_cluster``) whose
workers run the real ``Trainer`` (``tests/workers/train_worker.py``) on a one-block nano model
and tiny JSONL data, and checks what the README promises for several hosts:

* N workers train the same curriculum as one worker with the same global batch: every step's
  rows, concatenated in host order, are the one-worker global batch; the weights are bitwise
  identical on every worker and equal to the one-worker run's to float tolerance.
* Elastic resume: a checkpoint written by 1 worker continues on 2, theirs on 1 again, to the
  global batches and weights of an uninterrupted run.
* A worker killed with SIGKILL ends the others with the peer-failure error, without a
  checkpoint after the failure; the relaunched job resumes from the last complete checkpoint.
* A worker with a different learning rate stops every worker with ``ConfigMismatchError``
  before the first step.

Every cluster runs under a hard kill timeout, so a hang fails the test instead of CI. Runs with
the same worker count that end cleanly share one cluster (the worker trains its list of runs one
after the other, each with a fresh model and Trainer): a cluster start, with every worker
importing TensorFlow and joining the strategy, costs more than a nano run. A run that kills its
process, or needs another cluster's checkpoint, is started when its fixture is first needed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import sys
import tempfile

import numpy as np
import pytest

from highnoon.launch.local_cluster import run_local_cluster
from highnoon.training.checkpointing import checkpoint_candidates
from tests.multiworker_helpers import (
    HARD_TIMEOUT,
    ROOT,
    TOTAL_STEPS,
    Outcome,
    assert_bitwise_equal,
    assert_hosts_split_the_global_batch,
    assert_weights_close,
    global_rows,
    make_workdir,
    run_cluster,
    run_ok,
    run_ok_together,
    write_spec,
)

# A test's first use of a shared cluster pays for all its runs (at most five, each under
# HARD_TIMEOUT): the session's 300 s per test does not cover that on loaded cores.
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict[str, str]:
    """Data and token-store cache shared by every run of this module."""
    return make_workdir(tmp_path_factory.mktemp("multiworker"))


def _warm_spec(workdir, name: str) -> str:
    """Stage "first" grows its rows 8 -> 16 -> 32 over 8 steps; stage "second" trains at 32."""
    warm = {"seq_length_warmup_steps": 8, "seq_length_warmup_start": 8}
    stages = [["first", [workdir["a"]], 2, warm], ["second", [workdir["b"]], 1, {}]]
    return write_spec(workdir, name, stages=stages)


def _packed_spec(workdir, name: str) -> str:
    return write_spec(workdir, name, trainer_extra={"pack": True})


def _saved(checkpoint_dir: str) -> list[str]:
    """The checkpoints in ``checkpoint_dir`` now, newest first (before a later run adds more)."""
    return [os.path.basename(p) for p in checkpoint_candidates(checkpoint_dir)]


@pytest.fixture(scope="module")
def one_worker(workdir) -> dict[str, list[Outcome]]:
    """Every one-worker run that needs no other run first, in one cluster (one start for five
    runs): the uninterrupted reference, the same with a global batch of 6 (which 1, 2 and 3
    hosts divide), the warm-up and packed references, and the elastic test's first leg."""
    specs = {
        "reference": write_spec(workdir, "reference"),
        "reference_six": write_spec(workdir, "six_reference", batch_size=6),
        "warm": _warm_spec(workdir, "warm-one"),
        "packed": _packed_spec(workdir, "packed-one"),
        "elastic": write_spec(workdir, "elastic", stop_at_step=5),
    }
    runs = dict(zip(specs, run_ok_together(list(specs.values()), 1)))
    runs["elastic-saved"] = _saved(os.path.join(workdir["root"], "elastic", "ckpt"))
    return runs


@pytest.fixture(scope="module")
def two_workers(workdir, one_worker) -> dict[str, list[Outcome]]:
    """The two-worker runs that end cleanly, in one cluster: the warm-up and packed runs, and
    the elastic test's second leg (from the first leg's checkpoint, to step 14)."""
    ckpt = os.path.join(workdir["root"], "elastic", "ckpt")
    specs = {
        "warm": _warm_spec(workdir, "warm-two"),
        "packed": _packed_spec(workdir, "packed-two"),
        "elastic": write_spec(workdir, "elastic-2", checkpoint_dir=ckpt, stop_at_step=14),
    }
    return dict(zip(specs, run_ok_together(list(specs.values()), 2)))


@pytest.fixture(scope="module")
def reference(one_worker) -> list[Outcome]:
    """The uninterrupted one-worker run every other run is compared with."""
    outcomes = one_worker["reference"]
    assert outcomes[0].logged_steps() == list(range(1, TOTAL_STEPS + 1))
    return outcomes


@pytest.fixture(scope="module")
def reference_six(one_worker) -> list[Outcome]:
    """One worker with a global batch of 6, which 1, 2 and 3 hosts divide."""
    return one_worker["reference_six"]


@pytest.fixture(scope="module")
def killed(workdir):
    """ZeRO-1 on 2 workers (global batch 6), worker 1 SIGKILLed at step 6: the cluster result
    and the checkpoints it left."""
    spec = write_spec(
        workdir, "zero1", batch_size=6, kill_at_step=[1, 6], trainer_extra={"sharding": "optimizer"}
    )
    result = run_cluster(spec, 2, worker_env=[{"HN_COLLECTIVE_TIMEOUT": "60"}] * 2, grace=100)
    return result, _saved(os.path.join(workdir["root"], "zero1", "ckpt"))


@pytest.fixture(scope="module")
def three_workers(workdir, killed) -> dict[str, list[Outcome]]:
    """The three-worker runs, in one cluster: the killed job relaunched from its last
    checkpoint (sharded 3 ways), and a fresh unsharded run with a global batch of 6."""
    ckpt = os.path.join(workdir["root"], "zero1", "ckpt")
    specs = {
        "relaunched": write_spec(workdir, "zero1-relaunch", checkpoint_dir=ckpt, batch_size=6,
                                 trainer_extra={"sharding": "optimizer"}),
        "three": write_spec(workdir, "three", batch_size=6),
    }  # fmt: skip
    return dict(zip(specs, run_ok_together(list(specs.values()), 3)))


# -- the tests --------------------------------------------------------------------------------
def test_reference_run_feeds_the_planned_curriculum(reference):
    rows = global_rows([reference])
    assert sorted(rows) == list(range(1, TOTAL_STEPS + 1))
    assert all(batch.shape == (4,) for batch in rows.values())
    # Stage "first" feeds store a's rows (40 samples), stage "second" store b's (24 samples).
    stage_one = np.concatenate([rows[s] for s in range(3, 13)])
    assert sorted(stage_one.tolist()) == list(range(40))
    assert sorted(np.concatenate([rows[s] for s in range(13, 19)]).tolist()) == list(range(24))


def test_two_workers_match_one_worker_through_a_sequence_length_warmup(
    workdir, one_worker, two_workers
):
    """Stage "first" grows its rows 8 -> 16 -> 32 over 8 steps (changes at steps 3 and 8, one
    inside each epoch), stage "second" trains at the full 32: each length is its own pipeline,
    and two hosts still split every global batch of the one-host run, train bitwise alike, log
    its global losses and match its weights. (One pair of runs proves both: the steps after the
    warm-up are the plain case, so no separate pair without a warm-up is started.)"""
    single, outcomes = one_worker["warm"], two_workers["warm"]
    assert sorted(single[0].rows()) == [
        "rows_s0_e0_from0", "rows_s0_e1_from0", "rows_s0_e1_from1", "rows_s0_e1_from6",
        "rows_s1_e0_from0",
    ]  # fmt: skip
    assert [e["seq_length"] for e in single[0].events("log")] == (
        [8] * 2 + [8, 16, 16, 16, 16, 16] + [32] * 10
    )
    assert [o.logged_steps() for o in outcomes] == [list(range(1, TOTAL_STEPS + 1))] * 2
    assert_hosts_split_the_global_batch(outcomes, single[0])
    assert_bitwise_equal(outcomes)
    assert_weights_close(outcomes[0].weights, single[0].weights)
    # The step losses are the global ones on every worker, equal to the one-worker run's.
    losses = [[e["step_loss"] for e in o.events("log")] for o in [*outcomes, *single]]
    assert losses[0] == losses[1]
    np.testing.assert_allclose(losses[0], losses[2], rtol=2e-5, atol=2e-5)
    # The chief wrote the checkpoints; worker 1 saved to a temporary dir that it removed.
    ckpt = os.path.join(workdir["root"], "warm-two", "ckpt")
    assert os.path.basename(checkpoint_candidates(ckpt)[0]) == f"ckpt-{TOTAL_STEPS}"
    key = hashlib.sha256(os.path.abspath(ckpt).encode()).hexdigest()[:10]
    assert glob.glob(os.path.join(tempfile.gettempdir(), f"highnoon-worker-1-{key}-*")) == []


def test_two_packed_workers_match_one_packed_worker(one_worker, two_workers):
    """With packing, each step's rows are cut from one global packing: the same samples and
    (with segment masking) the same loss and weights for any host count."""
    single, outcomes = one_worker["packed"], two_workers["packed"]
    steps = single[0].logged_steps()
    assert steps and [o.logged_steps() for o in outcomes] == [steps] * 2
    assert_bitwise_equal(outcomes)
    assert_weights_close(outcomes[0].weights, single[0].weights)
    losses = [[e["step_loss"] for e in o.events("log")] for o in [outcomes[0], single[0]]]
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-5, atol=2e-5)


def test_a_sigkilled_worker_ends_the_job_and_a_relaunch_resumes_sharded_on_three_workers(
    workdir, reference_six, killed, three_workers
):
    """ZeRO-1 on 2 workers, worker 1 SIGKILLed inside stage one: the survivor stops by itself
    with the peer-failure error and writes nothing after the failure. The job relaunched on 3
    workers (sharded 3 ways) from the last checkpoint ends with the weights of an uninterrupted
    one-worker run (global batch 6, which 1, 2 and 3 hosts divide). (The kill is the same with
    or without sharding; an unsharded resume on another worker count is the elastic test's.)"""
    single, (result, saved) = reference_six, killed
    assert not result.timed_out, result.outputs
    assert result.exit_codes[1] == -9 and "DYING" in result.outputs[1]
    # The survivor stops by itself (not killed by the harness) with the peer-failure error.
    assert result.exit_codes[0] == 76, result.outputs[0]  # EXIT_PEER_FAILURE
    assert "PeerFailureError: peer failure: another task of the cluster died" in result.outputs[0]
    assert "DONE" not in result.outputs[0]
    # Nothing was written after the failure: the newest checkpoint is the step-4 one.
    assert saved == ["ckpt-4"]
    relaunched = three_workers["relaunched"]
    for outcome in relaunched:
        (begin,) = outcome.events("train_begin")
        assert begin["start_step"] == 4 and begin["num_replicas"] == 3
        assert outcome.logged_steps() == [s for s in single[0].logged_steps() if s > 4]
    assert_bitwise_equal(relaunched)
    assert_weights_close(relaunched[0].weights, single[0].weights)


def test_three_workers_match_one_worker_with_a_global_batch_of_six(reference_six, three_workers):
    """3 hosts need a global batch divisible by 3: both runs use 6, everything else as above."""
    single, outcomes = reference_six, three_workers["three"]
    steps = single[0].logged_steps()
    assert [o.logged_steps() for o in outcomes] == [steps] * 3
    assert_hosts_split_the_global_batch(outcomes, single[0])
    assert_bitwise_equal(outcomes)
    assert_weights_close(outcomes[0].weights, single[0].weights)


def test_elastic_resume_one_worker_then_two_then_one(workdir, reference, one_worker, two_workers):
    """1 worker to step 5, 2 workers on from its checkpoint to step 14, 1 worker to the end:
    the same global batches at every step and the weights of the uninterrupted run."""
    ckpt = os.path.join(workdir["root"], "elastic", "ckpt")
    first, second = one_worker["elastic"], two_workers["elastic"]
    assert first[0].facts["stopped"] and first[0].logged_steps() == list(range(1, 6))
    # The stop saved a final checkpoint at step 5 (after the periodic one at step 4).
    assert one_worker["elastic-saved"] == ["ckpt-5", "ckpt-4"]
    for outcome in second:
        (begin,) = outcome.events("train_begin")
        assert begin["start_step"] == 5 and begin["num_replicas"] == 2
        assert outcome.facts["stopped"] and outcome.logged_steps() == list(range(6, 15))
        # Mid-epoch resume: epoch 1 of stage "first" continues at its 4th step.
        assert sorted(outcome.rows()) == ["rows_s0_e1_from3", "rows_s1_e0_from0"]
    assert_bitwise_equal(second)
    assert os.path.basename(checkpoint_candidates(ckpt)[0]) == "ckpt-14"

    third = run_ok(write_spec(workdir, "elastic-3", checkpoint_dir=ckpt), 1)
    (begin,) = third[0].events("train_begin")
    assert begin["start_step"] == 14 and begin["num_replicas"] == 1
    assert third[0].logged_steps() == list(range(15, TOTAL_STEPS + 1))
    assert sorted(third[0].rows()) == ["rows_s1_e0_from2"]

    resumed = global_rows([first, second, third])
    want = global_rows([reference])
    assert sorted(resumed) == sorted(want)
    for step, batch in want.items():
        np.testing.assert_array_equal(resumed[step], batch, err_msg=f"step {step}")
    assert_weights_close(third[0].weights, reference[0].weights)


def test_workers_with_other_gin_bindings_stop_all_before_the_first_step(workdir):
    """Through the real launch program, 3 workers: worker 1 gets another Trainer setting that
    shapes the stream (part of the config and of every stage's stream settings), worker 2
    another launch setting outside the Trainer (caught through gin's operative config). Every
    worker (the odd ones and the plain one alike) stops with ConfigMismatchError naming the
    parts and the groups of replicas that agree. (One cluster shows both kinds of binding.)"""
    num_workers = 3
    odd_flags = ["--gin.Trainer.initial_fraction=0.5", "--gin.Trainer.checkpoint_interval=2"]
    model_dir = os.path.join(workdir["root"], f"mismatch{num_workers}")
    stages = [{"name": "first", "datasets": [workdir["a"]], "epochs": 2}]
    script = (
        'exec "$0" -m launch.train --gin_file=runs/multiworker_test.gin --model_dir="$1" '
        '--gin_bindings="$2" --gin_bindings="$3" --gin_bindings="$4" $HN_EXTRA_FLAGS'
    )
    command = [
        "sh",
        "-c",
        script,
        sys.executable,
        model_dir,
        f"run_training.stages = {json.dumps(stages)}",
        f"Trainer.data_cache_dir = {json.dumps(workdir['cache'])}",
        f"Trainer.batch_size = {2 * num_workers}",  # divides across the replicas
    ]
    extra = [{"HN_EXTRA_FLAGS": flag} for flag in ["", *odd_flags]]
    result = run_local_cluster(
        command,
        num_workers,
        timeout=HARD_TIMEOUT,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="1"),
        extra_env_per_worker=extra,
        echo=lambda line: None,
        cwd=ROOT,
        grace=100,
    )
    assert not result.timed_out, result.outputs
    # Each worker fails by itself with the same verdict (exit 1 from the exception).
    assert result.exit_codes == [1] * num_workers, result.outputs
    for out in result.outputs:
        found = re.findall(r"ConfigMismatchError: hosts disagree on (.*?) \(fingerprints", out)
        assert found == ["'config', 'curriculum'"], out
        (config,) = re.findall(r"'config': (replicas .*?) \|", out)
        assert re.findall(r"replicas (\[.*?\]) have", config) == ["[0]", "[1]", "[2]"]
        (curriculum,) = re.findall(r"'curriculum': (replicas .*?)\); every host", out)
        assert re.findall(r"replicas (\[.*?\]) have", curriculum) == ["[0, 2]", "[1]"]
    # Stopped before the first step: no checkpoint, no training summary.
    assert checkpoint_candidates(model_dir) == []
    assert not os.path.exists(os.path.join(model_dir, "summary.json"))
