"""One run per model_dir: an exclusive lock held by the chief for the life of a run.

Two runs writing one ``model_dir`` overwrite each other's checkpoints and summaries (or crash
inside TensorFlow's checkpoint merge). ``RunLock`` makes the second one refuse at start, naming
the holder::

    with RunLock(model_dir):          # ModelDirLockedError if another live run holds it
        ...train...                   # released on exit, also on an exception

The lock is the file ``<model_dir>/run.lock``, holding JSON: host, pid, process start time,
``since`` (UTC) and a run id. Two implementations behind one API:

* **Local directories: ``flock``.** The file is opened and ``flock(LOCK_EX | LOCK_NB)``-ed. The
  kernel releases the lock when its process dies however it dies, so a lock is held exactly
  while its holder lives and a killed run's lock is free at once; the file's leftover content
  (a clean release empties it) names the killed run in the takeover warning. Works on NFS
  mounts whose server supports locks. The holder re-checks that ``run.lock`` is still the file
  it locked (``check()``), so a deleted lock file is noticed.
* **``gs://`` and other ``tf.io.gfile`` schemes: a lease.** Object stores have no locks, so the
  holder rewrites the file every ``heartbeat_seconds`` from a daemon thread; a lease whose last
  heartbeat is older than ``lease_seconds`` (or whose holder is a dead process on this host) is
  stale and is taken over with a warning. Acquiring writes the lease, waits ``settle_seconds``
  and reads it back: of two runs starting together, the one whose write landed last wins and the
  other refuses. This is a best effort (``tf.io.gfile`` offers no conditional write): two runs
  both pass only if one's read-then-write takes longer than ``settle_seconds``. A holder that
  finds its lease taken over marks itself lost; ``check()`` then raises ``RunLockLostError``,
  which the training loop calls before every checkpoint write. TensorFlow is imported only here.

Only the chief takes the lock in a multi-worker job (the other workers never write model_dir).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from absl import logging

from highnoon.training.run_dir import LOCK_FILE
from highnoon.utils import processes
from highnoon.utils.files import atomic_write_text, is_remote
from highnoon.utils.validation import (
    InvalidArgumentError,
    check_bool,
    check_choice,
    check_float,
    check_positive_float,
    check_str,
)

FORMAT = 1
MODES = ("auto", "flock", "lease")


class ModelDirLockedError(RuntimeError):
    """Another live run holds the model_dir's lock."""


class RunLockLostError(RuntimeError):
    """This run's lease on model_dir was taken over by another run (its heartbeat stalled)."""


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def describe_holder(record: dict[str, Any]) -> str:
    """``host=..., pid=..., since ...`` for messages."""
    return (
        f"host={record.get('host', '?')}, pid={record.get('pid', '?')}, "
        f"since {record.get('since', '?')}"
    )


