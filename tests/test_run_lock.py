"""One run per model_dir: ``highnoon.training.run_lock.RunLock``.

A holder process and the test process contend for one directory (flock on a local disk, and
the lease through ``tf.io.gfile`` on a local path); the lease's timing logic runs on ``ram://``
with a fake clock.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from highnoon.training.run_lock import (
    LOCK_FILE,
    ModelDirLockedError,
    RunLock,
    RunLockLostError,
)
from highnoon.utils import processes
from highnoon.utils.files import atomic_write_text
from highnoon.utils.validation import InvalidArgumentError, InvalidArgumentTypeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = [sys.executable, os.path.join(ROOT, "tests", "workers", "lock_worker.py")]
HARD_TIMEOUT = 120


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")


def _hold(model_dir: str, mode: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [*WORKER, model_dir, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    line = proc.stdout.readline().strip()
    assert line.startswith("HELD "), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, int(line.split()[1])


def _contend(tmp_path, mode: str, caplog) -> None:
    """A holder process keeps the lock; this process (another process, already running, so the
    lease mode's TensorFlow is not imported twice more) is refused, then, once the holder is
    SIGKILLed, takes the lock over with a warning naming the gone holder."""
    caplog.set_level(logging.WARNING)
    model_dir = str(tmp_path / "run")

    def contender() -> RunLock:  # the worker's settings
        return RunLock(
            model_dir, mode=mode, lease_seconds=30.0, heartbeat_seconds=0.5, settle_seconds=0.2
        )

    holder, holder_pid = _hold(model_dir, mode)
    try:
        with pytest.raises(ModelDirLockedError) as refused:
            contender().acquire()
        assert (
            f"model_dir={model_dir!r} is in use by another run "
            f"(host={processes.hostname()}, pid={holder_pid}, since 20"
        ) in str(refused.value)
        assert f"lock file {model_dir}/{LOCK_FILE}). Two runs in one model_dir" in str(
            refused.value
        )
        assert caplog.records == []

        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=HARD_TIMEOUT)  # reaped: the pid is gone
        with contender() as took_over:
            assert took_over.held
    finally:
        holder.kill()
        holder.wait(timeout=HARD_TIMEOUT)
    assert not took_over.held
    (warning,) = [record.getMessage() for record in caplog.records]
    assert warning.startswith(
        f"model_dir={model_dir!r}: taking over the lock of a run that is gone "
        f"(host={processes.hostname()}, pid={holder_pid}, since 20"
    )


@pytest.mark.multiprocess
def test_two_processes_flock_second_refuses_killed_holder_is_taken_over(tmp_path, caplog):
    _contend(tmp_path, "flock", caplog)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_lease_second_refuses_killed_holder_is_taken_over(tmp_path, caplog):
    pytest.importorskip("tensorflow")
    _contend(tmp_path, "lease", caplog)


def test_released_on_exit_also_on_exceptions(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    model_dir = str(tmp_path / "run")
    with pytest.raises(ZeroDivisionError), RunLock(model_dir) as lock:
        assert lock.held
        with pytest.raises(ModelDirLockedError, match=f"pid={os.getpid()}, since 20"):
            RunLock(model_dir).acquire()  # a second holder, even in this process
        1 / 0  # noqa: B018
    assert not lock.held
    assert os.path.getsize(os.path.join(model_dir, LOCK_FILE)) == 0  # clean release
    with RunLock(model_dir) as again:
        with open(os.path.join(model_dir, LOCK_FILE)) as handle:
            record = json.load(handle)
        assert record["pid"] == os.getpid() and record["run_id"] == again.record["run_id"]
    assert caplog.records == []  # nothing was taken over


def test_deleted_flock_file_is_noticed_by_check(tmp_path):
    with RunLock(str(tmp_path)) as lock:
        lock.check()
        os.remove(os.path.join(tmp_path, LOCK_FILE))
        with pytest.raises(RunLockLostError, match="was deleted or replaced while this run held"):
            lock.check()


def test_arguments_are_validated(tmp_path):
    with pytest.raises(InvalidArgumentTypeError, match="model_dir=None must be a non-empty string"):
        RunLock(None)
    with pytest.raises(InvalidArgumentError, match="mode='bogus' must be one of"):
        RunLock(str(tmp_path), mode="bogus")
    with pytest.raises(InvalidArgumentError, match=r"heartbeat_seconds=200\.0 must be a finite"):
        RunLock(str(tmp_path), mode="lease", lease_seconds=300, heartbeat_seconds=200.0)
    with pytest.raises(InvalidArgumentError, match="mode='flock' needs a local model_dir"):
        RunLock("gs://bucket/run", mode="flock")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _lease(model_dir: str, clock: FakeClock, **kwargs) -> RunLock:
    kwargs = {"lease_seconds": 60.0, "start_heartbeat": False, **kwargs}
    return RunLock(model_dir, clock=clock, sleep=clock.sleep, **kwargs)


@pytest.fixture
def ram_dir(request):
    tf = pytest.importorskip("tensorflow")
    path = f"ram://highnoon_run_lock/{request.node.name}"
    yield path
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)


def test_lease_refuses_a_live_holder_and_takes_over_an_expired_one(ram_dir, caplog):
    caplog.set_level(logging.WARNING)
    clock = FakeClock()
    first = _lease(ram_dir, clock).acquire()
    assert first.mode == "lease"
    clock.now += 50
    first.heartbeat()
    clock.now += 50  # 50 s since the last heartbeat: still live
    with pytest.raises(ModelDirLockedError, match=f"pid={os.getpid()}, since "):
        _lease(ram_dir, clock).acquire()

    clock.now += 11  # 61 s since the last heartbeat: stale
    second = _lease(ram_dir, clock).acquire()
    assert [r.getMessage() for r in caplog.records] == [
        f"model_dir={ram_dir!r}: taking over the lock of a run that is gone "
        f"(host={processes.hostname()}, pid={os.getpid()}, since "
        "1970-01-12T13:46:40Z): its last heartbeat was 61 s ago (lease 60 s)"
    ]
    first.heartbeat()  # the old holder notices at its next heartbeat
    with pytest.raises(
        RunLockLostError, match=r"now names host=.*, pid=\d+, since 1970-01-12T13:48"
    ):
        first.check()
    first.release()  # does not delete the new holder's lease
    second.check()
    second.release()
    import tensorflow as tf

    assert not tf.io.gfile.exists(f"{ram_dir}/{LOCK_FILE}")


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(ram_dir, caplog):
    import tensorflow as tf

    caplog.set_level(logging.WARNING)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=HARD_TIMEOUT)
    clock = FakeClock()
    tf.io.gfile.makedirs(ram_dir)
    lease = {
        "host": processes.hostname(),
        "pid": dead.pid,
        "since": "2030-01-01T00:00:00Z",
        "heartbeat_unix": clock.now,  # fresh
        "lease_seconds": 60.0,
        "run_id": "x",
    }
    with tf.io.gfile.GFile(f"{ram_dir}/{LOCK_FILE}", "w") as handle:
        handle.write(json.dumps(lease))
    with _lease(ram_dir, clock) as lock:
        assert lock.held
    assert f"its process (pid {dead.pid} on this host) is gone" in caplog.records[0].getMessage()


def test_lease_race_the_last_writer_wins_the_other_refuses(ram_dir):
    clock = FakeClock()
    rival = {"host": "other-host", "pid": 4242, "since": "2030-01-01T00:00:00Z", "run_id": "r"}

    def rival_writes_meanwhile(seconds: float) -> None:
        clock.now += seconds
        # (ram:// GFile "w" appends to an existing file; a rename replaces it)
        atomic_write_text(f"{ram_dir}/{LOCK_FILE}", json.dumps({**rival, "heartbeat_unix": 1.0}))

    lock = RunLock(
        ram_dir,
        lease_seconds=60.0,
        start_heartbeat=False,
        clock=clock,
        sleep=rival_writes_meanwhile,
    )
    with pytest.raises(
        ModelDirLockedError, match="host=other-host, pid=4242, since 2030-01-01T00:00:00Z"
    ):
        lock.acquire()
    assert not lock.held


def test_lease_heartbeat_thread_keeps_the_lease_fresh(ram_dir):
    import time

    with RunLock(ram_dir, lease_seconds=2.0, heartbeat_seconds=0.05, settle_seconds=0) as lock:
        first = json.loads(_read(f"{ram_dir}/{LOCK_FILE}"))["heartbeat_unix"]
        deadline = time.monotonic() + 60
        while json.loads(_read(f"{ram_dir}/{LOCK_FILE}"))["heartbeat_unix"] == first:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lock.check()


def _read(path: str) -> str:
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as handle:
        return handle.read()
