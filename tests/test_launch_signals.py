"""A stop signal after the last step ends a finished job with success, never as a failure or a
preemption to relaunch: in one small process (no TensorFlow), through the launcher, and under
``local_cluster --max_restarts=1`` with the real launch program (whose two workers' logs also
show that only the chief logs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from highnoon.distribute.errors import EXIT_RESTART

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "complete_signal_worker.py")
HARD_TIMEOUT = 150
_PYTHON_INFO = re.compile(r"^I\d{4} [\d:.]+ +\d+ \w+\.py:\d+\]")  # an absl INFO line


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=timeout,
    )


_PROGRAM = """
    import os, signal, time
    from highnoon.distribute.errors import EXIT_RESTART
    from highnoon.training import preemption

    def before(signum, frame):
        print("BEFORE", flush=True)
        os._exit(EXIT_RESTART)

    handler = preemption.exit_complete_on_signal("prog", before)
    signal.signal(signal.SIGTERM, handler)
    {body}
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    os._exit(3)
"""


def test_a_signal_after_a_completed_run_exits_0_and_says_the_run_is_complete():
    done = _python(_PROGRAM.format(body="with preemption.PreemptionWatcher(30): pass"))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "prog: SIGTERM after the run completed: the run is complete and saved; exiting with 0 "
        "(success, nothing to relaunch)"
    )
    assert "BEFORE" not in done.stdout


def test_a_signal_before_or_after_a_failed_run_takes_the_other_way():
    assert _python(_PROGRAM.format(body="pass")).stdout == "BEFORE\n"
    failed = """
    try:
        with preemption.PreemptionWatcher(30):
            raise RuntimeError("boom")
    except RuntimeError:
        pass"""
    done = _python(_PROGRAM.format(body=textwrap.indent(textwrap.dedent(failed), "    ")))
    assert (done.returncode, done.stdout) == (EXIT_RESTART, "BEFORE\n"), done.stderr


def test_a_signal_inside_train_after_its_last_step_is_no_preemption():
    done = _python(
        """
        import os, signal
        from highnoon.training import preemption
        with preemption.PreemptionWatcher(30) as watcher:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop has ended: nothing asks any more
        print(preemption.run_completed(), watcher.requested, flush=True)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True True\n"
    assert "SIGTERM arrived after the last step: the run is complete, nothing to stop or save" in (
        done.stderr
    )


@pytest.mark.slow
@pytest.mark.multiprocess
def test_signals_after_the_last_step_under_local_cluster_end_the_job_with_success(tmp_path):
    """Two workers of highnoon-train under ``local_cluster --max_restarts=1``: worker 1 gets
    SIGTERM once ``train()`` returned, the chief at interpreter exit. Both exit 0, the launcher
    reports no failure and relaunches nothing. Only the chief logs its progress and INFO lines;
    the other worker only warns."""
    data = tmp_path / "a.jsonl"
    data.write_text(
        "".join(json.dumps({"text": f"def f{i}(x): return x * {i}"}) + "\n" for i in range(32))
    )
    stages = [{"name": "a", "datasets": [str(data)], "epochs": 1}]
    model_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "highnoon.launch.local_cluster", "--num_workers=2",
        "--max_restarts=1", f"--timeout={HARD_TIMEOUT}", "--",
        sys.executable, WORKER, "--gin_file=runs/multiworker_test.gin",
        f"--model_dir={model_dir}", f"--gin_bindings=run_training.stages = {json.dumps(stages)}",
        f"--gin_bindings=Trainer.data_cache_dir = {json.dumps(str(tmp_path / 'cache'))}",
    ]  # fmt: skip
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        CUDA_VISIBLE_DEVICES="-1",
        TF_CPP_MIN_LOG_LEVEL="2",
        HN_SIGNAL_AFTER="1:returned,0:exit",
    )
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=HARD_TIMEOUT + 30
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr
    assert "failed" not in done.stderr and "relaunch" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert "[worker 1] SIGTERM-SELF at=returned" in lines
    assert (
        "[worker 1] highnoon-train: SIGTERM after the run completed: the run is complete and "
        "saved; exiting with 0 (success, nothing to relaunch)"
    ) in lines
    assert "[worker 0] SIGTERM-SELF at=exit" in lines  # ignored: the chief exits 0 as well
    assert not any("before training began" in line or "restart code" in line for line in lines)
    assert '[worker 0]   "total_steps": 8,' in lines  # the chief's summary: trained once
    # The chief logs (its progress lines and Python INFO lines); the other worker only warns.
    chief, other = ([line[len(f"[worker {i}] ") :] for line in lines
                     if line.startswith(f"[worker {i}] ")] for i in (0, 1))  # fmt: skip
    assert "stage 'a': 1 epoch(s), 8 steps" in "\n".join(chief)
    assert [line for line in chief if _PYTHON_INFO.match(line)]
    assert [line for line in other if _PYTHON_INFO.match(line)] == []
    assert not [line for line in other if "stage 'a'" in line or "total_steps" in line]
    for line in lines:  # TensorFlow's INFO lines are off (--logger_levels)
        assert "Collective all_reduce tensors" not in line and "Path not found" not in line
    summary = json.loads((model_dir / "summary.json").read_text())
    assert summary["total_steps"] == 8 and summary["goodput"]["restarts"] == 0
