"""Multi-process tests: real MultiWorkerMirroredStrategy clusters of 2 workers on 127.0.0.1.

Every subprocess runs under a hard kill timeout, so a hang fails the test instead of CI.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from highnoon.launch.local_cluster import free_ports, run_local_cluster, worker_tf_configs

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = [sys.executable, os.path.join(ROOT, "tests", "workers", "mwms_worker.py")]
HARD_TIMEOUT = 120


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="1")
    env.update(extra)
    return env


def _quiet(line: str) -> None:
    pass


def test_two_workers_train_to_identical_weights():
    result = run_local_cluster([*WORKER, "train"], 2, timeout=HARD_TIMEOUT, env=_env(), echo=_quiet)
    assert result.exit_codes == [0, 0], result.outputs
    sums = [re.findall(r"CHECKSUM (\S+)", out) for out in result.outputs]
    assert len(sums[0]) == 1 and sums[0] == sums[1]
    # Both replicas took part, and equal parts pass verify_consistent.
    assert all("READY replicas=2" in out for out in result.outputs)
    assert all("VERIFY OK" in out for out in result.outputs)


def test_verify_consistent_mismatch_fails_on_every_worker():
    result = run_local_cluster(
        [*WORKER, "verify"],
        2,
        timeout=HARD_TIMEOUT,
        env=_env(),
        extra_env_per_worker=[{"HN_DATA": "shard-v1"}, {"HN_DATA": "shard-v2"}],
        echo=_quiet,
        grace=60,
    )
    # Each worker fails by itself (exit 1 from the exception), none is killed by the harness.
    assert result.exit_codes == [1, 1], result.outputs
    for out in result.outputs:
        assert "ConfigMismatchError: hosts disagree on 'data'" in out
        assert "every host must run the same gin config, data and seed" in out
        assert "VERIFY OK" not in out


def test_missing_peer_exits_naming_the_task():
    ports = free_ports(2)
    config = worker_tf_configs(ports)[0]
    env = _env(TF_CONFIG=json.dumps(config), HN_PEER_TIMEOUT="2", CUDA_VISIBLE_DEVICES="-1")
    start = time.monotonic()
    proc = subprocess.run(
        [*WORKER, "train"], env=env, capture_output=True, text=True, timeout=HARD_TIMEOUT
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 1  # MissingPeersError from the rendezvous (before TF joins)
    assert "MissingPeersError: cluster did not form within 2 s" in proc.stderr
    assert f"missing peers (nothing listening): worker:1 at 127.0.0.1:{ports[1]}" in proc.stderr
    assert "READY" not in proc.stdout
    assert elapsed < HARD_TIMEOUT


def test_peer_killed_mid_run_ends_survivor_with_peer_failure():
    result = run_local_cluster(
        [*WORKER, "die_mid"],
        2,
        timeout=HARD_TIMEOUT,
        env=_env(HN_COLLECTIVE_TIMEOUT="30"),
        echo=_quiet,
        grace=60,  # the survivor must fail by itself, not be killed by the harness
    )
    assert not result.timed_out, result.outputs
    assert result.exit_codes[1] == -9 and "DYING" in result.outputs[1]
    assert result.exit_codes[0] == 76  # EXIT_PEER_FAILURE from peer_failure_guard
    assert "PeerFailureError: peer failure: another task of the cluster died" in result.outputs[0]
