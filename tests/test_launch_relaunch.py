"""The launchers relaunch a preempted job (exit code 42) up to a limit and stop on anything else:
local_cluster with real processes, tpu_pod.sh's remote loop run locally."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from highnoon.distribute.errors import EXIT_RESTART
from highnoon.launch import local_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _counting_command(counter: str, exits: list[int]) -> list[str]:
    """A worker whose k-th start (counted per worker) exits with ``exits[k]``."""
    script = (
        "import json, os, sys\n"
        "task = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
        f"path = {counter!r} + str(task)\n"
        "n = int(open(path).read()) if os.path.exists(path) else 0\n"
        "open(path, 'w').write(str(n + 1))\n"
        f"codes = {exits!r}\n"
        "sys.exit(codes[min(n, len(codes) - 1)])\n"
    )
    return [sys.executable, "-c", script]


def test_local_cluster_relaunches_on_the_restart_code_until_success(tmp_path):
    counter = str(tmp_path / "count")
    attempts = local_cluster.run_with_restarts(
        _counting_command(counter, [EXIT_RESTART, EXIT_RESTART, 0]),
        2,
        max_restarts=3,
        echo=lambda line: None,
        timeout=60,
    )
    assert [a.exit_code for a in attempts] == [EXIT_RESTART, EXIT_RESTART, 0]


def test_local_cluster_stops_at_max_restarts_and_on_other_failures(tmp_path):
    attempts = local_cluster.run_with_restarts(
        _counting_command(str(tmp_path / "a"), [EXIT_RESTART]),
        2,
        max_restarts=1,
        echo=lambda line: None,
        timeout=60,
    )
    assert [a.exit_code for a in attempts] == [EXIT_RESTART, EXIT_RESTART]
    attempts = local_cluster.run_with_restarts(
        _counting_command(str(tmp_path / "b"), [3, 0]),
        2,
        max_restarts=5,
        echo=lambda line: None,
        timeout=60,
    )
    assert [a.exit_code for a in attempts] == [3]


def test_local_cluster_refuses_a_negative_max_restarts(capsys):
    assert local_cluster.main(["--max_restarts=-1", "--", "true"]) == 2
    assert "max_restarts=-1 must be an integer >= 0" in capsys.readouterr().err


def _sigterm_to_the_launcher(worker_exit: int) -> tuple[int, str]:
    """A 2-worker ``local_cluster`` (``--max_restarts=3``) whose workers exit ``worker_exit`` on
    SIGTERM; the launcher gets SIGTERM once both are up. Its exit code and stderr."""
    worker = (
        "import signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: sys.exit({worker_exit}))\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "highnoon.launch.local_cluster", "--num_workers=2",
         "--max_restarts=3", "--timeout=60", "--", sys.executable, "-c", worker],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    seen = 0
    for line in proc.stdout:
        seen += "up" in line
        if seen == 2:
            break
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_a_sigterm_to_the_launcher_reaches_the_workers():
    """The launcher passes SIGTERM on; workers that exit 42 make it exit 42 (no relaunch)."""
    code, err = _sigterm_to_the_launcher(EXIT_RESTART)
    assert code == EXIT_RESTART, err
    assert "SIGTERM: passed on to the workers" in err and "relaunch" not in err


def test_a_sigterm_to_the_launcher_after_the_run_completed_exits_0():
    """The workers had finished (they exit 0 on the signal): no restart code, no relaunch."""
    code, err = _sigterm_to_the_launcher(0)
    assert code == 0, err
    assert err.strip().splitlines()[-1] == (
        "local_cluster: SIGTERM: passed on to the workers; every worker exited 0, the run is "
        "complete: exit 0"
    )
    assert "relaunch" not in err and "failed" not in err


def _remote_command(max_restarts: int, command: str) -> str:
    dry = subprocess.run(
        [os.path.join(ROOT, "launch", "tpu_pod.sh"), "--tpu=p", "--zone=z", "--project=q",
         f"--max_restarts={max_restarts}", "--workdir", ROOT, "--dry-run", "--", "sh", "-c",
         command],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    argv = shlex.split(dry.stdout)
    return argv[argv.index("--command") + 1]


@pytest.mark.parametrize(
    ("codes", "max_restarts", "final", "runs"),
    [("42 42 0", 3, 0, 3), ("42 42 42 42 42", 2, 42, 3), ("42 7 0", 3, 7, 2)],
)
def test_tpu_pod_remote_loop_relaunches_on_42_only(tmp_path, codes, max_restarts, final, runs):
    counter = tmp_path / "n"
    counter.write_text("0")
    command = f"n=$(cat {counter}); echo $((n + 1)) > {counter}; set -- {codes}; shift $n; exit $1"
    remote = _remote_command(max_restarts, command)
    done = subprocess.run(["bash", "-c", remote], capture_output=True, text=True, timeout=60)
    assert done.returncode == final, done.stderr
    assert int(counter.read_text()) == runs


def test_tpu_pod_refuses_a_bad_max_restarts():
    done = subprocess.run(
        [os.path.join(ROOT, "launch", "tpu_pod.sh"), "--tpu=p", "--zone=z", "--project=q",
         "--max_restarts=-1", "--dry-run", "--", "true"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 2 and "--max_restarts=-1 must be an integer >= 0" in done.stderr


def _fake_slurm(tmp_path, codes: str, time_left: str) -> dict[str, str]:
    """A PATH with stub srun/squeue/scontrol: ``srun`` runs its command (options dropped),
    whose k-th run exits with the k-th of ``codes``; ``squeue`` reports ``time_left``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "srun": 'while [[ "$1" == --* ]]; do shift; done; exec "$@"',
        "squeue": f'echo "{time_left}"',
        "scontrol": f'echo "$@" >> {tmp_path}/scontrol.log',
        "fake-python": (
            f"n=$(cat {tmp_path}/n 2>/dev/null || echo 0); echo $((n + 1)) > {tmp_path}/n; "
            f"set -- {codes}; shift $n; exit $1"
        ),
    }
    for name, body in stubs.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body + "\n")
        path.chmod(0o755)
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="77",
                HIGHNOON_PYTHON="fake-python", HIGHNOON_DIR=str(tmp_path))  # fmt: skip


@pytest.mark.parametrize(
    ("codes", "time_left", "final", "runs", "requeued"),
    [
        ("42 42 0", "1:00:00", 0, 3, False),  # preempted twice, relaunched, done
        ("42 42 42 42 42", "1-00:00:00", 42, 4, False),  # HIGHNOON_MAX_RESTARTS=3 reached
        ("42 0", "01:30", 0, 1, True),  # stopped by the time limit: requeue, no relaunch
        ("3 0", "1:00:00", 3, 1, False),  # a real failure: not relaunched
    ],
)
def test_slurm_script_relaunches_or_requeues_on_42(tmp_path, codes, time_left, final, runs,
                                                   requeued):  # fmt: skip
    script = os.path.join(ROOT, "launch", "slurm.sbatch")
    env = _fake_slurm(tmp_path, codes, time_left)
    done = subprocess.run(["bash", script, "--model_dir=x"], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == final, done.stderr
    assert int((tmp_path / "n").read_text()) == runs
    log = tmp_path / "scontrol.log"
    assert (log.exists() and log.read_text().strip() == "requeue 77") is requeued