class RunLock:
    """Exclusive lock on ``model_dir`` (module docstring). A context manager.

    Args:
      model_dir: the run's directory (local path or any ``tf.io.gfile`` URL); created if missing.
      mode: ``auto`` (``flock`` for local paths, ``lease`` for URLs), ``flock`` or ``lease``.
      lease_seconds: lease mode: a heartbeat older than this makes the lease stale. Hosts
        compare the holder's clock with their own: keep it well above any clock skew.
      heartbeat_seconds: lease mode: how often the holder renews it (None: lease_seconds / 6).
      start_heartbeat: lease mode: run the heartbeat thread (False: call ``heartbeat()``
        yourself, as tests with a fake clock do).
      settle_seconds: lease mode: wait between writing a new lease and reading it back.
      clock, sleep: time source and sleep of the lease logic (a fake clock in tests).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        mode: str = "auto",
        lease_seconds: float = 300.0,
        heartbeat_seconds: float | None = None,
        start_heartbeat: bool = True,
        settle_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(model_dir, os.PathLike):
            model_dir = os.fspath(model_dir)
        self.model_dir = check_str("model_dir", model_dir)
        mode = check_choice("mode", mode, MODES)
        if mode == "auto":
            mode = "lease" if is_remote(self.model_dir) else "flock"
        if mode == "flock" and is_remote(self.model_dir):
            raise InvalidArgumentError(
                f"mode='flock' needs a local model_dir, got model_dir={self.model_dir!r}"
            )
        self.mode = mode
        self.lease_seconds = check_positive_float("lease_seconds", lease_seconds)
        if heartbeat_seconds is None:
            heartbeat_seconds = self.lease_seconds / 6
        self.heartbeat_seconds = check_float(
            "heartbeat_seconds",
            heartbeat_seconds,
            minimum=0.0,
            maximum=self.lease_seconds / 2,
            exclusive_minimum=True,
        )
        self.start_heartbeat = check_bool("start_heartbeat", start_heartbeat)
        self.settle_seconds = check_float("settle_seconds", settle_seconds, minimum=0.0)
        self.clock = clock
        self.sleep = sleep
        self.path = self.model_dir.rstrip("/") + "/" + LOCK_FILE
        self.record: dict[str, Any] | None = None  # ours while held
        self._fd: int | None = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._io = threading.Lock()  # heartbeat thread vs. release/check

    # -- public API ------------------------------------------------------------------------
    @property
    def held(self) -> bool:
        return self.record is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise ``ModelDirLockedError`` naming the holder; returns self."""
        if self.held:
            raise RuntimeError(f"RunLock on {self.model_dir!r} is already held by this object")
        now = self.clock()
        self.record = None
        record = {
            "format": FORMAT,
            "host": processes.hostname(),
            "pid": os.getpid(),
            "start": processes.process_start(os.getpid()),
            "since": _utc(now),
            "since_unix": now,
            "run_id": uuid.uuid4().hex,
        }
        if self.mode == "flock":
            self._acquire_flock(record)
        else:
            self._acquire_lease(record)
        self.record = record
        self._lost = None
        return self

    def release(self) -> None:
        """Give the lock up (idempotent). A lease is deleted only if it is still ours."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._io:
            try:
                if self.mode == "flock":
                    self._release_flock()
                else:
                    self._release_lease()
            finally:
                self.record = None

    def check(self) -> None:
        """Raise ``RunLockLostError`` if this run no longer holds the lock (call before writing
        a checkpoint). Cheap: one stat (flock) or one read of the lease file."""
        if not self.held:
            raise RunLockLostError(f"the lock on model_dir={self.model_dir!r} is not held")
        with self._io:
            if not self._lost:
                self._lost = self._flock_lost() if self.mode == "flock" else self._lease_lost()
        if self._lost:
            raise RunLockLostError(
                f"this run lost its lock on model_dir={self.model_dir!r}: {self._lost}; stop "
                "writing to it (another run may be using it)"
            )

    def heartbeat(self) -> None:
        """Lease mode: renew the lease now (the heartbeat thread calls this)."""
        if self.mode != "lease" or not self.held:
            return
        with self._io:
            if not self.held or self._lost:
                return
            self._lost = self._lease_lost()
            if self._lost:
                logging.error("run lock on %s lost: %s", self.model_dir, self._lost)
                return
            self._write_lease(self.record)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "free"
        return f"RunLock({self.model_dir!r}, mode={self.mode!r}, {state})"

    # -- flock -----------------------------------------------------------------------------
    def _acquire_flock(self, record: dict[str, Any]) -> None:
        import fcntl

        os.makedirs(self.model_dir, exist_ok=True)
        for _ in range(10):  # retried only if run.lock is replaced under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._read_fd(fd)
                os.close(fd)
                raise ModelDirLockedError(self._locked_message(holder)) from None
            except OSError as err:  # ENOLCK/EOPNOTSUPP: a filesystem without locks
                os.close(fd)
                raise OSError(
                    err.errno,
                    f"cannot lock {self.path} ({err.strerror}): this filesystem does not support "
                    "file locks; use RunLock(mode='lease') for it",
                ) from err
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the file was deleted or replaced between open and flock
                os.close(fd)
                continue
            previous = self._read_fd(fd)
            if previous is not None:
                self._warn_takeover(previous, "it ended without releasing the lock")
            data = json.dumps(record, sort_keys=True).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            self._fd = fd
            return
        raise ModelDirLockedError(f"{self.path} keeps being replaced; is another run starting?")

    def _flock_lost(self) -> str | None:
        try:
            same = os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            same = False
        return None if same else f"{self.path} was deleted or replaced while this run held it"

    def _release_flock(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # an empty file: released cleanly, nothing to warn about
        finally:
            os.close(fd)  # drops the flock

    @staticmethod
    def _read_fd(fd: int) -> dict[str, Any] | None:
        """The JSON record in an open lock file; None when empty; ``{}`` when unreadable."""
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        data = os.pread(fd, size, 0)
        try:
            record = json.loads(data)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    # -- lease -----------------------------------------------------------------------------
    def _gfile(self) -> Any:
        import tensorflow as tf

        return tf.io.gfile

    def _read_lease(self) -> dict[str, Any] | None:
        gfile = self._gfile()
        if not gfile.exists(self.path):
            return None
        try:
            with gfile.GFile(self.path, "r") as handle:
                record = json.loads(handle.read())
        except Exception:  # NotFound (deleted meanwhile), bad JSON: no valid lease
            return {} if gfile.exists(self.path) else None
        return record if isinstance(record, dict) else {}

    def _lease_lost(self) -> str | None:
        current = self._read_lease()
        if current is not None and current.get("run_id") == self.record["run_id"]:
            return None
        holder = describe_holder(current) if current else "nobody (the file is gone)"
        return f"the lease file {self.path} now names {holder}"

    def _write_lease(self, record: dict[str, Any]) -> None:
        record["heartbeat_unix"] = self.clock()
        record["lease_seconds"] = self.lease_seconds
        atomic_write_text(self.path, json.dumps(record, sort_keys=True))

    def _stale_reason(self, lease: dict[str, Any]) -> str | None:
        """Why an existing lease may be taken over, or None while its holder may be alive."""
        if not lease:
            return "the lease file is unreadable"
        heartbeat = lease.get("heartbeat_unix")
        if not isinstance(heartbeat, int | float):
            return "the lease file has no heartbeat"
        pid, start = lease.get("pid"), lease.get("start")
        same_host = lease.get("host") == processes.hostname() and isinstance(pid, int)
        if same_host and not processes.pid_alive(pid, start if isinstance(start, int) else None):
            return f"its process (pid {pid} on this host) is gone"
        limit = lease.get("lease_seconds", self.lease_seconds)
        limit = limit if isinstance(limit, int | float) and limit > 0 else self.lease_seconds
        age = self.clock() - heartbeat
        if age > limit:
            return f"its last heartbeat was {age:.0f} s ago (lease {limit:g} s)"
        return None

    def _acquire_lease(self, record: dict[str, Any]) -> None:
        self._gfile().makedirs(self.model_dir)
        current = self._read_lease()
        if current is not None:
            reason = self._stale_reason(current)
            if reason is None:
                raise ModelDirLockedError(self._locked_message(current))
            self._warn_takeover(current, reason)
        self._write_lease(record)
        if self.settle_seconds > 0:
            self.sleep(self.settle_seconds)
        winner = self._read_lease()
        if winner is None or winner.get("run_id") != record["run_id"]:
            raise ModelDirLockedError(self._locked_message(winner or {}))
        self._stop.clear()
        if self.start_heartbeat:
            self._thread = threading.Thread(
                target=self._heartbeat_loop, name="highnoon-run-lock", daemon=True
            )
            self._thread.start()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.heartbeat()
            except Exception as err:  # a transient storage error: the next beat retries
                logging.warning("run lock heartbeat on %s failed: %s", self.path, err)

    def _release_lease(self) -> None:
        current = self._read_lease()
        if current is not None and current.get("run_id") == self.record["run_id"]:
            with contextlib.suppress(Exception):  # already gone
                self._gfile().remove(self.path)

    # -- messages --------------------------------------------------------------------------
    def _locked_message(self, holder: dict[str, Any] | None) -> str:
        who = describe_holder(holder) if holder else "another process (details not written yet)"
        return (
            f"model_dir={self.model_dir!r} is in use by another run ({who}; lock file "
            f"{self.path}). Two runs in one model_dir overwrite each other's checkpoints: wait "
            "for that run to finish or stop it, or use another model_dir"
        )

    def _warn_takeover(self, previous: dict[str, Any], reason: str) -> None:
        who = describe_holder(previous) if previous else "an unknown run"
        logging.warning(
            "model_dir=%r: taking over the lock of a run that is gone (%s): %s",
            self.model_dir,
            who,
            reason,
        )
