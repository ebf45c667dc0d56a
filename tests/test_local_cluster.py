"""highnoon.launch.local_cluster with tiny Python workers (no TensorFlow): prefixes, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from highnoon.launch.local_cluster import (
    EXIT_TIMEOUT,
    free_ports,
    run_local_cluster,
    worker_tf_configs,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARD_TIMEOUT = 60


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_worker_tf_configs_and_free_ports():
    ports = free_ports(3)
    assert len(set(ports)) == 3
    configs = worker_tf_configs(ports)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert configs[2]["cluster"]["worker"] == [f"127.0.0.1:{p}" for p in ports]


def test_outputs_prefixes_and_per_worker_env():
    lines: list[str] = []
    code = (
        "import json, os; c = json.loads(os.environ['TF_CONFIG']);"
        "print('task', c['task']['index'], os.environ['CUDA_VISIBLE_DEVICES'], os.environ['X'])"
    )
    result = run_local_cluster(
        _py(code),
        2,
        timeout=HARD_TIMEOUT,
        extra_env_per_worker=[{"X": "a"}, {"X": "b"}],
        echo=lines.append,
    )
    assert result.exit_codes == [0, 0] and result.exit_code == 0
    assert result.outputs == ["task 0 -1 a\n", "task 1 -1 b\n"]
    assert sorted(lines) == ["[worker 0] task 0 -1 a\n", "[worker 1] task 1 -1 b\n"]


def test_first_failure_kills_the_others():
    code = (
        "import json, os, sys, time\n"
        "i = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
        "if i == 1: print('failing', flush=True); sys.exit(3)\n"
        "time.sleep(50)\n"
    )
    result = run_local_cluster(_py(code), 3, timeout=HARD_TIMEOUT, echo=lambda s: None)
    assert result.first_failure == 1
    assert result.exit_codes == [-9, 3, -9]
    assert result.exit_code == 3 and not result.timed_out
    assert result.outputs[1] == "failing\n"


def test_timeout_kills_everything():
    result = run_local_cluster(_py("import time; time.sleep(50)"), 2, timeout=1.0, echo=print)
    assert result.timed_out and result.exit_codes == [-9, -9]
    assert result.exit_code == EXIT_TIMEOUT


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"^num_workers=0 must be an integer >= 1$"):
        run_local_cluster(["true"], 0)
    with pytest.raises(ValueError, match=r"^timeout=0 must be a finite number > 0.0 or None$"):
        run_local_cluster(["true"], 1, timeout=0)
    with pytest.raises(ValueError, match=r"^grace=-1 must be a finite number >= 0.0$"):
        run_local_cluster(["true"], 1, grace=-1)
    with pytest.raises(ValueError, match="extra_env_per_worker has 1 entries, expected"):
        run_local_cluster(["true"], 2, extra_env_per_worker=[{}])


def test_cli_returns_first_failure_code_with_prefixes():
    code = (
        "import json,os,sys; i=json.loads(os.environ['TF_CONFIG'])['task']['index']; "
        "print('hi', i); sys.exit(5 if i else 0)"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.local_cluster",
            "--num_workers=2",
            "--timeout=30",
            "--grace=20",
            "--",
            *_py(code),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=HARD_TIMEOUT,
    )
    assert proc.returncode == 5
    assert "[worker 0] hi 0\n" in proc.stdout and "[worker 1] hi 1\n" in proc.stdout
    assert "worker 1 failed with exit code 5" in proc.stderr
